"""The scheduler: fires schedules, runs each firing in a subprocess, records what happened.

One :class:`Scheduler` per store, enforced by the store's ``@scheduler``
lease (a ``flock``: the OS drops it when the process dies). Each tick it

1. reaps children that ended and records their outcome (``succeeded``,
   ``failed``, ``suspended``, ``interrupted``) with the run ids found in the
   store (``RunStarted`` payload ``trigger.trigger_id``);
2. re-reads its schedules: the YAML files, notebooks and folders it was given,
   and the registrations in the store (so ``kf.schedule`` from a notebook takes
   effect without a restart);
3. takes manual requests (``kernelflow scheduler trigger``);
4. fires what is due, applying each schedule's overlap and missed policies;
5. writes its heartbeat (``scheduler/status.json``).

A firing runs ``python -m kernelflow --store STORE run TARGET -p NAME VALUE ...``
(notebooks also ``-o <store>/outputs/<schedule>/<time>-<trigger>.ipynb
--no-progress``) in its own session, with ``$KERNELFLOW_TRIGGER`` holding
``{"trigger_id", "schedule", "kind", "scheduled_for"}``, which the engine
copies into the run's ``RunStarted`` payload. Output goes to a ``.log`` file
beside it.

**On time or missed.** Of the fire times a schedule passed since the last one
handled, the most recent fires if the scheduler reaches it within
:data:`LATE_LIMIT_S` (or one interval, if shorter); all others were missed
(the scheduler was not running, or the machine slept). ``missed: skip``
records them ``missed``; ``missed: catch_up`` runs the most recent
``max_catch_up`` of them one after another (kind ``catch_up``) and records
the rest ``missed``. The last fire time of a schedule comes from the trigger
history, so this holds across restarts; a schedule with no history starts
from when it was registered (from when the scheduler first read it, for one
declared in a file), so it never catches up on times before it existed.

**Overlap** (a firing while a run of the same schedule is going): ``skip``
records ``skipped_overlap``; ``queue`` records ``queued`` and starts it when
the running one ends (at most one queued firing per schedule: more are
``skipped_overlap``); ``allow`` starts it alongside.

**Stopping** (SIGTERM, SIGINT, :meth:`Scheduler.request_stop`): nothing new is
fired or recorded from then on; running children get ``grace`` seconds to
finish, then SIGTERM (the run stays resumable: ``kernelflow resume RUN``),
then SIGKILL after :data:`KILL_AFTER_S`; those are recorded ``interrupted``,
as are queued firings that never started. Then the lease is released.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TextIO

import orjson

from .exceptions import DefinitionError, KernelflowError
from .schedules import Schedule, fire_times_between, parse_schedule

__all__ = ["LATE_LIMIT_S", "TRIGGER_ENV", "Scheduler", "SchedulerBusyError", "load_sources"]

TRIGGER_ENV = "KERNELFLOW_TRIGGER"
LEASE = "@scheduler"
LATE_LIMIT_S = 60.0
"""A fire time reached later than this was missed (for an interval shorter than this, the latest
fire time is always less than one interval ago: "or one interval, if shorter")."""
KILL_AFTER_S = 5.0
"""After SIGTERM, how long a child may take to stop before SIGKILL."""
MAX_MISSED_RECORDS = 50
"""Missed fire times recorded one by one per schedule and outage; older ones are counted in one record."""
_SCAN_LIMIT = 200_000


class SchedulerBusyError(KernelflowError):
    """Another scheduler holds this store's scheduler lease; ``holder`` says who."""

    def __init__(self, message: str, holder: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.holder = dict(holder or {})


def _iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_iso(text: Any) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(timezone.utc)
    except ValueError:
        return None


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


# --------------------------------------------------------------------------- sources


def _notebook_schedules(path: Path) -> list[Schedule]:
    """Schedules declared by ``%%workflow NAME`` YAML cells of a notebook (target: the notebook)."""
    from .yaml_compiler import looks_like_yaml, read_schedules

    try:
        nb = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise DefinitionError(f"cannot read notebook {path}: {exc}", location=str(path)) from None
    out: list[Schedule] = []
    for index, cell in enumerate(nb.get("cells", []) if isinstance(nb, dict) else [], 1):
        if not isinstance(cell, dict) or cell.get("cell_type") != "code":
            continue
        source = cell.get("source")
        source = "".join(source) if isinstance(source, list) else str(source)
        first, _, body = source.partition("\n")
        words = first.split()
        if len(words) < 2 or words[0] != "%%workflow" or "schedule" not in body:
            continue
        if not (looks_like_yaml(body) or "--yaml" in words):
            continue
        out.extend(read_schedules(text=body, origin=f"{path} cell {index}", first_line=2, name=words[1], target=path))
    return out


def load_sources(paths: Iterable[str | os.PathLike[str]]) -> tuple[list[Schedule], list[str]]:
    """Schedules declared in YAML files, notebooks and folders of ``*.yaml``/``*.yml`` files.

    Returns ``(schedules, problems)``: a file that cannot be read or declares a
    bad schedule is a problem (its message names the file and line); the
    others still load.
    """
    schedules: list[Schedule] = []
    problems: list[str] = []
    for raw in paths:
        path = Path(os.path.abspath(os.path.expanduser(os.fspath(raw))))
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and not p.name.startswith("."))
        elif path.exists():
            files = [path]
        else:
            problems.append(f"{raw}: no such file or folder")
            continue
        for file in files:
            try:
                if file.suffix == ".ipynb":
                    schedules.extend(_notebook_schedules(file))
                elif file.suffix in (".yaml", ".yml"):
                    from .yaml_compiler import read_schedules

                    schedules.extend(read_schedules(file))
                else:
                    problems.append(f"{file}: not a workflow file (.yaml, .yml) or notebook (.ipynb)")
            except DefinitionError as exc:
                problems.append(str(exc))
    return schedules, problems


