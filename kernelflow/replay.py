"""Replay: run a finished run's code again against its recorded history, and say where it diverges.

The replay executes the workflow's Python tasks again — the code under
question — in memory: nothing is appended to the store. Everything the
history recorded as coming from outside is fed back instead of being done
again: ``kf.now()``, ``kf.random()``, ``kf.remember()`` and ``kf.sleep()``
return their recorded values, shell/HTTP/sub-workflow steps return their
recorded outputs (they are side effects), gates get their recorded answers,
sleeps do not wait and circuit breakers are not consulted. Then every task's
status and output, and the path taken (which tasks ran, which switch cases
matched), are compared with the recorded run; the report names the first
task, in the recorded order, whose behaviour differs.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

from . import events as ev
from .exceptions import KernelflowError
from .reducer import RunState, TaskState

if TYPE_CHECKING:  # pragma: no cover
    import polars as pl

    from .model import Workflow

SIDE_EFFECT_KINDS = frozenset({"shell", "http", "notebook", "workflow"})


@dataclass(frozen=True)
class Divergence:
    """One way the replay differs from the recorded run."""

    task: str
    kind: str
    """``status``, ``output``, ``path`` (ran in one, not the other; another switch case) or ``missing``."""
    recorded: Any
    replayed: Any
    detail: str

    def __str__(self) -> str:
        return f"{self.task}: {self.detail}"


@dataclass
class ReplayReport:
    """What :func:`replay` found. ``ok`` is True when every task behaved as recorded."""

    run_id: str
    workflow: str
    recorded_version: str
    replayed_version: str
    differences: list[Divergence] = field(default_factory=list)
    replayed: RunState | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return not self.differences

    @property
    def first(self) -> Divergence | None:
        """The first task, in the recorded run's order, that now behaves differently."""
        return self.differences[0] if self.differences else None

    @property
    def version_changed(self) -> bool:
        return self.recorded_version != self.replayed_version

    def summary(self) -> str:
        head = f"replay of run {self.run_id} ({self.workflow}"
        head += (
            f", recorded with version {self.recorded_version}, replayed with {self.replayed_version})"
            if self.version_changed
            else f", version {self.recorded_version})"
        )
        if self.ok:
            return head + ": every task behaved as recorded"
        lines = [head + f": {len(self.differences)} difference(s); first: {self.first}"]
        lines += [f"  {d}" for d in self.differences[1:]]
        return "\n".join(lines)

    def to_polars(self) -> pl.DataFrame:
        import polars as pl

        return pl.DataFrame(
            [{"task": d.task, "kind": d.kind, "detail": d.detail} for d in self.differences],
            schema={"task": pl.String, "kind": pl.String, "detail": pl.String},
        )

    def __repr__(self) -> str:
        return self.summary()

    def _repr_html_(self) -> str:
        import html

        return "<pre>" + html.escape(self.summary()) + "</pre>"


class ReplayStore:
    """The real store for reading; memory for anything the replay writes."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self.location = store.location
        self.appended: list[ev.Event] = []
        self._memory: dict[str, Any] = {}
        self._ids = itertools.count()

    def append(self, event: ev.Event) -> None:
        self.appended.append(event)

    def read_run(self, run_id: str) -> list[ev.Event]:
        return self._store.read_run(run_id)

    def sql(self, query: str, params: Sequence[Any] | Mapping[str, Any] | None = None) -> pl.DataFrame:
        return self._store.sql(query, params)

    def register_workflow(self, definition: Mapping[str, Any]) -> None:
        pass

    def save_artifact(self, run_id: str, task_id: str, attempt: int, value: Any) -> Mapping[str, Any]:
        from .store.artifacts import serialise

        serialise(value)  # the same failure for an unstorable output as in a real run
        ref = f"replay://{next(self._ids)}"
        self._memory[ref] = value
        return {"ref": ref, "format": "memory", "bytes": 0}

    def load_artifact(self, ref: Mapping[str, Any]) -> Any:
        key = ref.get("ref") if isinstance(ref, Mapping) else ref
        if isinstance(key, str) and key in self._memory:
            return self._memory[key]
        return self._store.load_artifact(ref)

    def lease(self, run_id: str) -> Any:
        return None

    def lease_holder(self, run_id: str) -> None:
        return None

    @property
    def answers(self) -> Any:
        return self._store.answers

    @property
    def circuits(self) -> Any:
        return self._store.circuits

    def close(self) -> None:
        pass


def replay(run_id: str, *, workflow: Workflow | None = None) -> ReplayReport:
    """Re-execute finished run ``run_id`` against its history (see the module doc)."""
    from .api import prepare_run
    from .durable import Recorded
    from .engine import drive
    from .resume import find_workflow, load_history, started_payload, stored_inputs
    from .store_access import open_store

    store = open_store()
    events, state = load_history(store, run_id)
    if not state.done:
        raise KernelflowError(
            f"run {run_id} is {state.status}; replay compares a finished run with its history — "
            "resume it first (kf.resume) or replay another run"
        )
    started = started_payload(events)
    wf = find_workflow(state, started, workflow)
    shadow = ReplayStore(store)
    run = prepare_run(
        wf, run_id, stored_inputs(store, started, run_id), shadow, raise_on_failure=False,
        options={k: started[k] for k in ("deterministic",) if started.get(k)},
        observed=False,  # a replay shows nothing live: observers may display as they are made
    )  # fmt: skip
    run._replaying = True
    run._recorded = Recorded.from_events(events)
    run._replay_source = _RecordedRun(events, state)
    drive(run)
    report = ReplayReport(run_id, state.workflow, state.workflow_version, wf.version, replayed=run.state)
    report.differences = compare(store, shadow, events, state, shadow.appended, run.state, wf.order)
    return report


class _RecordedRun:
    """The recorded run as the replaying engine consults it."""

    def __init__(self, events: list[ev.Event], state: RunState) -> None:
        self.state = state
        self.answers: dict[str, list[ev.Event]] = {}
        self.releases: dict[str, list[ev.Event]] = {}
        for e in events:
            if e.type in ev.APPROVAL_ANSWERS and e.task_id:
                self.answers.setdefault(e.task_id, []).append(e)
            elif e.type == ev.BREAKPOINT_RELEASED and e.task_id:
                self.releases.setdefault(e.task_id, []).append(e)
        self._used: dict[tuple[str, str], int] = {}

    def _next(self, kind: str, found: dict[str, list[ev.Event]], task_id: str) -> ev.Event | None:
        n = self._used.get((kind, task_id), 0)
        recorded = found.get(task_id, [])
        if n >= len(recorded):
            return None
        self._used[(kind, task_id)] = n + 1
        return recorded[n]

    def next_answer(self, task_id: str) -> ev.Event | None:
        """The recorded answers to the task's gate, in order."""
        return self._next("answer", self.answers, task_id)

    def next_release(self, task_id: str) -> ev.Event | None:
        """The recorded breakpoint releases (with replaced inputs), in order."""
        return self._next("release", self.releases, task_id)


