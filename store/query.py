"""Reading the store with DuckDB, without ever opening a DuckDB database file.

Every query runs on an in-memory DuckDB connection (one per thread: DuckDB
connections must not be shared between threads). Before each query the
connection's ``_events_raw`` is brought up to date with the folder:

1. list ``segments/*.jsonl``, THEN ``events/*.parquet`` (this order is what
   makes the compaction race safe, see ``compaction.py``), and drop segments
   whose Parquet file exists;
2. bring the temporary table ``_segment_rows`` up to date with the listed
   segments: rows of segments that were compacted are deleted, and of every
   segment only the bytes appended since the last query are read, up to its
   last complete line (a line still being written waits for the next query).
   Segments only ever grow, so a live writer's 100,000-event segment costs
   its new lines, not a re-read. Having the rows in a table also makes every
   view in one query see the same events;
3. point ``_events_raw`` at ``_segment_rows UNION ALL BY NAME read_parquet(...)``.

New bytes are parsed by DuckDB's ``read_json`` (the same reader compaction
uses, so a line means the same thing before and after compaction) from a
private scratch copy in the system temp folder, never in the store.

If a segment vanishes between listing and reading (it was just compacted),
the whole refresh is retried with a fresh listing; so is a query that finds
a listed Parquet file gone (merged or rewritten by maintenance, see
``eventfiles.py``). Parquet files replaced by a merged file are not listed.

Damaged files do not make the store unreadable (``problems.py``): a Parquet
file DuckDB cannot read is left out of every later query of this handle (until
the file changes) and the query runs again without it; damaged lines of a
segment are skipped and counted. Each is reported once per handle with a
:class:`~kernelflow.store.problems.StoreDamageWarning` and listed by
:meth:`QueryEngine.problems`.
"""

from __future__ import annotations

import os
import re
import tempfile
import threading
import time
import warnings
import weakref
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import duckdb

from kernelflow.exceptions import StoreError

from . import statuses
from .eventfiles import damage_message, replaced_stems, unreadable
from .formats import (
    RAW_COLUMNS,
    empty_raw_sql,
    parquet_raw_sql,
    path_list,
    quote,
    segments_raw_sql,
)
from .layout import Layout
from .problems import (
    NOTE_SUFFIX,
    Problem,
    StoreDamageWarning,
    damaged_count,
    damaged_line_numbers,
    describe_lines,
    quarantine_folder,
    quarantined,
)
from .schedules import FINAL_OUTCOMES, TRIGGER_COLUMNS

if TYPE_CHECKING:  # pragma: no cover
    import polars as pl

PUBLIC_VIEWS = (
    "events",
    "runs",
    "task_attempts",
    "workflows",
    "dead_letters",
    "approvals",
    "task_baselines",
    "alerts",
    "triggers",
)
PUBLIC_MACROS = ("state_at(run_id, point)", "runs_active_at(ts)")
"""The table macros of ``views.sql`` users call, as they call them."""
_RAW = ", ".join(RAW_COLUMNS)
MAX_ATTEMPTS = 20
"""Refreshes retried when files vanish under us. Each retry follows a
compaction that finished, so running out means the folder is being changed
faster than it can be listed: something is wrong beyond a race."""


def load_views_sql() -> str:
    return resources.files("kernelflow.store").joinpath("views.sql").read_text(encoding="utf-8")


@dataclass(eq=False)
class _Connection:
    con: duckdb.DuckDBPyConnection
    pid: int
    segments: dict[str, tuple[int, int]] = field(default_factory=dict)
    """segment path -> (inode, bytes already in _segment_rows)"""
    parquet_key: tuple[str, ...] | None = None
    workflows_key: tuple[str, ...] | None = None
    triggers_key: tuple[str, ...] | None = None
    closed: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Vanished(Exception):
    """A listed segment was compacted away before we could open it."""


@dataclass(frozen=True)
class _Listing:
    segments: tuple[tuple[str, int, int], ...]
    """(path, size, inode) of each segment to read"""
    parquet: tuple[str, ...]
    workflows: tuple[str, ...]
    triggers: tuple[str, ...] = ()


