"""The plugin host: one pluggy manager per process, built on first use.

Two rules hold for every plugin, built-in or third-party:

- A plugin that does not fit is refused when it is loaded: an entry point
  that fails to import, a hook implementation named like no hook
  (``check_pending``), or one taking parameters its hook does not have.
  The :class:`PluginError` names the plugin, its entry point and package, the
  hook, and both signatures.
- A plugin that raises while kernelflow uses it does not take a run down:
  :func:`call_each` calls each implementation on its own, and one that raises
  is reported once (a :class:`PluginWarning` naming the plugin, the hook and
  the error) and skipped.
"""

from __future__ import annotations

import inspect
import re
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pluggy

from kernelflow.plugins import hookspecs

from .exceptions import PluginError

if TYPE_CHECKING:  # pragma: no cover
    from .executor_api import ExecutorSpec

_lock = threading.Lock()
_pm: pluggy.PluginManager | None = None
_executors: dict[str, ExecutorSpec] | None = None
_executor_owners: dict[str, str] = {}
_broken_executors: dict[str, str] = {}  # plugin -> why its executors are missing
_reported: set[tuple[str, str, str]] = set()  # (plugin, where, error) already warned about


class PluginWarning(RuntimeWarning):
    """A plugin raised while kernelflow used it; it was skipped and the run went on."""


@dataclass(frozen=True)
class Origin:
    """Where an entry-point plugin came from."""

    entry_point: str  # the entry point's name (the plugin's name)
    value: str  # what it points at: ``package.module`` or ``package.module:object``
    distribution: str | None
    version: str | None

    @property
    def builtin(self) -> bool:
        return self.distribution == "kernelflow"


_origins: dict[str, Origin] = {}


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
                raise PluginError(_pending_message(pm, exc)) from exc
            _pm = pm
    return _pm


def _load_entry_points(pm: pluggy.PluginManager, failures: list[tuple[str, PluginError]] | None = None) -> None:
    # Loaded one by one (not pm.load_setuptools_entrypoints) so that a broken
    # plugin is reported by its own name and entry point. With ``failures``,
    # a plugin that does not load is listed there and the rest still load
    # (kernelflow doctor); without, the first one raises.
    from importlib.metadata import entry_points

    seen: set[str] = set()
    for ep in entry_points(group=hookspecs.PROJECT):
        if ep.name in seen or pm.has_plugin(ep.name):
            continue  # the same distribution visible twice on sys.path
        seen.add(ep.name)
        dist = getattr(ep, "dist", None)
        origin = Origin(ep.name, ep.value, getattr(dist, "name", None), getattr(dist, "version", None))
        _origins[ep.name] = origin
        try:
            try:
                plugin = ep.load()
            except Exception as exc:
                name = origin.distribution or "?"
                raise PluginError(
                    f"kernelflow plugin {ep.name!r} ({ep.value}, from package {name!r}) failed to import: "
                    f"{type(exc).__name__}: {exc}. Reinstall or uninstall {name!r}."
                ) from exc
            _register(pm, plugin, ep.name)
            if failures is not None:
                try:
                    pm.check_pending()
                except pluggy.PluginValidationError as exc:
                    message = _pending_message(pm, exc)
                    pm.unregister(plugin)
                    raise PluginError(message) from exc
        except PluginError as exc:
            if failures is None:
                raise
            failures.append((ep.name, exc))


