"""How the engine prepares the call of each step kind, to the exact arguments the step receives.

Covers what tests/test_engine_units.py leaves open in kernelflow/engine.py's ``_Driver.prepare``,
``_arg_text`` and ``_jsonable`` (tests/test_control_flow.py is too slow to run against every
mutant, so what only it checked is pinned here too): every option a shell step hands to the
command (argv values as text, shell, cwd, env, inherit_env, max_output and its default, stdin,
timeout, masking, the task named in errors), what an http request carries (headers, query,
body, max_body, masked output), what a notebook step checks before a kernel starts (where a
relative notebook is, its parameters, the kernel it names, masked errors: no kernel ever
starts), a sub-workflow's inputs in a forEach loop, its pinned version, the task its child run
names and its timeout, switch values that are null, boolean, not a template or read the forEach
item, the no-match error, the repr a long switch value is recorded as, and what a circuit
breaker records when asked before a call. Fast, in-process, thread executor; a few short
subprocesses.
"""

from __future__ import annotations

import json
import threading
import time

import nbformat
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


def test_a_shell_step_that_fails_names_its_task_in_the_message():
    src = 'import kernelflow as kf\nbad = kf.shell(["sh", "-c", "echo oops >&2; exit 3"])\n'
    run = cell("sh_fail", src).run(raise_on_failure=False)
    assert run.state.tasks["bad"].error["message"] == "shell step 'bad' exited with code 3: oops"


def test_a_shell_step_stops_its_command_at_the_tasks_timeout():
    src = 'import kernelflow as kf\nslow = kf.shell(["sleep", "5"], timeout=0.2)\n'
    run = cell("sh_slow", src).run(raise_on_failure=False)
    # The engine leaves a shell step's timeout to the step (it kills the process
    # group), so without it the command would run its 5 s and succeed.
    assert of_task(run, "slow")[-1] == ("TaskTimedOut", 1, {"timeout_s": 0.2, "error": {
        "exc_type": "StepTimeoutError", "traceback": True,
        "message": "shell step 'slow' timed out after 0.2s; its process group was stopped"}})  # fmt: skip


def test_a_shell_step_keeps_one_million_bytes_of_output_unless_it_says_otherwise():
    src = """
import kernelflow as kf
big = kf.shell(["sh", "-c", "head -c 1000001 /dev/zero | tr '\\\\0' x"])
def seen(big):
    return [len(big["stdout"]), big["stdout_truncated"]]
"""
    assert cell("sh_big", src).run().output == [1_000_000, True]


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


def test_a_true_switch_value_matches_the_case_written_true():
    src = """
import kernelflow as kf
def yes():
    return "yes"
def no():
    return "no"
route = kf.switch("{{inputs.flag}}", cases={True: yes, False: no})
"""
    run = cell("sw_bool", src).run(flag=True)
    # A boolean is labelled as YAML writes it, so `true:` in a file and True in Python agree.
    assert of_task(run, "route")[2] == ("SwitchMatched", None, {"value": True, "case": "true", "target": "python:yes"})
    assert run.output == "yes"


def test_a_text_switch_value_matches_its_case_with_the_same_capitals():
    src = """
import kernelflow as kf
def upper():
    return "Yes"
def other():
    return "other"
route = kf.switch("{{inputs.answer}}", cases={"Yes": upper}, default=other)
"""
    run = cell("sw_case", src).run(answer="Yes")
    assert of_task(run, "route")[2] == ("SwitchMatched", None, {"value": "Yes", "case": "Yes", "target": "python:upper"})


def test_a_switch_without_a_matching_case_or_default_fails_listing_its_cases():
    src = """
import kernelflow as kf
def a():
    return 1
def b():
    return 2
route = kf.switch("{{inputs.fmt}}", cases={"csv": a, "json": b})
"""
    run = cell("sw_none", src).run(fmt="xml", raise_on_failure=False)
    assert run.state.tasks["route"].error["message"] == (
        "switch of task 'route': no case matches 'xml' (cases: csv, json) and there is no default; add the case or a default"
    )


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


