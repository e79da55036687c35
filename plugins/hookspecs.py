"""Every kernelflow hook, in one place.

A plugin is a module or object with functions marked ``@kernelflow.hookimpl``
and named like the specs below. Register one through the ``kernelflow``
entry-point group in your package metadata::

    [project.entry-points.kernelflow]
    my_plugin = "my_package.kernelflow_plugin"

Hooks are named by their contract: ``kernelflow_register_*`` return a list
that is collected from every plugin; ``kernelflow_open_*`` stop at the first
non-None result. The built-in executors and store use these same hooks
(``kernelflow.plugins.thread_executor``, ``kernelflow.plugins.folder_store``).

An implementation takes some or all of its hook's parameters, by name, and no
others; one that asks for another is refused when the plugin is loaded. A
plugin that raises while kernelflow calls it is reported once (a
``kernelflow.plugin_host.PluginWarning`` naming it) and skipped: each hook's
docstring says what is lost. ``docs/plugins.md`` renders these docstrings
(``python -m kernelflow.plugins.hook_reference``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    from kernelflow.alert_channels_api import ChannelSpec
    from kernelflow.executor_api import ExecutorSpec
    from kernelflow.observer_api import RunObserver
    from kernelflow.run import Run
    from kernelflow.secrets import SecretProvider
    from kernelflow.store_api import EventStore

PROJECT = "kernelflow"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# --- setup: what the host can use ------------------------------------------------


@hookspec
def kernelflow_register_executors() -> list[ExecutorSpec]:
    """Return the executors this plugin provides, as
    :class:`kernelflow.executor_api.ExecutorSpec` items.

    Called once, the first time an executor is looked up. Each spec's ``name``
    is what users write in ``--executor NAME`` or ``@kf.task(executor=NAME)``;
    two plugins registering the same name is an error naming both.

    If this hook raises, the plugin's executors are missing and only tasks
    that ask for them fail. If an executor's factory or ``submit`` raises,
    that attempt fails (and is retried like any other) naming the plugin.
    """


@hookspec(firstresult=True)
def kernelflow_open_store(location: str) -> EventStore | None:
    """Open the store at ``location`` (a folder path or a URL) and return an
    object implementing :class:`kernelflow.store_api.EventStore`, or ``None``
    if this plugin does not handle such locations.

    Called when a process first needs the store. Stops at the first non-None
    result: mark an implementation ``tryfirst=True`` to claim locations (for
    example ``postgres://`` URLs) before the built-in folder store, which
    accepts any path. An error raised here is the error of whatever needed
    the store: nothing can run without one.
    """


# --- runs: watching them -----------------------------------------------------------


@hookspec
def kernelflow_run_observers(run: Run) -> list[RunObserver] | None:
    """Return observers (:class:`kernelflow.observer_api.RunObserver`) that
    should watch ``run``, or ``None``.

    Called once when a run starts, on the thread that starts it (so a
    notebook plugin can tell whether the run belongs to the cell being
    executed). The engine then calls each observer's ``on_events`` with the
    events it records, and ``on_finish`` when the run ends.

    If this hook raises, the plugin's observers are not attached; an observer
    whose ``on_events`` or ``on_finish`` raises is detached. The run goes on.
    """


# --- secrets -----------------------------------------------------------------------


@hookspec
def kernelflow_secret_providers() -> list[SecretProvider]:
    """Return secret providers (:class:`kernelflow.secrets.SecretProvider`):
    objects with a ``name`` and ``get(name) -> str | None``.

    Called when a run first resolves ``{{secrets.NAME}}``; providers are
    asked in pluggy's call order (the plugin registered last first,
    ``tryfirst``/``trylast`` respected; the built-in ``env`` is ``trylast``)
    and the first value that is not ``None`` wins. Values are masked in
    everything kernelflow records or shows; a provider must not log them.
    If this hook or a provider's ``get`` raises, the next provider is asked.
    """


# --- alerts ------------------------------------------------------------------------


@hookspec
def kernelflow_register_alert_channels() -> list[ChannelSpec]:
    """Return the alert channel types this plugin provides, as
    :class:`kernelflow.alert_channels_api.ChannelSpec` items
    (``name``, ``factory``, ``description``).

    Called each time a channel is configured (``kf.alert_channel(name, type,
    **settings)``) or the channel types are listed. ``type`` picks a spec by
    its ``name``; ``factory(**settings)`` must check the settings and raise
    :class:`kernelflow.alert_channels_api.ChannelConfigError` for bad ones,
    and return an object with ``send(alert, *, timeout)`` that raises on
    failure. Two plugins registering the same name is an error naming both.
    If this hook raises, the plugin's types are missing and the others work.
    """
