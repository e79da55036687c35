"""``kernelflow doctor``: can this installation run workflows, and what is missing?

It checks, each as a :class:`kernelflow.health.Health` with what to do about
a problem:

* the store: where it is, its schema version, its size, and whether a file
  can really be created there (the store's ``health()``, when it has one);
* every executor: its ``ExecutorSpec.health`` check (is the Dask scheduler
  reachable?), each given at most ``timeout`` seconds;
* the plugins: which loaded, and which failed to import (kernelflow itself
  refuses to start while one fails, so the doctor loads them one by one and
  goes on with the rest);
* optional tools: Graphviz ``dot`` (the inline DAG), Chromium (kernelflow's
  browser tests and screenshots), Dask, OpenTelemetry.

``error`` means something kernelflow needs is broken (exit code 1);
``warning`` means something optional is missing or could not be checked.

    from kernelflow.doctor import diagnose
    report = diagnose()              # the default store
    report.exit_code, [h.status for h in report.checks]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from .health import Health

DEFAULT_TIMEOUT_S = 10.0
"""How long one health check (an executor's, the store's) may take before it is reported as not answering."""
CHROMIUM_PATHS = ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
"""Where Chromium is looked for; the browser tests use ``/usr/bin/chromium``."""
_RANK = {"ok": 0, "warning": 1, "error": 2}


@dataclass(frozen=True)
class Report:
    """Everything the doctor checked, in the order it prints them."""

    checks: list[Health] = field(default_factory=list)

    @property
    def status(self) -> str:
        """The worst status: ``ok``, ``warning`` or ``error``."""
        return max((h.status for h in self.checks), key=_RANK.__getitem__, default="ok")

    @property
    def exit_code(self) -> int:
        """0 when nothing required is broken (warnings included), 1 otherwise."""
        return 1 if self.status == "error" else 0

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(_RANK, 0)
        for h in self.checks:
            out[h.status] += 1
        return out

    def to_dict(self) -> dict[str, Any]:
        counts = self.counts()
        return {
            "status": self.status,
            "exit_code": self.exit_code,
            "errors": counts["error"],
            "warnings": counts["warning"],
            "checks": [h.to_dict() for h in self.checks],
        }

    def text(self) -> str:
        lines = []
        for h in self.checks:
            lines.append(f"{h.status:<8} {h.component}: {h.detail}")
            if h.fix and h.status != "ok":
                lines.append(f"{'':<8} fix: {h.fix}")
        counts = self.counts()
        summary = {
            "ok": "everything kernelflow needs is in order",
            "warning": f"kernelflow can run; {counts['warning']} warning(s) about optional parts",
            "error": f"{counts['error']} problem(s) to fix before kernelflow can run"
            + (f", and {counts['warning']} warning(s)" if counts["warning"] else ""),
        }[self.status]
        lines.append(f"\n{self.status}: {summary}")
        return "\n".join(lines)


def diagnose(location: str | os.PathLike[str] | None = None, *, timeout: float = DEFAULT_TIMEOUT_S) -> Report:
    """Check the store at ``location`` (default: the one this process uses),
    the executors, the plugins and the optional tools; never raises for what
    it finds."""
    from .store_access import store_location

    where = store_location() if location is None else os.fspath(location)
    if "://" not in where:
        where = os.path.abspath(where)
    plugin_checks, manager, own_manager = _plugins()
    checks = [_kernelflow()]
    checks.append(_store(where, manager, own_manager, timeout))
    checks.extend(_executors(manager, timeout))
    checks.extend(plugin_checks)
    checks.extend(_tools())
    return Report(checks)


# --- kernelflow itself -------------------------------------------------------------------


def _kernelflow() -> Health:
    from . import __version__

    python = ".".join(str(v) for v in sys.version_info[:3])
    return Health("kernelflow", "ok", f"{__version__} on Python {python} ({sys.executable})",
                  info={"version": __version__, "python": python, "executable": sys.executable})  # fmt: skip


# --- plugins -----------------------------------------------------------------------------


def _plugins() -> tuple[list[Health], Any, bool]:
    """Health lines for the plugins, and a plugin manager to check the rest with.

    The process's manager when it loads; when a plugin breaks it (an entry
    point that fails to import, a misspelt hook), one made of the plugins
    that did load, so the store and executors are still checked.
    """
    from .exceptions import PluginError
    from .plugin_host import get_plugin_manager, load_reporting, origin

    problems: list[Health] = []
    own = False
    try:
        manager = get_plugin_manager()
    except PluginError:
        own = True
        manager, failures = load_reporting()
        for name, exc in failures:
            found = origin(name)
            package = (found.distribution if found else None) or "its package"
            problems.append(Health(
                f"plugin {name}", "error",
                f"{exc}; while it is installed, every kernelflow command and run fails",
                f"Reinstall or uninstall {package!r} (`pip install --force-reinstall {package}` or "
                f"`pip uninstall {package}`), or upgrade it to a version that fits this kernelflow.",
                {"plugin": name, "error": str(exc)},
            ))  # fmt: skip
    names = sorted(name for name, _ in manager.list_name_plugin())
    failed = [h.info.get("plugin") for h in problems]
    summary = Health("plugins", "ok", f"{len(names)} loaded: {', '.join(names) or 'none'}",
                     info={"loaded": names, "failed": failed})  # fmt: skip
    return [summary, *problems], manager, own


# --- the store ---------------------------------------------------------------------------


def _store(where: str, manager: Any, own_manager: bool, timeout: float) -> Health:
    from .exceptions import KernelflowError

    opened_here = False
    try:
        if own_manager:
            store = manager.hook.kernelflow_open_store(location=where)
            opened_here = True
        else:
            from .store_access import open_store

            store = open_store(where)
    except KernelflowError as exc:
        return _unopenable(where, exc)
    except Exception as exc:  # noqa: BLE001 - a store plugin that raises something else
        return Health("store", "error", f"opening {where} raised {type(exc).__name__}: {exc}",
                      "Check the location, or the store plugin that claims it.", {"path": where})  # fmt: skip
    if store is None:
        return Health("store", "error", f"no installed plugin opens a store at {where!r}",
                      "Install the plugin for this URL, or point --store / $KERNELFLOW_HOME at a folder.",
                      {"path": where})  # fmt: skip
    try:
        check = getattr(store, "health", None)
        if check is None:
            return Health("store", "ok", f"{store.location} ({type(store).__name__}; its plugin has no health check)",
                          info={"path": str(store.location), "checked": False})  # fmt: skip
        return _named("store", _call(check, timeout, "the store's health check"))
    finally:
        if opened_here:
            try:
                store.close()
            except Exception:  # noqa: BLE001 - only a report
                pass


def _unopenable(where: str, exc: BaseException) -> Health:
    message = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    if "://" not in where:
        from .store.health import check_folder

        found = check_folder(where)
        if not found.ok:
            return found
    return Health("store", "error", message,
                  "Fix what the message says, or point --store / $KERNELFLOW_HOME at another folder.",
                  {"path": where})  # fmt: skip


# --- executors ---------------------------------------------------------------------------


def _executors(manager: Any, timeout: float) -> list[Health]:
    out: list[Health] = []
    specs: dict[str, Any] = {}
    for impl in manager.hook.kernelflow_register_executors.get_hookimpls():
        try:
            found = impl.function() or []
        except Exception as exc:  # noqa: BLE001
            out.append(Health(f"plugin {impl.plugin_name}", "error",
                              f"raised in kernelflow_register_executors: {type(exc).__name__}: {exc}",
                              "Upgrade or uninstall the plugin's package.", {"plugin": impl.plugin_name}))  # fmt: skip
            continue
        for spec in found:
            if spec.name in specs:
                out.append(Health(f"executor {spec.name}", "error",
                                  f"registered by two plugins (one is {impl.plugin_name!r})",
                                  "Uninstall one of them.", {"executor": spec.name}))  # fmt: skip
                continue
            specs[spec.name] = spec
    # Checks run at once, each on its own thread: a hung one costs `timeout`, not the sum.
    pending = {name: _start(spec.health) for name, spec in specs.items() if spec.health is not None}
    for name, spec in sorted(specs.items()):
        component = f"executor {name}"
        if spec.health is None:
            out.append(Health(component, "ok", f"{spec.description or name} (no health check)",
                              info={"executor": name, "checked": False}))  # fmt: skip
            continue
        out.append(_named(component, pending[name](timeout, f"the {name!r} executor's health check")))
    return out


# --- calling checks safely ---------------------------------------------------------------


def _start(check: Callable[[], Any]) -> Callable[[float, str], Health]:
    """Start ``check`` on a daemon thread; the returned function waits for it."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = check()
        except BaseException as exc:  # noqa: BLE001 - reported, never raised
            box["error"] = exc

    thread = threading.Thread(target=target, name="kernelflow-doctor-check", daemon=True)
    thread.start()

    def wait(timeout: float, what: str) -> Health:
        thread.join(timeout)
        if thread.is_alive():
            return Health("", "warning", f"{what} did not answer within {timeout:g} s",
                          "Check the network or service it talks to; `kernelflow doctor --timeout SECONDS` waits longer.",
                          {"timed_out": True})  # fmt: skip
        if "error" in box:
            exc = box["error"]
            return Health("", "warning", f"{what} raised {type(exc).__name__}: {exc}",
                          "This is a bug in the check: report it to the plugin's author.",
                          {"error": f"{type(exc).__name__}: {exc}"})  # fmt: skip
        return _as_health(box.get("value"), what)

    return wait


