"""The workflows this process has defined, by name and version.

Sub-workflow steps name the workflow they call (``workflow:etl`` or
``workflow:etl@3f2a...``); this is where such a name is found at definition
and at run time. Every compiler (cell, YAML, ``kf.workflow``) remembers what
it built; a pinned version not defined in this process is looked up in the
store's registry (its functions must then be importable or in the notebook).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:  # pragma: no cover
    from .model import Workflow

_lock = threading.Lock()
_latest: dict[str, Workflow] = {}
_versions: dict[tuple[str, str], Workflow] = {}


def remember(wf: Workflow) -> None:
    """Record ``wf`` as the current definition of its name."""
    with _lock:
        _latest[wf.name] = wf
        _versions[(wf.name, wf.version)] = wf


def find(name: str, version: str | None = None, namespace: Mapping[str, Any] | None = None) -> Workflow | None:
    """The workflow ``name`` (at ``version`` if given), or None.

    Unpinned: the notebook's variable of that name if it holds a workflow
    (what the user sees), else the latest definition made in this process.
    """
    from .model import Workflow

    candidate = (namespace or {}).get(name)
    if not isinstance(candidate, Workflow) or candidate.name != name:
        candidate = None
    if version is None:
        return candidate or _latest.get(name)
    if candidate is not None and candidate.version == version:
        return candidate
    with _lock:
        found = _versions.get((name, version))
    if found is not None:
        return found
    return _from_store(name, version, namespace)


def _from_store(name: str, version: str, namespace: Mapping[str, Any] | None) -> Workflow | None:
    from .model import Workflow
    from .store_access import open_store

    try:
        rows = open_store().sql(
            "SELECT definition FROM workflows WHERE name = ? AND version = ?", [name, version]
        )
    except Exception:  # noqa: BLE001 - no store yet, or an unreadable one: not found
        return None
    if rows.height == 0:
        return None
    import orjson

    definition = rows["definition"][0]
    data = orjson.loads(definition) if isinstance(definition, (str, bytes)) else definition
    return Workflow.from_dict(data, namespace)


def user_namespace() -> Mapping[str, Any] | None:
    """IPython's user namespace when running in a kernel, else None."""
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython is a dependency
        return None
    shell = get_ipython()
    return shell.user_ns if shell is not None else None