def load_reporting() -> tuple[pluggy.PluginManager, list[tuple[str, PluginError]]]:
    """A plugin manager of every entry point that loads, and for each one that
    does not, its name and the error :func:`get_plugin_manager` would raise."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    failures: list[tuple[str, PluginError]] = []
    _load_entry_points(pm, failures)
    return pm, failures


def _register(pm: pluggy.PluginManager, plugin: object, name: str | None) -> str:
    try:
        registered = pm.register(plugin, name=name)
    except pluggy.PluginValidationError as exc:
        # pluggy leaves a half-registered plugin behind when it refuses one.
        if pm.is_registered(plugin):
            pm.unregister(plugin)
        raise PluginError(_signature_message(pm, plugin, name, exc)) from exc
    return registered or (name or repr(plugin))


def register(plugin: object, name: str | None = None) -> str:
    """Register a plugin object at run time (tests, notebooks); returns its name."""
    global _executors
    pm = get_plugin_manager()
    registered = _register(pm, plugin, name)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        message = _pending_message(pm, exc)
        pm.unregister(plugin)
        raise PluginError(message) from exc
    _forget_reports(registered)
    _executors = None
    return registered


def unregister(plugin: object) -> None:
    global _executors
    pm = get_plugin_manager()
    name = pm.get_name(plugin)
    pm.unregister(plugin)
    if name is not None:
        _forget_reports(name)
    _executors = None


# --- naming plugins in messages -----------------------------------------------------


def origin(name: str) -> Origin | None:
    """The entry point and distribution the plugin ``name`` was loaded from (None: registered at run time)."""
    return _origins.get(name)


def describe(name: str | None) -> str:
    """``plugin 'x'``, with its entry point and package when it came from one."""
    found = _origins.get(name or "")
    if found is None:
        return f"plugin {name!r}"
    package = f"{found.distribution} {found.version}" if found.version else (found.distribution or "?")
    return f"plugin {name!r} (entry point {found.value}, package {package})"


def signature_text(fn: Callable[..., Any], name: str | None = None) -> str:
    """``name(a: int, b) -> str`` as written in the source (string annotations unquoted)."""
    sig = inspect.signature(fn, eval_str=False)
    sig = sig.replace(
        parameters=[p.replace(annotation=_as_written(p.annotation)) for p in sig.parameters.values()],
        return_annotation=_as_written(sig.return_annotation),
    )
    return f"{name or fn.__name__}{sig}"


class _Written:
    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _as_written(annotation: Any) -> Any:
    return _Written(annotation) if isinstance(annotation, str) else annotation


def _signature_message(pm: pluggy.PluginManager, plugin: object, name: str | None, exc: Exception) -> str:
    who = f"kernelflow {describe(name)}" if name else f"kernelflow plugin {plugin!r}"
    found = re.search(r"hook '(\w+)'", str(exc))
    hook = found.group(1) if found else None
    caller = getattr(pm.hook, hook, None) if hook else None
    impl = None
    for attr in dir(plugin):
        opts = pm.parse_hookimpl_opts(plugin, attr)
        if opts is not None and (opts.get("specname") or attr) == hook:
            impl = getattr(plugin, attr)
    if caller is None or caller.spec is None or impl is None:
        return f"{who} was refused: {' '.join(str(exc).split())}"
    spec = caller.spec.function
    extra = [p for p in inspect.signature(impl).parameters if p not in inspect.signature(spec).parameters]
    listed = ", ".join(repr(p) for p in extra)
    return (
        f"{who} implements {hook} as {signature_text(impl)}, but the hook is "
        f"{signature_text(spec, hook)}: kernelflow does not pass {listed}. "
        "A hook implementation takes some or all of its hook's parameters, by name, and no others; "
        f"fix the plugin (see kernelflow.plugins.hookspecs)."
    )


def _pending_message(pm: pluggy.PluginManager, exc: pluggy.PluginValidationError) -> str:
    name = pm.get_name(exc.plugin) if pm.is_registered(exc.plugin) else None
    who = f"kernelflow {describe(name)}" if name else f"kernelflow plugin {exc.plugin!r}"
    return (
        f"{who} implements a hook kernelflow does not define: {exc}; "
        "check the name against kernelflow.plugins.hookspecs"
    )


# --- calling hooks so that one broken plugin cannot take a run down ------------------


def plugin_failed(plugin: str, where: str, exc: BaseException, then: str = "it was skipped and the run goes on") -> str:
    """Report that ``plugin`` raised ``exc`` in ``where`` (a hook, a method): a
    :class:`PluginWarning`, once per plugin, place and error; returns the message."""
    error = f"{type(exc).__name__}: {exc}"
    message = f"kernelflow {describe(plugin)} raised in {where}: {error}; {then}"
    key = (plugin, where, error)
    with _lock:
        fresh = key not in _reported
        _reported.add(key)
    if fresh:
        warnings.warn(message, PluginWarning, stacklevel=3)
    return message


def _forget_reports(plugin: str) -> None:
    # A plugin registered again (fixed, in a notebook) is reported afresh.
    with _lock:
        _reported.difference_update({k for k in _reported if k[0] == plugin})
        _broken_executors.pop(plugin, None)


def call_each(hook: str, **kwargs: Any) -> list[tuple[str, Any]]:
    """Call every implementation of ``hook`` in pluggy's order, each on its own.

    Returns ``(plugin name, result)`` for each result that is not None. An
    implementation that raises is reported (:func:`plugin_failed`) and
    skipped. Hook wrappers are not called: these hooks collect results.
    """
    results = []
    for impl in reversed(getattr(get_plugin_manager().hook, hook).get_hookimpls()):
        if impl.hookwrapper or impl.wrapper:
            continue
        try:
            result = impl.function(*[kwargs[name] for name in impl.argnames])
        except Exception as exc:  # noqa: BLE001 - reported, and the others still answer
            plugin_failed(impl.plugin_name, hook, exc)
            continue
        if result is not None:
            results.append((impl.plugin_name, result))
    return results


# --- executors ------------------------------------------------------------------------


def executors() -> dict[str, ExecutorSpec]:
    """Every registered executor by name. A plugin whose hook raises is
    reported and left out; two plugins registering one name is an error."""
    global _executors
    if _executors is not None:
        return _executors
    pm = get_plugin_manager()
    found: dict[str, ExecutorSpec] = {}
    owner: dict[str, str] = {}
    _broken_executors.clear()
    for impl in pm.hook.kernelflow_register_executors.get_hookimpls():
        try:
            specs = list(impl.function() or [])
        except Exception as exc:  # noqa: BLE001 - other plugins' executors still work
            _broken_executors[impl.plugin_name] = plugin_failed(
                impl.plugin_name, "kernelflow_register_executors", exc, "its executors are not available"
            )
            continue
        for spec in specs:
            if spec.name in found:
                raise PluginError(
                    f"executor {spec.name!r} is registered by both {owner[spec.name]!r} "
                    f"and {impl.plugin_name!r}; uninstall one of them"
                )
            found[spec.name] = spec
            owner[spec.name] = impl.plugin_name
    _executor_owners.clear()
    _executor_owners.update(owner)
    _executors = found
    return found


def executor_owner(name: str) -> str | None:
    """The name of the plugin that registers the executor ``name``."""
    executors()
    return _executor_owners.get(name)


def executor_spec(name: str) -> ExecutorSpec:
    specs = executors()
    if name not in specs:
        known = ", ".join(sorted(specs)) or "none"
        broken = "".join(f" ({why})" for why in _broken_executors.values())
        raise PluginError(
            f"no executor named {name!r}; registered executors: {known}{broken}. "
            "Install the plugin that provides it or pick one of these."
        )
    return specs[name]
