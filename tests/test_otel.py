"""The OpenTelemetry listener: runs and attempts as spans, timed by their events."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import kernelflow as kf
from kernelflow import events as ev
from kernelflow.plugins import otel_listener
from kernelflow.store_access import open_store


@pytest.fixture(autouse=True)
def no_watcher(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KERNELFLOW_NO_WATCH", "1")  # the tests resume suspended runs themselves
    monkeypatch.delenv(otel_listener.ENV, raising=False)
    monkeypatch.setattr(otel_listener, "_choice", None)  # whatever a test enables ends with it


@pytest.fixture
def provider() -> Iterator[TracerProvider]:
    made = TracerProvider()
    yield made
    made.shutdown()


@pytest.fixture
def spans(provider: TracerProvider) -> InMemorySpanExporter:
    """What kernelflow traces from now on, kept in memory."""
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    kf.use_opentelemetry(provider)
    return exporter


def by_name(exporter: InMemorySpanExporter, name: str) -> list:
    return [s for s in exporter.get_finished_spans() if s.name == name]


def one(exporter: InMemorySpanExporter, name: str):  # type: ignore[no-untyped-def]
    found = by_name(exporter, name)
    assert len(found) == 1, [s.name for s in exporter.get_finished_spans()]
    return found[0]


def event(run: kf.Run, type_: str, task: str | None = None, attempt: int | None = None) -> kf.Event:
    return next(e for e in open_store().read_run(run.run_id)
                if e.type == type_ and (task is None or e.task_id == task) and (attempt is None or e.attempt == attempt))  # fmt: skip


def test_a_run_is_a_span_with_a_child_span_per_attempt(spans: InMemorySpanExporter) -> None:
    def extract():
        return [1, 2, 3]

    def total(extract):
        return sum(extract)

    wf = kf.workflow("otel_basic", [extract, total])
    run = wf.run()
    root = one(spans, "run otel_basic")
    assert root.parent is None
    assert root.attributes.items() >= {
        "kernelflow.run_id": run.run_id,
        "kernelflow.workflow": "otel_basic",
        "kernelflow.workflow_version": wf.version,
        "kernelflow.executor": "threads",
        "kernelflow.status": "succeeded",
        "kernelflow.tasks": 2,
    }.items()
    assert root.status.status_code is StatusCode.UNSET
    for tid in ("extract", "total"):
        span = one(spans, f"task {tid}")
        assert span.parent.span_id == root.context.span_id and span.context.trace_id == root.context.trace_id
        assert span.attributes.items() >= {
            "kernelflow.run_id": run.run_id,
            "kernelflow.workflow": "otel_basic",
            "kernelflow.workflow_version": wf.version,
            "kernelflow.task_id": tid,
            "kernelflow.attempt": 1,
            "kernelflow.executor": "threads",
            "kernelflow.status": "succeeded",
        }.items()


def test_span_times_are_the_events_times(spans: InMemorySpanExporter) -> None:
    def a():
        return 1

    def b(a):
        return a + 1

    run = kf.workflow("otel_times", [a, b]).run()
    root = one(spans, "run otel_times")
    assert root.start_time == event(run, ev.RUN_STARTED).ts * 1000
    assert root.end_time == event(run, ev.RUN_SUCCEEDED).ts * 1000
    for tid in ("a", "b"):
        span = one(spans, f"task {tid}")
        assert span.start_time == event(run, ev.TASK_STARTED, tid).ts * 1000
        assert span.end_time == event(run, ev.TASK_SUCCEEDED, tid).ts * 1000


def test_a_failed_attempt_is_an_error_a_retry_another_span_and_a_skipped_task_a_zero_length_span(
    spans: InMemorySpanExporter,
) -> None:
    calls: list[int] = []

    def source():
        return 1

    @kf.task(retries=1, retry_delay=0)
    def flaky(source):
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("first try fails")
        return source

    def broken(flaky):
        raise RuntimeError("always fails")

    def after(broken):
        return broken

    run = kf.workflow("otel_fail", [source, flaky, broken, after]).run(raise_on_failure=False)
    assert run.status == "failed"

    first, second = sorted(by_name(spans, "task flaky"), key=lambda s: s.attributes["kernelflow.attempt"])
    assert first.attributes["kernelflow.attempt"] == 1 and second.attributes["kernelflow.attempt"] == 2
    assert first.status.status_code is StatusCode.ERROR and "first try fails" in first.status.description
    assert first.attributes["kernelflow.status"] == "retrying"
    assert first.attributes["kernelflow.retry.next_attempt"] == 2
    (exc,) = [e for e in first.events if e.name == "exception"]
    assert exc.attributes["exception.type"] == "ValueError"
    assert exc.attributes["exception.message"] == "first try fails"
    assert "first try fails" in exc.attributes["exception.stacktrace"]
    assert exc.timestamp == first.end_time == event(run, ev.TASK_RETRYING, "flaky").ts * 1000
    assert second.status.status_code is StatusCode.UNSET and second.attributes["kernelflow.status"] == "succeeded"
    assert second.start_time == event(run, ev.TASK_STARTED, "flaky", 2).ts * 1000

    failed = one(spans, "task broken")
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.status.description == "RuntimeError: always fails"
    assert failed.attributes["kernelflow.status"] == "failed"

    skipped = one(spans, "task after")
    skipped_at = event(run, ev.TASK_SKIPPED, "after").ts * 1000
    assert skipped.start_time == skipped.end_time == skipped_at
    assert skipped.attributes["kernelflow.status"] == "skipped"
    assert skipped.attributes["kernelflow.skip.upstream"] == "broken"
    assert "kernelflow.attempt" not in skipped.attributes

    root = one(spans, "run otel_fail")
    assert root.status.status_code is StatusCode.ERROR and "always fails" in root.status.description
    assert root.attributes["kernelflow.status"] == "failed"
    assert list(root.attributes["kernelflow.failed_tasks"]) == ["broken"]
    assert {s.parent.span_id for s in spans.get_finished_spans() if s is not root} == {root.context.span_id}


def test_a_run_suspended_at_a_gate_ends_its_span_and_the_resumed_run_gets_a_linked_one(
    spans: InMemorySpanExporter,
) -> None:
    def rows():
        return [1, 2]

    @kf.approval("Publish {rows}?")
    def publish(rows):
        return len(rows)

    run = kf.workflow("otel_gate", [rows, publish]).run()
    assert run.status == "waiting"
    (first,) = by_name(spans, "run otel_gate")
    assert first.attributes["kernelflow.status"] == "waiting"
    assert first.attributes["kernelflow.suspended"] is True
    assert list(first.attributes["kernelflow.waiting_tasks"]) == ["publish"]
    assert first.status.status_code is StatusCode.UNSET
    assert first.end_time == event(run, ev.RUN_SUSPENDED).ts * 1000
    assert [e.name for e in first.events] == [ev.APPROVAL_REQUESTED, ev.RUN_SUSPENDED]
    assert by_name(spans, "task publish") == []  # no attempt started while waiting

    kf.approve(run.run_id, "publish", resume=False)
    run.resume()
    assert run.status == "succeeded"
    second = next(s for s in by_name(spans, "run otel_gate") if s is not first)
    assert second.attributes["kernelflow.run_id"] == run.run_id
    assert second.attributes["kernelflow.resumed"] is True
    assert second.attributes["kernelflow.resume.from_status"] == "waiting"
    assert second.attributes["kernelflow.status"] == "succeeded"
    assert second.start_time == event(run, ev.RUN_RESUMED).ts * 1000
    assert [link.context.span_id for link in second.links] == [first.context.span_id]
    publish_span = one(spans, "task publish")
    assert publish_span.parent.span_id == second.context.span_id
    assert publish_span.attributes["kernelflow.status"] == "succeeded"


def test_a_timed_out_attempt_is_an_error_and_a_fork_shows_the_outputs_it_reused(spans: InMemorySpanExporter) -> None:
    import time

    def a():
        return 1

    @kf.task(timeout=0.05)
    def slow(a):
        time.sleep(0.5)

    run = kf.workflow("otel_timeout", [a, slow]).run(raise_on_failure=False)
    timed_out = one(spans, "task slow")
    assert timed_out.status.status_code is StatusCode.ERROR and timed_out.status.description.startswith("TimeoutError")
    assert timed_out.attributes["kernelflow.status"] == "timed_out" and timed_out.attributes["kernelflow.timeout_s"] == 0.05
    assert timed_out.end_time == event(run, ev.TASK_TIMED_OUT, "slow").ts * 1000

    spans.clear()
    forked = run.fork("slow", wait=True)
    reused = one(spans, "task a")
    assert reused.start_time == reused.end_time == event(forked, ev.TASK_SUCCEEDED, "a").ts * 1000
    assert reused.attributes["kernelflow.status"] == "reused" and reused.attributes["kernelflow.reused_from"] == run.run_id
    root = one(spans, "run otel_timeout")
    assert root.attributes["kernelflow.forked_from"] == run.run_id and root.attributes["kernelflow.from_step"] == "slow"
    assert root.attributes["kernelflow.run_id"] == forked.run_id


def test_a_run_started_inside_a_span_is_its_child_and_a_subworkflow_hangs_under_the_calling_attempt(
    spans: InMemorySpanExporter, provider: TracerProvider
) -> None:
    from kernelflow.cell_compiler import compile_cell

    ns: dict = {}
    ns["otel_child"] = compile_cell("otel_child", "def double(x):\n    return x * 2\n", ns)
    body = (
        "import kernelflow as kf\n"
        "def start():\n    return 21\n"
        "call = kf.subworkflow(otel_child, input={'x': '{{tasks.start.output}}'})\n"
    )
    wf = compile_cell("otel_parent", body, ns)
    tracer = provider.get_tracer("a notebook")
    with tracer.start_as_current_span("notebook cell") as cell:
        run = wf.run()
    assert run.status == "succeeded"
    root = one(spans, "run otel_parent")
    assert root.parent.span_id == cell.get_span_context().span_id
    child_run = one(spans, "run otel_child")
    (calling,) = [s for s in spans.get_finished_spans()
                  if s.name.startswith("task ") and s.attributes.get("kernelflow.run_id") == run.run_id
                  and s.attributes["kernelflow.task_id"] != "start"]  # fmt: skip
    assert child_run.parent.span_id == calling.context.span_id
    assert child_run.attributes["kernelflow.parent_run_id"] == run.run_id
    assert one(spans, "task double").parent.span_id == child_run.context.span_id


def test_nothing_is_traced_unless_enabled(spans: InMemorySpanExporter) -> None:
    def a():
        return 1

    kf.use_opentelemetry(enabled=False)
    run = kf.workflow("otel_off", [a]).run()
    assert spans.get_finished_spans() == ()
    assert not any(isinstance(o, otel_listener.RunSpans) for o in run._observers)
    otel_listener._choice = None  # neither called nor $KERNELFLOW_OTEL: off
    assert not otel_listener.enabled()
    kf.workflow("otel_off", [a]).run()
    assert spans.get_finished_spans() == ()


def test_use_opentelemetry_refuses_what_is_not_a_provider() -> None:
    with pytest.raises(kf.InputError, match="must be an OpenTelemetry TracerProvider"):
        kf.use_opentelemetry(object())


def run_script(script: str, **env: str) -> dict:
    full = {k: v for k, v in os.environ.items() if k != otel_listener.ENV} | env
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=full, capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_without_enabling_opentelemetry_is_never_imported() -> None:
    got = run_script(
        """
        import json, sys
        import kernelflow as kf
        def a():
            return 1
        run = kf.workflow("otel_cost", [a]).run()
        print(json.dumps({"status": run.status, "otel": sorted(m for m in sys.modules if m.startswith("opentelemetry"))}))
        """
    )
    assert got == {"status": "succeeded", "otel": []}


def test_the_environment_variable_traces_into_the_global_provider() -> None:
    got = run_script(
        """
        import json
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        import kernelflow as kf
        def a():
            return 1
        kf.workflow("otel_env", [a]).run()
        print(json.dumps(sorted(s.name for s in exporter.get_finished_spans())))
        """,
        KERNELFLOW_OTEL="1",
    )
    assert got == ["run otel_env", "task a"]
