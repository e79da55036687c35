"""``kf.gc``: remove runs that ended long ago from the store (see docs/store.md, "Retention").

The work is done by :func:`kernelflow.store.retention.collect`; this is the
notebook-facing spelling, on the store this process uses.
"""

from __future__ import annotations

import os
from datetime import timedelta

from .exceptions import StoreError
from .store.retention import GcReport, collect


def gc(
    older_than: str | timedelta = "30d",
    *,
    dry_run: bool = True,
    store: str | os.PathLike[str] | None = None,
) -> GcReport:
    """Remove the runs that ended (succeeded or failed) more than
    ``older_than`` ago (``"30d"``, ``"12h"``, ``"90m"``, ``"2w"``), with their
    events, artifacts and answer/lock files.

    A dry run by default: the report says what would go; call again with
    ``dry_run=False`` to delete. Running, waiting and recently ended runs are
    never touched; see :class:`~kernelflow.store.retention.GcReport` for
    what is kept and why. Safe while other processes use the store.

    Raises ``ValueError`` for an age that cannot be read.
    """
    from .store import FolderStore
    from .store_access import open_store

    target = open_store(store) if store is not None else open_store()
    if not isinstance(target, FolderStore):
        raise StoreError(
            f"gc works on kernelflow's folder store; the store in use ({type(target).__name__}) "
            "keeps its own retention rules"
        )
    return collect(target, older_than, dry_run=dry_run)
