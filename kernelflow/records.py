"""Values a notebook hands back to whoever executed it: ``kf.record`` and ``kf.records``.

``kf.record("rows", 1200)`` in a notebook displays an output of the MIME type
:data:`MIME` (a small JSON document with the name and the value), so the
value travels inside the executed notebook itself, the way scrapbook does it:
a notebook step reads it back from the notebook papermill wrote, and so can
anyone holding that file (``kf.records("out/etl.ipynb")``). Values that are
not plain JSON (a DataFrame, a numpy array) go to the store as an artifact and
the output carries the reference.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any, Mapping

import orjson

from .exceptions import KernelflowError

MIME = "application/vnd.kernelflow.record+json"
SCOPE_ENV = "KERNELFLOW_RECORD_SCOPE"
#: Inline JSON up to this size; bigger values become artifacts (saved widget state taught us notebooks bloat).
INLINE_LIMIT = 64 * 1024

_recorded: dict[str, Any] = {}
_calls = 0


def record(name: str, value: Any) -> Any:
    """Record ``value`` under ``name`` for whoever executes this notebook; returns ``value``.

    A notebook step returns the recorded values as its output
    (``{"rows": 1200, ...}``); ``kernelflow run`` lists them. Recording a
    name again replaces the value. Outside a kernel the value is only kept in
    this process (:func:`recorded`).
    """
    global _calls
    if not isinstance(name, str) or not name.strip():
        raise KernelflowError(f"kf.record: the name must be non-empty text, got {name!r}")
    _calls += 1
    doc: dict[str, Any] = {"name": name}
    encoded = _inline(value)
    if encoded is not None:
        doc["value"] = value
    else:
        doc["value_ref"] = _save(name, value)
    _recorded[name] = value
    _display(doc, value)
    return value


def recorded() -> dict[str, Any]:
    """What this process recorded so far (name -> value)."""
    return dict(_recorded)


def records(notebook: str | Path | Any) -> dict[str, Any]:
    """The values an executed notebook recorded with :func:`record` (name -> value, last one wins).

    ``notebook`` is a path or an ``nbformat`` notebook. A value saved as an
    artifact is loaded from the store it was saved in.
    """
    import nbformat

    nb = nbformat.read(str(notebook), as_version=4) if isinstance(notebook, (str, Path)) else notebook
    found: dict[str, Any] = {}
    for cell in nb.cells:
        for output in cell.get("outputs", ()):
            doc = (output.get("data") or {}).get(MIME) if output.get("output_type") in ("display_data", "execute_result") else None
            if not isinstance(doc, Mapping) or "name" not in doc:
                continue
            found[doc["name"]] = doc["value"] if "value" in doc else _load(doc)
    return found


def _inline(value: Any) -> bytes | None:
    try:
        encoded = orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError):
        return None
    if len(encoded) > INLINE_LIMIT or orjson.loads(encoded) != value:
        return None  # tuples, non-str keys, NaN: JSON would change them
    return encoded


def _save(name: str, value: Any) -> dict[str, Any]:
    from .store_access import open_store

    scope = _scope()
    store = open_store()
    try:
        ref = store.save_artifact(scope["run_id"], f"{scope['task_id']}.record.{name}", int(scope.get("attempt", 0)), value)
    except Exception as exc:  # noqa: BLE001 - the serialiser's own error says what could not be stored
        raise KernelflowError(
            f"kf.record({name!r}, ...): a {type(value).__name__} can be recorded only as JSON or as an artifact, "
            f"and storing it failed: {exc}"
        ) from None
    return {**dict(ref), "store": store.location}


def _scope() -> dict[str, Any]:
    # A notebook step says which run and task the values belong to, so the
    # store's retention removes them with that run.
    text = os.environ.get(SCOPE_ENV)
    if text:
        try:
            return dict(orjson.loads(text))
        except (orjson.JSONDecodeError, TypeError, ValueError):
            pass
    batch = os.environ.get("KERNELFLOW_BATCH_ID") or f"p{os.getpid()}-{secrets.token_hex(3)}"
    return {"run_id": f"records-{batch}", "task_id": "notebook", "attempt": _calls}


def _load(doc: Mapping[str, Any]) -> Any:
    from .store_access import open_store

    ref = doc["value_ref"]
    store = open_store(ref["store"]) if ref.get("store") else open_store()
    return store.load_artifact(ref)


def _display(doc: Mapping[str, Any], value: Any) -> None:
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:  # pragma: no cover - IPython is a dependency
        return
    if get_ipython() is None:
        return
    shown = repr(value)
    if len(shown) > 200:
        shown = shown[:199] + "…"
    display({MIME: dict(doc), "text/plain": f"kf.record: {doc['name']} = {shown}"}, raw=True)
