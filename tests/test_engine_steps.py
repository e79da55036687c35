"""How the engine prepares the call of each step kind, to the exact arguments the step receives.

Covers what tests/test_engine_units.py and tests/test_control_flow.py leave open in
kernelflow/engine.py's ``_Driver.prepare``, ``_arg_text`` and ``_jsonable``: every option a
shell step hands to the command (argv values as text, shell, cwd, env, inherit_env,
max_output, stdin, masking), what an http request carries (headers, query, body, max_body),
where a notebook step looks for a relative notebook (no kernel starts: the notebooks are
missing), a sub-workflow's inputs in a forEach loop and its timeout, switch values that are
null, not a template, or read the forEach item, the repr a long switch value is recorded as,
and the call time a circuit breaker's probe reports with. Fast, in-process, thread executor;
two short subprocesses.
"""

from __future__ import annotations

import threading
import time

from http_server import http_server_fixture  # noqa: F401 - the `http_server` fixture (a server thread)
from test_engine_units import cell, of_task

SECRET = "s3cr3t-value-123"


# --- shell: what the command gets --------------------------------------------------------------

SHELL = """
import kernelflow as kf
listed = kf.shell(
    ["sh", "-c", 'printf "%s|" "$@" "$PWD" "${KF_OUTER-unset}" "$KF_FLAG"', "sh",
     "{{inputs.flag}}", "{{inputs.off}}", "{{inputs.n}}", "{{inputs.x}}"],
    cwd=CWD, env={"KF_FLAG": "{{inputs.flag}}"},
)
joined = kf.shell(
    'cat; printf "%s" "${KF_OUTER-unset}"; printf "%s" "$TOKEN" >&2',
    shell=True, inherit_env=False, max_output=20, stdin="0123456789abcdefghijklmnopqrst",
    env={"TOKEN": "{{secrets.KF_TEST_SECRET}}"},
)
def seen(listed, joined):
    return [listed["stdout"], joined["stdout"], joined["stdout_truncated"], joined["stderr"], SECRET in joined["stderr"]]
"""


def test_a_shell_step_gets_its_arguments_as_text_and_every_option_it_declares(tmp_path, monkeypatch):
    monkeypatch.setenv("KF_OUTER", "outer")
    monkeypatch.setenv("KF_TEST_SECRET", SECRET)
    cwd = tmp_path.resolve()
    run = cell("shell_opts", SHELL, {"CWD": str(cwd), "SECRET": SECRET}).run(flag=True, off=False, n=2, x=1.5)
    listed, joined, truncated, stderr, leaked = run.output
    # Whole-template arguments keep their type until the command line, which takes
    # text: booleans as true/false (as YAML writes them), numbers as their digits.
    # The first command inherits the environment and runs in cwd.
    assert listed == f"true|false|2|1.5|{cwd}|outer|true|"
    # shell=True runs the one string through /bin/sh; inherit_env=False hides KF_OUTER;
    # stdin is fed; max_output keeps the last 20 bytes of the 35 written.
    assert (joined, truncated) == ("fghijklmnopqrstunset", True)
    # The step's own output is masked, so the value the next task gets holds no secret.
    assert (stderr, leaked) == ("***", False)


# --- switch: the value and its label ------------------------------------------------------------

SWITCH = """
import kernelflow as kf
def on_null():
    return "null"
def on_none_text():
    return "None"
def other():
    return "other"
route = kf.switch("{{inputs.x}}", cases={None: on_null, "None": on_none_text}, default=other)
"""


def test_a_null_switch_value_matches_the_null_case():
    run = cell("sw_null", SWITCH).run(x=None)
    assert of_task(run, "route")[2] == ("SwitchMatched", None, {"value": None, "case": "null", "target": "python:on_null"})
    assert run.output == "null"


def test_a_switch_value_that_is_not_a_template_is_used_as_it_is():
    src = "import kernelflow as kf\ndef three():\n    return 3\ndef other():\n    return 0\nroute = kf.switch(3, cases={3: three}, default=other)\n"
    run = cell("sw_literal", src).run()
    assert of_task(run, "route")[2] == ("SwitchMatched", None, {"value": 3, "case": "3", "target": "python:three"})
    assert run.output == 3


def test_a_switch_in_a_for_each_loop_reads_each_item():
    src = """
import kernelflow as kf
def one(item):
    return ["one", item]
def two(item):
    return ["two", item]
route = kf.switch("{{forEach.item}}", cases={1: one, 2: two}, for_each={"items": [2, 1]})
"""
    run = cell("sw_each", src).run()
    matched = [p for t, _, p in of_task(run, "route") if t == "SwitchMatched"]
    assert sorted(m["target"] for m in matched) == ["python:one", "python:two"]
    assert run.output["outputs"] == [["two", 2], ["one", 1]]


def test_a_long_switch_value_json_cannot_hold_is_recorded_as_its_first_200_characters():
    src = """
import kernelflow as kf
def parse():
    return {"kind": set(range(100))}
def other():
    return "other"
route = kf.switch("{{tasks.parse.output.kind}}", cases={"a": other}, default=other)
"""
    run = cell("sw_long", src).run()
    value = of_task(run, "route")[2][2]["value"]
    assert value == repr(set(range(100)))[:200] and len(value) == 200