# --------------------------------------------------------------------------- state


@dataclass
class Firing:
    """One decision to run a schedule (a trigger)."""

    trigger_id: str
    schedule: Schedule
    kind: str
    scheduled_for: datetime
    fired_at: datetime
    inputs: dict[str, Any] = field(default_factory=dict)

    def record(self, outcome: str, **extra: Any) -> dict[str, Any]:
        return {
            "trigger_id": self.trigger_id,
            "schedule": self.schedule.name,
            "kind": self.kind,
            "scheduled_for": _iso(self.scheduled_for),
            "fired_at": _iso(self.fired_at),
            "outcome": outcome,
            **extra,
        }


class RunProcess(subprocess.Popen[bytes]):
    """A firing's process, in its own session: signals go to its whole process group."""

    def send_signal(self, sig: int) -> None:
        try:
            os.killpg(self.pid, sig)  # the run and whatever it started
        except (ProcessLookupError, PermissionError):
            super().send_signal(sig)


def start_process(argv: list[str], *, cwd: str, env: dict[str, str], output: Any) -> RunProcess:
    """Start a firing's process, writing to ``output``; in its own session, so Ctrl-C in the
    scheduler's terminal reaches the scheduler only."""
    return RunProcess(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                      start_new_session=True)  # fmt: skip


@dataclass
class Child:
    """A firing's process (a :class:`RunProcess`, or what the scheduler's ``launch`` returned)."""

    firing: Firing
    process: Any
    started_at: datetime
    log_path: Path
    output_path: Path | None
    term_sent: bool = False


