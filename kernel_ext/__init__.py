"""The IPython extension: ``%load_ext kernelflow`` lands here (lazily, from the core).

It adds the ``%%workflow`` / ``%workflow`` and ``%%kfsql`` magics, teaches
IPython to display workflows and runs, and registers a plugin that shows a
live status for runs started from a cell.
"""

from __future__ import annotations

from typing import Any

from .display import register_formatters, unregister_formatters
from .live_status import NotebookStatusPlugin, show_alert
from .magics import KernelflowMagics

_plugin: NotebookStatusPlugin | None = None


def load_ipython_extension(ipython: Any) -> None:
    global _plugin
    from kernelflow import plugin_host

    ipython.register_magics(KernelflowMagics)
    register_formatters(ipython)
    if _plugin is None:
        _plugin = NotebookStatusPlugin(ipython)
        plugin_host.register(_plugin, name="kernelflow.notebook_status")
        if getattr(ipython, "kernel", None) is not None:
            from kernelflow.alerting import add_listener

            add_listener(show_alert)
    from kernelflow.recovery import notice

    text = notice()
    if text:
        print(text)


def unload_ipython_extension(ipython: Any) -> None:
    global _plugin
    from kernelflow import plugin_host

    unregister_formatters(ipython)
    if _plugin is not None:
        plugin_host.unregister(_plugin)
        _plugin = None
        from kernelflow.alerting import remove_listener

        remove_listener(show_alert)
