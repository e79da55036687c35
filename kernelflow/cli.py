"""The ``kernelflow`` command.

Exit codes: 0 success; 1 a run or notebook failed, or kernelflow refused
(the message says why); 2 bad command-line usage; 3 a run is suspended at an
approval gate or breakpoint (the message says how to answer and resume).
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path
from typing import Any, Sequence

from .exceptions import KernelflowError
from .literals import parse_literal

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_SUSPENDED = 0, 1, 2, 3


def _table(df: Any) -> str:
    import polars as pl

    with pl.Config(tbl_rows=100, tbl_cols=30, fmt_str_lengths=60, tbl_hide_dataframe_shape=True, tbl_width_chars=200):
        return str(df)


def _store(args: argparse.Namespace) -> Any:
    from .store_access import open_store

    return open_store(args.store) if args.store else open_store()


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
    parameters = {key: parse_literal(value) for key, value in args.parameter}
    notebook = target.resolve()
    output = Path(args.output) if args.output else Path("out") / f"{target.stem}.ipynb"
    batch_id = "b-" + secrets.token_hex(5)
    store_dir, output, failed = _execute_notebook(notebook, output, parameters, batch_id, {}, progress=not args.no_progress)
    from .store_access import open_store

    store = open_store(store_dir)
    runs = store.sql(
        "SELECT r.run_id, r.workflow, r.status, round(r.duration_s, 3) AS duration_s, r.tasks_total AS tasks, "
        "r.tasks_succeeded AS succeeded, r.tasks_failed AS failed, r.tasks_skipped AS skipped "
        "FROM runs r JOIN events e ON e.run_id = r.run_id AND e.type = 'RunStarted' "
        "WHERE e.payload->>'batch_id' = ? ORDER BY r.started_at",
        [batch_id],
    )
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


def _execute_notebook(notebook: Path, output: Path, parameters: dict[str, Any], batch_id: str,
                      extra_env: dict[str, str], *, progress: bool) -> tuple[str, Path, str | None]:  # fmt: skip
    """Run ``notebook`` with papermill; returns (store folder, output path, failure or None)."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    output.parent.mkdir(parents=True, exist_ok=True)
    output = output.resolve()
    # The kernel runs beside the notebook, so its default store is the
    # notebook's .kernelflow/; pin it so this process reads the same one.
    store_dir = os.environ.get("KERNELFLOW_HOME") or str(notebook.parent / ".kernelflow")
    env = {
        "KERNELFLOW_HOME": store_dir,
        "KERNELFLOW_BATCH_ID": batch_id,
        "KERNELFLOW_VIA": "papermill",
        "KERNELFLOW_NOTEBOOK": str(notebook),
        **extra_env,
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits the environment of this process
    print(f"running {notebook.name} with papermill (parameters: {parameters or 'none'})", file=sys.stderr)
    failed: str | None = None
    try:
        papermill.execute_notebook(
            str(notebook), str(output), parameters=parameters, cwd=str(notebook.parent),
            progress_bar=progress, log_output=False,
        )  # fmt: skip
    except PapermillExecutionError as exc:
        failed = f"cell {exc.exec_count}: {exc.ename}: {exc.evalue}"
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return store_dir, output, failed


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
    run = resume(args.run_id, workflow=workflow, raise_on_failure=False)
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
    store_dir, output, failed = _execute_notebook(
        notebook.resolve(), output, {}, new_batch, {"KERNELFLOW_RESUME_BATCH": batch}, progress=not args.no_progress
    )
    from .reducer import fold
    from .store_access import open_store

    events = open_store(store_dir).read_run(args.run_id)
    status = fold(events).status
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
        args.no_progress = True
        return cmd_resume(args)
    print(f"continue the run with: kernelflow resume {args.run_id}")
    return EXIT_OK


# --- history / show / sql ---------------------------------------------------------


def cmd_history(args: argparse.Namespace) -> int:
    where, params = [], []
    if args.workflow:
        where.append("workflow = ?")
        params.append(args.workflow)
    if args.status:
        where.append("status = ?")
        params.append(args.status)
    clause = f"WHERE {' AND '.join(where)} " if where else ""
    df = _store(args).sql(
        "SELECT run_id, workflow, status, started_at, round(duration_s, 3) AS duration_s, tasks_total AS tasks, "
        f"tasks_succeeded AS ok, tasks_failed AS failed, tasks_skipped AS skipped FROM runs {clause}"
        "ORDER BY started_at DESC LIMIT ?",
        params + [args.limit],
    )
    if not len(df):
        print("no runs recorded yet" + (" matching the filters" if where else ""))
        return EXIT_OK
    print(_table(df))
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    from .dag_text import render_text
    from .model import Workflow
    from .reducer import fold

    store = _store(args)
    events = store.read_run(args.run_id)
    if not events:
        close = store.sql(
            "SELECT run_id FROM runs WHERE run_id LIKE ? ORDER BY started_at DESC LIMIT 5", [f"%{args.run_id[-4:]}%"]
        )
        hint = f"; similar ids: {', '.join(close['run_id'])}" if len(close) else ""
        print(f"error: no run {args.run_id!r} in the store at {store.location}{hint}", file=sys.stderr)
        return EXIT_FAILED
    state = fold(events)
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
    attempts = store.sql(
        "SELECT task_id AS task, attempt, status, round(duration_ms, 2) AS duration_ms, error_type, error_message "
        "FROM task_attempts WHERE run_id = ? ORDER BY started_at, task_id, attempt",
        [args.run_id],
    )
    print(_table(attempts))
    for tid in state.failed_tasks:
        error = state.tasks[tid].error or {}
        print(f"\n--- {tid} (attempt {state.tasks[tid].attempt}) ---\n{error.get('traceback') or error.get('message')}")
    return EXIT_OK


def cmd_sql(args: argparse.Namespace) -> int:
    df = _store(args).sql(args.query)
    if args.format == "csv":
        print(df.write_csv(), end="")
    elif args.format == "json":
        print(df.write_json())
    else:
        print(_table(df))
    return EXIT_OK


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
    run = wf.run(**inputs, raise_on_failure=False)
    print(run.summary())
    return _exit_for(run.status)


# --- dead letters --------------------------------------------------------------


def cmd_dlq(args: argparse.Namespace) -> int:
    from .dead_letters import dlq
    from .store_access import use_store

    if args.store:
        use_store(args.store)
    if args.action == "list":
        df = dlq(args.workflow)
        if df.height == 0:
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
    store = _store(args)
    if not isinstance(store, FolderStore):
        print(f"error: gc works on kernelflow's folder store, not on {type(store).__name__}", file=sys.stderr)
        return EXIT_FAILED
    report = collect(store, age, dry_run=not args.yes)
    if args.json:
        import json

        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(report.summary())
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kernelflow", description="Workflows that live in the notebook.")
    parser.add_argument("--store", help="store folder (default: $KERNELFLOW_HOME or ./.kernelflow)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="execute a notebook headless with papermill (or a YAML workflow file) and summarise its runs")
    p.add_argument("target", help="a notebook (.ipynb) or a workflow file (.yaml)")
    p.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="a papermill parameter (repeatable); VALUE is a Python literal or a string")
    p.add_argument("-o", "--output", help="where to write the executed notebook (default out/NAME.ipynb)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("history", help="recent runs, newest first")
    p.add_argument("--workflow", help="only this workflow")
    p.add_argument("--status", choices=["running", "waiting", "succeeded", "failed"], help="only runs in this status")
    p.add_argument("--limit", type=int, default=20, help="how many (default 20)")
    p.set_defaults(func=cmd_history)

    p = sub.add_parser("show", help="one run: its DAG with statuses, attempts and errors")
    p.add_argument("run_id")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("dlq", help="the dead letter queue: runs that failed for good")
    p.add_argument("action", choices=["list", "retry", "discard"])
    p.add_argument("run_id", nargs="?", help="the failed run (retry, discard)")
    p.add_argument("--workflow", help="list: only this workflow")
    p.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="retry: an input to change (repeatable)")
    p.add_argument("--file", help="retry: the YAML file defining the workflow")
    p.add_argument("--reason", help="discard: why (recorded)")
    p.set_defaults(func=cmd_dlq)

    p = sub.add_parser("resume", help="continue a failed, interrupted or suspended run without re-running completed tasks")
    p.add_argument("run_id")
    p.add_argument("--file", help="the workflow file (.yaml) defining the run's workflow (default: the one it was run from)")
    p.add_argument("--notebook", help="re-execute this notebook in resume mode (default: the notebook the run came from)")
    p.add_argument("-o", "--output", help="notebook resume: where to write the executed notebook")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
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
    p.add_argument("--store", default=argparse.SUPPRESS, help="store folder (as the global --store)")
    p.set_defaults(func=cmd_gc)

    p = sub.add_parser("sql", help="query the store with SQL (views: events, runs, task_attempts, workflows)")
    p.add_argument("query")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")
    p.set_defaults(func=cmd_sql)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("KERNELFLOW_VIA", "cli")
    try:
        return args.func(args)
    except KernelflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
