"""The approval widget: a gate's message, its data and a form to answer it.

It shows where a run waits at an approval gate (``approval_widgets_for(run)``,
called when a run started in a cell suspends) and in ``kf.approvals()``.
Everything it shows is read from the store, never from the session, so a
widget rebuilt after a kernel restart is as true as the one before it:

- the message (markdown, with raw HTML escaped: messages carry user data),
  the data preview (a table for tabular data) and form fields generated from
  the gate's input schema, with their defaults;
- Approve / Reject with a comment (the reason, for a rejection). The kernel
  validates the form with :func:`kernelflow.gates.validate_input`; a bad value
  shows the error and answers nothing. A valid answer goes through
  :func:`kernelflow.approvals.approve` / :func:`~kernelflow.approvals.reject`,
  which records who answered and continues the run here when its code is
  loaded;
- an answer given elsewhere (another notebook, Python, ``kernelflow approve``)
  or an expiry: the shared poller (:mod:`kernelflow.widgets.poller`) re-reads
  the store on a thread until the gate is answered, so the widget updates
  even while the kernel is busy.
"""

from __future__ import annotations

import contextlib
import html
import json
import os
import pathlib
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import anywidget
import traitlets as t

from kernelflow import events as ev
from kernelflow.approvals import ApprovalError, approve, how_to_answer, reject
from kernelflow.events import now_us, us_to_datetime
from kernelflow.exceptions import InputError
from kernelflow.gates import input_schema_text, validate_input
from kernelflow.reducer import fold

from . import poller
from .dag_static import STATUS_COLORS
from .fallback import StaticFallback

if TYPE_CHECKING:  # pragma: no cover
    from kernelflow.approvals import Answer, Approvals
    from kernelflow.run import Run

HERE = pathlib.Path(__file__).parent
STATUSES = ("pending", "granted", "rejected", "expired")
# The DAG's palette: a gate that waits looks like a waiting task.
COLORS = {
    "pending": STATUS_COLORS["waiting"],
    "granted": STATUS_COLORS["succeeded"],
    "rejected": STATUS_COLORS["failed"],
    "expired": STATUS_COLORS["skipped"],
}
_DECISIONS = {ev.APPROVAL_GRANTED: "granted", ev.APPROVAL_REJECTED: "rejected", ev.APPROVAL_EXPIRED: "expired"}
_JSON_TYPES = {"string": "str", "integer": "int", "number": "float", "boolean": "bool", "array": "list", "object": "dict"}
_WIDGETS = {"bool": "checkbox", "int": "number", "float": "number", "str": "text"}