def _trigger_log_sql(paths: Sequence[Path]) -> str:
    """The scheduler's trigger records (``store/schedules.py``), typed; empty without files.

    Read from the files at each query (they only grow), so a record appended
    by a running scheduler is seen by the next query; a torn last line reads
    as an all-NULL row and is dropped.
    """
    if not paths:
        cols = ", ".join(f"NULL::{t} AS {c}" for c, t in TRIGGER_COLUMNS.items())
        return f"SELECT {cols} WHERE false"
    columns = "{" + ", ".join(f"{quote(c)}: {quote(t)}" for c, t in TRIGGER_COLUMNS.items()) + "}"
    return (
        f"SELECT * FROM read_json({path_list(paths)}, format = 'newline_delimited', columns = {columns}, "
        "ignore_errors = true) WHERE trigger_id IS NOT NULL AND outcome IS NOT NULL"
    )


def _ts(column: str) -> str:
    return f"TRY_CAST(replace({column}, 'Z', '') AS TIMESTAMP)"


_FINAL = ", ".join(quote(o) for o in sorted(FINAL_OUTCOMES))
TRIGGERS_VIEW_SQL = f"""
CREATE OR REPLACE TEMP VIEW triggers AS
SELECT trigger_id, schedule, kind, {_ts("scheduled_for")} AS scheduled_for, {_ts("fired_at")} AS fired_at,
       outcome, run_id, run_ids, pid, exit_code, detail, {_ts("_started")} AS started_at,
       CASE WHEN outcome IN ({_FINAL}) THEN {_ts('"at"')} END AS ended_at, {_ts('"at"')} AS updated_at,
       scheduler_pid, host
FROM (
    SELECT *,
           row_number() OVER (PARTITION BY trigger_id ORDER BY "at" DESC, n DESC) AS _latest,
           min("at") FILTER (WHERE outcome = 'started') OVER (PARTITION BY trigger_id) AS _started
    FROM _trigger_log
)
WHERE _latest = 1
"""
"""One row per trigger, as its latest record says (the log keeps every change)."""


