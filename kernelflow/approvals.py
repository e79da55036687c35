"""Answering approval gates from any process: ``kf.approve``, ``kf.reject``, ``kf.approvals``.

An answer is claimed first (an exclusive file create, see
``kernelflow.store.answers``), so of two people answering at once exactly one
wins and the other is told who was first. Then the answer becomes the run's
event: appended here when nobody drives the run (it is suspended), or by the
driving process, which looks for answers while gates wait.
"""

from __future__ import annotations

import dataclasses
import difflib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import events as ev
from .table_rows import TableRows
from .events import Event, current_actor, now_us, us_to_datetime
from .exceptions import KernelflowError
from .reducer import fold

if TYPE_CHECKING:  # pragma: no cover
    import polars as pl

    from .run import Run

LEASE_WAIT_S = 3.0
"""How long an answer waits for a driver that is just suspending to let go."""


class ApprovalError(KernelflowError):
    """An answer that cannot be given: unknown run or step, not waiting, already answered, expired."""


@dataclass(frozen=True)
class Answer:
    """What :func:`approve` / :func:`reject` recorded."""

    run_id: str
    task_id: str
    decision: str
    """``granted`` or ``rejected``."""
    by: Mapping[str, Any]
    answered_at: int
    input: Mapping[str, Any] | None = None
    reason: str | None = None
    recorded: bool = False
    """True if the answer's event is in the run already; False when the
    process driving the run will record it (within a fraction of a second)."""
    run: Run | None = None
    """The run continuing in this process, when ``resume=True`` could resume it here."""

    def __repr__(self) -> str:
        who = self.by.get("name") or self.by.get("user")
        return f"<Answer {self.decision} {self.run_id}/{self.task_id} by {who}>"


def approve(run_id: str, step: str, *, by: str | None = None, comment: str | None = None, resume: bool = True, **input: Any) -> Answer:
    """Grant the approval that ``step`` of run ``run_id`` waits for, with the
    gate's input fields as keyword arguments. ``by`` names the approver
    (default: the user running this process; host and pid are recorded too).

    With ``resume`` (default) a suspended run whose code is loaded in this
    process continues here in the background (``answer.run``); otherwise
    ``kf.resume(run_id)`` or ``kernelflow resume RUN`` continues it.
    """
    return _answer(run_id, step, granted=True, by=by, comment=comment, reason=None, resume=resume, given=input)


def reject(run_id: str, step: str, reason: str | None = None, *, by: str | None = None, resume: bool = True) -> Answer:
    """Reject the approval that ``step`` of run ``run_id`` waits for, with a reason.
    The step then fails (or is skipped, if its gate says ``on_reject: skip``)."""
    return _answer(run_id, step, granted=False, by=by, comment=None, reason=reason, resume=resume, given={})


def _answer(run_id: str, step: str, *, granted: bool, by: str | None, comment: str | None, reason: str | None,
            resume: bool, given: Mapping[str, Any]) -> Answer:  # fmt: skip
    from .gates import validate_input
    from .store_access import open_store

    store = open_store()
    events = store.read_run(run_id) if isinstance(run_id, str) else []
    if not events:
        raise ApprovalError(f"no run {run_id!r} in the store at {store.location}; kf.approvals() lists the gates waiting")
    state = fold(events, run_id)
    task = state.tasks.get(step)
    if task is None:
        close = difflib.get_close_matches(str(step), list(state.tasks), n=1)
        raise ApprovalError(
            f"run {run_id} has no step {step!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
            + f"; steps: {', '.join(state.tasks)}"
        )
    gate = task.gate or {}
    if task.status != "waiting" or gate.get("kind") != "approval":
        if task.answer and task.answer.get("type") in ev.APPROVAL_ANSWERS:
            raise ApprovalError(f"step {step!r} of run {run_id} was already answered: {describe(task.answer)}")
        raise ApprovalError(
            f"step {step!r} of run {run_id} is not waiting for approval (it is {task.status}); "
            "kf.approvals() lists the gates waiting"
        )
    request = int(gate["seq"])  # each request is answered once; a re-asked gate is a new request
    claimed = store.answers.read(run_id, step, request)
    if claimed is not None:
        raise ApprovalError(f"step {step!r} of run {run_id} was already answered: {describe(claimed)}")
    expires_at = gate.get("expires_at")
    if expires_at is not None and expires_at <= now_us():
        raise ApprovalError(
            f"the approval of step {step!r} in run {run_id} expired at {us_to_datetime(expires_at):%Y-%m-%d %H:%M:%S} UTC "
            f"(on_timeout: {gate.get('on_timeout', 'reject')}); resume the run to apply that outcome"
        )
    where = f"the approval of step {step!r} (run {run_id})"
    json_input: dict[str, Any] = {}
    if granted:
        json_input, _ = validate_input(gate.get("input_schema"), given, where)
    actor = dict(current_actor())
    if by:
        actor["name"] = str(by)
    answered_at = now_us()
    claim = {
        "type": ev.APPROVAL_GRANTED if granted else ev.APPROVAL_REJECTED,
        "by": actor,
        "answered_at": answered_at,
        **({"input": json_input, "comment": comment} if granted else {"reason": reason}),
    }
    first = store.answers.claim(run_id, step, request, claim)
    if first is not None:
        raise ApprovalError(f"step {step!r} of run {run_id} was already answered: {describe(first)}")
    recorded = _record_if_nobody_drives(store, run_id, step, claim)
    answer = Answer(run_id, step, "granted" if granted else "rejected", actor, answered_at,
                    json_input if granted else None, reason, recorded)  # fmt: skip
    if resume and recorded:
        run = _resume_here(run_id)
        if run is not None:
            answer = dataclasses.replace(answer, run=run)
    return answer