def _call(check: Callable[[], Any], timeout: float, what: str) -> Health:
    return _start(check)(timeout, what)


def _as_health(value: Any, what: str) -> Health:
    if isinstance(value, Health):
        return value
    if value is True or value is None:
        return Health("", "ok", "healthy")
    if value is False:
        return Health("", "error", f"{what} says it is not healthy", "See the plugin's documentation.")
    return Health("", "warning", f"{what} returned {value!r:.80}, not a kernelflow.health.Health",
                  "Report it to the plugin's author.")  # fmt: skip


def _named(component: str, h: Health) -> Health:
    return Health(component, h.status, h.detail, h.fix, h.info)


# --- optional tools ----------------------------------------------------------------------


def _tools() -> list[Health]:
    return [_dot(), _chromium(), _dask(), _opentelemetry()]


def _dot() -> Health:
    path = shutil.which("dot")
    if path is None:
        return Health(
            "tool dot", "warning",
            "Graphviz `dot` is not on PATH: the live DAG widget is laid out in the browser instead, "
            "and static DAG outputs (saved notebooks, nbviewer) show the text DAG",
            "Install Graphviz: `apt install graphviz`, `brew install graphviz` or `conda install -c conda-forge graphviz`.",
            {"found": False},
        )  # fmt: skip
    version = ""
    try:
        res = subprocess.run([path, "-V"], capture_output=True, text=True, timeout=5)
        version = (res.stderr or res.stdout).strip().splitlines()[0] if (res.stderr or res.stdout).strip() else ""
    except (OSError, subprocess.TimeoutExpired):
        pass
    return Health("tool dot", "ok", f"{path}" + (f" ({version})" if version else ""),
                  info={"found": True, "path": path, "version": version})  # fmt: skip


