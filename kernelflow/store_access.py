"""Which store this process uses, opened through the plugin host.

The location is, in order: what :func:`use_store` set, ``$KERNELFLOW_HOME``,
or ``.kernelflow/`` in the current directory (beside the notebook, since
Jupyter starts kernels in the notebook's folder).
"""

from __future__ import annotations

import os
import threading

from .exceptions import PluginError
from .plugin_host import get_plugin_manager
from .store_api import EventStore

_lock = threading.Lock()
_open: dict[str, EventStore] = {}
_chosen: str | None = None


def store_location() -> str:
    """The store location this process would use now."""
    if _chosen is not None:
        return _chosen
    home = os.environ.get("KERNELFLOW_HOME")
    return os.path.abspath(home) if home else os.path.abspath(".kernelflow")


def use_store(location: str | os.PathLike[str] | None) -> str:
    """Use the store at ``location`` from now on in this process (``None``: back to the default)."""
    global _chosen
    if location is None:
        _chosen = None
    else:
        text = os.fspath(location)
        _chosen = text if "://" in text else os.path.abspath(text)
    return store_location()


def open_store(location: str | os.PathLike[str] | None = None) -> EventStore:
    """The store at ``location`` (default: :func:`store_location`), opened once per process."""
    where = store_location() if location is None else os.fspath(location)
    if "://" not in where:
        where = os.path.abspath(where)
    store = _open.get(where)
    if store is not None:
        return store
    with _lock:
        store = _open.get(where)
        if store is None:
            store = get_plugin_manager().hook.kernelflow_open_store(location=where)
            if store is None:
                raise PluginError(
                    f"no installed plugin opens a store at {where!r}; "
                    "reinstall kernelflow (its folder store is a built-in plugin) or install the plugin for this URL"
                )
            _open[where] = store
    return store


def close_stores() -> None:
    """Close every store this process opened (tests; interpreter exit does it too)."""
    with _lock:
        for store in _open.values():
            store.close()
        _open.clear()