def compare(store: Any, shadow: ReplayStore, rec_events: list[ev.Event], rec: RunState,
            new_events: list[ev.Event], new: RunState, order: Sequence[str]) -> list[Divergence]:  # fmt: skip
    """Per-task differences, in the recorded run's order of completion."""
    finished_at: dict[str, int] = {}
    for e in rec_events:
        if e.task_id and e.type in (ev.TASK_SUCCEEDED, ev.TASK_FAILED, ev.TASK_TIMED_OUT, ev.TASK_SKIPPED):
            finished_at[e.task_id] = e.seq
    later = max(finished_at.values(), default=0) + 1
    tasks = sorted(set(rec.tasks) | set(new.tasks), key=lambda t: (finished_at.get(t, later), order.index(t) if t in order else len(order)))
    rec_cases = dict(_switch_cases(rec_events))
    new_cases = dict(_switch_cases(new_events))
    out = []
    for tid in tasks:
        a, b = rec.tasks.get(tid), new.tasks.get(tid)
        if a is None or b is None:
            out.append(Divergence(tid, "path", a and a.status, b and b.status,
                                  "not in the recorded run" if a is None else "not in the workflow any more"))  # fmt: skip
            continue
        if rec_cases.get(tid) != new_cases.get(tid):
            out.append(Divergence(tid, "path", rec_cases.get(tid), new_cases.get(tid),
                                  f"switch took case {new_cases.get(tid)!r}, recorded {rec_cases.get(tid)!r}"))  # fmt: skip
            continue
        if a.status != b.status:
            ran = {"skipped", "pending"}
            kind = "path" if (a.status in ran) != (b.status in ran) else "status"
            why = ""
            if b.error:
                why = f" ({b.error.get('exc_type')}: {b.error.get('message')})"
            elif b.reason:
                why = f" ({b.reason})"
            out.append(Divergence(tid, kind, a.status, b.status, f"{b.status}{why}, recorded {a.status}"))
            continue
        if a.status == "succeeded":
            same, recorded, replayed = _same_output(store, shadow, a, b)
            if not same:
                out.append(Divergence(tid, "output", recorded, replayed,
                                      f"output {_short(replayed)}, recorded {_short(recorded)}"))  # fmt: skip
    return out


def _switch_cases(events: list[ev.Event]) -> Iterator[tuple[str, Any]]:
    for e in events:
        if e.type == ev.SWITCH_MATCHED and e.task_id:
            yield e.task_id, e.payload.get("case")


def _value(store: Any, t: TaskState) -> Any:
    return store.load_artifact(t.output_ref) if t.output_ref else t.output


def _same_output(store: Any, shadow: ReplayStore, a: TaskState, b: TaskState) -> tuple[bool, Any, Any]:
    try:
        recorded = _value(store, a)
    except Exception:  # noqa: BLE001 - an output that cannot be loaded cannot be compared
        return True, None, None
    replayed = _value(shadow, b)
    try:
        eq = recorded.equals(replayed) if hasattr(recorded, "equals") and type(recorded) is type(replayed) else recorded == replayed
        return bool(eq), recorded, replayed
    except Exception:  # noqa: BLE001 - e.g. numpy arrays: ambiguous truth value
        return repr(recorded) == repr(replayed), recorded, replayed


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
