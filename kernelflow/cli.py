"""The ``kernelflow`` command (docs/cli.md describes every command).

Commands: ``run``, ``validate``, ``resume``, ``approve``/``reject``,
``history``, ``show``, ``logs``, ``stats``, ``sql``, ``dlq``, ``gc``,
``metrics``, ``scheduler``, ``plugins``, ``doctor``. Read commands take ``--json`` for scripts (shapes in
docs/cli.md); errors stay one line of text on stderr either way.

Exit codes:

* 0: success (a read command found what it was asked for, a run succeeded);
* 1: a run or notebook failed, a file does not validate, or kernelflow refused
  (an unknown run, a store that is not a store; the one-line message says why);
* 2: bad command-line usage (argparse's own errors, a bad ``--since`` or
  ``--older-than``, a file that is not there);
* 3: a run is suspended at an approval gate or breakpoint (the message says
  how to answer and resume);
* 130: interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .exceptions import KernelflowError
from .literals import parse_literal

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_SUSPENDED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

FOLLOW_INTERVAL_S = 0.5
"""How often ``kernelflow logs --follow`` reads the store for new events."""


def _table(df: Any) -> str:
    import polars as pl

    with pl.Config(tbl_rows=100, tbl_cols=30, fmt_str_lengths=60, tbl_hide_dataframe_shape=True, tbl_width_chars=200):
        return str(df)


def _store(args: argparse.Namespace) -> Any:
    from .store_access import open_store

    return open_store(args.store) if args.store else open_store()


def _print_json(value: Any) -> None:
    """JSON on stdout: keys as documented in docs/cli.md; datetimes as ISO 8601 text."""
    import json

    print(json.dumps(value, indent=2, default=str, ensure_ascii=False))


def _progress(args: argparse.Namespace) -> str | None:
    from .cli_progress import progress_mode

    return progress_mode(disabled=bool(getattr(args, "no_progress", False) or getattr(args, "json", False)))


def _unknown_run(store: Any, run_id: str) -> str:
    """The one-line error for a run id the store does not have, with the closest ids it has."""
    import difflib

    known = store.sql("SELECT run_id FROM runs ORDER BY started_at DESC LIMIT 10000")["run_id"].to_list()
    close = difflib.get_close_matches(run_id, known, n=3, cutoff=0.5)
    close += [r for r in known if run_id[-4:] in r and r not in close][: 3 - len(close)] if len(run_id) >= 4 else []
    hint = f"; similar ids: {', '.join(close)}" if close else ("; it holds no runs" if not known else "")
    return f"error: no run {run_id!r} in the store at {store.location}{hint} (kernelflow history lists runs)"


def _since(args: argparse.Namespace) -> Any:
    from .exceptions import InputError
    from .run_stats import parse_since

    if not getattr(args, "since", None):
        return None
    try:
        return parse_since(args.since)
    except OverflowError:  # an age of millions of years: before year 1
        raise InputError(f"--since {args.since!r} reaches back further than dates go; give a shorter age or a date") from None


def _run_dict(run: Any) -> dict[str, Any]:
    """``kernelflow run --json`` / ``resume --json`` for a run driven here."""
    state = run.state
    return {
        "run_id": run.run_id,
        "workflow": run.workflow.name,
        "workflow_version": run.workflow.version,
        "status": run.status,
        "duration_s": run.duration,
        "tasks": {k: v for k, v in state.counts().items() if v},
        "failed": [{"task": tid, "error_type": (state.tasks[tid].error or {}).get("exc_type"),
                    "message": (state.tasks[tid].error or {}).get("message")} for tid in state.failed_tasks],
        "waiting": [{"task": t, "kind": g.get("kind")} for t, g in run.waiting.items()],
    }  # fmt: skip


# --- run ------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    target = Path(args.target)
    if target.suffix in (".yaml", ".yml"):
        return _run_yaml(args, target)
    if target.suffix != ".ipynb":
        print(f"error: {target} is neither a notebook (.ipynb) nor a workflow file (.yaml)", file=sys.stderr)
        return EXIT_USAGE
    if not target.is_file():
        print(f"error: notebook {target} not found", file=sys.stderr)
        return EXIT_USAGE
    problem = _notebook_problem(target)
    if problem:
        print(f"error: {target} is not a notebook papermill can run: {problem}; "
              "save it from Jupyter (nbformat 4) and run it again", file=sys.stderr)  # fmt: skip
        return EXIT_USAGE
    from .exceptions import InputError
    from .notebook_exec import check_parameters

    notebook = target.resolve()
    try:
        parameters = check_parameters(
            notebook, {key: parse_literal(value) for key, value in args.parameter}, raw=dict(args.parameter),
            what=f"notebook {target}",
        )  # fmt: skip
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    output = Path(args.output) if args.output else Path("out") / f"{target.stem}.ipynb"
    batch_id = "b-" + secrets.token_hex(5)
    store_dir, output, failed = _execute_notebook(notebook, output, parameters, batch_id, {},
                                                  progress=not (args.no_progress or args.json))  # fmt: skip
    from .store_access import open_store

    store = open_store(store_dir)
    runs = store.sql(
        "SELECT r.run_id, r.workflow, r.status, round(r.duration_s, 3) AS duration_s, r.tasks_total AS tasks, "
        "r.tasks_succeeded AS succeeded, r.tasks_failed AS failed, r.tasks_skipped AS skipped "
        "FROM runs r JOIN events e ON e.run_id = r.run_id AND e.type = 'RunStarted' "
        "WHERE e.payload->>'batch_id' = ? ORDER BY r.started_at",
        [batch_id],
    )
    if args.json:
        _print_json({"notebook": str(notebook), "output": str(output), "store": store_dir, "batch_id": batch_id,
                     "failed_at": failed, "runs": runs.to_dicts()})  # fmt: skip
    else:
        print(f"runs recorded by this notebook ({len(runs)}, store {store_dir}):")
        print(_table(runs) if len(runs) else "  (none)")
        print(f"executed notebook: {output}")
    if failed and "RunSuspended" in failed:
        print(f"the notebook stopped at a suspended run:\n{failed.split('RunSuspended: ', 1)[-1]}", file=sys.stderr)
        return EXIT_SUSPENDED
    if failed:
        print(f"notebook failed at {failed}", file=sys.stderr)
        return EXIT_FAILED
    # The notebook decides: a cell that runs a failing workflow raises and
    # fails the notebook; a run the notebook chose to tolerate
    # (raise_on_failure=False) is reported but does not fail the batch.
    n_failed = int((runs["status"] == "failed").sum()) if len(runs) else 0
    if n_failed:
        print(f"note: {n_failed} run(s) failed and the notebook handled them", file=sys.stderr)
    return EXIT_OK


def _notebook_problem(path: Path) -> str | None:
    """Why ``path`` is not a notebook (not JSON, not nbformat 4), in one line; None if it is one."""
    import nbformat

    try:
        nbformat.validate(nbformat.read(str(path), as_version=4))
    except Exception as exc:  # noqa: BLE001 - nbformat raises JSON, schema, conversion and attribute errors
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return None


def _execute_notebook(notebook: Path, output: Path, parameters: dict[str, Any], batch_id: str,
                      extra_env: dict[str, str], *, progress: bool) -> tuple[str, Path, str | None]:  # fmt: skip
    """Run ``notebook`` with papermill; returns (store folder, output path, failure or None)."""
    from .notebook_exec import execute
    from .run_origin import BATCH_ENV

    output = output.resolve()
    # The kernel runs beside the notebook, so its default store is the
    # notebook's .kernelflow/; pin it so this process reads the same one.
    store_dir = os.environ.get("KERNELFLOW_HOME") or str(notebook.parent / ".kernelflow")
    env = {"KERNELFLOW_HOME": store_dir, BATCH_ENV: batch_id, "KERNELFLOW_VIA": "papermill", **extra_env}
    print(f"running {notebook.name} with papermill (parameters: {parameters or 'none'})", file=sys.stderr)
    result = execute(notebook, output, parameters, env=env, progress=progress)
    return store_dir, output, result.failure


# --- durable: resume / approve / reject -----------------------------------------


def cmd_resume(args: argparse.Namespace) -> int:
    from .resume import load_history, resume, started_payload
    from .store_access import use_store

    if args.store:
        use_store(args.store)
    store = _store(args)
    events, state = load_history(store, args.run_id)
    started = started_payload(events)
    notebook = args.notebook or (None if (args.file or started.get("source")) else started.get("notebook"))
    if notebook:
        return _resume_notebook(args, Path(notebook), started, state)
    workflow = None
    source = args.file or started.get("source")
    if source:
        from .yaml_compiler import load

        sys.path.insert(0, str(Path(source).resolve().parent))
        workflow = load(Path(source), {})
    from .cli_progress import watch_runs

    with watch_runs(_progress(args)):
        run = resume(args.run_id, workflow=workflow, raise_on_failure=False)
    if getattr(args, "json", False):
        _print_json(_run_dict(run))
    else:
        print(run.summary())
    return _exit_for(run.status)


def _resume_notebook(args: argparse.Namespace, notebook: Path, started: Any, state: Any) -> int:
    batch = started.get("batch_id")
    if not batch:
        print(
            f"error: run {args.run_id} was started from {notebook} interactively, not by `kernelflow run`; "
            f"open the notebook, run the cell that defines {state.workflow!r}, and call kf.resume({args.run_id!r})",
            file=sys.stderr,
        )
        return EXIT_FAILED
    if not notebook.is_file():
        print(f"error: notebook {notebook} (recorded by run {args.run_id}) not found; pass --notebook PATH", file=sys.stderr)
        return EXIT_USAGE
    output = Path(args.output) if args.output else Path("out") / f"{notebook.stem}.resumed.ipynb"
    new_batch = "b-" + secrets.token_hex(5)
    # The notebook runs again with the parameters of its first execution (recorded in RunStarted).
    parameters = dict(started.get("parameters") or {})
    store_dir, output, failed = _execute_notebook(
        notebook.resolve(), output, parameters, new_batch, {"KERNELFLOW_RESUME_BATCH": batch},
        progress=not (args.no_progress or getattr(args, "json", False)),
    )
    from .reducer import fold
    from .store_access import open_store

    events = open_store(store_dir).read_run(args.run_id)
    status = fold(events).status
    if getattr(args, "json", False):
        _print_json({"run_id": args.run_id, "status": status, "notebook": str(notebook), "output": str(output)})
    else:
        print(f"run {args.run_id}: {status} (notebook re-executed in resume mode: {output})")
    if failed and status not in ("succeeded", "waiting"):
        print(f"notebook failed at {failed}", file=sys.stderr)
    return _exit_for(status)


def _exit_for(status: str) -> int:
    return {"succeeded": EXIT_OK, "waiting": EXIT_SUSPENDED}.get(status, EXIT_FAILED)


def cmd_answer(args: argparse.Namespace) -> int:
    from .approvals import approve, reject
    from .store_access import use_store

    if args.store:
        use_store(args.store)
    if args.command == "approve":
        given = {key: parse_literal(value) for key, value in args.input}
        answer = approve(args.run_id, args.step, by=args.by, comment=args.comment, resume=False, **given)
    else:
        answer = reject(args.run_id, args.step, args.reason, by=args.by, resume=False)
    who = answer.by.get("name") or answer.by.get("user")
    print(f"step {args.step} of run {args.run_id}: {answer.decision} by {who}")
    if args.resume:
        args.notebook = args.file = args.output = None
        args.no_progress, args.json = True, False
        return cmd_resume(args)
    print(f"continue the run with: kernelflow resume {args.run_id}")
    return EXIT_OK


# --- history / show / logs / stats / sql -------------------------------------------------


def cmd_history(args: argparse.Namespace) -> int:
    from .exceptions import InputError
    from .run_stats import history, since_label

    try:
        since = _since(args)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    rows = history(_store(args), workflow=args.workflow, status=args.status, since=since, limit=args.limit)
    if args.json:
        _print_json({"runs": rows})
        return EXIT_OK
    if not rows:
        filtered = args.workflow or args.status or since is not None
        print("no runs recorded yet" + (" matching the filters" if filtered else ""))
        return EXIT_OK
    import polars as pl

    df = pl.DataFrame(rows).select(
        # duration_s is all null when every run listed is still going: a null column cannot be rounded.
        "run_id", "workflow", "status", "started_at", pl.col("duration_s").cast(pl.Float64).round(3), "tasks",
        pl.col("succeeded").alias("ok"), "failed", "skipped",
    )  # fmt: skip
    df = df.with_columns(pl.col("started_at").str.slice(0, 23).str.replace("T", " "))
    if since is not None:
        print(f"runs{since_label(since)}, newest first:")
    print(_table(df))
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    from .dag_text import render_text
    from .model import Workflow
    from .reducer import fold

    store = _store(args)
    events = store.read_run(args.run_id)
    if not events:
        print(_unknown_run(store, args.run_id), file=sys.stderr)
        return EXIT_FAILED
    state = fold(events)
    attempts = store.sql(
        "SELECT task_id AS task, attempt, status, round(duration_ms, 2) AS duration_ms, error_type, error_message "
        "FROM task_attempts WHERE run_id = ? ORDER BY started_at, task_id, attempt",
        [args.run_id],
    )
    if args.json:
        _print_json(_show_dict(store, state, attempts))
        return EXIT_OK
    definition = store.sql(
        "SELECT definition FROM workflows WHERE name = ? AND version = ?", [state.workflow, state.workflow_version]
    )
    print(f"run {state.run_id} · workflow {state.workflow} · version {state.workflow_version} · {state.status}")
    if state.inputs:
        print("inputs: " + ", ".join(f"{k}={v!r}" for k, v in state.inputs.items()))
    if len(definition):
        import orjson

        wf = Workflow.from_dict(orjson.loads(definition["definition"][0]))
        print(render_text(wf, state).split("\n", 1)[1])
    print(_table(attempts))
    for tid in state.failed_tasks:
        error = state.tasks[tid].error or {}
        print(f"\n--- {tid} (attempt {state.tasks[tid].attempt}) ---\n{error.get('traceback') or error.get('message')}")
    return EXIT_OK


def _show_dict(store: Any, state: Any, attempts: Any) -> dict[str, Any]:
    """``kernelflow show --json``: the run, each task as the fold has it, and every attempt."""
    from .run_stats import iso_utc

    row = store.sql(
        "SELECT started_at, ended_at, duration_s, notebook FROM runs WHERE run_id = ?", [state.run_id]
    ).to_dicts()
    run = row[0] if row else {}

    def us(value: int | None) -> str | None:
        from datetime import datetime, timezone

        return None if value is None else datetime.fromtimestamp(value / 1e6, timezone.utc).isoformat()

    return {
        "run": {
            "run_id": state.run_id,
            "workflow": state.workflow,
            "workflow_version": state.workflow_version,
            "status": state.status,
            "inputs": state.inputs,
            "started_at": iso_utc(run.get("started_at")),
            "ended_at": iso_utc(run.get("ended_at")),
            "duration_s": run.get("duration_s"),
            "notebook": run.get("notebook"),
            "waiting": [{"task": t, "kind": g.get("kind")} for t, g in state.waiting.items()],
        },
        "tasks": [
            {"task": tid, "status": t.status, "attempt": t.attempt, "started_at": us(t.started_at),
             "ended_at": us(t.ended_at), "error": t.error, "reason": t.reason}
            for tid, t in state.tasks.items()
        ],
        "attempts": attempts.to_dicts(),
    }  # fmt: skip


def cmd_logs(args: argparse.Namespace) -> int:
    import difflib
    import json
    import time

    from .reducer import fold
    from .run_logs import entries, format_entry, task_ids

    store = _store(args)
    events = store.read_run(args.run_id)
    if not events:
        print(_unknown_run(store, args.run_id), file=sys.stderr)
        return EXIT_FAILED
    if args.task is not None:
        known = task_ids(events)
        if args.task not in known:
            close = difflib.get_close_matches(args.task, known, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            print(f"error: run {args.run_id} has no task {args.task!r}{hint} (its tasks: {', '.join(known) or 'none'})",
                  file=sys.stderr)  # fmt: skip
            return EXIT_FAILED

    def emit(batch: list[Any]) -> None:
        for entry in entries(batch, args.task):
            print(json.dumps(entry, ensure_ascii=False) if args.json else format_entry(entry), flush=True)

    emit(events)
    if not args.follow:
        return EXIT_OK
    seen = events[-1].seq
    status = fold(events).status
    # Poll the store: the run may be driven by any process sharing it. A run
    # that is running with nobody holding its lease has lost its driver.
    while status not in ("succeeded", "failed", "waiting"):
        time.sleep(args.interval)
        fresh = [e for e in store.read_run(args.run_id) if e.seq > seen]
        if fresh:
            emit(fresh)
            seen = fresh[-1].seq
            events.extend(fresh)
            status = fold(events).status
            continue
        holder = getattr(store, "lease_holder", None)
        if holder is not None and holder(args.run_id) is None:
            late = [e for e in store.read_run(args.run_id) if e.seq > seen]
            if not late:  # ended between our two reads? no: nobody drives it any more
                print(f"error: run {args.run_id} is {status} but no process drives it (its driver stopped); "
                      f"continue it with: kernelflow resume {args.run_id}", file=sys.stderr)  # fmt: skip
                return EXIT_FAILED
    return _exit_for(status)


def cmd_stats(args: argparse.Namespace) -> int:
    from .exceptions import InputError
    from .run_stats import since_label, workflow_stats

    try:
        since = _since(args)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    stats = workflow_stats(_store(args), workflow=args.workflow, since=since)
    if args.json:
        _print_json({"since": since.isoformat() + "+00:00" if since else None, "workflows": stats})
        return EXIT_OK
    if not stats:
        print("no runs recorded yet" + (" matching the filters" if args.workflow or since else ""))
        return EXIT_OK

    def secs(value: float | None) -> str:
        from .durations import readable_duration

        return "-" if value is None else readable_duration(value)

    for w in stats:
        rate = "-" if w["success_rate"] is None else f"{w['success_rate']:.1%}"
        d = w["duration_s"]
        print(f"{w['workflow']}{since_label(since)}: {w['runs']} runs, {w['succeeded']} succeeded, {w['failed']} failed"
              f"{', ' + str(w['active']) + ' under way' if w['active'] else ''}; success rate {rate}; "
              f"duration p50 {secs(d['p50'])}, p95 {secs(d['p95'])}, max {secs(d['max'])}")  # fmt: skip
        for t in w["tasks"]:
            print(f"  {t['task']:<24} {t['attempts']:>6} attempts {t['failures']:>5} failed   "
                  f"p50 {secs(t['duration_s']['p50']):>9}   p95 {secs(t['duration_s']['p95']):>9}")  # fmt: skip
    return EXIT_OK


def cmd_sql(args: argparse.Namespace) -> int:
    df = _store(args).sql(args.query)
    if args.json or args.format == "json":
        print(_as_text_columns(df, nested=False).write_json())
    elif args.format == "csv":
        print(_as_text_columns(df, nested=True).write_csv(), end="")
    else:
        print(_table(df))
    return EXIT_OK


def _as_text_columns(df: Any, *, nested: bool) -> Any:
    """``df`` with the columns polars cannot write as JSON or CSV turned into text:
    binary values (BLOB) as hex, and with ``nested`` (CSV) lists and structs as JSON."""
    import json

    import polars as pl

    def text(value: Any) -> str | None:
        if value is None or isinstance(value, bytes):
            return None if value is None else value.hex()
        return json.dumps(value, ensure_ascii=False, default=lambda v: v.hex() if isinstance(v, bytes) else str(v))

    columns = [
        pl.Series(name, [text(v) for v in df[name].to_list()], dtype=pl.String)
        for name, dtype in df.schema.items()
        if "binary" in str(dtype).lower() or (nested and dtype.is_nested())
    ]
    return df.with_columns(columns) if columns else df


def _run_yaml(args: argparse.Namespace, target: Path) -> int:
    """Run a YAML workflow file here; ``python:NAME`` steps need a notebook, so
    files run from the CLI call importable ``module:function`` refs."""
    from .store_access import use_store
    from .yaml_compiler import load

    if not target.is_file():
        print(f"error: workflow file {target} not found", file=sys.stderr)
        return EXIT_USAGE
    if args.store:
        use_store(args.store)
    sys.path.insert(0, str(target.resolve().parent))  # modules beside the file are importable
    wf = load(target, {})
    inputs = {key: parse_literal(value) for key, value in args.parameter}
    from .cli_progress import watch_runs

    with watch_runs(_progress(args)):
        run = wf.run(**inputs, raise_on_failure=False)
    if args.json:
        _print_json(_run_dict(run))
    else:
        print(run.summary())
    return _exit_for(run.status)


# --- dead letters --------------------------------------------------------------


def _json_value(text: Any) -> Any:
    """A JSON column (DuckDB gives it as text) as the value it holds."""
    import json

    if not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def cmd_dlq(args: argparse.Namespace) -> int:
    from .dead_letters import dlq
    from .store_access import use_store

    if args.store:
        use_store(args.store)
    if args.action == "list":
        df = dlq(args.workflow)
        if args.json:
            from .run_stats import iso_utc

            rows = df.select("run_id", "workflow", "workflow_version", "failed_at", "error", "inputs", "tasks_failed").to_dicts()
            for row in rows:
                row["failed_at"] = iso_utc(row["failed_at"])
                row["inputs"] = _json_value(row["inputs"])
            _print_json({"dead_letters": rows})
        elif df.height == 0:
            print("the dead letter queue is empty")
        else:
            print(_table(df.select("run_id", "workflow", "failed_at", "error", "inputs")))
        return EXIT_OK
    if args.run_id is None:
        print(f"error: dlq {args.action} needs a RUN_ID (see kernelflow dlq list)", file=sys.stderr)
        return EXIT_USAGE
    if args.action == "discard":
        dlq.discard(args.run_id, args.reason or "")
        print(f"run {args.run_id} discarded")
        return EXIT_OK
    inputs = {key: parse_literal(value) for key, value in args.parameter}
    if args.file:
        from .yaml_compiler import load

        load(Path(args.file), {})  # defines the workflow in this process so it can be retried
    run = dlq.retry(args.run_id, wait=True, raise_on_failure=False, **inputs)
    print(run.summary())
    return EXIT_OK if run.status == "succeeded" else EXIT_FAILED


# --- gc ------------------------------------------------------------------------------


def cmd_gc(args: argparse.Namespace) -> int:
    from .store import FolderStore
    from .store.retention import collect, parse_age

    try:
        age = parse_age(args.older_than)
    except ValueError as exc:
        print(f"error: --older-than: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OverflowError:  # more days than a timedelta holds
        print(f"error: --older-than: {args.older_than!r} is longer than dates go; give a shorter age", file=sys.stderr)
        return EXIT_USAGE
    store = _store(args)
    if not isinstance(store, FolderStore):
        print(f"error: gc works on kernelflow's folder store, not on {type(store).__name__}", file=sys.stderr)
        return EXIT_FAILED
    from .cli_progress import spinner

    what = "removing" if args.yes else "looking for"
    with spinner(f"{what} runs that ended more than {args.older_than} ago", _progress(args)):
        report = collect(store, age, dry_run=not args.yes)
    if args.json:
        import json

        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(report.summary())
    return EXIT_OK


# --- validate / metrics ---------------------------------------------------------------


def cmd_validate(args: argparse.Namespace) -> int:
    from .workflow_validation import check_paths

    report = check_paths(args.paths)
    if args.json:
        _print_json(report.as_dict())
        return EXIT_OK if report.ok else EXIT_FAILED
    for c in report.checked:
        where = f"{c.path} cell {c.cell}" if c.cell is not None else c.path
        note = " (Python cell: syntax and structure checked, not run)" if c.body == "python" else ""
        print(f"ok: {c.name}: {c.tasks} task{'s' if c.tasks != 1 else ''} ({where}){note}")
    for p in report.problems:
        print(f"error: {p.location}: {p.message}" + (f" (fix: {p.hint})" if p.hint else ""), file=sys.stderr)
    return EXIT_OK if report.ok else EXIT_FAILED


def cmd_metrics(args: argparse.Namespace) -> int:
    from .metrics import render, summary

    store = _store(args)
    if args.json:
        _print_json(summary(store))
    else:
        print(render(store), end="")
    return EXIT_OK


def positive_int(text: str) -> int:
    """An argparse type: a whole number from 1 to 2**63 - 1, what SQL's LIMIT takes
    (argparse names the option and exits 2 otherwise)."""
    try:
        value: int | None = int(text)
    except ValueError:
        value = None
    if value is None or not 1 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return value


def positive_seconds(text: str) -> float:
    """An argparse type: a number of seconds > 0 (not nan, not infinite)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds greater than 0, got {text!r}")
    return value


