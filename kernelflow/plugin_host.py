"""The plugin host: one pluggy manager per process, built on first use."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import pluggy

from kernelflow.plugins import hookspecs

from .exceptions import PluginError

if TYPE_CHECKING:  # pragma: no cover
    from .executor_api import ExecutorSpec

_lock = threading.Lock()
_pm: pluggy.PluginManager | None = None
_executors: dict[str, ExecutorSpec] | None = None


def get_plugin_manager() -> pluggy.PluginManager:
    """The process's plugin manager, with every ``kernelflow`` entry point loaded.

    Built-ins are entry points too, so an installation without them (or with
    a broken one) fails here with the plugin's name, not later.
    """
    global _pm
    if _pm is not None:
        return _pm
    with _lock:
        if _pm is None:
            pm = pluggy.PluginManager(hookspecs.PROJECT)
            pm.add_hookspecs(hookspecs)
            _load_entry_points(pm)
            try:
                pm.check_pending()
            except pluggy.PluginValidationError as exc:
                raise PluginError(
                    f"plugin {exc.plugin!r} implements a hook kernelflow does not define: {exc}; "
                    "check the name against kernelflow.plugins.hookspecs"
                ) from exc
            _pm = pm
    return _pm


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    # Loaded one by one (not pm.load_setuptools_entrypoints) so that a broken
    # plugin is reported by its own name and entry point.
    from importlib.metadata import entry_points

    seen: set[str] = set()
    for ep in entry_points(group=hookspecs.PROJECT):
        if ep.name in seen or pm.has_plugin(ep.name):
            continue  # the same distribution visible twice on sys.path
        seen.add(ep.name)
        try:
            plugin = ep.load()
        except Exception as exc:
            dist = getattr(getattr(ep, "dist", None), "name", "?")
            raise PluginError(
                f"kernelflow plugin {ep.name!r} ({ep.value}, from package {dist!r}) failed to import: "
                f"{type(exc).__name__}: {exc}. Reinstall or uninstall {dist!r}."
            ) from exc
        pm.register(plugin, name=ep.name)


def register(plugin: object, name: str | None = None) -> str:
    """Register a plugin object at run time (tests, notebooks); returns its name."""
    global _executors
    pm = get_plugin_manager()
    registered = pm.register(plugin, name=name)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        pm.unregister(plugin)
        raise PluginError(
            f"plugin {name or plugin!r} implements a hook kernelflow does not define: {exc}"
        ) from exc
    _executors = None
    return registered or (name or repr(plugin))


def unregister(plugin: object) -> None:
    global _executors
    get_plugin_manager().unregister(plugin)
    _executors = None


def executors() -> dict[str, ExecutorSpec]:
    """Every registered executor by name."""
    global _executors
    if _executors is not None:
        return _executors
    pm = get_plugin_manager()
    found: dict[str, ExecutorSpec] = {}
    owner: dict[str, str] = {}
    for impl in pm.hook.kernelflow_register_executors.get_hookimpls():
        try:
            specs = impl.function() or []
        except Exception as exc:
            raise PluginError(
                f"plugin {impl.plugin_name!r} raised in kernelflow_register_executors: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        for spec in specs:
            if spec.name in found:
                raise PluginError(
                    f"executor {spec.name!r} is registered by both {owner[spec.name]!r} "
                    f"and {impl.plugin_name!r}; uninstall one of them"
                )
            found[spec.name] = spec
            owner[spec.name] = impl.plugin_name
    _executors = found
    return found


def executor_spec(name: str) -> ExecutorSpec:
    specs = executors()
    if name not in specs:
        known = ", ".join(sorted(specs)) or "none"
        raise PluginError(
            f"no executor named {name!r}; registered executors: {known}. "
            "Install the plugin that provides it or pick one of these."
        )
    return specs[name]