# --- circuit breakers: which probe reports ------------------------------------------------------


def test_a_probe_reports_with_the_time_it_asked_so_another_probe_in_flight_keeps_its_place():
    from kernelflow.store_access import open_store

    # Another process's probe, asked a moment ago, is still in flight on the half-open circuit.
    other_probe = time.time() - 1.0
    store = open_store()
    store.circuits.transact("svc_probes", lambda _: (None, {"status": "half_open", "probes": [other_probe]}))
    src = """
import kernelflow as kf
@kf.task(circuit_breaker={"failure_threshold": 2, "window": "60s", "break_duration": "60s", "half_open_probes": 2, "name": "svc_probes"})
def call():
    return "fresh"
"""
    run = cell("probes", src).run()
    assert run.output == "fresh"
    state = run.store.circuits.read("svc_probes")
    # This run's probe took its own entry out, not the older one of the other process.
    assert (state["status"], state["probes"], state["probe_successes"]) == ("half_open", [other_probe], 1)


# --- http: what the request carries ----------------------------------------------------------------

HTTP = """
import kernelflow as kf
send = kf.http("POST", URL + "/items", headers={"X-Run": "{{inputs.tag}}"}, params={"page": "{{inputs.page}}"},
               json={"n": "{{inputs.page}}"}, max_body=1000)
big = kf.http("GET", URL + "/big", max_body=10)
"""


def test_an_http_step_sends_its_headers_query_and_body_and_keeps_to_its_max_body(http_server):
    http_server.route("POST", "/items", status=201, json={"id": 7})
    http_server.route("GET", "/big", body="x" * 11)
    run = cell("http_opts", HTTP, {"URL": http_server.url}).run(tag="t1", page=3, raise_on_failure=False)
    [sent] = [r for r in http_server.requests if r.method == "POST"]
    assert (sent.path, sent.headers["x-run"], sent.json) == ("/items?page=3", "t1", {"n": 3})
    assert run["send"] == {"id": 7}
    assert run.state.tasks["big"].error["message"] == (
        f"http step 'big': GET {http_server.url}/big returned a body larger than max_body=10 bytes; "
        "raise max_body or ask the server for less"
    )


# --- notebook: where a relative path is looked for ---------------------------------------------------


def test_a_notebook_step_of_a_workflow_file_looks_for_its_notebook_next_to_the_file(tmp_path, monkeypatch):
    import kernelflow as kf

    folder = tmp_path / "flows"
    folder.mkdir()
    monkeypatch.chdir(tmp_path)  # not the file's folder: a relative path must not be read from here
    path = folder / "nb_base.yaml"
    path.write_text("name: nb_base\nsteps:\n  - id: report\n    run: notebook\n    notebook: missing.ipynb\n")
    run = kf.load(path).run(raise_on_failure=False)
    # The file is missing, so no kernel starts: the step fails naming where it looked.
    assert run.state.tasks["report"].error["message"] == (
        f"notebook step 'report': notebook 'missing.ipynb' not found (looked for {folder.resolve() / 'missing.ipynb'})"
    )


def test_a_workflow_whose_file_is_gone_looks_for_a_relative_notebook_in_the_working_directory(tmp_path, monkeypatch):
    import kernelflow as kf

    folder = tmp_path / "flows"
    folder.mkdir()
    monkeypatch.chdir(tmp_path)
    path = folder / "nb_gone.yaml"
    path.write_text("name: nb_gone\nsteps:\n  - id: report\n    run: notebook\n    notebook: missing.ipynb\n")
    wf = kf.load(path)
    path.unlink()
    run = wf.run(raise_on_failure=False)
    assert run.state.tasks["report"].error["message"] == (
        f"notebook step 'report': notebook 'missing.ipynb' not found (looked for {tmp_path.resolve() / 'missing.ipynb'})"
    )


# --- sub-workflows: the child's inputs and the step's timeout -------------------------------------------


def test_a_sub_workflow_in_a_for_each_loop_gets_each_item_as_its_input():
    ns: dict = {}
    ns["each_child"] = cell("each_child", "def double(x):\n    return x * 2\n", ns)
    src = "import kernelflow as kf\nsub = kf.subworkflow(each_child, input={'x': '{{forEach.item}}'}, for_each={'items': [3, 5]})\n"
    run = cell("each_parent", src, ns).run()
    assert run["sub"]["outputs"] == [6, 10]


def test_the_engine_stops_waiting_for_a_sub_workflow_at_the_steps_timeout():
    gate = threading.Event()
    ns: dict = {"GATE": gate}
    ns["slow_child"] = cell("slow_child", "def wait():\n    GATE.wait(2)\n", ns)
    src = "import kernelflow as kf\nsub = kf.subworkflow(slow_child, timeout=0.1, on_timeout='fail')\n"
    try:
        run = cell("slow_parent", src, ns).run(raise_on_failure=False)
    finally:
        gate.set()
    # A sub-workflow has no deadline of its own (unlike shell, http and notebook steps):
    # the engine's is the one that ends the wait.
    assert run.state.tasks["sub"].error["message"] == "task 'sub' ran longer than its timeout of 100ms"
