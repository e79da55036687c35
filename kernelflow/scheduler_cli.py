"""``kernelflow scheduler ...``: run the scheduler, and look at or change its schedules.

Wire it into the main parser with ``add_parser(subparsers)``; it also runs on
its own as ``python -m kernelflow.scheduler_cli [--store PATH] scheduler ...``.

Exit codes (as the rest of the CLI): 0 success; 1 refused or failed (a second
scheduler on the store, an unknown schedule, a triggered run that failed;
``status`` when no scheduler is running); 2 bad usage; 3 a triggered run is
suspended at an approval gate.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from .cli import positive_int
from .exceptions import KernelflowError
from .literals import parse_literal

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_SUSPENDED = 0, 1, 2, 3


def _store(args: argparse.Namespace) -> Any:
    from .store import FolderStore
    from .store_access import open_store

    store = open_store(args.store) if getattr(args, "store", None) else open_store()
    if not isinstance(store, FolderStore):
        raise KernelflowError(f"the scheduler works on kernelflow's folder store, not on {type(store).__name__}")
    return store


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(type(value).__name__)


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=_json_default))


def _table(df: Any) -> str:
    import polars as pl

    with pl.Config(tbl_rows=200, tbl_cols=20, fmt_str_lengths=60, tbl_hide_dataframe_shape=True, tbl_width_chars=200):
        return str(df)


def _inputs(pairs: Sequence[Sequence[str]]) -> dict[str, Any]:
    return {key: parse_literal(value) for key, value in pairs}


# --- start ---------------------------------------------------------------------------


def cmd_start(args: argparse.Namespace) -> int:
    from .scheduler import Scheduler, SchedulerBusyError, load_sources

    store = _store(args)
    found, problems = load_sources(args.paths)
    if problems:
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        return EXIT_FAILED
    scheduler = Scheduler(store, args.paths, tick=args.tick, grace=args.grace)
    try:
        scheduler.start()
    except SchedulerBusyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.metrics_port is not None:
        try:
            from . import metrics  # type: ignore[attr-defined]
        except ModuleNotFoundError as exc:
            if exc.name != f"{__package__}.metrics":
                raise
            scheduler.release()
            print("error: --metrics-port needs kernelflow.metrics, which this installation does not have", file=sys.stderr)
            return EXIT_FAILED
        metrics.serve(store, host="127.0.0.1", port=args.metrics_port)
        scheduler.log(f"metrics on http://127.0.0.1:{args.metrics_port}/metrics")
    server = None
    if args.webhooks is not None:
        try:
            server = _webhook_server(scheduler, args.webhooks).start()
        except KernelflowError as exc:
            scheduler.release()
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_FAILED
        scheduler.log(f"webhooks on {server.url}/hooks/<schedule>")
    names = ", ".join(s.name for s in found) or "none"
    scheduler.log(f"schedules from files: {names}; registrations in the store are read at every tick")
    try:
        return scheduler.serve()
    finally:
        if server is not None:
            server.stop()


def _webhook_server(scheduler: Any, port: int) -> Any:
    """The webhook server (kernelflow/webhooks.py) in front of ``scheduler.fire_now``.

    Schedules with a ``webhook:`` mapping are its triggers, re-read on each
    request so a schedule registered meanwhile is reachable; a bad spec is an
    error now, at start, rather than a 500 later.
    """
    from .webhooks import WebhookRefused, WebhookServer, WebhookTrigger

    built: dict[str, tuple[str, WebhookTrigger]] = {}

    def trigger_of(schedule: Any) -> WebhookTrigger:
        key = json.dumps(dict(schedule.webhook), sort_keys=True, default=str)
        known = built.get(schedule.name)
        if known is None or known[0] != key:
            known = built[schedule.name] = (key, WebhookTrigger.from_spec(schedule.name, schedule.webhook))
        return known[1]

    def triggers() -> dict[str, WebhookTrigger]:
        out = {}
        for schedule in list(scheduler.schedules.values()):
            if schedule.webhook and schedule.enabled:
                try:
                    out[schedule.name] = trigger_of(schedule)
                except KernelflowError as exc:  # registered while running: refuse it, keep serving the others
                    scheduler.log(f"{schedule.name}: webhook not served: {exc}")
        return out

    def fire(name: str, payload: dict[str, Any]) -> dict[str, Any]:
        trigger = triggers()[name]
        record = scheduler.fire_now(name, {trigger.input: payload} if trigger.input else payload, kind="webhook")
        if record.get("outcome") == "refused":
            raise WebhookRefused(record.get("detail") or "the scheduler is stopping", status=503, retry_after=30)
        if record.get("outcome") == "failed_to_start":
            raise WebhookRefused(record.get("detail") or "the run could not start", status=409)
        return {k: record[k] for k in ("trigger_id", "schedule", "outcome", "detail") if record.get(k) is not None}

    for schedule in list(scheduler.reload().values()):
        if schedule.webhook:
            trigger_of(schedule)
    return WebhookServer(triggers, fire, port=port)


# --- status / list / history ------------------------------------------------------------


def _age(iso: str | None) -> float | None:
    from .scheduler import _parse_iso

    moment = _parse_iso(iso)
    return None if moment is None else max((datetime.now(timezone.utc) - moment).total_seconds(), 0.0)


def cmd_status(args: argparse.Namespace) -> int:
    from .schedule_api import schedules
    from .scheduler import LEASE

    store = _store(args)
    holder = store.lease_holder(LEASE)
    status = store.schedules.read_status() or {}
    table = schedules(store=store.location)
    heartbeat_age = _age(status.get("heartbeat_at"))
    report = {
        "running": holder is not None,
        "stale": holder is None and bool(status) and status.get("state") != "stopped",
        "pid": (holder or status).get("pid"),
        "host": (holder or status).get("host"),
        "since": (holder or {}).get("since") or status.get("started_at"),
        "heartbeat_at": status.get("heartbeat_at"),
        "heartbeat_age_s": heartbeat_age,
        "children": status.get("running", []) if holder else [],
        "queued": status.get("queued", []) if holder else [],
        "problems": status.get("problems", []) if holder else [],
        "schedules": list(table),
    }
    if args.json:
        _print_json(report)
        return EXIT_OK if holder else EXIT_FAILED
    if holder:
        age = f"{heartbeat_age:.1f} s ago" if heartbeat_age is not None else "not yet"
        print(f"scheduler: running, pid {report['pid']} on {report['host']} since {report['since']} (heartbeat {age})")
        for child in report["children"]:
            print(f"  running: {child['schedule']} (trigger {child['trigger_id']}, pid {child['pid']}, since {child['started_at']})")
        for firing in report["queued"]:
            print(f"  queued: {firing['schedule']} (trigger {firing['trigger_id']}, {firing['kind']})")
        for problem in report["problems"]:
            print(f"  problem: {problem}")
    elif status:
        what = "stopped" if status.get("state") == "stopped" else "not running (stale: its lease is free, it did not stop cleanly)"
        print(f"scheduler: {what}; last seen pid {status.get('pid')} on {status.get('host')}, "
              f"last heartbeat {status.get('heartbeat_at')}")  # fmt: skip
    else:
        print("scheduler: not running (never started on this store); start one with: kernelflow scheduler start [PATH...]")
    _print_schedules(table, brief=True)
    return EXIT_OK if holder else EXIT_FAILED


def _print_schedules(table: Any, *, brief: bool = False) -> None:
    if not len(table):
        print("no schedules registered" + ("" if brief else "; add one with kf.schedule(...) or kernelflow scheduler add"))
        return
    cols = ["name", "when", "enabled", "next_fire", "last_outcome", "last_fired_at"]
    if not brief:
        cols[2:2] = ["target", "overlap", "missed"]
    print(_table(table.df.select(cols)))


def cmd_list(args: argparse.Namespace) -> int:
    from .schedule_api import schedules

    table = schedules(store=_store(args).location)
    if args.json:
        _print_json(list(table))
    else:
        _print_schedules(table)
    return EXIT_OK


def cmd_history(args: argparse.Namespace) -> int:
    store = _store(args)
    where, params = "", []
    if args.schedule:
        where, params = "WHERE schedule = ? ", [args.schedule]
    df = store.sql(
        "SELECT trigger_id, schedule, kind, scheduled_for, fired_at, outcome, run_id, exit_code, detail "
        f"FROM triggers {where}ORDER BY fired_at DESC, updated_at DESC LIMIT ?",
        params + [args.limit],
    )
    if args.json:
        _print_json(df.to_dicts())
    elif not len(df):
        print("no triggers recorded yet" + (f" for schedule {args.schedule!r}" if args.schedule else ""))
    else:
        print(_table(df))
    return EXIT_OK


# --- add / remove / trigger --------------------------------------------------------------------


def cmd_add(args: argparse.Namespace) -> int:
    from .schedule_api import schedule

    store = _store(args)
    sched = schedule(
        args.target, name=args.name, cron=args.cron, every=args.every, timezone=args.timezone,
        inputs=_inputs(args.parameter) or None, overlap=args.overlap, missed=args.missed,
        max_catch_up=args.max_catch_up, enabled=not args.disabled, store=store.location,
    )  # fmt: skip
    upcoming = sched.next_fire(datetime.now(timezone.utc))
    print(f"schedule {sched.name!r} registered: {sched.when} -> {sched.target}"
          + (f"; next fire {upcoming:%Y-%m-%d %H:%M:%S} UTC" if upcoming and sched.enabled else ""))  # fmt: skip
    return EXIT_OK


def cmd_remove(args: argparse.Namespace) -> int:
    from .schedule_api import unschedule

    unschedule(args.name, store=_store(args).location)
    print(f"schedule {args.name!r} removed")
    return EXIT_OK


def _outcome_exit(outcome: str) -> int:
    return {"succeeded": EXIT_OK, "started": EXIT_OK, "queued": EXIT_OK, "skipped_overlap": EXIT_OK,
            "suspended": EXIT_SUSPENDED}.get(outcome, EXIT_FAILED)  # fmt: skip


def cmd_trigger(args: argparse.Namespace) -> int:
    from .scheduler import LEASE, Scheduler, SchedulerBusyError

    store = _store(args)
    inputs = _inputs(args.parameter)
    trigger_id = "t-" + secrets.token_hex(6)
    if store.lease_holder(LEASE) is None:
        # No scheduler: fire it here and wait, holding the lease meanwhile so
        # that no scheduler starts and fires the same schedule alongside.
        scheduler = Scheduler(store, args.paths, grace=0.0)
        try:
            scheduler.start()
        except SchedulerBusyError:
            pass  # one started meanwhile: ask it instead
        else:
            try:
                record = scheduler.fire_now(args.name, inputs or None, kind="manual", trigger_id=trigger_id)
                print(f"trigger {trigger_id}: {record['outcome']}" + (f" ({record['detail']})" if record.get("detail") else ""))
                while scheduler._children:
                    scheduler._reap()
                    time.sleep(0.2)
            except KeyboardInterrupt:
                pass
            finally:
                scheduler.shutdown()
            final = [r for r in store.schedules.trigger_records() if r["trigger_id"] == trigger_id]
            outcome = final[-1]["outcome"] if final else record["outcome"]
            if final and outcome != record["outcome"]:
                last = final[-1]
                print(f"trigger {trigger_id}: {outcome}" + (f", run {last['run_id']}" if last.get("run_id") else ""))
            return _outcome_exit(outcome)
    store.schedules.request({"trigger_id": trigger_id, "schedule": args.name, "inputs": inputs, "kind": "manual",
                             "requested_at": datetime.now(timezone.utc).isoformat()})  # fmt: skip
    deadline = time.monotonic() + args.wait
    while time.monotonic() < deadline:
        found = [r for r in store.schedules.trigger_records() if r["trigger_id"] == trigger_id]
        if found:
            record = found[0]
            print(f"trigger {trigger_id}: {record['outcome']} by the running scheduler"
                  + (f" ({record['detail']})" if record.get("detail") else ""))  # fmt: skip
            return _outcome_exit(record["outcome"])
        time.sleep(0.2)
    print(f"error: the running scheduler did not take trigger request {trigger_id} within {args.wait:g} s; "
          "see kernelflow scheduler status", file=sys.stderr)  # fmt: skip
    return EXIT_FAILED


# --- the parser ---------------------------------------------------------------------------------


def _seconds(text: str) -> float:
    from .durations import parse_duration

    try:
        return parse_duration(text, what="seconds") if text not in ("0", "0s") else 0.0
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``scheduler`` and its subcommands to the main parser's subparsers; returns its parser."""
    from .schedules import MISSED_POLICIES, OVERLAP_POLICIES

    parser = subparsers.add_parser("scheduler", help="run workflows on cron and interval schedules; list, add, trigger them")
    parser.add_argument("--store", default=argparse.SUPPRESS, help="store folder (as the global --store)")
    sub = parser.add_subparsers(dest="scheduler_command", required=True, metavar="SUBCOMMAND")

    p = sub.add_parser("start", help="run the scheduler in the foreground until SIGTERM/SIGINT (one per store)")
    p.add_argument("paths", nargs="*", metavar="PATH", help="YAML workflow files, notebooks or folders with schedule: declarations")
    p.add_argument("--grace", type=_seconds, default=30.0, metavar="S", help="on SIGTERM, seconds running runs get to finish (default 30)")
    p.add_argument("--tick", type=_seconds, default=1.0, metavar="S", help="longest wait between two checks (default 1)")
    p.add_argument("--metrics-port", type=int, metavar="N", help="also serve Prometheus metrics on 127.0.0.1:N")
    p.add_argument("--webhooks", type=int, metavar="PORT",
                   help="also start runs on signed POST /hooks/<schedule> at 127.0.0.1:PORT (off by default; docs/webhooks.md)")
    p.set_defaults(func=cmd_start)

    p = sub.add_parser("status", help="is a scheduler running (pid, heartbeat), and each schedule's next fire time and last outcome")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("list", help="the schedules: registered ones and those a running scheduler reads from files")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("history", help="triggers, newest first: what fired when, and how it ended")
    p.add_argument("--schedule", help="only this schedule")
    p.add_argument("--limit", type=positive_int, default=20, help="how many (default 20)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_history)

    p = sub.add_parser("add", help="register a schedule in the store (as kf.schedule)")
    p.add_argument("target", help="a YAML workflow file or a notebook")
    p.add_argument("--name", help="the schedule's name (default: the file name without extension)")
    p.add_argument("--cron", help="5-field cron expression, e.g. '0 6 * * mon-fri'")
    p.add_argument("--every", help="an interval instead of cron, e.g. 15m")
    p.add_argument("--timezone", default="UTC", help="IANA time zone the cron is read in (default UTC)")
    p.add_argument("--overlap", default="skip", help=f"when the previous run is still going: {', '.join(OVERLAP_POLICIES)} (default skip)")
    p.add_argument("--missed", default="skip", help=f"fire times missed while no scheduler ran: {', '.join(MISSED_POLICIES)} (default skip)")
    p.add_argument("--max-catch-up", type=int, default=3, help="with --missed catch_up: at most this many (default 3)")
    p.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="an input passed to each run (repeatable); VALUE is a Python literal or a string")
    p.add_argument("--disabled", action="store_true", help="register it paused")
    p.set_defaults(func=cmd_add)

    p = sub.add_parser("remove", help="unregister a schedule (runs it started go on)")
    p.add_argument("name")
    p.set_defaults(func=cmd_remove)

    p = sub.add_parser("trigger", help="fire a schedule now (through the running scheduler, or here if none runs)")
    p.add_argument("name")
    p.add_argument("paths", nargs="*", metavar="PATH", help="without a running scheduler: files declaring the schedule, if it is not registered")
    p.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="an input for this run (repeatable), over the schedule's own")
    p.add_argument("--wait", type=float, default=30.0, metavar="S", help="how long to wait for the running scheduler to take the request (default 30)")
    p.set_defaults(func=cmd_trigger)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m kernelflow.scheduler_cli [--store PATH] scheduler SUBCOMMAND ...``."""
    parser = argparse.ArgumentParser(prog="kernelflow")
    parser.add_argument("--store", help="store folder (default: $KERNELFLOW_HOME or ./.kernelflow)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_parser(sub)
    args = parser.parse_args(argv)
    os.environ.setdefault("KERNELFLOW_VIA", "cli")
    try:
        return args.func(args)
    except KernelflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