class QueryEngine:
    """SQL over one store folder; creates nothing on disk."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self._manifests: dict[str, list[str]] = {}
        """merged file -> the stems it replaces (never changes)"""
        self._bad: dict[str, tuple[tuple[int, int, int], str]] = {}
        """Parquet path -> (its (inode, size, mtime) when found damaged, DuckDB's message)"""
        self._sound: dict[str, tuple[int, int, int]] = {}
        """Parquet path -> its (inode, size, mtime) when read through without error"""
        self._problems: dict[str, Problem] = {}
        """file name -> what was reported (once) about it"""
        self._problems_lock = threading.Lock()
        self._seen_quarantine: frozenset[str] = frozenset()
        self._file_in_events = re.compile(re.escape(str(layout.events)) + r"/([^'\"\s/]+\.parquet)")
        self._local = threading.local()
        # Weak: a connection lives as long as its thread (thread-locals are
        # dropped when a thread ends), so short-lived threads leak nothing.
        self._all: weakref.WeakSet[_Connection] = weakref.WeakSet()
        self._all_lock = threading.Lock()

    # -- public ------------------------------------------------------------------

    def sql(self, query: str, params: Sequence[Any] | Mapping[str, Any] | None = None) -> pl.DataFrame:
        """Run ``query`` against the views; a polars DataFrame of its result."""
        conn = self._connection()
        with conn.lock:
            return self._with_retries(conn, lambda: _run(conn.con, query, params), repair=True)

    def run_rows(self, run_id: str) -> list[dict[str, Any]]:
        """One run's raw records (``ts`` as exact micros, JSON as text), by seq.

        The ``run_id`` filter reaches DuckDB's Parquet scan through the
        ``UNION ALL`` of ``_events_raw`` (checked by a test with EXPLAIN
        ANALYZE), so row groups and files without the run are skipped by
        their bloom filter and min/max statistics.
        """
        conn = self._connection()
        cols = ", ".join(f"CAST({c} AS VARCHAR)" if c in ("payload", "actor") else c for c in RAW_COLUMNS)
        names = [("ts" if c == "ts_us" else c) for c in RAW_COLUMNS]
        sql = f"SELECT {cols} FROM _events_raw WHERE run_id = ? ORDER BY seq"
        with conn.lock:
            rows = self._with_retries(conn, lambda: conn.con.execute(sql, [run_id]).fetchall())
        return [dict(zip(names, row)) for row in rows]

    def segment_run_ids(self) -> list[str]:
        """Runs with events in segments that are not compacted yet (open ones, mostly), as of now."""
        conn = self._connection()
        with conn.lock:
            rows = self._with_retries(
                conn, lambda: conn.con.execute("SELECT DISTINCT run_id FROM _segment_rows").fetchall()
            )
        return [r for (r,) in rows]

    def problems(self) -> list[Problem]:
        """Damaged files this handle skipped, and everything in ``quarantine/``."""
        self._check_quarantine()
        with self._problems_lock:
            found = dict(self._problems)
        out = {Path(p.path).name: p for p in quarantined(self.layout)}
        for name, problem in found.items():
            if name not in out and os.path.exists(problem.path):
                out[name] = problem
        return sorted(out.values(), key=lambda p: p.path)

    def _with_retries(self, conn: _Connection, fn: Any, *, repair: bool = False) -> Any:
        repaired = False
        last_exc: BaseException | None = None
        for attempt in range(MAX_ATTEMPTS):
            self._refresh(conn)
            try:
                return fn()
            except (duckdb.Error, UnicodeDecodeError) as exc:
                last_exc = exc
                if self._file_trouble(exc) or self._damaged_among(conn, conn.parquet_key or (), exc):
                    time.sleep(0.001 * attempt)
                    continue  # a file was damaged (now left out) or went away: read again
                if repair and not repaired and self._repair_views(conn):
                    repaired = True
                    continue  # the query itself dropped one of our views earlier
                raise self._query_error(exc) from exc
        raise StoreError(
            f"the event store at {self.layout.root} kept changing while being read "
            f"({MAX_ATTEMPTS} attempts); retry the query"
        ) from last_exc

    # -- damaged and vanished files -------------------------------------------------

    def _file_trouble(self, exc: BaseException) -> bool:
        """If DuckDB failed on one of the store's Parquet files: True, after
        leaving it out if it is damaged (it may also have been merged away)."""
        match = self._file_in_events.search(str(exc))
        if match is None:
            return False
        path = self.layout.events / match.group(1)
        try:
            st = path.stat()
        except FileNotFoundError:
            return True  # merged or removed since listed: list again
        message = damage_message(exc)
        if message is None:
            return False  # I/O trouble, an interrupt: nothing wrong with the file itself
        self._leave_out(path, st, message)
        return True

    def _damaged_among(self, conn: _Connection, paths: Sequence[str], exc: BaseException | None = None) -> bool:
        """If DuckDB failed as a damaged file makes it fail, but named no file (the
        Parquet reader's decoding errors do not): read each of ``paths`` through,
        leave out those that cannot be read, and say whether there were any.
        Without ``exc`` (our own statements failed, not a user's query) the files
        are read whatever the error. A file read through once is not read again
        until it changes."""
        if exc is not None and damage_message(exc) is None:
            return False
        found = False
        for name in paths:
            path = Path(name)
            try:
                st = path.stat()
            except FileNotFoundError:
                found = True  # merged or removed since listed: list again
                continue
            key = (st.st_ino, st.st_size, st.st_mtime_ns)
            if self._sound.get(name) == key or self._excluded(name):
                continue
            try:
                message = unreadable(conn.con, path)
            except duckdb.Error:
                continue  # trouble that says nothing about its content (I/O, an interrupt)
            if message is None:
                self._sound[name] = key
            else:
                self._leave_out(path, st, message)
                found = True
        return found

    def _leave_out(self, path: Path, st: os.stat_result, message: str) -> None:
        self._bad[str(path)] = ((st.st_ino, st.st_size, st.st_mtime_ns), message)
        self._report(
            Problem(
                str(path),
                f"events file cannot be read ({message}); its events are left out of every query",
                "move it out of the store's events/ folder (`kernelflow gc` and store.compact() move it "
                "to quarantine/), then restore it from a backup if you have one",
            )
        )

    def damaged_files(self) -> list[Path]:
        """Parquet files this handle found damaged and leaves out."""
        return [Path(p) for p in list(self._bad) if self._excluded(p)]

    def _excluded(self, path: str) -> bool:
        entry = self._bad.get(path)
        if entry is None:
            return False
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return True
        if (st.st_ino, st.st_size, st.st_mtime_ns) == entry[0]:
            return True
        self._bad.pop(path, None)  # replaced since (restored from a backup?): read it again
        with self._problems_lock:
            self._problems.pop(Path(path).name, None)
        return False

    def _report(self, problem: Problem) -> None:
        name = Path(problem.path).name
        with self._problems_lock:
            first = name not in self._problems
            self._problems[name] = problem
        if first:
            warnings.warn(problem.message(), StoreDamageWarning, stacklevel=2)

    def _check_quarantine(self) -> None:
        try:
            names = frozenset(os.listdir(quarantine_folder(self.layout)))
        except FileNotFoundError:
            return
        if names == self._seen_quarantine:
            return
        self._seen_quarantine = names
        for problem in quarantined(self.layout):
            name = Path(problem.path).name
            with self._problems_lock:
                known = name in self._problems
            if known:
                with self._problems_lock:  # moved there since reported: point at its new place
                    self._problems[name] = problem
            elif not name.endswith(NOTE_SUFFIX):
                self._report(problem)

    def _query_error(self, exc: BaseException) -> StoreError:
        text = str(exc)
        if str(self.layout.root) in text:
            # DuckDB names the file: one of ours is damaged or was removed by hand.
            return StoreError(
                f"cannot read the event store at {self.layout.root}: {text}\n  A file in it is damaged "
                "or was removed while in use; move a damaged file out of the folder and retry."
            )
        return StoreError(
            f"SQL error: {text}\n  The store's views are {', '.join(PUBLIC_VIEWS)}, and its table macros "
            f"{', '.join(PUBLIC_MACROS)} (their columns: docs/sql.md, or DESCRIBE <view>)."
        )

    def close(self) -> None:
        """Close every connection this engine opened (in any thread)."""
        with self._all_lock:
            conns = list(self._all)
            self._all = weakref.WeakSet()
        for conn in conns:
            with conn.lock:
                conn.closed = True
                if conn.pid == os.getpid():  # a forked child must not touch its parent's
                    try:
                        conn.con.close()
                    except duckdb.Error:
                        pass

    # -- connections ------------------------------------------------------------

    def _connection(self) -> _Connection:
        conn: _Connection | None = getattr(self._local, "conn", None)
        if conn is not None and not conn.closed and conn.pid == os.getpid():
            return conn
        conn = _Connection(con=duckdb.connect(":memory:"), pid=os.getpid())
        self._install_views(conn)
        self._local.conn = conn
        with self._all_lock:
            self._all.add(conn)
        return conn

    def _install_views(self, conn: _Connection) -> None:
        con = conn.con
        # Stored times are UTC TIMESTAMPs; with the session in UTC too,
        # `now()::TIMESTAMP` and `current_date` compare with them correctly
        # whatever the machine's time zone.
        con.execute("SET TimeZone = 'UTC'")
        for stmt in statuses.lookup_tables_sql():
            con.execute(stmt)
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE _segment_rows AS SELECT *, NULL::VARCHAR AS _segment FROM ({empty_raw_sql()})"
        )
        con.execute(f"CREATE OR REPLACE TEMP VIEW _events_raw AS SELECT {_RAW} FROM _segment_rows")
        con.execute("CREATE OR REPLACE TEMP TABLE _workflow_defs AS SELECT NULL::JSON AS definition WHERE false")
        con.execute(load_views_sql())
        con.execute(f"CREATE OR REPLACE TEMP VIEW _trigger_log AS {_trigger_log_sql([])}")
        con.execute(TRIGGERS_VIEW_SQL)
        conn.segments = {}
        conn.parquet_key = conn.workflows_key = conn.triggers_key = None

    def _repair_views(self, conn: _Connection) -> bool:
        """If a user query dropped or replaced one of our relations, put them back.

        Returns True if something was repaired (the query is then worth a retry).
        """
        wanted = {"_events_raw", "_trigger_log", *PUBLIC_VIEWS}
        macros = {m.split("(")[0] for m in PUBLIC_MACROS}
        try:
            present = {r[0] for r in conn.con.execute("SELECT view_name FROM duckdb_views()").fetchall()}
            present_macros = {
                r[0]
                for r in conn.con.execute(
                    "SELECT function_name FROM duckdb_functions() WHERE function_type = 'table_macro'"
                ).fetchall()
            }
        except duckdb.Error:
            return False
        if wanted <= present and macros <= present_macros:
            return False
        self._install_views(conn)
        self._refresh(conn)
        return True

    # -- keeping _events_raw current ----------------------------------------------

    def _list(self) -> _Listing:
        segments: list[tuple[str, int, int]] = []
        try:
            with os.scandir(self.layout.segments) as it:
                for entry in it:
                    if entry.name.startswith(".") or not entry.name.endswith(".jsonl"):
                        continue
                    try:
                        st = entry.stat()
                    except FileNotFoundError:
                        # Compacted since listed: its Parquet file already
                        # exists (renamed before the unlink), listed below.
                        continue
                    segments.append((entry.path, st.st_size, st.st_ino))
        except FileNotFoundError:
            pass
        parquet = _names(self.layout.events, ".parquet")
        compacted = {Path(p).stem for p in parquet}
        segments = [s for s in segments if Path(s[0]).stem not in compacted]
        replaced = replaced_stems((Path(p) for p in parquet), self._manifests)
        parquet = [p for p in parquet if Path(p).stem not in replaced and not self._excluded(p)]
        self._check_quarantine()
        workflows: list[str] = []
        try:
            with os.scandir(self.layout.workflows) as it:
                for entry in it:
                    if entry.is_dir():
                        workflows.extend(_names(Path(entry.path), ".json"))
        except FileNotFoundError:
            pass
        triggers = _names(self.layout.triggers, ".jsonl")
        return _Listing(tuple(sorted(segments)), tuple(sorted(parquet)), tuple(sorted(workflows)), tuple(sorted(triggers)))

    def _refresh(self, conn: _Connection) -> None:
        last_exc: BaseException | None = None
        reinstalled = False
        for attempt in range(MAX_ATTEMPTS):
            listing = self._list()
            try:
                self._apply(conn, listing)
                return
            except _Vanished as exc:
                last_exc = exc  # compacted since listed: its Parquet file is there now
            except (duckdb.Error, UnicodeDecodeError) as exc:
                # Binding the views reads every file's schema: one damaged there fails it with
                # any kind of error (a column name with a flipped bit makes it a binder error).
                if self._file_trouble(exc) or self._damaged_among(conn, listing.parquet):
                    last_exc = exc
                    continue
                vanished = [p for p in listing.parquet + listing.workflows if not os.path.exists(p)]
                if not vanished:
                    if not reinstalled:
                        # A user query may have dropped or altered one of our
                        # tables: start this connection's state afresh, once.
                        reinstalled = True
                        self._install_views(conn)
                        continue
                    raise StoreError(
                        f"cannot read the event store at {self.layout.root}: {exc}. "
                        "If a file in it is damaged, move it out of the folder and retry."
                    ) from exc
                last_exc = exc
            time.sleep(0.001 * attempt)
        raise StoreError(
            f"the event store at {self.layout.root} kept changing while being read "
            f"({MAX_ATTEMPTS} attempts); retry the query"
        ) from last_exc

    def _apply(self, conn: _Connection, listing: _Listing) -> None:
        con = conn.con
        live = {path: (size, ino) for path, size, ino in listing.segments}
        for path, (ino, _) in list(conn.segments.items()):
            if path not in live or live[path][1] != ino:  # compacted (or, never, a reused name)
                con.execute("DELETE FROM _segment_rows WHERE _segment = ?", [path])
                del conn.segments[path]
        for path, (size, ino) in live.items():
            _, done = conn.segments.get(path, (ino, 0))
            if size <= done:
                continue
            try:
                with open(path, "rb") as f:
                    f.seek(done)
                    chunk = f.read()  # to the end: it may have grown since listed
            except FileNotFoundError:
                raise _Vanished(path) from None
            complete = chunk.rfind(b"\n") + 1
            if complete:
                lines = memoryview(chunk)[:complete]
                read = self._ingest(con, path, lines)
                conn.segments[path] = (ino, done + complete)
                bad = damaged_count(lines, read)
                if bad > 0:
                    self._damaged_segment(path, done, lines, bad)
        if listing.parquet != conn.parquet_key:
            if listing.parquet:
                parquet = parquet_raw_sql([Path(p) for p in listing.parquet])
                con.execute(
                    f"CREATE OR REPLACE TEMP VIEW _events_raw AS "
                    f"SELECT {_RAW} FROM _segment_rows UNION ALL BY NAME {parquet}"
                )
            else:
                con.execute(f"CREATE OR REPLACE TEMP VIEW _events_raw AS SELECT {_RAW} FROM _segment_rows")
            conn.parquet_key = listing.parquet
        if listing.workflows != conn.workflows_key:
            if listing.workflows:
                # Definitions are written atomically; a file that is not JSON or not
                # UTF-8 anyway (edited by hand) is left out rather than failing every
                # query: read_text would refuse the whole list for one bad byte.
                source = f"read_blob({path_list(Path(p) for p in listing.workflows)})"
                con.execute(
                    "CREATE OR REPLACE TEMP TABLE _workflow_defs AS SELECT definition FROM "
                    f"(SELECT TRY_CAST(TRY(decode(content)) AS JSON) AS definition FROM {source}) "
                    "WHERE definition IS NOT NULL"
                )
            else:
                con.execute("CREATE OR REPLACE TEMP TABLE _workflow_defs AS SELECT NULL::JSON AS definition WHERE false")
            conn.workflows_key = listing.workflows
        if listing.triggers != conn.triggers_key:
            con.execute(f"CREATE OR REPLACE TEMP VIEW _trigger_log AS {_trigger_log_sql([Path(p) for p in listing.triggers])}")
            conn.triggers_key = listing.triggers

    @staticmethod
    def _ingest(con: duckdb.DuckDBPyConnection, segment: str, lines: memoryview) -> int:
        """Add complete segment lines to ``_segment_rows`` (one statement: all
        or nothing); returns how many were events."""
        fd, scratch = tempfile.mkstemp(prefix="kernelflow-segment-", suffix=".jsonl")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(lines)
            row = con.execute(
                f"INSERT INTO _segment_rows SELECT *, ? FROM ({segments_raw_sql([Path(scratch)])})", [segment]
            ).fetchone()
        finally:
            os.unlink(scratch)
        assert row is not None  # an INSERT always reports its row count
        return int(row[0])

    def _damaged_segment(self, path: str, offset: int, lines: memoryview, bad: int) -> None:
        first_line = 1
        if offset:
            try:
                with open(path, "rb") as f:
                    first_line += f.read(offset).count(b"\n")
            except FileNotFoundError:
                pass
        where = describe_lines(damaged_line_numbers(lines, first_line), bad)
        name = Path(path).name
        with self._problems_lock:
            known = self._problems.get(name)
        if known is not None:  # more damage in a segment reported already: keep the first report
            return
        self._report(
            Problem(
                path,
                f"event segment has damaged lines ({where}); they are skipped, the lines after them are read",
                "nothing is needed for the other events; when the segment is compacted it is moved to "
                "quarantine/ with a note, where the damaged lines can be inspected",
            )
        )


def _run(con: duckdb.DuckDBPyConnection, query: str, params: Sequence[Any] | Mapping[str, Any] | None) -> pl.DataFrame:
    import polars as pl

    # DuckDB 2.0: a relation from con.sql() runs when read; .pl() reads it once.
    rel = con.sql(query, params=params) if params is not None else con.sql(query)
    return rel.pl() if rel is not None else pl.DataFrame()


def _names(folder: Path, suffix: str) -> list[str]:
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    return [str(folder / n) for n in names if n.endswith(suffix) and not n.startswith(".")]
