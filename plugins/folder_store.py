"""The built-in store plugin: any location is a folder path for a FolderStore.

Registered through the ``kernelflow`` entry-point group like any third-party
plugin. Plugins that claim other locations (``postgres://...``) should mark
their ``kernelflow_open_store`` ``tryfirst=True`` so they run before this one.
"""

from __future__ import annotations

from kernelflow.plugins.hookspecs import hookimpl
from kernelflow.store import FolderStore


@hookimpl
def kernelflow_open_store(location: str) -> FolderStore:
    """Open (lazily: nothing is created until the first write) the folder store at ``location``."""
    return FolderStore(location)