def _record_if_nobody_drives(store: Any, run_id: str, step: str, claim: Mapping[str, Any]) -> bool:
    deadline = time.monotonic() + LEASE_WAIT_S
    while True:
        lease = store.lease(run_id)
        if lease is not None:
            break
        # A live driver holds the run: it turns the claim into the event within
        # a poll (engine.GATE_POLL_S); return as soon as it has.
        if _answered(store, run_id, step):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    try:
        events = store.read_run(run_id)
        state = fold(events, run_id)
        task = state.tasks.get(step)
        if task is None or task.status != "waiting":
            return task is not None and bool(task.answer)  # recorded meanwhile by the driver
        type_, payload, actor = answer_event_from_claim(claim)
        store.append(
            Event(run_id, state.last_seq + 1, now_us(), type_, state.workflow, state.workflow_version,
                  step, task.attempt + 1, payload, actor)  # fmt: skip
        )
        return True
    finally:
        lease.release()


def _answered(store: Any, run_id: str, step: str) -> bool:
    task = fold(store.read_run(run_id), run_id).tasks.get(step)
    return task is not None and task.status != "waiting" and bool(task.answer)


def _resume_here(run_id: str) -> Run | None:
    """Continue a suspended run in the background if its code is loaded here."""
    from .watcher import continue_here

    return continue_here(run_id)


def answer_event_from_claim(claim: Mapping[str, Any]) -> tuple[str, dict[str, Any], Mapping[str, Any] | None]:
    """(event type, payload, actor) for a claimed answer."""
    type_ = claim.get("type", ev.APPROVAL_GRANTED)
    payload = {k: v for k, v in claim.items() if k != "type"}
    return type_, payload, claim.get("by")


def claim_expiry(store: Any, run_id: str, task_id: str, request: int, expires_at: int, outcome: str) -> dict[str, Any]:
    """Claim the gate for its expiry; returns what holds the claim (an earlier answer wins)."""
    claim = {"type": ev.APPROVAL_EXPIRED, "expires_at": expires_at, "outcome": outcome, "by": {"via": "timeout"}}
    first = store.answers.claim(run_id, task_id, request, claim)
    return first if first else claim


def describe(answer: Mapping[str, Any]) -> str:
    kind = answer.get("type")
    if kind not in ev.APPROVAL_ANSWERS:
        return "by another process a moment ago"
    by = answer.get("by") or {}
    who = by.get("name") or by.get("user") or "?"
    at = answer.get("answered_at") or answer.get("at")
    when = f" at {us_to_datetime(at):%Y-%m-%d %H:%M:%S} UTC" if at else ""
    if kind == ev.APPROVAL_GRANTED:
        return f"granted by {who}{when}"
    if kind == ev.APPROVAL_REJECTED:
        return f"rejected by {who}{when}" + (f" ({answer.get('reason')})" if answer.get("reason") else "")
    return f"expired at {us_to_datetime(answer['expires_at']):%Y-%m-%d %H:%M:%S} UTC (outcome {answer.get('outcome')})"


def how_to_answer(run_id: str, waiting: list[Mapping[str, Any]]) -> str:
    """The lines a suspended run prints: how to answer and how to continue."""
    lines = []
    for w in waiting:
        if w["kind"] == "approval":
            lines.append(
                f"step {w['task']!r} waits for approval: kf.approve({run_id!r}, {w['task']!r}) or "
                f"kf.reject({run_id!r}, {w['task']!r}, 'why'); from a shell: "
                f"kernelflow approve {run_id} {w['task']} (or reject)"
            )
        else:
            lines.append(
                f"step {w['task']!r} is paused at a breakpoint: inspect run.step_inputs({w['task']!r}), "
                "then run.resume() (or run.resume(replace={...}))"
            )
    lines.append(f"then continue with kf.resume({run_id!r}) or: kernelflow resume {run_id}")
    return "\n".join(lines)