JSON_HELP = "print JSON for scripts (shape in docs/cli.md)"
SINCE_HELP = "only runs started since AGE ago (2h, 3d, 90m, 2w, 45s) or since an ISO date/time (UTC)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kernelflow",
        description="Workflows that live in the notebook.",
        epilog="exit codes: 0 ok, 1 failed or refused, 2 usage, 3 suspended, 130 interrupted (docs/cli.md)",
    )
    parser.add_argument("--store", help="store folder (default: $KERNELFLOW_HOME or ./.kernelflow)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="execute a notebook headless with papermill (or a YAML workflow file) and summarise its runs")
    p.add_argument("target", help="a notebook (.ipynb) or a workflow file (.yaml)")
    p.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="a papermill parameter (repeatable); VALUE is a Python literal or a string")
    p.add_argument("-o", "--output", help="where to write the executed notebook (default out/NAME.ipynb)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("validate", help="check workflow files and notebooks' %%%%workflow cells without running anything")
    p.add_argument("paths", nargs="+", metavar="PATH", help="workflow files (.yaml, .yml) and notebooks (.ipynb)")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("history", help="recent runs, newest first")
    p.add_argument("--workflow", help="only this workflow")
    p.add_argument("--status", choices=["running", "waiting", "succeeded", "failed"], help="only runs in this status")
    p.add_argument("--since", metavar="AGE|DATE", help=SINCE_HELP)
    p.add_argument("--limit", type=positive_int, default=20, help="how many (default 20)")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.set_defaults(func=cmd_history)

    p = sub.add_parser("show", help="one run: its DAG with statuses, attempts and errors")
    p.add_argument("run_id")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("logs", help="what a run's tasks printed and logged, and their errors, in time order")
    p.add_argument("run_id")
    p.add_argument("task", nargs="?", help="only this task")
    p.add_argument("-f", "--follow", action="store_true",
                   help="keep printing until the run ends (exit code by its final status)")
    p.add_argument("--interval", type=positive_seconds, default=FOLLOW_INTERVAL_S, metavar="SECONDS",
                   help=f"--follow: how often to read the store (default {FOLLOW_INTERVAL_S})")
    p.add_argument("--json", action="store_true", help="one JSON object per entry and line (shape in docs/cli.md)")
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser("stats", help="per workflow: runs, success rate, run and task durations")
    p.add_argument("--workflow", help="only this workflow")
    p.add_argument("--since", metavar="AGE|DATE", help=SINCE_HELP)
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("dlq", help="the dead letter queue: runs that failed for good")
    p.add_argument("action", choices=["list", "retry", "discard"])
    p.add_argument("run_id", nargs="?", help="the failed run (retry, discard)")
    p.add_argument("--workflow", help="list: only this workflow")
    p.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="retry: an input to change (repeatable)")
    p.add_argument("--file", help="retry: the YAML file defining the workflow")
    p.add_argument("--reason", help="discard: why (recorded)")
    p.add_argument("--json", action="store_true", help="list: " + JSON_HELP)
    p.set_defaults(func=cmd_dlq)

    p = sub.add_parser("resume", help="continue a failed, interrupted or suspended run without re-running completed tasks")
    p.add_argument("run_id")
    p.add_argument("--file", help="the workflow file (.yaml) defining the run's workflow (default: the one it was run from)")
    p.add_argument("--notebook", help="re-execute this notebook in resume mode (default: the notebook the run came from)")
    p.add_argument("-o", "--output", help="notebook resume: where to write the executed notebook")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.set_defaults(func=cmd_resume)

    for name, what in (("approve", "grant"), ("reject", "reject")):
        p = sub.add_parser(name, help=f"{what} the approval a run's step waits for (from any machine sharing the store)")
        p.add_argument("run_id")
        p.add_argument("step")
        if name == "approve":
            p.add_argument("-i", "--input", nargs=2, action="append", default=[], metavar=("FIELD", "VALUE"),
                           help="a field of the gate's input (repeatable); VALUE is a Python literal or a string")
            p.add_argument("--comment", help="a note kept with the approval")
        else:
            p.add_argument("--reason", help="why (recorded, shown to the run's owner)")
        p.add_argument("--by", help="who answers (default: your user name)")
        p.add_argument("--resume", action="store_true", help="continue the run right away")
        p.set_defaults(func=cmd_answer)

    p = sub.add_parser("gc", help="remove runs that ended long ago (a dry run unless --yes)")
    p.add_argument("--older-than", required=True, metavar="AGE",
                   help="runs that ended more than AGE ago: 30d, 12h, 90m, 2w")
    p.add_argument("--yes", action="store_true", help="delete them (without it: only say what would go)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--no-progress", action="store_true", help="no spinner")
    p.add_argument("--store", default=argparse.SUPPRESS, help="store folder (as the global --store)")
    p.set_defaults(func=cmd_gc)

    p = sub.add_parser("sql", help="query the store with SQL (views: events, runs, task_attempts, workflows, ...)")
    p.add_argument("query")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")
    p.add_argument("--json", action="store_true", help="the same as --format json (rows as a JSON array)")
    p.set_defaults(func=cmd_sql)

    p = sub.add_parser("metrics", help="the store's metrics in Prometheus text format (docs/metrics.md)")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.set_defaults(func=cmd_metrics)

    from .scheduler_cli import add_parser as add_scheduler_parser

    add_scheduler_parser(sub)  # `kernelflow scheduler ...`: same exit codes and --json conventions
    from .plugins_cli import add_parser as add_plugins_parser

    add_plugins_parser(sub)  # `kernelflow plugins`: what is loaded and what each provides (docs/cli.md)
    from .doctor import add_parser as add_doctor_parser

    add_doctor_parser(sub)  # `kernelflow doctor`: store, executors, plugins, optional tools (docs/observability.md)
    return parser


def _one_line(exc: KernelflowError) -> str:
    """An error as one line: the message, where, and the fix when the error has one."""
    from .exceptions import DefinitionError

    if isinstance(exc, DefinitionError):
        text = f"{exc.location}: {exc.message}" if exc.location else exc.message
        return text + (f" (fix: {exc.hint})" if exc.hint else "")
    return "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # usage errors: argparse prints them and exits 2
    os.environ.setdefault("KERNELFLOW_VIA", "cli")
    try:
        return args.func(args)
    except KernelflowError as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `kernelflow logs RUN | head`: the reader left; nothing more to say.
        sys.stderr.close()
        return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