def test_a_circuit_whose_break_is_over_records_its_move_to_half_open_with_name_and_reason():
    from kernelflow.store_access import open_store

    # Opened two minutes ago for one: the next call finds its break over.
    opened = {"status": "open", "opened_at": time.time() - 120, "open_until": time.time() - 60}
    open_store().circuits.transact("svc_over", lambda _: (None, opened))
    src = """
import kernelflow as kf
@kf.task(circuit_breaker={"failure_threshold": 2, "window": "60s", "break_duration": "60s", "name": "svc_over"})
def call():
    return "fresh"
"""
    run = cell("over", src).run()
    changes = [p for t, _, p in of_task(run, "call") if t == "CircuitChanged"]
    assert changes[0] == {
        "circuit": "svc_over", "transition": "open->half_open", "reason": "circuit 'svc_over' is half-open: this call is trial 1 of 1",
    }  # fmt: skip


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


def test_an_http_steps_output_has_the_secrets_it_received_masked(http_server, monkeypatch):
    monkeypatch.setenv("KF_TEST_SECRET", SECRET)
    http_server.route("GET", "/token", json={"token": SECRET, "n": 1})
    src = "import kernelflow as kf\nget = kf.http('GET', URL + '/token', headers={'Authorization': '{{secrets.KF_TEST_SECRET}}'})\n"
    run = cell("http_mask", src, {"URL": http_server.url}).run()
    assert run.output == {"token": "***", "n": 1}


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


def _notebook(path):
    """A notebook whose parameters cell declares `rows` and whose own kernel does not exist
    (so no kernel ever starts: a step naming no kernel fails on this one)."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "kf-notebook-kernel-missing", "language": "python", "display_name": "none"}
    params = nbformat.v4.new_code_cell("rows = 10")
    params.metadata["tags"] = ["parameters"]
    nb.cells.append(params)
    nbformat.write(nb, str(path))
    return str(path)


def test_a_notebook_step_runs_on_the_kernel_it_names_over_the_notebooks_own(tmp_path):
    src = "import kernelflow as kf\nreport = kf.notebook(NB, kernel='kf-step-kernel-missing')\n"
    run = cell("nb_kernel", src, {"NB": _notebook(tmp_path / "report.ipynb")}).run(raise_on_failure=False)
    assert run.state.tasks["report"].error["message"] == (
        "notebook step 'report': report.ipynb could not run: NoSuchKernel: No such kernel named kf-step-kernel-missing"
    )


def test_a_notebook_steps_parameters_are_checked_against_its_parameters_cell(tmp_path):
    src = "import kernelflow as kf\nreport = kf.notebook(NB, {'rows': 3, 'colums': 2}, kernel='kf-step-kernel-missing')\n"
    run = cell("nb_params", src, {"NB": _notebook(tmp_path / "report.ipynb")}).run(raise_on_failure=False)
    assert run.state.tasks["report"].error["message"] == (
        "notebook step 'report' (report.ipynb) has no parameter 'colums'\n  fix: its parameters cell defines: rows"
    )


def test_a_notebook_step_that_cannot_start_fails_with_a_step_error_with_secrets_masked(tmp_path, monkeypatch):
    monkeypatch.setenv("KF_TEST_SECRET", SECRET)
    src = "import kernelflow as kf\nreport = kf.notebook(NB, kernel='{{secrets.KF_TEST_SECRET}}')\n"
    run = cell("nb_secret", src, {"NB": _notebook(tmp_path / "report.ipynb")}).run(raise_on_failure=False)
    error = run.state.tasks["report"].error
    assert (error["exc_type"], error["message"]) == (
        "StepError", "notebook step 'report': report.ipynb could not run: NoSuchKernel: No such kernel named ***"
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


def test_a_sub_workflows_child_run_names_the_task_that_called_it():
    import kernelflow as kf

    ns: dict = {}
    ns["named_child"] = cell("named_child", "def one():\n    return 1\n", ns)
    run = cell("named_parent", "import kernelflow as kf\nsub = kf.subworkflow(named_child)\n", ns).run()
    started = kf.sql("SELECT workflow, payload FROM events WHERE type = 'RunStarted'")
    [child] = [json.loads(p) for w, p in zip(started["workflow"], started["payload"]) if w == "named_child"]
    assert (child["parent_run_id"], child["parent_task"]) == (run.run_id, "sub")


def test_a_sub_workflow_pinned_to_a_version_runs_that_version_not_the_latest():
    ns: dict = {}
    first = cell("versioned_child", "def which():\n    return 'first'\n", ns)
    ns["versioned_child"] = cell("versioned_child", "def which():\n    return 'second'\n", ns)
    assert first.version != ns["versioned_child"].version
    ns["PINNED"] = first.version
    run = cell("versioned_parent", "import kernelflow as kf\nsub = kf.subworkflow(versioned_child, version=PINNED)\n", ns).run()
    assert run.output == "first"