def approvals(status: str | None = "pending") -> Approvals:
    """Approval requests across runs, newest first: the gates waiting for an
    answer by default; ``status``: ``pending``, ``granted``, ``rejected``,
    ``expired`` or None for all.

    Returns an :class:`Approvals`: in a notebook it shows an approval widget
    per request (answer them there), elsewhere a listing with the command
    that answers each one. ``len()``, iteration (one dict per request, the
    ``approvals`` view's columns) and indexing work as on a list; ``.df`` is
    the table as a polars DataFrame (the ``approvals`` SQL view, filtered).

    Changed: this used to return the DataFrame itself; write
    ``kf.approvals().df`` where a DataFrame is needed.
    """
    from .store_access import open_store

    if status is not None and status not in APPROVAL_STATUSES:
        raise ValueError(f"status must be one of {', '.join(APPROVAL_STATUSES)} or None, got {status!r}")
    where = "" if status is None else " WHERE status = ?"
    df = open_store().sql(f"SELECT * FROM approvals{where} ORDER BY requested_at DESC", [] if status is None else [status])
    return Approvals(df, status)


APPROVAL_STATUSES = ("pending", "granted", "rejected", "expired")


class Approvals(TableRows):
    """Approval requests (rows of the ``approvals`` view), as :func:`approvals` returns them.

    A sequence of dicts (``run_id``, ``task_id``, ``message``, ``status``,
    ``answered_by``, ...) with the table as :attr:`df`. In a Jupyter kernel
    it displays as a column of approval widgets; as HTML and text it is a
    listing with the command that answers each pending request.
    """

    def __init__(self, df: pl.DataFrame, status: str | None = "pending") -> None:
        super().__init__(df)  # df: the ``approvals`` view's columns
        self.status = status

    def _by_text(self, key: str) -> dict[str, Any]:
        raise TypeError(f"kf.approvals() is a list of requests; for the column {key!r} use kf.approvals().df[{key!r}]")

    def _what(self) -> str:
        noun = "approval request" if self.status is None else f"{self.status} approval"
        return noun if len(self._rows) == 1 else noun + "s"

    def _answer_with(self, row: Mapping[str, Any]) -> str:
        return f"kf.approve({row['run_id']!r}, {row['task_id']!r}) / kernelflow approve {row['run_id']} {row['task_id']}"

    def __repr__(self) -> str:
        if not self._rows:
            return f"<Approvals: no {self._what()}>"
        lines = [f"<Approvals: {len(self._rows)} {self._what()}>"]
        for r in self._rows:
            line = f"  {r['run_id']} {r['task_id']} [{r['status']}] {r['message']}"
            if r["status"] == "pending":
                line += f"  -> {self._answer_with(r)}"
            elif r.get("answered_by"):
                line += f" (by {r['answered_by']})"
            lines.append(line)
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        import html

        esc = html.escape
        if not self._rows:
            return f"<p class='kf-approvals'>No {esc(self._what())}.</p>"
        rows = []
        for r in self._rows:
            answer = self._answer_with(r) if r["status"] == "pending" else (r.get("answered_by") or r.get("outcome") or "")
            expires = f"{r['expires_at']:%Y-%m-%d %H:%M:%S}" if r.get("expires_at") else ""
            rows.append(
                f"<tr data-status='{esc(r['status'])}'><td>{esc(r['workflow'] or '')}</td><td>{esc(r['run_id'])}</td>"
                f"<td>{esc(r['task_id'])}</td><td>{esc(r['message'] or '')}</td><td>{esc(r['status'])}</td>"
                f"<td>{r['requested_at']:%Y-%m-%d %H:%M:%S}</td><td>{expires}</td><td><code>{esc(answer)}</code></td></tr>"
            )
        return (
            f"<table class='kf-approvals'><caption>{len(rows)} {esc(self._what())} (times in UTC)</caption>"
            "<thead><tr><th>workflow</th><th>run</th><th>step</th><th>message</th><th>status</th><th>requested</th>"
            "<th>expires</th><th>answer with / answered by</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
        )

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any] | None:
        view = self.widget()
        if view is None:
            return None  # IPython uses _repr_html_ and __repr__
        bundle = view._repr_mimebundle_()
        data = dict(bundle[0] if isinstance(bundle, tuple) else bundle or {})
        data["text/html"] = self._repr_html_()
        data["text/plain"] = repr(self)
        return data

    def widget(self) -> Any:
        """An ipywidgets ``VBox`` of approval widgets, one per request; None when
        there are none, or outside a Jupyter kernel."""
        if not self._rows or not _in_kernel():
            return None
        # The notebook layer, imported only here (as kf.dag does): the core does not need it.
        from .widgets.approval import approvals_view

        return approvals_view(self)


def _in_kernel() -> bool:
    import sys

    if "ipykernel" not in sys.modules:
        return False
    from IPython import get_ipython

    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None