class ApprovalWidget(StaticFallback, anywidget.AnyWidget):
    """One approval request of one run, answerable from the notebook.

    Build it with :meth:`for_gate` (a run id and step) or :meth:`for_run`
    (every gate a run waits at).
    """

    _esm = HERE / "approval.js"
    _css = HERE / "approval.css"

    run_id = t.Unicode("").tag(sync=True)
    task = t.Unicode("").tag(sync=True)
    workflow = t.Unicode("").tag(sync=True)
    seq = t.Int(-1).tag(sync=True)
    """The request's event seq: a re-asked gate is another request."""
    status = t.Unicode("pending").tag(sync=True)
    """``pending``, ``granted``, ``rejected`` or ``expired``."""
    answerable = t.Bool(False).tag(sync=True)
    """Pending, not expired, and the step waits for this answer."""
    message = t.Unicode("").tag(sync=True)
    message_html = t.Unicode("").tag(sync=True)
    preview_html = t.Unicode("").tag(sync=True)
    fields = t.List(t.Dict()).tag(sync=True)
    """Form fields: name, kind (str|int|float|bool|list|dict|any), widget
    (text|number|checkbox|select|json), required, default, text (the default
    as the input shows it), choices, description."""
    summary = t.Unicode("").tag(sync=True)
    expires_at = t.Unicode("").tag(sync=True)
    answer = t.Dict().tag(sync=True)
    """decision, by (the answerer's record), by_name, at (UTC text), input, comment, reason, outcome."""
    answer_text = t.Unicode("").tag(sync=True)
    error = t.Unicode("").tag(sync=True)
    busy = t.Bool(False).tag(sync=True)

    def __init__(self, run_id: str, task: str, seq: int | None = None, **kwargs: Any) -> None:
        from kernelflow.store_access import store_location

        super().__init__(run_id=run_id, task=task, **kwargs)
        self._store = store_location()  # the store this gate is in, whatever the process uses later
        self._want_seq = seq
        self._lock = threading.RLock()
        self._submitting = threading.Lock()
        self._answered_here = False
        self._schema: Mapping[str, Any] | None = None
        self._choices: dict[str, dict[str, Any]] = {}
        self._gate: dict[str, Any] = {}
        self.last_answer: Answer | None = None
        """What this widget's answer recorded (``.run``: the run continuing here, when it could)."""
        self.display_handle: Any = None
        """Where the run's cell shows this widget, so the live DAG can re-send it once answered."""
        self.on_msg(self._on_custom_msg)
        self.refresh()  # pins the request (seq) this widget shows
        if self.status == "pending":
            poller.watch(self)

    # --- building -----------------------------------------------------------------

    @classmethod
    def for_gate(cls, run_id: str, task_id: str, seq: int | None = None) -> ApprovalWidget:
        """The widget for the approval ``task_id`` of run ``run_id`` asks for
        (its latest request, or the request recorded at ``seq``), read from the store."""
        return cls(run_id, task_id, seq)

    @classmethod
    def for_run(cls, run: Run | str) -> list[ApprovalWidget]:
        """A widget for each approval gate the run waits at (none when it waits for nothing)."""
        from kernelflow.store_access import open_store

        if isinstance(run, str):
            waiting = fold(open_store().read_run(run), run).waiting
            run_id = run
        else:
            waiting, run_id = run.waiting, run.run_id
        return [cls.for_gate(run_id, tid) for tid, gate in waiting.items() if gate.get("kind", "approval") == "approval"]

    # --- reading the store --------------------------------------------------------

    def _read(self) -> tuple[str, dict[str, Any], dict[str, Any] | None, dict[str, Any] | None]:
        """(the step's status now, the request, its answer or None, a claimed answer or None) from the store."""
        from kernelflow.store_access import open_store

        store = open_store(self._store)
        events = store.read_run(self.run_id)
        if not events:
            raise ApprovalError(f"no run {self.run_id!r} in the store at {store.location}")
        requests = [e for e in events if e.type == ev.APPROVAL_REQUESTED and e.task_id == self.task]
        request = next((e for e in requests if e.seq == self._want_seq), None) if self._want_seq is not None else (
            requests[-1] if requests else None)  # fmt: skip
        if request is None:
            raise ApprovalError(f"step {self.task!r} of run {self.run_id} has not asked for approval"
                                + (f" at seq {self._want_seq}" if self._want_seq is not None else ""))  # fmt: skip
        self._want_seq = request.seq  # one widget, one request: a re-asked gate gets a widget of its own
        later = next((e.seq for e in requests if e.seq > request.seq), None)
        answer_event = next((e for e in events if e.task_id == self.task and e.type in ev.APPROVAL_ANSWERS
                             and e.seq > request.seq and (later is None or e.seq < later)), None)  # fmt: skip
        gate = {"kind": "approval", "seq": request.seq, "requested_at": request.ts, **request.payload}
        answer = {"type": answer_event.type, "seq": answer_event.seq, "at": answer_event.ts, **answer_event.payload} if answer_event else None
        claim = None if answer is not None else store.answers.read(self.run_id, self.task, request.seq)
        state = fold(events, self.run_id)
        self.workflow = state.workflow
        task = state.tasks.get(self.task)
        waiting = task is not None and task.status == "waiting" and bool(task.gate) and task.gate.get("seq") == request.seq
        return ("waiting" if waiting else task.status if task is not None else "unknown"), gate, answer, claim

    def refresh(self) -> None:
        """Re-read the gate from the store and show what it holds now."""
        with self._lock:
            step_status, gate, answer, claim = self._read()
            with self.hold_sync():
                if gate["seq"] != self.seq:
                    self._show_request(gate)
                self._show_answer(step_status, gate, answer or claim)

    def poll(self) -> bool:
        """For :func:`kernelflow.widgets.poller.watch`: False once answered (or closed)."""
        if self.comm is None:
            return False
        self.refresh()
        return self.status == "pending" and self.answerable

    def _show_request(self, gate: Mapping[str, Any]) -> None:
        self._gate = dict(gate)
        self._schema = gate.get("input_schema")
        self.seq = int(gate["seq"])
        self.message = str(gate.get("message") or "")
        self.message_html = markdown_html(self.message)
        self.preview_html = preview_html(gate.get("preview"))
        fields = form_fields(self._schema)
        self._choices = {f["name"]: dict(zip(f["choices"], f.pop("choice_values"))) for f in fields}
        self.fields = fields
        expires = gate.get("expires_at")
        self.expires_at = _when(expires) if expires else ""
        bits = [self.workflow, f"step {self.task}", f"run {self.run_id}", f"asked {_when(gate['requested_at'])}"]
        if expires:
            bits.append(f"expires {self.expires_at}")
        self.summary = " · ".join(b for b in bits if b)

    def _show_answer(self, step_status: str, gate: Mapping[str, Any], answer: Mapping[str, Any] | None) -> None:
        expires = gate.get("expires_at")
        decided = answer is not None or (expires is not None and expires <= now_us())
        if decided and self.status == "pending" and not self._answered_here:
            self.error = ""  # a form error no longer matters once the gate is decided
        if answer is not None:
            self.status = _DECISIONS.get(answer.get("type", ""), "granted")
            self.answer = _answer_record(answer)
            self.answer_text = answer_text(self.answer)
            self.answerable = False
        elif expires is not None and expires <= now_us():
            self.status = "expired"
            self.answer = {"decision": "expired", "at": _when(expires), "outcome": gate.get("on_timeout", "reject")}
            self.answer_text = answer_text(self.answer)
            self.answerable = False
        else:
            self.status = "pending"
            self.answer, self.answer_text = {}, ""
            self.answerable = step_status == "waiting"
            if not self.answerable and not self.error:
                self.error = f"step {self.task!r} no longer waits for this approval (it is {step_status})"

    # --- answering ----------------------------------------------------------------

    def _on_custom_msg(self, _widget: Any, content: Any, _buffers: Any) -> None:
        if not isinstance(content, Mapping) or content.get("type") != "submit":
            return
        try:
            self.submit(str(content.get("decision")), content.get("values") or {}, content.get("comment"))
        finally:
            with contextlib.suppress(Exception):  # the view went away
                self.send({"type": "done"})  # the view may enable its buttons again

    def submit(self, decision: str, values: Mapping[str, Any] | None = None, comment: str | None = None) -> bool:
        """Answer as the form does: ``decision`` is ``approve`` or ``reject``,
        ``values`` the form's values (text as typed; converted and validated
        here), ``comment`` the comment (a rejection's reason). True when this
        call answered the gate; otherwise :attr:`error` says why (a second
        submit while one is in flight, or after this widget answered, is ignored)."""
        if not self._submitting.acquire(blocking=False):
            return False
        try:
            if self._answered_here:
                return False
            self.busy = True
            return self._submit(decision, dict(values or {}), (comment or "").strip() or None)
        finally:
            self.busy = False
            self._submitting.release()

    def _submit(self, decision: str, values: dict[str, Any], comment: str | None) -> bool:
        if decision not in ("approve", "reject"):
            self.error = f"unknown decision {decision!r}: approve or reject"
            return False
        self.error = ""
        try:
            self.refresh()  # answered elsewhere meanwhile? expired?
        except ApprovalError as exc:
            self.error = str(exc)
            return False
        if self.status == "expired":
            self.error = (f"This approval expired at {self.answer.get('at')} "
                          f"(on_timeout: {self.answer.get('outcome')}); it can no longer be answered.")  # fmt: skip
            return False
        if self.status != "pending":
            self.error = f"This approval was already answered: {self.answer_text}"
            return False
        if not self.answerable:
            return False  # error says why
        where = f"the approval of step {self.task!r} (run {self.run_id})"
        try:
            given = self.form_input(values) if decision == "approve" else {}
            if decision == "approve":
                validate_input(self._schema, given, where)
                # Field names never clash with approve()'s own arguments: definitions refuse them.
                answered = approve(self.run_id, self.task, by=current_user(), comment=comment, **given)
            else:
                answered = reject(self.run_id, self.task, comment, by=current_user())
        except (InputError, ApprovalError) as exc:
            self._refresh_quietly()
            self.error = str(exc)
            return False
        except Exception as exc:  # noqa: BLE001 - the widget says what went wrong instead of a log line nobody sees
            self._refresh_quietly()
            self.error = f"could not answer: {type(exc).__name__}: {exc}"
            return False
        self._answered_here = True
        self.last_answer = answered
        self.error = ""
        self._refresh_quietly()
        if self.status == "pending":  # recorded by the driving process in a moment: show the claim meanwhile
            claim = {"type": ev.APPROVAL_GRANTED if answered.decision == "granted" else ev.APPROVAL_REJECTED,
                     "by": dict(answered.by), "answered_at": answered.answered_at, "input": answered.input,
                     "comment": comment, "reason": answered.reason}  # fmt: skip
            with self.hold_sync():
                self.status = answered.decision
                self.answer = _answer_record(claim)
                self.answer_text = answer_text(self.answer)
                self.answerable = False
        return True

    def _refresh_quietly(self) -> None:
        try:
            self.refresh()
        except ApprovalError:
            pass

    def form_input(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """The form's values as the gate's input: empty text is left out (so a
        default applies and a required field is reported missing), a choice
        becomes its value, a JSON field is parsed when it is JSON."""
        kinds = {f["name"]: f for f in self.fields}
        given: dict[str, Any] = {}
        for name, value in values.items():
            f = kinds.get(name)
            if f is None:
                given[name] = value  # validate_input names it
                continue
            if f["widget"] == "checkbox":
                given[name] = value if isinstance(value, bool) else str(value).lower() in ("true", "1", "on", "yes")
                continue
            if not isinstance(value, str):
                given[name] = value
                continue
            if not value.strip():
                continue
            if f["widget"] == "select":
                value = self._choices.get(name, {}).get(value, value)
            elif f["widget"] == "json":
                try:
                    value = json.loads(value)
                except ValueError:
                    pass
            elif f["widget"] == "number":
                value = value.strip()
            given[name] = value
        return given

    # --- without JavaScript -------------------------------------------------------

    def static_html(self) -> str:
        """The gate as HTML: message, preview, status, the answer, and how to answer a pending gate."""
        fill, border = COLORS.get(self.status, COLORS["pending"])
        esc = html.escape
        parts = [
            (f'<div class="kf-approval" data-status="{esc(self.status)}" data-run-id="{esc(self.run_id)}" '
             f'data-task="{esc(self.task)}" style="border:1px solid {border};border-left:4px solid {border};'
             'padding:8px 12px;margin:4px 0;border-radius:4px">'),
            (f'<div class="kf-approval-head"><span style="background:{fill};color:{border};border:1px solid {border};'
             f'border-radius:9px;padding:0 8px;font-weight:600">approval {esc(self.status)}</span> '
             f'<small>{esc(self.summary)}</small></div>'),
            f'<div class="kf-approval-message">{self.message_html}</div>',
        ]
        if self.preview_html:
            parts.append(f'<div class="kf-approval-preview">{self.preview_html}</div>')
        if self.fields:
            parts.append(f"<div><small>input: {esc(input_schema_text(self._schema))}</small></div>")
        if self.answer_text:
            parts.append(f'<div class="kf-approval-answer"><b>{esc(self.answer_text)}</b></div>')
        if self.status == "pending" and self.answerable:
            parts.append(
                '<div class="kf-approval-how"><small>Answer from Python or a shell (this output is static):</small>'
                f'<pre style="white-space:pre-wrap">{esc(self.commands())}</pre></div>'
            )
        elif self.error:
            parts.append(f'<div class="kf-approval-error">{esc(self.error)}</div>')
        return "".join(parts) + "</div>"

    def commands(self) -> str:
        """The exact calls that answer this gate, with its required input fields."""
        required = [f for f in self.fields if f.get("required")]
        py = "".join(f", {f['name']}=..." for f in required)
        cli = "".join(f" -i {f['name']} VALUE" for f in required)
        return (
            f"kf.approve({self.run_id!r}, {self.task!r}{py}, comment='...')\n"
            f"kf.reject({self.run_id!r}, {self.task!r}, 'why')\n"
            f"kernelflow approve {self.run_id} {self.task}{cli} --comment '...'\n"
            f"kernelflow reject {self.run_id} {self.task} --reason 'why'\n"
            + how_to_answer(self.run_id, [{"task": self.task, "kind": "approval"}]).splitlines()[-1]
        )

    def __repr__(self) -> str:
        return f"<ApprovalWidget {self.run_id}/{self.task} {self.status}>"


def approval_widgets_for(run: Run | str) -> list[ApprovalWidget]:
    """The widgets to show where ``run`` stopped: one per approval gate it waits at."""
    return ApprovalWidget.for_run(run)


def approvals_view(approvals: Approvals) -> Any:
    """``kf.approvals()`` in a notebook: an ipywidgets VBox of approval widgets (None when empty)."""
    import ipywidgets

    widgets = [ApprovalWidget.for_gate(r["run_id"], r["task_id"], r["seq"]) for r in approvals]
    return ipywidgets.VBox(widgets) if widgets else None


def current_user() -> str | None:
    """Who answers from this kernel: the JupyterHub user when there is one, else
    None (the process's user, recorded with host and pid, as ``kf.approve`` does)."""
    return os.environ.get("JUPYTERHUB_USER") or None


# --- pieces shared with the static fallback ---------------------------------------


def markdown_html(text: str) -> str:
    """Markdown as HTML, raw HTML in it escaped (messages carry user data)."""
    import mistune

    return str(_markdown(mistune)(text))


_md: Any = None


def _markdown(mistune: Any) -> Any:
    global _md
    if _md is None:
        _md = mistune.create_markdown(escape=True, plugins=["strikethrough", "table"])
    return _md


def preview_html(preview: Any) -> str:
    """The gate's preview (see :func:`kernelflow.gates.preview_of`) as escaped HTML."""
    if not preview:
        return ""
    esc = html.escape
    kind = preview.get("type") if isinstance(preview, Mapping) else None
    if kind == "table" and "columns" in preview:
        head = "".join(f"<th>{esc(str(c))}<br><small>{esc(str(d))}</small></th>"
                       for c, d in zip(preview["columns"], preview.get("dtypes") or [""] * len(preview["columns"])))  # fmt: skip
        rows = "".join("<tr>" + "".join(f"<td>{esc(_cell(v))}</td>" for v in row) + "</tr>" for row in preview.get("rows", []))
        shown, height = len(preview.get("rows", [])), preview.get("height")
        note = f"{shown} of {height} rows" if height is not None and height != shown else f"{shown} rows"
        return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table><small>{note}</small>"
    if kind == "table":
        return f"<small>a table of {esc(str(preview.get('height')))} rows</small>"
    if kind == "list":
        items = preview.get("items", [])
        body = "".join(f"<li>{esc(_cell(v))}</li>" for v in items)
        length = preview.get("length", len(items))
        note = f"{len(items)} of {length} items" if length != len(items) else f"{length} items"
        return f"<ol>{body}</ol><small>{note}</small>"
    if kind == "value":
        value = preview.get("value")
        text = value if isinstance(value, str) else json.dumps(value, indent=1, ensure_ascii=False)
        return f"<pre>{esc(text)}</pre>"
    if kind == "repr":
        return f"<pre>{esc(str(preview.get('repr', '')))}</pre>"
    return f"<pre>{esc(json.dumps(preview, default=str)[:2000])}</pre>"


def _cell(v: Any) -> str:
    return "" if v is None else v if isinstance(v, str) else json.dumps(v)


def form_fields(schema: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """Form fields for a gate's ``input_schema`` (see :func:`kernelflow.gates._input_schema`).

    Declared simple types map to inputs (bool: a checkbox, int/float: a number
    field, list/dict/any: JSON text); a pydantic model known in this process
    refines them from its JSON schema (``Literal`` / ``Enum`` choices become a select).
    """
    if not schema:
        return []
    props = _model_properties(schema.get("model"))
    out = []
    for name, spec in (schema.get("fields") or {}).items():
        prop = props.get(name, {})
        kind = spec.get("type", "any")
        if kind == "any" and prop.get("type") in _JSON_TYPES:
            kind = _JSON_TYPES[prop["type"]]
        choices = spec.get("choices") or spec.get("enum") or prop.get("enum")
        if choices is None and "const" in prop:
            choices = [prop["const"]]
        field: dict[str, Any] = {
            "name": name,
            "kind": kind,
            "widget": "select" if choices else _WIDGETS.get(kind, "json"),
            "required": bool(spec.get("required", True)),
            "description": str(spec.get("description") or prop.get("description") or ""),
            "choices": [],
            "choice_values": [],
        }
        if "default" in spec:
            field["default"] = spec["default"]
        elif "default" in prop:
            field["default"] = prop["default"]
        if choices:
            field["choices"] = [c if isinstance(c, str) else json.dumps(c) for c in choices]
            field["choice_values"] = list(choices)
        default = field.get("default")
        if default is None:
            field["text"] = ""
        elif field["widget"] == "select":
            field["text"] = default if isinstance(default, str) else json.dumps(default)
        elif field["widget"] == "json" and not isinstance(default, str):
            field["text"] = json.dumps(default)
        else:
            field["text"] = str(default).lower() if isinstance(default, bool) else str(default)
        field["placeholder"] = {"json": f"{kind} (JSON)", "number": kind}.get(field["widget"], kind if kind != "str" else "")
        out.append(field)
    return out


def _model_properties(ref: str | None) -> dict[str, dict[str, Any]]:
    """The JSON schema properties of the pydantic model ``ref``, when it is known here."""
    from kernelflow.gates import _model

    try:
        model = _model(ref)
        schema = model.model_json_schema() if model is not None else None
    except Exception:  # noqa: BLE001 - the declared field types will do
        schema = None
    if not schema:
        return {}
    defs = schema.get("$defs", {})

    def resolve(p: Mapping[str, Any]) -> dict[str, Any]:
        p = dict(p)
        if "$ref" in p:
            p = {**defs.get(p.pop("$ref").rsplit("/", 1)[-1], {}), **p}
        for key in ("anyOf", "allOf", "oneOf"):
            options = [resolve(o) for o in p.get(key, []) if o.get("type") != "null"]
            if len(options) == 1:
                p = {**options[0], **{k: v for k, v in p.items() if k != key}}
        return p

    return {name: resolve(p) for name, p in (schema.get("properties") or {}).items()}


def _answer_record(answer: Mapping[str, Any]) -> dict[str, Any]:
    by = dict(answer.get("by") or {})
    decision = _DECISIONS.get(answer.get("type", ""), "granted")
    at = answer.get("answered_at") or answer.get("at")
    record: dict[str, Any] = {"decision": decision, "by": by, "by_name": by.get("name") or by.get("user") or ""}
    if decision == "expired":
        record.update(by_name="", at=_when(answer.get("expires_at") or at), outcome=answer.get("outcome"))
    else:
        record["at"] = _when(at) if at else ""
    for key in ("input", "comment", "reason"):
        if answer.get(key) not in (None, "", {}):
            record[key] = answer[key]
    return record


def answer_text(record: Mapping[str, Any]) -> str:
    """``Granted by ana at 2026-05-01 10:00:00 UTC (table=daily): "counts checked"``."""
    decision = record.get("decision", "")
    if decision == "expired":
        return f"Expired at {record.get('at')} (on_timeout: {record.get('outcome')})"
    text = f"{decision.capitalize()} by {record.get('by_name') or '?'}"
    if record.get("at"):
        text += f" at {record['at']}"
    if record.get("input"):
        text += " (" + ", ".join(f"{k}={v!r}" for k, v in record["input"].items()) + ")"
    note = record.get("comment") or record.get("reason")
    if note:
        text += f': "{note}"'
    return text


def _when(us: int | None) -> str:
    return f"{us_to_datetime(int(us)):%Y-%m-%d %H:%M:%S} UTC" if us else ""

