"""``kernelflow plugins``: what is loaded, where it came from, which hooks it implements, what it provides.

:func:`plugin_report` is the data (also the ``--json`` output); the command
prints it. Registration hooks are called to say what each plugin provides
(executor names, alert channel types, secret providers); one that raises is
shown with its error instead of failing the listing.
"""

from __future__ import annotations

import argparse
from typing import Any

from .plugin_host import get_plugin_manager, origin

# Hooks whose results say what a plugin provides: hook -> (key, how to name one item).
_PROVIDES = {
    "kernelflow_register_executors": ("executors", lambda spec: spec.name),
    "kernelflow_register_alert_channels": ("alert_channels", lambda spec: spec.name),
    "kernelflow_secret_providers": ("secret_providers", lambda p: getattr(p, "name", type(p).__name__)),
}
# Hooks that cannot be called just to list (they need a location or a run).
_HANDLES = {"kernelflow_open_store": "store", "kernelflow_run_observers": "run_observers"}


def plugin_report() -> list[dict[str, Any]]:
    """One dict per registered plugin, sorted by name (keys as in docs/cli.md)."""
    pm = get_plugin_manager()
    rows = []
    for name, plugin in sorted(pm.list_name_plugin(), key=lambda item: item[0]):
        if plugin is None:  # blocked
            continue
        found = origin(name)
        impls = {caller.name: impl for caller in pm.get_hookcallers(plugin) or [] for impl in caller.get_hookimpls()
                 if impl.plugin is plugin}  # fmt: skip
        provides: dict[str, Any] = {}
        errors = []
        for hook, impl in sorted(impls.items()):
            if hook in _PROVIDES:
                key, label = _PROVIDES[hook]
                try:
                    provides[key] = [label(item) for item in impl.function() or []]
                except Exception as exc:  # noqa: BLE001 - shown, not raised: the listing is how you find it
                    errors.append(f"{hook} raised {type(exc).__name__}: {exc}")
            elif hook in _HANDLES:
                provides[_HANDLES[hook]] = True
        rows.append(
            {
                "name": name,
                "object": getattr(plugin, "__name__", None) or f"{type(plugin).__module__}.{type(plugin).__qualname__}",
                "kind": "run time" if found is None else ("built-in" if found.builtin else "third-party"),
                "entry_point": found.value if found else None,
                "distribution": found.distribution if found else None,
                "version": found.version if found else None,
                "hooks": sorted(impls),
                "provides": provides,
                "errors": errors,
            }
        )
    return rows


def _provides_text(provides: dict[str, Any]) -> str:
    parts = []
    for key, label in (("executors", "executors"), ("alert_channels", "alert channels"), ("secret_providers", "secrets")):
        if provides.get(key):
            parts.append(f"{label}: {', '.join(provides[key])}")
    if provides.get("store"):
        parts.append("opens stores")
    if provides.get("run_observers"):
        parts.append("watches runs")
    return "; ".join(parts) or "nothing listed"


def cmd_plugins(args: argparse.Namespace) -> int:
    rows = plugin_report()
    if args.json:
        import json

        print(json.dumps({"plugins": rows}, indent=2))
        return 0
    for row in rows:
        where = f"{row['distribution']} {row['version']}" if row["distribution"] else "registered in this process"
        print(f"{row['name']}  ({row['kind']}, {where})  {row['object']}")
        print(f"    hooks: {', '.join(row['hooks']) or 'none'}")
        print(f"    provides: {_provides_text(row['provides'])}")
        for error in row["errors"]:
            print(f"    error: {error}")
    third = sum(r["kind"] == "third-party" for r in rows)
    print(f"{len(rows)} plugins ({third} third-party)")
    return 0


def add_parser(sub: Any) -> None:
    """Add ``kernelflow plugins`` to the command's subparsers."""
    p = sub.add_parser("plugins", help="the loaded plugins: where from, the hooks each implements, what they provide")
    p.add_argument("--json", action="store_true", help="print JSON for scripts (shape in docs/cli.md)")
    p.set_defaults(func=cmd_plugins)