def _chromium() -> Health:
    for candidate in CHROMIUM_PATHS:
        path = candidate if os.path.isabs(candidate) else shutil.which(candidate)
        if path and os.access(path, os.X_OK):
            return Health("tool chromium", "ok", f"{path} (for browser tests and screenshots)",
                          info={"found": True, "path": path})  # fmt: skip
    return Health(
        "tool chromium", "warning",
        "Chromium not found: only kernelflow's own browser tests and screenshots need it",
        "Run `bash scripts/setup` in a kernelflow checkout, or `apt install chromium` (the tests use /usr/bin/chromium).",
        {"found": False},
    )  # fmt: skip


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _has(module: str) -> bool:
    from importlib.util import find_spec

    try:
        return find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _dask() -> Health:
    if _has("dask") and _has("distributed"):
        dask, distributed = _version("dask"), _version("distributed")
        return Health("tool dask", "ok", f"dask {dask}, distributed {distributed} (the dask executor can run)",
                      info={"found": True, "dask": dask, "distributed": distributed})  # fmt: skip
    return Health("tool dask", "warning", "Dask is not installed: the dask executor cannot run",
                  "Install it with `pip install 'kernelflow[dask]'` if you want tasks on a Dask cluster.",
                  {"found": False})  # fmt: skip


def _opentelemetry() -> Health:
    from .plugins import otel_listener

    on = otel_listener.enabled()
    if _has("opentelemetry.sdk"):
        sdk = _version("opentelemetry-sdk")
        state = "tracing is on in this process" if on else (
            "tracing is off: enable it with kf.use_opentelemetry() or $KERNELFLOW_OTEL=1")
        return Health("tool opentelemetry", "ok", f"opentelemetry-sdk {sdk}; {state}",
                      info={"found": True, "version": sdk, "enabled": on})  # fmt: skip
    detail = "OpenTelemetry is not installed: runs cannot be traced as spans"
    if on:
        detail += f" (though ${otel_listener.ENV} asks for it)"
    return Health("tool opentelemetry", "warning", detail,
                  f"{otel_listener.INSTALL_HINT} Needed only to send traces (docs/observability.md).",
                  {"found": False, "enabled": on})  # fmt: skip


# --- the command -------------------------------------------------------------------------


def cmd_doctor(args: argparse.Namespace) -> int:
    import json

    report = diagnose(args.store or None, timeout=args.timeout)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, default=str, ensure_ascii=False))
    else:
        print(report.text())
    return report.exit_code


def add_parser(sub: Any) -> None:
    """Register ``kernelflow doctor`` on the CLI's subparsers."""
    p = sub.add_parser("doctor", help="check the store, executors, plugins and optional tools, and say what to fix")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                   help=f"how long each health check may take (default {DEFAULT_TIMEOUT_S:g})")
    p.add_argument("--json", action="store_true", help="print JSON for scripts (shape in docs/cli.md)")
    p.set_defaults(func=cmd_doctor)