class Scheduler:
    """Fires the schedules of one store; see the module docstring.

    Parameters
    ----------
    store:
        A :class:`~kernelflow.store.FolderStore` or the path of one.
    sources:
        YAML workflow files, notebooks and folders whose ``schedule:``
        declarations to run (read again at every tick), besides the
        registrations in the store.
    clock:
        Returns the current time as an aware datetime (tests pass a fake one).
    sleep:
        Waits that many seconds (default: wakes early when asked to stop).
    tick:
        Longest wait between two ticks, in seconds (the scheduler also wakes
        for the next fire time).
    grace:
        Seconds running children get to finish when stopping.
    log:
        Where one line per firing and outcome goes (default stderr).
    launch:
        Starts a firing's process: ``launch(argv, cwd=, env=, output=)`` returns
        a handle with ``pid``, ``returncode``, ``poll()``, ``wait(timeout)`` and
        ``send_signal(sig)`` (default :func:`start_process`; tests pass one that
        starts nothing, to drive the scheduler's decisions in one process).
    """

    def __init__(
        self,
        store: Any,
        sources: Sequence[str | os.PathLike[str]] = (),
        *,
        clock: Callable[[], datetime] | None = None,
        sleep: Callable[[float], Any] | None = None,
        tick: float = 1.0,
        grace: float = 30.0,
        kill_after: float = KILL_AFTER_S,
        log: TextIO | None = None,
        python: str | None = None,
        launch: Callable[..., Any] | None = None,
    ) -> None:
        from .store import FolderStore

        self.store = store if isinstance(store, FolderStore) else FolderStore(os.fspath(store))
        self.files = self.store.schedules
        self.sources = [os.fspath(s) for s in sources]
        self.clock = clock or _utc_now
        self._wake = threading.Event()
        self.sleep = sleep or self._wake.wait
        self.tick_s = float(tick)
        self.grace = float(grace)
        self.kill_after = float(kill_after)
        self._log_stream = log
        self.python = python or sys.executable
        self.launch = launch or start_process
        self._lock = threading.RLock()
        self._lease: Any = None
        self._stop = threading.Event()
        self.started_at: datetime | None = None
        self.schedules: dict[str, Schedule] = {}
        self.problems: list[str] = []
        self._reported: set[str] = set()
        self._first_seen: dict[str, datetime] = {}
        self._last: dict[str, datetime] = {}
        self._children: list[Child] = []
        self._pending: dict[str, deque[tuple[Firing, bool]]] = {}
        self.stopped = False

    # -- logging -----------------------------------------------------------------------

    def log(self, message: str) -> None:
        """One line to the log stream, with a UTC timestamp."""
        stream = self._log_stream if self._log_stream is not None else sys.stderr
        try:
            stream.write(f"{_iso(self.clock())[:-5]}Z scheduler: {message}\n")
            stream.flush()
        except (OSError, ValueError):
            pass  # a closed terminal must not stop the scheduler

    # -- lifecycle ------------------------------------------------------------------------

    def acquire(self) -> None:
        """Take the store's scheduler lease; :class:`SchedulerBusyError` if another process holds it."""
        if self._lease is not None:
            return
        lease = self.store.lease(LEASE)
        if lease is None:
            holder = self.store.lease_holder(LEASE) or {}
            raise SchedulerBusyError(
                f"another scheduler is running on the store {self.store.location}: pid {holder.get('pid', '?')} "
                f"on host {holder.get('host', '?')}, since {holder.get('since', '?')}. Only one scheduler may run "
                "per store (it would fire every schedule twice); stop that one first, or use "
                "`kernelflow scheduler status` to see it",
                holder,
            )
        self._lease = lease

    def start(self) -> None:
        """Take the lease and read the trigger history (where each schedule left off)."""
        self.acquire()
        with self._lock:
            self.started_at = self.clock()
            self._read_history()
            self.log(f"started (pid {os.getpid()}, store {self.store.location}, sources: {', '.join(self.sources) or 'none'})")

    def request_stop(self) -> None:
        """Stop taking new runs now; :meth:`serve` then lets running ones finish (see ``grace``)."""
        self._stop.set()
        self._wake.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def serve(self, *, install_signals: bool = True) -> int:
        """Run until asked to stop (SIGTERM/SIGINT or :meth:`request_stop`), then shut down; returns 0."""
        previous: dict[int, Any] = {}
        if install_signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, self._on_signal)
        try:
            if self.started_at is None:
                self.start()
            while not self._stop.is_set():
                self.tick()
                if self._stop.is_set():
                    break
                self.sleep(self._wait_seconds())
            self.shutdown()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 0

    def _on_signal(self, signum: int, frame: Any) -> None:
        if not self._stop.is_set():
            self.log(f"received {signal.Signals(signum).name}: no new runs; waiting up to {self.grace:g}s for {len(self._children)} running")
        self.request_stop()

    def _wait_seconds(self) -> float:
        now = self.clock()
        wait = self.tick_s
        for schedule in self.schedules.values():
            if schedule.enabled:
                upcoming = schedule.next_fire(now)  # None for a webhook-only schedule
                if upcoming is not None:
                    wait = min(wait, (upcoming - now).total_seconds() + 0.005)
        return max(wait, 0.01)

    def shutdown(self) -> None:
        """Let children finish within ``grace``, then SIGTERM, then SIGKILL; record them; release the lease."""
        self._stop.set()
        with self._lock:
            for queue in self._pending.values():
                while queue:
                    firing, _ = queue.popleft()
                    self._record(firing.record("interrupted", detail="the scheduler stopped before this queued run started; it did not run"))
        deadline = self.clock() + timedelta(seconds=self.grace)
        while self._children and self.clock() < deadline:
            self._reap()
            self._write_status()
            if self._children:
                self._sleep_real(min(0.2, max((deadline - self.clock()).total_seconds(), 0.01)))
        if self._children:
            for child in self._children:
                self.log(f"grace period over: stopping {child.firing.schedule.name} (trigger {child.firing.trigger_id}, pid {child.process.pid}) with SIGTERM")
                child.term_sent = True
                child.process.send_signal(signal.SIGTERM)
            kill_at = self.clock() + timedelta(seconds=self.kill_after)
            while self._children and self.clock() < kill_at:
                self._reap()
                if self._children:
                    self._sleep_real(0.1)
            for child in self._children:
                self.log(f"{child.firing.schedule.name} (pid {child.process.pid}) still running: SIGKILL")
                child.process.send_signal(signal.SIGKILL)
            for child in self._children:
                try:
                    child.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
            self._reap()
        self._write_status(stopped=True)
        self.release()
        self.stopped = True
        self.log("stopped")

    def _sleep_real(self, seconds: float) -> None:
        # While stopping, the wake event is set: wait on children with real time.
        if self.sleep is self._wake.wait:
            threading.Event().wait(seconds)
        else:
            self.sleep(seconds)

    def release(self) -> None:
        """Give the lease up and close the trigger file."""
        lease, self._lease = self._lease, None
        if lease is not None:
            lease.release()
        self.files.close()

    # -- history ---------------------------------------------------------------------------

    def _read_history(self) -> None:
        """Where each schedule left off, and triggers an earlier scheduler left unfinished."""
        latest: dict[str, dict[str, Any]] = {}
        for record in self.files.trigger_records():
            if record.get("kind") in ("cron", "interval", "catch_up"):
                when = _parse_iso(record.get("scheduled_for"))
                name = record.get("schedule")
                if when is not None and isinstance(name, str) and (name not in self._last or when > self._last[name]):
                    self._last[name] = when
            key = record["trigger_id"]
            if key not in latest or (record.get("at") or "", record.get("n") or 0) >= (latest[key].get("at") or "", latest[key].get("n") or 0):
                latest[key] = record
        from .store.schedules import FINAL_OUTCOMES

        for record in latest.values():
            if record.get("outcome") in FINAL_OUTCOMES:
                continue
            # Left "started" or "queued" by a scheduler that died (kill -9, a crash).
            runs = self._runs_of(record["trigger_id"])
            status = runs[0][1] if runs else None
            outcome = {"succeeded": "succeeded", "failed": "failed", "waiting": "suspended"}.get(status or "", "interrupted")
            detail = (
                "the scheduler that started it (pid {}) stopped before recording its end".format(record.get("scheduler_pid"))
                if record.get("outcome") == "started"
                else "queued by a scheduler that stopped before starting it; it did not run"
            )
            self._record({**{k: record.get(k) for k in ("trigger_id", "schedule", "kind", "scheduled_for", "fired_at", "pid")},
                          "outcome": outcome, "run_id": runs[0][0] if runs else None,
                          "run_ids": [r for r, _ in runs] or None, "detail": detail})  # fmt: skip

    def _runs_of(self, trigger_id: str) -> list[tuple[str, str]]:
        """``(run_id, status)`` of the runs a trigger started, oldest first."""
        try:
            df = self.store.sql(
                "SELECT e.run_id, r.status FROM events e LEFT JOIN runs r USING (run_id) "
                "WHERE e.type = 'RunStarted' AND json_extract_string(e.payload, '$.trigger.trigger_id') = ? ORDER BY e.ts",
                [trigger_id],
            )
        except KernelflowError as exc:
            self.log(f"could not look up the runs of trigger {trigger_id}: {exc}")
            return []
        return [(str(r), str(s)) for r, s in df.iter_rows()]

    def _record(self, record: dict[str, Any]) -> None:
        try:
            self.files.record_trigger(record)
        except KernelflowError as exc:
            self.log(f"could not record trigger {record.get('trigger_id')}: {exc}")

    # -- schedules ----------------------------------------------------------------------------

    def reload(self) -> dict[str, Schedule]:
        """Read the sources and the store's registrations again; returns ``{name: schedule}``."""
        found, problems = load_sources(self.sources)
        by_name: dict[str, Schedule] = {}
        for schedule in found:
            if schedule.name in by_name:
                problems.append(
                    f"schedule {schedule.name!r} is declared twice ({by_name[schedule.name].origin} and "
                    f"{schedule.origin}); the first is used. Give one of them another name:"
                )
                continue
            by_name[schedule.name] = schedule
        for name, record in self.files.registrations().items():
            if "error" in record:
                problems.append(record["error"])
                continue
            try:
                schedule = parse_schedule(
                    record["spec"], name=name, check_target=False, origin="registered",
                    registered_at=_parse_iso(record.get("registered_at")),
                )  # fmt: skip
            except DefinitionError as exc:
                problems.append(f"registered schedule {name!r} ({self.files.schedules_dir / (name + '.json')}): {exc}")
                continue
            if name in by_name:
                problems.append(f"schedule {name!r} is registered in the store and declared in {by_name[name].origin}; the file's is used")
                continue
            by_name[name] = schedule
        now = self.clock()
        for name in by_name:
            self._first_seen.setdefault(name, now)
        for problem in problems:
            if problem not in self._reported:
                self._reported.add(problem)
                self.log(f"problem: {problem}")
        self.problems = problems
        self.schedules = by_name
        return by_name

    # -- the tick -------------------------------------------------------------------------------

    def tick(self) -> None:
        """One pass: reap, reload, take requests, fire what is due, write the heartbeat."""
        if self.started_at is None:
            self.start()
        with self._lock:
            self._reap()
            if self._stop.is_set():
                return
            self.reload()
            for request in self.files.take_requests():
                inputs = request.get("inputs") if isinstance(request.get("inputs"), dict) else None
                kind = "webhook" if request.get("kind") == "webhook" else "manual"
                self.fire_now(str(request["schedule"]), inputs, kind=kind, trigger_id=str(request["trigger_id"]))
            now = self.clock()
            for schedule in self.schedules.values():
                if schedule.enabled:
                    self._due(schedule, now)  # nothing is due for a webhook-only schedule
            self._drain()
        self._write_status()

    def _baseline(self, schedule: Schedule) -> datetime:
        last = self._last.get(schedule.name)
        if last is not None:
            return last
        if schedule.registered_at is not None:
            # Registered while no scheduler ran: its times since then were missed, none before.
            return schedule.registered_at
        # Declared in a file: we only know it from when reload() first read it.
        return self._first_seen[schedule.name]

    def _due(self, schedule: Schedule, now: datetime) -> None:
        times = fire_times_between(schedule, self._baseline(schedule), now, limit=_SCAN_LIMIT)
        if not times:
            return
        self._last[schedule.name] = times[-1]
        on_time: datetime | None = None
        # (The latest time of an interval shorter than LATE_LIMIT_S is less than one interval ago: never late.)
        if (now - times[-1]).total_seconds() <= LATE_LIMIT_S:
            on_time = times.pop()
        kind = "cron" if schedule.cron else "interval"
        catch_up: list[datetime] = []
        if times and schedule.missed == "catch_up":
            catch_up = times[-schedule.max_catch_up :]
            times = times[: -schedule.max_catch_up]  # max_catch_up >= 1
        self._record_missed(schedule, kind, times, now)
        for moment in catch_up:
            firing = self._new_firing(schedule, "catch_up", moment, now)
            self.log(f"{schedule.name}: catching up on {_iso(moment)} (trigger {firing.trigger_id})")
            self._enqueue(firing, catch_up=True)
        if on_time is not None:
            firing = self._new_firing(schedule, kind, on_time, now)
            if catch_up:
                self._enqueue(firing, catch_up=True)  # after the catch-ups, in time order
            else:
                self._offer(firing)

    def _record_missed(self, schedule: Schedule, kind: str, times: list[datetime], now: datetime) -> None:
        if not times:
            return
        older = len(times) - MAX_MISSED_RECORDS
        shown = times[-MAX_MISSED_RECORDS:]
        self.log(f"{schedule.name}: {len(times)} fire time(s) missed ({_iso(times[0])} .. {_iso(times[-1])}), policy missed={schedule.missed}")
        for i, moment in enumerate(shown):
            detail = "the scheduler was not running (or could not keep up) at this time"
            if i == 0 and older > 0:
                detail += f"; {older} earlier fire time(s) since {_iso(times[0])} were missed too"
            if schedule.missed == "catch_up":
                detail += f"; beyond max_catch_up={schedule.max_catch_up}"
            firing = self._new_firing(schedule, kind, moment, now)
            self._record(firing.record("missed", detail=detail))

    def _new_firing(self, schedule: Schedule, kind: str, scheduled_for: datetime, now: datetime,
                    inputs: Mapping[str, Any] | None = None, trigger_id: str | None = None) -> Firing:  # fmt: skip
        return Firing(
            trigger_id=trigger_id or "t-" + secrets.token_hex(6),
            schedule=schedule,
            kind=kind,
            scheduled_for=scheduled_for,
            fired_at=now,
            inputs={**schedule.inputs, **(inputs or {})},
        )

    def _running(self, name: str) -> list[Child]:
        return [c for c in self._children if c.firing.schedule.name == name]

    def _offer(self, firing: Firing) -> dict[str, Any]:
        """Apply the overlap policy to a firing: start, queue or skip it."""
        name = firing.schedule.name
        policy = firing.schedule.overlap
        busy = self._running(name)
        queue = self._pending.setdefault(name, deque())
        if policy == "allow" or (not busy and not queue):
            return self._start(firing)
        if policy == "queue" and not any(not catch_up for _, catch_up in queue):
            queue.append((firing, False))
            self.log(f"{name}: queued (trigger {firing.trigger_id}) behind the running one")
            return self._record_and_return(firing, "queued", detail=f"waits for the running trigger {busy[0].firing.trigger_id if busy else queue[0][0].trigger_id}")
        why = "a run of this schedule is still going" if policy == "skip" else "a run of this schedule is going and another is queued already"
        running = f" (trigger {busy[0].firing.trigger_id}, pid {busy[0].process.pid})" if busy else ""
        self.log(f"{name}: skipped, {why}{running}")
        return self._record_and_return(firing, "skipped_overlap", detail=why + running)

    def _enqueue(self, firing: Firing, *, catch_up: bool) -> None:
        self._pending.setdefault(firing.schedule.name, deque()).append((firing, catch_up))
        self._record(firing.record("queued", detail="catch-up runs start one after another"))

    def _record_and_return(self, firing: Firing, outcome: str, **extra: Any) -> dict[str, Any]:
        record = firing.record(outcome, **extra)
        self._record(record)
        return record

    def _drain(self) -> None:
        """Start queued firings whose schedule has nothing running (all of them under ``allow``)."""
        for name, queue in self._pending.items():
            while queue and (not self._running(name) or queue[0][0].schedule.overlap == "allow"):
                firing, _ = queue.popleft()
                self._start(firing)

    # -- children ---------------------------------------------------------------------------------

    def _argv(self, firing: Firing, output: Path | None) -> list[str]:
        schedule = firing.schedule
        argv = [self.python, "-m", "kernelflow", "--store", self.store.location, "run", str(schedule.target)]
        for key, value in firing.inputs.items():
            argv += ["-p", key, repr(value)]
        if output is not None:
            argv += ["-o", str(output), "--no-progress"]
        return argv

    def _start(self, firing: Firing) -> dict[str, Any]:
        schedule = firing.schedule
        target = Path(schedule.target or "")
        if not schedule.target or not target.is_file():
            detail = f"target file {schedule.target} does not exist; fix the path with kf.schedule(...) or in {schedule.origin}"
            self.log(f"{schedule.name}: failed to start: {detail}")
            return self._record_and_return(firing, "failed_to_start", detail=detail)
        stamp = firing.fired_at.strftime("%Y%m%dT%H%M%SZ")
        folder = self.files.output_dir(schedule.name)
        output = folder / f"{stamp}-{firing.trigger_id}.ipynb" if target.suffix == ".ipynb" else None
        log_path = folder / f"{stamp}-{firing.trigger_id}.log"
        env = dict(os.environ)
        env[TRIGGER_ENV] = orjson.dumps(
            {"trigger_id": firing.trigger_id, "schedule": schedule.name, "kind": firing.kind,
             "scheduled_for": _iso(firing.scheduled_for)}
        ).decode()
        env["KERNELFLOW_HOME"] = self.store.location  # a notebook's kernel opens the same store
        env["KERNELFLOW_VIA"] = "scheduler"
        argv = self._argv(firing, output)
        try:
            with open(log_path, "ab") as log_file:
                process = self.launch(argv, cwd=str(target.parent), env=env, output=log_file)
        except OSError as exc:
            detail = f"could not start {argv[0]}: {exc.strerror or exc}"
            self.log(f"{schedule.name}: failed to start: {detail}")
            return self._record_and_return(firing, "failed_to_start", detail=detail)
        child = Child(firing, process, self.clock(), log_path, output)
        self._children.append(child)
        self.log(f"{schedule.name}: started {firing.kind} run (trigger {firing.trigger_id}, pid {process.pid}, scheduled for {_iso(firing.scheduled_for)})")
        return self._record_and_return(firing, "started", pid=process.pid, detail=f"log: {log_path}")

    def _reap(self) -> None:
        """Record the outcome of children that ended."""
        ended = [c for c in self._children if c.process.poll() is not None]
        if not ended:
            return
        self._children = [c for c in self._children if c not in ended]
        for child in ended:
            self._finish(child)
        if not self._stop.is_set():
            self._drain()

    def _finish(self, child: Child) -> None:
        code = child.process.returncode
        runs = self._runs_of(child.firing.trigger_id)
        if code == 0:
            outcome = "succeeded"
        elif code == 3:
            outcome = "suspended"
        elif child.term_sent:
            outcome = "interrupted"
        elif code == 2 and not runs:
            outcome = "failed_to_start"
        else:
            outcome = "failed"
        detail = f"exit code {code}" if code >= 0 else f"killed by signal {signal.Signals(-code).name}"
        if outcome == "interrupted":
            ids = " ".join(r for r, _ in runs)
            detail += "; stopped by the scheduler's shutdown after the grace period" + (f"; continue with: kernelflow resume {ids}" if ids else "")
        elif outcome in ("failed", "failed_to_start"):
            detail += f"; see {child.log_path}" + (f": {self._tail(child.log_path)}" if self._tail(child.log_path) else "")
        elif outcome == "suspended":
            detail += "; waiting at an approval gate or breakpoint: kernelflow approve, then kernelflow resume"
        if child.output_path is not None:
            detail += f"; notebook: {child.output_path}"
        self.log(f"{child.firing.schedule.name}: {outcome} (trigger {child.firing.trigger_id}, runs: {', '.join(r for r, _ in runs) or 'none'}, {detail.split(';')[0]})")
        self._record(
            child.firing.record(
                outcome, run_id=runs[0][0] if runs else None, run_ids=[r for r, _ in runs] or None,
                pid=child.process.pid, exit_code=code, detail=detail,
            )
        )

    @staticmethod
    def _tail(path: Path) -> str:
        try:
            lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
        except OSError:
            return ""
        return lines[-1][:300] if lines else ""

    # -- firing on demand -----------------------------------------------------------------------------

    def fire_now(self, name: str, inputs: Mapping[str, Any] | None = None, kind: str = "manual",
                 trigger_id: str | None = None) -> dict[str, Any]:  # fmt: skip
        """Fire schedule ``name`` now (a manual or webhook trigger), respecting its overlap policy.

        ``inputs`` are merged over the schedule's own. Returns the trigger
        record: ``{"trigger_id", "schedule", "kind", "scheduled_for",
        "fired_at", "outcome", "pid"?, "detail"?}`` with ``outcome``
        ``started``, ``queued``, ``skipped_overlap`` or ``failed_to_start`` (no
        such schedule, missing target). While the scheduler is stopping nothing
        is recorded and ``outcome`` is ``refused``. Safe to call from another
        thread (the webhook server).
        """
        if kind not in ("manual", "webhook"):
            raise ValueError(f"kind must be 'manual' or 'webhook', got {kind!r}")
        with self._lock:
            now = self.clock()
            if self._stop.is_set():
                return {"trigger_id": trigger_id, "schedule": name, "kind": kind, "outcome": "refused",
                        "detail": "the scheduler is shutting down"}  # fmt: skip
            schedule = self.schedules.get(name) or self.reload().get(name)
            if schedule is None:
                detail = f"no schedule named {name!r}; known: {', '.join(sorted(self.schedules)) or 'none'}"
                record = {"trigger_id": trigger_id or "t-" + secrets.token_hex(6), "schedule": name, "kind": kind,
                          "scheduled_for": _iso(now), "fired_at": _iso(now), "outcome": "failed_to_start", "detail": detail}  # fmt: skip
                self._record(record)
                self.log(f"{name}: {kind} trigger refused: {detail}")
                return record
            firing = self._new_firing(schedule, kind, now, now, inputs, trigger_id)
            self.log(f"{name}: {kind} trigger {firing.trigger_id}")
            return self._offer(firing)

    # -- status ----------------------------------------------------------------------------------------

    def status(self, *, stopped: bool = False) -> dict[str, Any]:
        """What ``scheduler/status.json`` holds: who, since when, running children, schedules."""
        now = self.clock()
        schedules = []
        for schedule in self.schedules.values():
            upcoming = schedule.next_fire(now) if schedule.enabled else None  # None for webhook-only
            schedules.append(
                {
                    "name": schedule.name,
                    "when": schedule.when,
                    "target": schedule.target,
                    "origin": schedule.origin,
                    "enabled": schedule.enabled,
                    "overlap": schedule.overlap,
                    "missed": schedule.missed,
                    "next_fire": _iso(upcoming) if upcoming else None,
                }
            )
        return {
            "pid": os.getpid(),
            "host": os.uname().nodename,
            "store": self.store.location,
            "started_at": _iso(self.started_at) if self.started_at else None,
            "heartbeat_at": _iso(now),
            "tick_s": self.tick_s,
            "grace_s": self.grace,
            "sources": self.sources,
            "state": "stopped" if stopped else "stopping" if self._stop.is_set() else "running",
            "running": [
                {"trigger_id": c.firing.trigger_id, "schedule": c.firing.schedule.name, "kind": c.firing.kind,
                 "pid": c.process.pid, "started_at": _iso(c.started_at)}
                for c in self._children
            ],
            "queued": [
                {"trigger_id": f.trigger_id, "schedule": f.schedule.name, "kind": f.kind}
                for queue in self._pending.values()
                for f, _ in queue
            ],
            "schedules": schedules,
            "problems": self.problems,
        }

    def _write_status(self, *, stopped: bool = False) -> None:
        try:
            self.files.write_status(self.status(stopped=stopped))
        except KernelflowError as exc:
            self.log(f"could not write the status file: {exc}")
