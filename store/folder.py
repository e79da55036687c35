"""``FolderStore``: the built-in event store, a folder queried with DuckDB."""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import threading
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping, Sequence

from kernelflow.events import Event

from . import artifacts
from .answers import Answers
from .circuits import CircuitTable
from .compaction import BackgroundCompactor, compact_closed, compact_segment, list_segments
from .eventfiles import consolidate, worth_merging
from .leases import Lease, Leases
from .layout import SCHEMA_VERSION, Layout, ensure_created, migrate, read_marker
from .query import QueryEngine
from .registry import WorkflowRegistry
from .schedules import SchedulerFiles
from .segments import SegmentWriter

if TYPE_CHECKING:  # pragma: no cover
    import polars as pl

FSYNC_ENV = "KERNELFLOW_FSYNC"
APPEND_MANY_CHUNK = 50_000
"""Events serialised and written together by ``FolderStore.append_many`` (bounds its memory)."""


def fsync_from_env() -> bool:
    """``$KERNELFLOW_FSYNC`` set to 1/true/yes/on turns fsync-per-event on."""
    return os.environ.get(FSYNC_ENV, "").strip().lower() in ("1", "true", "yes", "on")


class FolderStore:
    """An event store in a folder; implements :class:`kernelflow.store_api.EventStore`.

    Any number of processes may append and query the same folder at once:
    each writes its own segment file and nobody holds a lock another one
    waits for. Opening validates what is at ``path`` but creates nothing; the
    folder appears with the first event, workflow or artifact written.

    Parameters
    ----------
    path:
        The store folder (``~`` is expanded; kept absolute, so a later
        ``os.chdir`` in the notebook does not move the store).
    fsync:
        ``True`` to fsync every event (survives a machine crash, costs about
        a millisecond per event); default from ``$KERNELFLOW_FSYNC``. Without
        it each event is handed to the OS before :meth:`append` returns, which
        survives the process being killed.
    segment_max_events:
        Events per segment file before the writer starts a new one and the
        full one is compacted in the background.

    Raises
    ------
    NotAStoreError
        ``path`` is a file, a non-empty folder without ``store.json``, or its
        ``store.json`` is damaged or belongs to something else.
    StoreVersionError
        The store was written by a newer kernelflow.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, fsync: bool | None = None, segment_max_events: int = 100_000
    ) -> None:
        self.path = Path(os.path.abspath(os.path.expanduser(os.fspath(path))))
        self.location = str(self.path)
        self.fsync = fsync_from_env() if fsync is None else bool(fsync)
        self.layout = Layout(self.path)
        marker = read_marker(self.layout)
        if marker is not None:
            marker = migrate(self.layout, marker)
        self._marker = marker
        self._create_lock = threading.Lock()
        self._compactor = BackgroundCompactor(self.layout)
        self._own_closed: list[Path] = []
        self._writer = SegmentWriter(
            self.layout.segments,
            fsync=self.fsync,
            max_events=segment_max_events,
            before_first_write=self._ensure_created,
            on_closed=self._segment_closed,
        )
        self._query = QueryEngine(self.layout)
        self._registry = WorkflowRegistry(self.layout)
        self._circuits: CircuitTable | None = None
        self._schedules: SchedulerFiles | None = None
        self._leases = Leases(self.path / "leases", self._ensure_created)
        self._answers = Answers(self.path / "answers", self._ensure_created, fsync=self.fsync)
        _open_stores.add(self)
        # Segments left by processes that died (kill -9, os._exit, a crashed
        # kernel) are compacted by whoever opens the store next, and small
        # events files that sessions left behind are merged (eventfiles.py).
        if marker is not None and (list_segments(self.layout) or worth_merging(self.layout)):
            self._compactor.submit(None)

    def __repr__(self) -> str:
        return f"FolderStore({self.location!r}, fsync={self.fsync})"

    def __enter__(self) -> FolderStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def exists(self) -> bool:
        """Whether the store has been created on disk yet."""
        return self._marker is not None or read_marker(self.layout) is not None

    @property
    def schema_version(self) -> int:
        """The schema of the store on disk (this code's version if not created yet)."""
        return int(self._marker["schema_version"]) if self._marker else SCHEMA_VERSION

    @property
    def segment_path(self) -> Path | None:
        """This process's open segment, if it has appended since the last rotation."""
        return self._writer.path

    @property
    def circuits(self) -> CircuitTable:
        """Circuit-breaker state shared by every run and process on this store
        (``circuits/``; see :mod:`kernelflow.store.circuits`). Writing the first
        circuit creates the store like any other first write."""
        table = self._circuits
        if table is None:
            # A race makes two tables at worst: they share the files and their flocks.
            table = self._circuits = CircuitTable(
                self.path / "circuits", before_write=self._ensure_created, fsync=self.fsync
            )
        return table

    @property
    def schedules(self) -> SchedulerFiles:
        """Schedule registrations, trigger history and the scheduler's status
        (``schedules/``, ``triggers/``, ``scheduler/``; see :mod:`kernelflow.store.schedules`)."""
        files = self._schedules
        if files is None:
            files = self._schedules = SchedulerFiles(self.path, before_write=self._ensure_created, fsync=self.fsync)
        return files

    def lease(self, run_id: str) -> Lease | None:
        """The exclusive right to append to ``run_id`` (to drive it), or None
        if someone holds it; see :mod:`kernelflow.store.leases`. The OS drops
        it when the holder dies, so a running run without a holder was interrupted."""
        return self._leases.acquire(run_id)

    def lease_holder(self, run_id: str) -> dict[str, Any] | None:
        """Who drives ``run_id`` now (pid, host, since), or None."""
        return self._leases.holder(run_id)

    @property
    def answers(self) -> Answers:
        """Claimed answers to approval gates (see :mod:`kernelflow.store.answers`)."""
        return self._answers

    @contextlib.contextmanager
    def run_lock(self, run_id: str) -> Iterator[None]:
        """Exclusive, across processes, for appending to a run no engine drives
        (dead letter actions on a finished run): read its last ``seq``, append
        the next, release. Engines driving a run never take it."""
        self._ensure_created()
        folder = self.path / "locks"
        folder.mkdir(exist_ok=True)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in run_id)
        with open(folder / f"{safe}.lock", "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # -- EventStore --------------------------------------------------------------

    def append(self, event: Event) -> None:
        """Record one event; it is handed to the OS (and fsynced if configured)
        before this returns, so a killed process loses nothing it appended."""
        self._writer.append(event.to_json_line())

    def append_many(self, events: Iterable[Event]) -> int:
        """Record many events at once; returns how many.

        Same guarantee as :meth:`append` (handed to the OS, and fsynced if
        configured, before this returns) at a fraction of the cost: one write
        and at most one fsync per segment the batch lands in, instead of one
        per event. Large iterables are written in chunks of
        :data:`APPEND_MANY_CHUNK` events. An event too large to store fails
        its whole chunk before anything of that chunk is written.
        """
        count = 0
        chunk: list[bytes] = []
        for event in events:
            chunk.append(event.to_json_line())
            if len(chunk) >= APPEND_MANY_CHUNK:
                self._writer.append_many(chunk, before=count)
                count += len(chunk)
                chunk = []
        if chunk:
            self._writer.append_many(chunk, before=count)
            count += len(chunk)
        return count

    def read_run(self, run_id: str) -> list[Event]:
        """All events of one run ordered by ``seq``; ``[]`` if the run is unknown.

        Events come back equal to what was appended (``ts`` in exact micros).
        """
        return [Event.from_dict(row) for row in self._query.run_rows(run_id)]

    def sql(self, query: str, params: Sequence[Any] | Mapping[str, Any] | None = None) -> pl.DataFrame:
        """Run SQL over the views ``events``, ``runs``, ``task_attempts`` and
        ``workflows`` (see docs/store.md); returns a polars DataFrame.

        ``params`` binds ``?`` (a sequence) or ``$name`` (a mapping)
        placeholders. Errors in the SQL raise :class:`~kernelflow.exceptions.StoreError`
        with DuckDB's message. Each thread gets its own in-memory DuckDB
        connection, so temporary tables a query creates stay visible to later
        queries from the same thread.
        """
        return self._query.sql(query, params)

    def register_workflow(self, definition: Mapping[str, Any]) -> None:
        """Record a workflow version (needs ``name``, ``version``, ``tasks``)
        unless it is on disk already; repeated calls cost a set lookup."""
        self._registry.register(definition, fsync=self.fsync, before_write=self._ensure_created)

    def save_artifact(self, run_id: str, task_id: str, attempt: int, value: Any) -> Mapping[str, Any]:
        """Save a task output: polars DataFrames and pyarrow Tables as Parquet,
        anything else pickled. Returns ``{"ref", "format", "bytes"}``.

        Raises ``TypeError`` naming the value's type if it cannot be pickled;
        nothing is written then.
        """
        return artifacts.save(
            self.layout, run_id, task_id, attempt, value, fsync=self.fsync, before_write=self._ensure_created
        )

    def load_artifact(self, ref: Mapping[str, Any]) -> Any:
        """Load a value saved by :meth:`save_artifact` (its reference dict, or the ``ref`` path)."""
        return artifacts.load(self.layout, ref)

    def close(self) -> None:
        """Close this process's segment and compact it, stop background work,
        close query connections. The store can still be used afterwards (a
        new segment is opened on the next append)."""
        if self._schedules is not None:
            self._schedules.close()
        closed = self._writer.close()
        if closed is not None:
            self._own_closed.append(closed)
        self._compactor.stop()
        self._compact_own()
        self._query.close()

    # -- maintenance ------------------------------------------------------------------

    def compact(self) -> int:
        """Compact every closed segment now (this process's open one is left
        alone), then merge small events files if enough have piled up (waiting
        for another process doing so); returns how many segments were compacted."""
        done = compact_closed(self.layout)
        consolidate(self.layout, blocking=True, suspects=self._query.damaged_files())
        return done

    def problems(self) -> list[dict[str, str]]:
        """Damaged files: the ones this handle skipped while reading, and
        everything in ``quarantine/``. Each is ``{"path", "problem", "fix"}``;
        each was also reported once with a ``StoreDamageWarning``. See
        docs/store.md, "Damaged files"."""
        return [p.as_dict() for p in self._query.problems()]

    def health(self) -> Any:
        """A :class:`kernelflow.health.Health` for ``kernelflow doctor``: the path,
        schema version, size on disk, and whether a file can really be created
        (and removed) in the folder; ``error`` with a fix for a read-only folder
        or a schema newer than this kernelflow. Creates nothing (see
        :mod:`kernelflow.store.health`)."""
        from .health import check_folder

        return check_folder(self.path)

    def wait_for_compaction(self, timeout: float | None = None) -> bool:
        """Wait for background compaction to finish; False if ``timeout`` ran out."""
        return self._compactor.wait_idle(timeout)

    # -- internals ----------------------------------------------------------------------

    def _ensure_created(self) -> None:
        if self._marker is not None:
            return
        with self._create_lock:
            if self._marker is None:
                self._marker = migrate(self.layout, ensure_created(self.layout, fsync=self.fsync))

    def _segment_closed(self, path: Path) -> None:
        self._own_closed.append(path)
        self._compactor.submit(path)

    def _compact_own(self) -> None:
        pending = [p for p in self._own_closed if p.exists()]
        if pending:
            import duckdb

            con = duckdb.connect()
            try:
                for path in pending:
                    compact_segment(path, self.layout, con)
            finally:
                con.close()
        # What is left is being compacted by another process right now.
        self._own_closed = [p for p in self._own_closed if p.exists()]


_open_stores: weakref.WeakSet[FolderStore] = weakref.WeakSet()


@atexit.register
def _close_all_at_exit() -> None:
    # A clean exit leaves no open segment behind: each process compacts its own.
    for store in list(_open_stores):
        try:
            store.close()
        except Exception:  # never turn a clean exit into a traceback; the next open compacts
            pass
