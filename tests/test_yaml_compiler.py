"""YAML workflow bodies and files: the same Workflow model, errors at line and column."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kernelflow as kf
from kernelflow import yaml_compiler
from kernelflow.exceptions import CycleError, DefinitionError
from kernelflow.model import InputDecl, Workflow
from kernelflow.yaml_compiler import compile_yaml, load, looks_like_yaml

# --- the notebook namespace the YAML refers to ------------------------------------------


def parse_json(fetch):
    return {"ids": [1, 2, 3], "kind": "a"}


def process(id):
    return id * 2


def handle_a(parse):
    return "a"


def handle_b(parse):
    return "b"


def other(parse):
    return "other"


def rollback(fetch=None):
    return None


def backup(raw=None):
    return None


def take(raw, limit=3):
    return raw[:limit]


def pair(row, id):
    return (row, id)


def sub_task(x: int = 1):
    return x


NS: dict[str, Any] = {
    "parse_json": parse_json,
    "process": process,
    "handle_a": handle_a,
    "handle_b": handle_b,
    "other": other,
    "rollback": rollback,
    "backup": backup,
    "take": take,
    "pair": pair,
    "helper_flow": kf.workflow("helper_flow", [sub_task]),
}

NIGHTLY = """\
inputs: {date: str}
tasks:
  - id: fetch
    run: shell
    argv: [curl, -sf, "https://example.org/{{inputs.date}}.json"]
  - id: parse
    run: python:parse_json           # a function in the notebook namespace
    needs: [fetch]
  - id: each
    forEach: {items: "{{tasks.parse.output.ids}}", as: id, maxParallel: 5}
    run: python:process
  - id: route
    switch: {value: "{{tasks.parse.output.kind}}",
             cases: {a: python:handle_a, b: python:handle_b}, default: python:other}
"""


def body(text: str) -> str:
    """A cell body written indented in the test; its first line is cell line 2."""
    return textwrap.dedent(text).lstrip("\n")


def cell(text: str, ns: dict[str, Any] | None = None, name: str | None = "flow", **kw: Any) -> Workflow:
    return compile_yaml(name, body(text), NS if ns is None else ns, **kw)


def cell_error(text: str, ns: dict[str, Any] | None = None, name: str | None = "flow", **kw: Any) -> DefinitionError:
    with pytest.raises(DefinitionError) as info:
        cell(text, ns, name, **kw)
    return info.value


# --- compiling ----------------------------------------------------------------------------


def test_the_product_example_compiles_to_the_model(parser):
    wf = compile_yaml("nightly", NIGHTLY, NS)
    assert wf.name == "nightly"
    assert wf.task_ids == ("fetch", "parse", "each", "route")
    assert wf.order == ("fetch", "parse", "each", "route")
    # Lines are the cell's: the body starts on line 2.
    assert [wf[t].line for t in wf.task_ids] == [4, 7, 10, 13]
    assert wf["fetch"].spec.kind == "shell"
    assert wf["fetch"].spec.action["argv"] == ["curl", "-sf", "https://example.org/{{inputs.date}}.json"]
    assert wf["parse"].ref == "python:parse_json" and wf["parse"].deps == ("fetch",)
    assert wf.functions["parse"] is parse_json
    assert wf["each"].spec.for_each == ({"items": "{{tasks.parse.output.ids}}", "as": "id", "max_parallel": 5, "on_failure": "fail"},)
    assert wf["each"].upstream == ("parse",)  # through the template
    assert wf["route"].spec.kind == "switch"
    assert wf["route"].spec.switch == {
        "value": "{{tasks.parse.output.kind}}",
        "cases": {"a": "python:handle_a", "b": "python:handle_b"},
        "default": "python:other",
    }
    assert wf.callables["python:handle_b"] is handle_b
    assert set(wf.aux_hashes) == {"python:handle_a", "python:handle_b", "python:other"}
    assert wf.declared_inputs == (InputDecl("date", "str"),)
    assert [(i.name, i.required, i.used_by) for i in wf.inputs] == [("date", True, ("fetch",))]
    assert wf.origin == "cell" and wf.source == NIGHTLY


def test_json_round_trip_keeps_the_version():
    wf = compile_yaml("nightly", NIGHTLY, NS)
    again = Workflow.from_dict(wf.to_dict(), NS)
    assert again.version == wf.version
    assert Workflow.from_json(wf.to_json(), NS).version == wf.version
    assert again["route"].spec == wf["route"].spec and again.functions["parse"] is parse_json


def test_version_ignores_comments_spacing_and_key_order_but_not_behaviour():
    v = compile_yaml("nightly", NIGHTLY, NS).version
    cosmetic = "# nightly import\n" + NIGHTLY.replace("    needs: [fetch]", "    needs:   [ fetch ]   # after the download")
    assert compile_yaml("nightly", cosmetic, NS).version == v
    reordered = NIGHTLY.replace("    run: python:parse_json           # a function in the notebook namespace\n    needs: [fetch]",
                                "    needs: [fetch]\n    run: python:parse_json")  # fmt: skip
    assert compile_yaml("nightly", reordered, NS).version == v
    assert compile_yaml("nightly", NIGHTLY.replace("maxParallel: 5", "maxParallel: 6"), NS).version != v
    assert compile_yaml("nightly", NIGHTLY, NS, max_parallel=2).version != v


@pytest.mark.parametrize("ref, target", [("os.path:basename", "basename"), ("math:sqrt", "sqrt"), ("textwrap:dedent", "dedent")])
def test_module_function_refs(ref, target):
    wf = cell(f"""
        tasks:
          - id: a
            run: {ref}
            input: {{}}
        """)
    assert wf["a"].ref == ref
    assert wf.functions["a"].__name__ == target


@pytest.mark.parametrize("ref", ["json:dumps", "os.path:join"])
def test_module_functions_with_star_args(ref):
    wf = cell(f"""
        tasks:
          - id: step
            run: {ref}
        """)
    assert wf["step"].ref == ref
    # their named parameters without defaults become inputs; *args/**kwargs are not
    assert all(i.name not in ("args", "kwargs", "p") for i in wf.inputs)


def test_shell_http_and_workflow_steps():
    wf = cell("""
        inputs:
          date: str
        tasks:
          - id: fetch
            run: shell
            argv: [echo, "{{inputs.date}}"]
            env: {LANG: C, N: 3}
            cwd: /tmp
          - id: post
            run: http
            method: post
            url: "https://example.org/{{inputs.date}}"
            headers: {Accept: application/json}
            json: {raw: "{{tasks.fetch.output.stdout}}"}
          - id: call
            run: workflow:helper_flow
            needs: post
        """)
    assert wf["fetch"].spec.action == {"argv": ["echo", "{{inputs.date}}"], "shell": False, "cwd": "/tmp", "env": {"LANG": "C", "N": "3"}}
    assert wf["post"].spec.action["method"] == "POST" and wf["post"].upstream == ("fetch",)
    assert wf["call"].spec.kind == "workflow" and wf["call"].spec.action == {"workflow": "helper_flow", "version": None}
    assert wf["call"].upstream == ("post",)
    assert set(wf.functions) == set()  # nothing here is a notebook function


def test_templates_make_implicit_dependencies():
    wf = cell("""
        tasks:
          - id: a
            run: shell
            argv: [echo, hi]
          - id: b
            run: python:take
            input: {raw: "{{tasks.a.output}}", limit: 2}
        """)
    assert wf["b"].upstream == ("a",)
    assert wf["b"].spec.task_refs == ("a",)
    assert wf["b"].spec.input == {"raw": "{{tasks.a.output}}", "limit": 2}
    assert wf.inputs == ()  # limit and raw are given by input:


def test_declared_inputs_with_types_and_defaults():
    wf = cell("""
        inputs:
          date: str
          limit: {type: int, default: 10}
          ratio: {type: float, default: 1}
          tags: {type: list, default: []}
          anything: {default: null}
        tasks:
          - id: fetch
            run: shell
            argv: [echo, "{{inputs.date}}", "{{inputs.limit}}", "{{inputs.ratio}}", "{{inputs.tags}}", "{{inputs.anything}}"]
        """)
    assert wf.declared_inputs == (
        InputDecl("date", "str"),
        InputDecl("limit", "int", True, 10),
        InputDecl("ratio", "float", True, 1),
        InputDecl("tags", "list", True, []),
        InputDecl("anything", "any", True, None),
    )
    assert {i.name: i.required for i in wf.inputs} == {"date": True, "limit": False, "ratio": False, "tags": False, "anything": False}


def test_without_inputs_key_function_parameters_are_inputs():
    wf = cell("""
        tasks:
          - id: a
            run: python:take
        """)
    assert wf.declared_inputs is None
    assert [(i.name, i.required) for i in wf.inputs] == [("raw", True), ("limit", False)]
    empty = cell("""
        inputs: {}
        tasks:
          - {id: a, run: shell, argv: [ls]}
        """)
    assert empty.declared_inputs == ()


def test_step_options_land_in_spec_and_options():
    wf = cell("""
        inputs: {n: {type: int, default: 3}}
        tasks:
          - id: fetch
            run: shell
            argv: [echo, hi]
            retries: 3
            backoff: exponential
            retryDelay: 10ms
            jitter: 0.2
            retry_on: [TimeoutError]
            timeout: 30s
            on_timeout: fallback
            fallback: python:backup
            compensate: python:rollback
            circuit_breaker: {failure_threshold: 2, window: 60s, break_duration: 5m}
            skip_to: {step: done, when: "{{output.skip}} == true"}
          - id: loop
            run: python:pair
            after: [fetch]
            forEach:
              items: [[1, 2], [3]]
              as: row
              forEach: {items: "{{forEach.item}}", as: id, on_failure: continue}
            when: "{{inputs.n}} > 1 && {{tasks.fetch.status}} == 'succeeded'"
            continueOnFailure: true
            back_to: {step: fetch, when: "{{output.again}}", maxIterations: 4}
          - id: done
            run: python:other
            input: {parse: "{{tasks.loop.output}}"}
        """)
    fetch, loop = wf["fetch"], wf["loop"]
    assert fetch.options.retries == 3 and fetch.options.backoff == "exponential"
    assert fetch.options.retry_delay == 0.01 and fetch.options.jitter == 0.2
    assert fetch.options.retry_on == ("TimeoutError",)
    assert fetch.options.timeout == 30.0 and fetch.options.on_timeout == "fallback"
    assert fetch.spec.fallback == "python:backup" and fetch.spec.compensate == "python:rollback"
    assert wf.callables["python:rollback"] is rollback
    assert fetch.spec.circuit_breaker == {
        "name": "flow.fetch",
        "failure_threshold": 2,
        "window": 60.0,
        "break_duration": 300.0,
        "half_open_probes": 1,
    }
    assert fetch.spec.skip_to == {"step": "done", "when": "{{output.skip}} == true"}
    assert [lp["as"] for lp in loop.spec.for_each] == ["row", "id"]
    assert loop.spec.for_each[1]["on_failure"] == "continue"
    assert loop.spec.when.startswith("{{inputs.n}} > 1")
    assert loop.spec.continue_on_failure is True
    assert loop.spec.back_to == {"step": "fetch", "when": "{{output.again}}", "max_iterations": 4}
    assert loop.options.after == ("fetch",)
    assert loop.spec.input_refs == ("n",)


def test_switch_case_labels_that_yaml_reads_as_other_types():
    wf = cell("""
        tasks:
          - id: parse
            run: python:parse_json
            input: {fetch: 1}
          - id: route
            switch:
              value: "{{tasks.parse.output.kind}}"
              cases: {yes: python:handle_a, 1: python:handle_b, null: python:other, "on": python:other}
        """)
    assert set(wf["route"].spec.switch["cases"]) == {"true", "1", "null", "on"}


def test_workflow_options_and_magic_overrides():
    wf = cell("""
        maxParallel: 3
        max_foreach_depth: 2
        max_subworkflow_depth: 4
        executor: threads
        tasks:
          - {id: a, run: shell, argv: [ls]}
        """)
    assert (wf.max_parallel, wf.max_foreach_depth, wf.max_subworkflow_depth, wf.executor) == (3, 2, 4, "threads")
    assert cell("max_parallel: 3\ntasks: [{id: a, run: shell, argv: [ls]}]", max_parallel=7).max_parallel == 7


def test_name_in_the_document():
    text = "name: flow\ntasks: [{id: a, run: shell, argv: [ls]}]"
    assert cell(text).name == "flow"
    assert cell(text, name=None).name == "flow"
    err = cell_error(text, name="other_name")
    assert "the YAML says name: flow, but the cell defines workflow 'other_name'" in err.message
    assert err.location == "cell line 2, column 7"
    err = cell_error("tasks: [{id: a, run: shell, argv: [ls]}]", name=None)
    assert "has no name" in err.message and err.location == "cell line 1"


def test_merge_keys_and_anchors():
    wf = cell("""
        tasks:
          - &base {id: a, run: shell, argv: [ls], retries: 2}
          - <<: *base
            id: b
            retries: 5
        """)
    assert wf["a"].options.retries == 2 and wf["b"].options.retries == 5
    assert wf["b"].spec.action["argv"] == ["ls"]


def test_dates_stay_text():
    wf = cell("""
        inputs: {date: {type: str, default: 2024-01-31}}
        tasks:
          - {id: a, run: shell, argv: [echo, 2024-01-31, "{{inputs.date}}"]}
        """)
    assert wf.declared_inputs[0].default == "2024-01-31"
    assert wf["a"].spec.action["argv"][1] == "2024-01-31"


def test_compile_is_pure():
    ns = dict(NS)
    cell("tasks: [{id: a, run: python:process, forEach: {items: [1], as: id}}]", ns)
    assert ns == NS  # nothing bound


# --- errors: message and exact location ------------------------------------------------------

ERRORS = [
    # YAML syntax (scanner/parser), tabs, several documents
    ("tasks:\n  - id: a\n    run: [shell\n", r"invalid YAML: .*flow", "cell line 5, column 1"),
    ("tasks:\n  - id: a\n\trun: shell\n", r"invalid YAML: .*(tab|'\\t')", "cell line 4, column 1"),
    ("tasks:\n  - id: a\n    run: a: b\n", r"invalid YAML: mapping values are not allowed", "cell line 4, column 11"),
    ("tasks: []\n---\ntasks: []\n", r"invalid YAML: but found another document", "cell line 3, column 1"),
    # document shape
    ("", r"the YAML workflow is empty", "cell line 2"),
    ("- id: a\n", r"must be a mapping with a tasks: list, got a list", "cell line 2, column 1"),
    ("inputs: {}\n", r"has no tasks: list", "cell line 2, column 1"),
    ("tasks:\n", r"tasks must be a non-empty list of steps, got nothing", "cell line 2, column 1"),
    ("tasks: []\n", r"tasks must be a non-empty list", "cell line 2, column 8"),
    ("tasks: {a: 1}\n", r"tasks must be a non-empty list of steps, got a mapping", "cell line 2, column 8"),
    ("task:\n  - id: a\n", r"unknown top-level key 'task' \(did you mean 'tasks'\?\)", "cell line 2, column 1"),
    ("maxParalel: 3\ntasks: []\n", r"unknown top-level key 'maxParalel' \(did you mean 'maxParallel'\?\)", "cell line 2, column 1"),
    ("tasks: [{id: a, run: shell, argv: [ls]}]\nsteps: []\n", r"'steps' repeats 'tasks', given already on line 2", "cell line 3, column 1"),
    ("max_parallel: 0\ntasks: [{id: a, run: shell, argv: [ls]}]\n", r"max_parallel must be a whole number >= 1, got 0", "cell line 2, column 15"),
    ("executor: warp\ntasks: [{id: a, run: shell, argv: [ls]}]\n", r"asks for executor 'warp'", "cell line 2, column 11"),
    # steps: ids
    ("tasks:\n  - run: shell\n    argv: [ls]\n", r"step 1 has no id", "cell line 3, column 5"),
    ("tasks:\n  - id: my-step\n    run: shell\n", r"step 1: id must be a Python identifier, got 'my-step'", "cell line 3, column 9"),
    ("tasks:\n  - id: 12\n", r"id must be a Python identifier, got 12", "cell line 3, column 9"),
    ("tasks:\n  - just text\n", r"step 1 must be a mapping with an id, got 'just text'", "cell line 3, column 5"),
    (
        "tasks:\n  - id: a\n    run: shell\n    argv: [ls]\n  - id: a\n    run: shell\n",
        r"task 'a' is defined twice \(cell lines 3 and 6\)",
        "cell line 6, column 9",
    ),
    ("tasks:\n  - id: a\n    run: shell\n    run: http\n", r"key 'run' is given twice in this mapping \(cell lines 4 and 5\)", "cell line 5, column 5"),
    # steps: keys and values (build_step), located at the key's value
    ("tasks:\n  - id: a\n    run: shell\n    argv: [ls]\n    need: [b]\n", r"unknown key 'need' \(did you mean 'needs'\?\)", "cell line 6, column 11"),
    ("tasks:\n  - id: a\n    run: python:process\n    forEch: {items: [1], as: id}\n", r"unknown key 'forEch' \(did you mean 'forEach'\?\)", "cell line 5, column 13"),
    ("tasks:\n  - id: a\n    run: shell\n    argv: [ls]\n    needs: 3\n", r"needs must be a list of task ids, got 3", "cell line 6, column 12"),
    ("tasks:\n  - id: a\n    run: shell\n    argv: [ls]\n    retries: -1\n", r"retries must be a whole number >= 0, got -1", "cell line 6, column 14"),
    ("tasks:\n  - id: a\n    run: shell\n    argv: [ls]\n    timeout: 0\n", r"timeout must be a duration greater than zero", "cell line 6, column 14"),
    ("tasks:\n  - id: a\n    run: shell\n    argv: [ls]\n    timeout: abc\n", r"timeout must be a duration like", "cell line 6, column 14"),
    ("tasks:\n  - id: a\n    switch: {value: x}\n", r"switch needs at least one case", "cell line 4, column 13"),
    ("tasks:\n  - id: a\n    run: shell\n    argv: [echo, '{{tasks.nope.output}}']\n", r"names task 'nope', which is not in this workflow", "cell line 5, column 11"),
    ("tasks:\n  - id: a\n    run: shell\n    shell: false\n    argv: [ls]\n    env: {A: '{{tasks.nope.output}}'}\n", r"names task 'nope'", "cell line 7, column 10"),
    ("tasks:\n  - id: a\n    run: http\n    method: GET\n    url: 'https://x.org/{{tasks.a.output}}'\n", r"reads its own output", "cell line 3, column 5"),
    ("tasks:\n  - id: a\n    run: http\n    url: 'https://x.org/{{tasks.b.output}}'\n", r"names task 'b'", "cell line 5, column 10"),
    ("tasks:\n  - id: a\n    run: shell\n    argv: [echo, '{{input.x}}']\n", r"unknown reference root 'input' \(did you mean 'inputs'\?\)", "cell line 5, column 11"),
    (
        "inputs: {day: str}\ntasks:\n  - id: a\n    run: shell\n    argv: [ls]\n    env: {D: '{{inputs.date}}'}\n",
        r"reads \{\{inputs.date\}\}, but the workflow declares no input 'date'",
        "cell line 7, column 10",
    ),
    ("tasks:\n  - id: a\n    run: shell\n    argv: [ls]\n    back_to: fetsh\n", r"back_to names 'fetsh', which is not a task", "cell line 6, column 14"),
    ("tasks:\n  - id: a\n    run: shell\n    argv: [ls]\n  - id: b\n    run: shell\n    argv: [ls]\n    needs: [a, c]\n", r"needs names 'c'", "cell line 9, column 12"),
    ("tasks:\n  - id: a\n    run: python:proces\n", r"python:proces names no function in the notebook \(did you mean python:process\?\)", "cell line 4, column 10"),
    ("tasks:\n  - id: a\n    run: workflow:flow\n", r"a workflow may not call itself", "cell line 4, column 10"),
    ("tasks:\n  - id: a\n    run: shell\n    argv: ls -l\n", r"argv must be a list of arguments, not a string", "cell line 5, column 11"),
    ("tasks:\n  - id: a\n    run: shell\n    shell: yes please\n    argv: ls\n", r"shell must be true or false", "cell line 5, column 12"),
    ("tasks:\n  - id: a\n    run: shel\n", r"run: 'shel' is not something kernelflow can run \(did you mean 'shell'\?\)", "cell line 4, column 10"),
    ("tasks:\n  - id: a\n    run: shell\n    argv: [ls]\n    approval: {mesage: hi}\n", r"approval has no key 'mesage' \(did you mean 'message'\?\)", "cell line 6, column 15"),
    ("tasks:\n  - id: a\n    sleep: soon\n", r"sleep must be a duration", "cell line 4, column 12"),
    ("tasks:\n  - id: a\n    sleep: 1s\n    retries: 2\n", r"a sleep step waits and does nothing else, so 'retries' means nothing for it", "cell line 5, column 14"),
    ("tasks:\n  - id: a\n    run: shell\n    argv: [ls]\n    sleep: 1s\n", r"sleep is a step of its own", "cell line 6, column 12"),
    # model-level problems are placed at the step's line
    (
        "tasks:\n  - id: a\n    run: shell\n    argv: [ls]\n    needs: [b]\n  - id: b\n    run: shell\n    argv: [ls]\n    needs: [a]\n",
        r"dependency cycle",
        "cell lines 3, 7",
    ),
    ("tasks:\n  - id: a\n    run: shell\n    argv: [ls]\n    skip_to: a\n", r"skip_to 'a', which does not depend on it", "cell line 3"),
    # YAML traps
    ("tasks:\n  - id: a\n    yes: 1\n", r"key 'yes' is read by YAML as bool True; keys must be text", "cell line 4, column 5"),
    ("tasks:\n  - id: a\n    run: shell\n    argv: [echo, {{inputs.x}}]\n", r"an unquoted template \{\{...\}\} reads as one", "cell line 5, column 18"),
    ("tasks:\n  - id: a\n    run: !!python/name:os.system ''\n", r"the YAML tag !!python/name:os.system is not supported", "cell line 4, column 10"),
    ("tasks:\n  - id: a\n    run: shell\n    argv: !!set {a, b}\n", r"the YAML tag !!set is not supported", "cell line 5, column 11"),
    ("tasks:\n  - id: a\n    run: shell\n    argv: [!!int abc]\n", r"cannot read 'abc' as !!int", "cell line 5, column 12"),
    ("tasks:\n  - id: a\n    run: shell\n    argv: [123456789012345678901234567890]\n", r"too large", "cell line 5, column 12"),
    ("tasks:\n  - id: a\n    run: shell\n    argv: &x [*x]\n", r"recursive structure", "cell line 5, column 11"),
    ("tasks:\n  - id: a\n    run: shell\n    argv: [" + "[" * 70 + "]" * 70 + "]\n", r"nests more than 64 levels", "cell line 5, column 72"),
    ("tasks:\n  - id: a\n    run: shell\n    argv: [echo, \"\x00\"]\n", r"the character '\\x00' is not allowed", "cell line 5, column 19"),
    # inputs
    ("inputs: {d: string}\ntasks: [{id: a, run: shell, argv: [ls]}]\n", r"type must be one of str, int, float, bool, list, dict, any, got 'string' \(did you mean 'str'\?\)", "cell line 2, column 13"),
    ("inputs: {n: {type: int, default: x}}\ntasks: [{id: a, run: shell, argv: [ls]}]\n", r"the default 'x' is not of type int", "cell line 2, column 34"),
    ("inputs: {n: {type: int, defualt: 1}}\ntasks: [{id: a, run: shell, argv: [ls]}]\n", r"unknown key 'defualt' \(did you mean 'default'\?\)", "cell line 2, column 25"),
    ("inputs: {run_id: str}\ntasks: [{id: a, run: shell, argv: [ls]}]\n", r"input 'run_id' is reserved", "cell line 2, column 10"),
    ("inputs: [a, b]\ntasks: [{id: a, run: shell, argv: [ls]}]\n", r"inputs must map input names to types, got a list", "cell line 2, column 9"),
    ("inputs: {a-b: str}\ntasks: [{id: a, run: shell, argv: [ls]}]\n", r"input name must be a Python identifier", "cell line 2, column 10"),
    ("name: 3\ntasks: [{id: a, run: shell, argv: [ls]}]\n", r"name must be a Python identifier", "cell line 2, column 7"),
]


@pytest.fixture(params=["libyaml", "python"])
def parser(request, monkeypatch):
    """Both composers: libyaml's (when PyYAML has it) and the pure-Python one."""
    if request.param == "libyaml" and yaml_compiler._CLoader is None:
        pytest.skip("PyYAML is built without libyaml")
    if request.param == "python":
        monkeypatch.setattr(yaml_compiler, "_CLoader", None)
    return request.param


@pytest.mark.parametrize("text, message, location", ERRORS, ids=[f"e{i}" for i in range(len(ERRORS))])
def test_errors_name_line_and_column(text, message, location, parser):
    with pytest.raises(DefinitionError) as info:
        compile_yaml("flow", text, NS)
    err = info.value
    assert re.search(message, err.message), err.message
    assert err.location == location, str(err)
    assert str(err).startswith(f"{location}: ")


def test_deep_nesting_is_refused_without_crashing(parser):
    # libyaml's composer recurses in C: 100,000 levels would overflow the stack.
    err = cell_error("tasks: " + "[" * 100_000 + "]" * 100_000 + "\n")
    assert "nests more than 64 levels" in err.message
    assert err.location == "cell line 2, column 71"


def test_syntax_errors_quote_the_character(parser):
    err = cell_error("tasks:\n  - id: a\n    run: @x\n")
    assert "'@'" in err.message and err.location == "cell line 4, column 10"
    assert "quote the value" in err.hint


def test_a_problem_on_body_line_1_is_cell_line_2_and_file_line_1(tmp_path):
    err = cell_error("tsks: []\n")
    assert err.location == "cell line 2, column 1"
    path = tmp_path / "flow.yaml"
    path.write_text("tsks: []\n")
    with pytest.raises(DefinitionError) as info:
        load(path, NS)
    assert info.value.location == f"{path} line 1, column 1"
    assert "did you mean 'tasks'" in info.value.message


def test_cycle_is_a_cycle_error():
    with pytest.raises(CycleError):
        cell("tasks: [{id: a, run: shell, argv: [ls], needs: b}, {id: b, run: shell, argv: [ls], needs: a}]")


def test_error_hints_say_how_to_fix():
    assert "spaces" in cell_error("tasks:\n\t- id: a\n").hint
    assert "quote templates" in cell_error('tasks: [{id: a, run: shell, argv: [{{inputs.x}}]}]').hint
    assert "'yes':" in cell_error("tasks: [{id: a, yes: 1}]").hint


def test_billion_laughs_is_refused():
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, 10):
        prev = f"*a{i - 1}"
        lines.append(f"a{i}: &a{i} [{', '.join([prev] * 10)}]")
    text = "tasks:\n  - id: x\n    run: shell\n    argv: [ls]\n    env:\n" + "".join(f"      {line}\n" for line in lines)
    err = cell_error(text)
    assert "aliases expand to more than 100000 values" in err.message
    assert re.fullmatch(r"cell line \d+, column \d+", err.location)


def test_workflow_step_may_not_call_itself_even_by_version():
    err = cell_error("tasks: [{id: a, run: 'workflow:flow@abc'}]")
    assert "may not call itself" in err.message


# --- files ------------------------------------------------------------------------------------


def test_load_a_file_named_by_its_stem_or_name_key(tmp_path):
    path = tmp_path / "nightly.yaml"
    path.write_text(NIGHTLY)
    wf = load(path, NS)
    assert wf.name == "nightly" and wf.origin == str(path)
    assert wf["fetch"].line == 3  # files count from line 1
    assert wf.version == compile_yaml("nightly", NIGHTLY, NS).version  # where it is written is not behaviour
    named = tmp_path / "some-file.yml"
    named.write_text("name: other_flow\n" + NIGHTLY)
    assert load(str(named), NS).name == "other_flow"


def test_load_errors_name_the_file_as_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("flow.yaml").write_text("tasks:\n  - id: a\n    run: python:nosuch\n")
    with pytest.raises(DefinitionError) as info:
        load("flow.yaml", NS)
    assert info.value.location == "flow.yaml line 3, column 10"
    assert str(info.value).startswith("flow.yaml line 3, column 10: task 'a': python:nosuch names no function")

    with pytest.raises(DefinitionError, match="no workflow file 'missing.yaml'") as info:
        load("missing.yaml", NS)
    assert info.value.location == "missing.yaml"

    Path("latin.yaml").write_bytes(b"tasks:\n  - id: a\n    run: shell\n    argv: [echo, caf\xe9]\n")
    with pytest.raises(DefinitionError, match="not UTF-8") as info:
        load("latin.yaml", NS)
    assert info.value.location == "latin.yaml line 4"

    Path("my-flow.yaml").write_text("tasks: [{id: a, run: shell, argv: [ls]}]\n")
    with pytest.raises(DefinitionError, match="not a Python identifier") as info:
        load("my-flow.yaml", NS)
    assert "add name:" in info.value.hint

    Path("adir.yaml").mkdir()
    with pytest.raises(DefinitionError, match="cannot read workflow file"):
        load("adir.yaml", NS)


def test_load_defaults_to_the_callers_globals(tmp_path, monkeypatch):
    monkeypatch.setattr(yaml_compiler, "_ipython_namespace", lambda: None)
    path = tmp_path / "flow.yaml"
    path.write_text("tasks:\n  - {id: a, run: python:parse_json, input: {fetch: 1}}\n")
    wf = load(path)  # parse_json is a global of this module
    assert wf.functions["a"] is parse_json


def test_load_uses_the_ipython_namespace_when_there_is_one(tmp_path, monkeypatch):
    def mine(fetch):
        return fetch

    monkeypatch.setattr(yaml_compiler, "_ipython_namespace", lambda: {"parse_json": mine})
    path = tmp_path / "flow.yaml"
    path.write_text("tasks:\n  - {id: a, run: python:parse_json, input: {fetch: 1}}\n")
    assert load(path).functions["a"] is mine


def test_load_accepts_a_utf8_bom(tmp_path):
    path = tmp_path / "flow.yaml"
    path.write_bytes("\ufefftasks: [{id: a, run: shell, argv: [echo, café]}]\n".encode())
    assert load(path, NS)["a"].spec.action["argv"] == ["echo", "café"]


# --- detection ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        NIGHTLY,
        "tasks:\n  - id: a\n    run: shell\n",
        "# nightly\n\nname: x\ntasks:\n  - id: a\n",
        "---\ninputs: {date: str}\ntasks: []\n",
        "max_parallel: 4\nsteps:\n  - id: a\n",
        "tasks: [{id: a, run: shell, argv: [ls]}]\n",  # valid Python too, but tasks: is a list
        "tasks:\n\t- broken yaml\n",  # YAML-shaped: the YAML compiler reports the tab
    ],
)
def test_looks_like_yaml(text):
    assert looks_like_yaml(text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "\n\n# just a comment\n",
        "def extract():\n    return 1\n",
        "import kernelflow as kf\ntasks:\n  - id: a\n",
        "@kf.task(retries=2)\ndef a():\n    pass\n",
        "tasks = [1]\n",
        "x: int = 3\ntasks: list = []\n",
        "tasks: list = []\n",
        "name: str = 'x'\n",
        "inputs: {date: str}\n",  # no tasks
        "try:\n    import numpy\nexcept ImportError:\n    pass\ntasks: int = 1\n",
        "tasks: 3\n",
    ],
)
def test_python_is_not_yaml(text):
    assert not looks_like_yaml(text)


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_looks_like_yaml_never_raises(text):
    assert looks_like_yaml(text) in (True, False)


# --- property: only DefinitionError, always with a line ------------------------------------------

_words = st.sampled_from(
    ["a", "b", "fetch", "id", "run", "tasks", "x", "yes", "on", "null", "1", "-1", "0", "3.5", "true", "[]", "{}",
     "shell", "http", "python:process", "python:nosuch", "math:sqrt", "workflow:helper_flow", "workflow:flow",
     "{{tasks.a.output}}", "{{inputs.x}}", "{{input.x}}", "{{forEach.item}}", "{{output.ok}}", "{{tasks.", "30s", "abc",
     "https://example.org", "*a", "&a", "!!int", "<<"]
)  # fmt: skip
_keys = st.sampled_from(
    ["id", "run", "needs", "after", "input", "output", "when", "switch", "forEach", "for_each", "back_to", "skip_to",
     "continue_on_failure", "fallback", "compensate", "circuit_breaker", "timeout", "on_timeout", "executor", "retries",
     "max_attempts", "backoff", "retry_delay", "jitter", "retry_on", "argv", "shell", "cwd", "env", "url", "method",
     "headers", "json", "params", "items", "as", "maxParallel", "value", "cases", "default", "step", "max_iterations",
     "type", "nope", "sleep"]
)  # fmt: skip
_scalars = st.one_of(
    _words,
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True),
    st.booleans(),
    st.none(),
    st.text(max_size=12),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.one_of(_keys, _words), inner, max_size=4)),
    max_leaves=12,
)
_ids = st.sampled_from(["s0", "s1", "r0", "r1", "r2", "each", "flow"])
_refs = st.sampled_from(["s0", "s1", "r0", "r1", "r2", "nope"])
# Mostly plausible values per key (so compilation gets deep), sometimes anything.
_plausible = {
    "run": st.sampled_from(
        ["shell", "http", "python:process", "python:pair", "python:take", "python:nosuch", "math:sqrt",
         "workflow:helper_flow", "workflow:flow", "shel"]
    ),
    "needs": st.one_of(_refs, st.lists(_refs, max_size=2)),
    "after": st.lists(_refs, max_size=2),
    "argv": st.lists(st.one_of(_words, st.sampled_from(["{{tasks.s0.output}}", "{{inputs.x}}", "{{forEach.item}}"])), min_size=1, max_size=3),
    "url": st.sampled_from(["https://example.org/{{inputs.x}}", "ftp://x", "{{tasks.s0.output.url}}"]),
    "input": st.dictionaries(st.sampled_from(["raw", "limit", "id", "fetch", "parse", "row"]), _values, max_size=2),
    "output": st.dictionaries(st.sampled_from(["ids", "n"]), st.sampled_from(["{{output.items}}", "{{tasks.s0.output}}", 1]), max_size=2),
    "when": st.sampled_from(["{{inputs.x}} > 1", "true", "{{tasks.s0.status}} == 'succeeded'", "a &&", "{{tasks.nope.output}}", "!{{inputs.x}}"]),
    "forEach": st.fixed_dictionaries(
        {"items": st.sampled_from(["{{tasks.s0.output}}", [1, 2], "{{forEach.item}}"])},
        optional={"as": st.sampled_from(["id", "item", "row"]), "maxParallel": st.integers(-1, 3), "on_failure": st.sampled_from(["fail", "continue", "x"])},
    ),
    "switch": st.fixed_dictionaries(
        {"value": st.sampled_from(["{{tasks.s0.output}}", "{{inputs.x}}"])},
        optional={"cases": st.dictionaries(st.one_of(_words, st.integers(0, 3), st.booleans()), st.sampled_from(["python:handle_a", "python:other", "python:nosuch", "workflow:x"]), max_size=3),
                  "default": st.sampled_from(["python:other", "x"])},
    ),
    "back_to": st.one_of(_refs, st.fixed_dictionaries({"step": _refs}, optional={"when": st.sampled_from(["{{output.again}}", "x =="]), "max_iterations": st.integers(0, 3)})),
    "skip_to": st.one_of(_refs, st.fixed_dictionaries({"step": _refs}, optional={"when": st.sampled_from(["{{output.skip}}", "{{tasks.s0.output}}"])})),
    "retries": st.integers(-2, 5),
    "timeout": st.sampled_from([0, 1, "30s", "abc", -1, 2.5, "0"]),
    "on_timeout": st.sampled_from(["fail", "skip", "retry", "fallback", "x"]),
    "fallback": st.sampled_from(["python:backup", "python:nosuch", "workflow:x"]),
    "compensate": st.sampled_from(["python:rollback", "math:sqrt"]),
    "circuit_breaker": st.one_of(st.booleans(), st.fixed_dictionaries({}, optional={"failure_threshold": st.integers(-1, 3), "window": st.sampled_from(["60s", 0, "x"]), "nope": st.just(1)})),
    "continue_on_failure": st.booleans(),
    "backoff": st.sampled_from(["fixed", "linear", "exponential", "expo"]),
    "shell": st.booleans(),
    "env": st.dictionaries(st.sampled_from(["A", "B"]), st.one_of(_words, st.integers())),
    "method": st.sampled_from(["GET", "post", "FETCH"]),
    "executor": st.sampled_from(["threads", "warp"]),
}  # fmt: skip
_step_keys = sorted(_plausible) + ["nope", "sleep", "forEch"]


@st.composite
def _step(draw: Any, index: int) -> dict[str, Any]:
    """A step with a few keys, mostly plausible values and usually a good, unique id."""
    step: dict[str, Any] = {}
    if draw(st.integers(0, 19)):
        step["id"] = f"r{index}" if draw(st.integers(0, 9)) else draw(st.one_of(_ids, _scalars))
    keys = draw(st.lists(st.sampled_from(_step_keys), unique=True, max_size=3))
    if draw(st.integers(0, 4)):
        keys.insert(0, "run")
    for key in dict.fromkeys(keys):
        plausible = _plausible.get(key)
        step[key] = draw(plausible) if plausible is not None and draw(st.integers(0, 4)) else draw(_values)
    return step


_inputs = st.dictionaries(
    st.sampled_from(["x", "x", "x", "n", "n", "run_id", "a-b"]),
    st.one_of(
        st.sampled_from(["str", "int", "any", "string"]),
        st.fixed_dictionaries({}, optional={"type": st.sampled_from(["int", "list", "x"]), "default": _scalars}),
        _values,
    ),
    max_size=3,
)
_top_extras = {
    "inputs": _inputs,
    "max_parallel": st.one_of(st.integers(0, 4), _values),
    "maxParallel": st.integers(1, 4),
    "executor": st.sampled_from(["threads", "warp"]),
    "name": st.sampled_from(["flow", "flow", "flow", "x y"]),
    "stepz": _values,
}


@st.composite
def _documents(draw: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for key in draw(st.lists(st.sampled_from(["inputs", "inputs", "inputs", *_top_extras]), unique=True, max_size=2)):
        if key != "stepz" or not draw(st.integers(0, 4)):  # an unknown key, now and then
            doc[key] = draw(_top_extras[key])
    doc["tasks"] = [draw(_step(i)) for i in range(draw(st.integers(0, 4)))]
    return doc


def _good_step(i: int, kind: str) -> dict[str, Any]:
    return {
        "shell": {"id": f"s{i}", "run": "shell", "argv": ["echo", "{{inputs.x}}"]},
        "py": {"id": f"s{i}", "run": "python:process", "forEach": {"items": [1, 2], "as": "id"}},
        "http": {"id": f"s{i}", "run": "http", "url": "https://example.org"},
    }[kind]


def _check(text: str) -> None:
    try:
        compile_yaml("flow", text, NS)
    except DefinitionError as exc:
        assert exc.location and re.search(r"\bline", exc.location), (exc.location, str(exc))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text())
def test_any_text_compiles_or_raises_a_located_definition_error(text):
    _check(text)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_documents(), st.lists(st.sampled_from(["shell", "py", "http"]), max_size=3), st.randoms(use_true_random=False))
def test_yamlish_documents_compile_or_raise_a_located_definition_error(doc, good, rnd):
    doc = dict(doc)
    doc["tasks"] = [_good_step(i, k) for i, k in enumerate(good)] + list(doc["tasks"])
    text = yaml.safe_dump(doc, sort_keys=False, default_flow_style=rnd.random() < 0.3, allow_unicode=True)
    _check(text)
    # Mangle it a little: drop a character, duplicate a line, add a tab or an alias.
    lines = text.splitlines(keepends=True)
    if lines:
        i = rnd.randrange(len(lines))
        choice = rnd.randrange(4)
        if choice == 0:
            lines[i] = lines[i][: rnd.randrange(len(lines[i]) + 1)]
        elif choice == 1:
            lines.insert(i, lines[i])
        elif choice == 2:
            lines[i] = "\t" + lines[i]
        else:
            lines[i] = lines[i].replace(": ", ": &a ", 1) + "  - *a\n"
    _check("".join(lines))


def test_a_bad_size_is_reported_at_its_own_key():
    err = cell_error("""
        tasks:
          - id: get
            run: http
            url: http://127.0.0.1:1/x
            max_body: lots
        """)
    assert "max_body must be a positive size" in err.message
    assert err.location is not None and "line 6" in err.location


# --- found by fuzzing (tests/test_fuzz.py): every error says how to fix it ------------------

_STEP = "tasks:\n  - id: a\n    run: shell\n    argv: [ls]\n"


@pytest.mark.parametrize(
    "text, message, location, hint",
    [
        ("max_parallel: null\n" + _STEP, "max_parallel must be a whole number >= 1, got None", "cell line 2, column 15", "e.g. max_parallel: 4"),
        ("executor: 3\n" + _STEP, "executor must be an executor name such as 'threads', got 3", "cell line 2, column 11", "executor: threads"),
        (_STEP + "steps: []\n", "'steps' repeats 'tasks', given already on line 2", "cell line 6, column 1", "the same key: keep one of them"),
        ("? [a, b]\n: c\n" + _STEP, "keys must be text, got a list", "cell line 2, column 3", "write each key as plain text"),
        ("tasks:\n  - id: a\n    run: shell\n    argv: &a [*a]\n", "an alias refers to the collection that contains it",
         "cell line 5, column 11", "cannot stand inside what it names"),
        ("inputs: {n: !!int abc}\n" + _STEP, "cannot read 'abc' as !!int", "cell line 2, column 13", "remove the tag !!int"),
        ("alerts: {duration: {z: -1}}\n" + _STEP, "alerts.duration.z must be greater than 0, got -1", "cell line 2, column 1", "docs/alerts.md"),
    ],
)  # fmt: skip
def test_errors_that_had_no_fix_now_say_how(text, message, location, hint):
    with pytest.raises(DefinitionError) as info:
        compile_yaml("flow", text, NS)
    err = info.value
    assert message in err.message and err.location == location
    assert err.hint and hint in err.hint
    assert "\n  fix: " in str(err)


def test_a_yaml_body_with_windows_line_endings_is_yaml():
    # `tasks:` followed by "\r\n" did not match, so the magic compiled the body as Python.
    crlf = NIGHTLY.replace("\n", "\r\n")
    assert looks_like_yaml(crlf)
    assert compile_yaml("nightly", crlf, NS).task_ids == ("fetch", "parse", "each", "route")
    assert looks_like_yaml("inputs: {n: int}\r\ntasks:\r\n  - id: a\r\n    run: shell\r\n    argv: [ls]\r\n")


# --- every error: its exact message, where it points and how to fix it ---------------------------

_SHAPE_HINT = "a YAML workflow is a mapping with a tasks: list, e.g.\n  tasks:\n    - id: hello\n      run: shell\n      argv: [echo, hi]"
S = _STEP


@pytest.mark.parametrize(
    "text, message, location, hint",
    [
        ("tasks:\n  - id: a\n    run: shell\n    argv: [ls]\n    <<: 3\n", 'a merge key (<<) takes a mapping or a list of mappings', 'cell line 6, column 9', '<<: *defaults'),
        ("base: &b {run: shell}\ntasks: []\n", "unknown top-level key 'base'", 'cell line 2, column 1', 'the top-level keys are: name, inputs, tasks (or steps), max_parallel, executor, max_foreach_depth, max_subworkflow_depth, alerts, schedule'),
        ("tasks:\n  - id: a\n    run: shell\n    argv: [ls]\n    ? {x: 1}\n    : 2\n", 'keys must be text, got a mapping', 'cell line 6, column 7', 'write each key as plain text, e.g. id: fetch'),
        ("tasks:\n  - id: a\n    run: shell\n    argv: [ls]\n    1: 2\n", "key '1' is read by YAML as int 1; keys must be text", 'cell line 6, column 5', "quote it: '1':"),
        ("tasks:\n  - id: a\n    run: shell\n    argv: [ls]\n    null: 2\n", "key 'null' is read by YAML as NoneType None; keys must be text", 'cell line 6, column 5', "quote it: 'null':"),
        ("tasks:\n  - id: a\n    run: shell\n    argv: !custom [ls]\n", 'the YAML tag !custom is not supported here', 'cell line 5, column 11', 'remove the tag'),
        ("tasks:\n  - id: a\n    run: shell\n    argv: !!set {ls}\n", 'the YAML tag !!set is not supported here', 'cell line 5, column 11', 'remove the tag'),
        ("tasks:\n  - id: a\n    run: !!binary aGk=\n", 'the YAML tag !!binary is not supported', 'cell line 4, column 10', 'write plain values (text, numbers, true/false, null, lists, mappings)'),
        ("tasks:\n  - id: a\n    run: shell\n    argv: [!!int abc]\n", "cannot read 'abc' as !!int: invalid literal for int() with base 10: 'abc'", 'cell line 5, column 12', 'remove the tag !!int, or write a value of that type'),
        ("tasks:\n  - id: a\n    run: shell\n    argv: [9223372036854775808]\n", 'the number 9223372036854775808 is too large (whole numbers must fit in 64 bits)', 'cell line 5, column 12', 'quote it to keep it as text'),
        ("tasks:\n  - id: a\n    run: shell\n    argv: [-9223372036854775809]\n", 'the number -9223372036854775809 is too large (whole numbers must fit in 64 bits)', 'cell line 5, column 12', 'quote it to keep it as text'),
        ("tasks:\n  - id: a\n    run: shell\n    argv: &x {a: *x}\n", 'an alias refers to the collection that contains it (a recursive structure)', 'cell line 5, column 11', 'an alias (*name) cannot stand inside what it names: copy the values there instead'),
        ("tasks:\n  - id: a\n    run: shell\n    argv: &x {<<: *x}\n", 'an alias refers to the mapping that contains it (a recursive structure)', 'cell line 5, column 11', 'an alias (*name) cannot stand inside what it names: copy the values there instead'),
        ("tasks:\n  - !!omap {id: a}\n", 'the YAML tag !!omap is not supported here', 'cell line 3, column 5', 'remove the tag'),
        ("", 'the YAML workflow is empty', 'cell line 2', _SHAPE_HINT),
        ("# only a comment\n", 'the YAML workflow is empty', 'cell line 2', _SHAPE_HINT),
        ("- a\n", 'a YAML workflow must be a mapping with a tasks: list, got a list', 'cell line 2, column 1', _SHAPE_HINT),
        ("just text\n", "a YAML workflow must be a mapping with a tasks: list, got 'just text'", 'cell line 2, column 1', _SHAPE_HINT),
        ("tsks: []\n", "unknown top-level key 'tsks' (did you mean 'tasks'?)", 'cell line 2, column 1', 'the top-level keys are: name, inputs, tasks (or steps), max_parallel, executor, max_foreach_depth, max_subworkflow_depth, alerts, schedule'),
        ("zzzzz: 1\n", "unknown top-level key 'zzzzz'", 'cell line 2, column 1', 'the top-level keys are: name, inputs, tasks (or steps), max_parallel, executor, max_foreach_depth, max_subworkflow_depth, alerts, schedule'),
        ("tasks: [{id: a, run: shell, argv: [ls]}]\nsteps: []\n", "'steps' repeats 'tasks', given already on line 2", 'cell line 3, column 1', "'steps' and 'tasks' are the same key: keep one of them"),
        ("name: 3\n" + S, 'name must be a Python identifier (the workflow is bound to it), got 3', 'cell line 2, column 7', 'use letters, digits and underscores, not starting with a digit, e.g. nightly_etl'),
        ("name: other\n" + S, "the YAML says name: other, but the cell defines workflow 'flow'", 'cell line 2, column 7', "make them agree, or remove name: (the cell's %%workflow flow names it)"),
        ("max_parallel: true\n" + S, 'max_parallel must be a whole number >= 1, got True', 'cell line 2, column 15', 'e.g. max_parallel: 4'),
        ("max_foreach_depth: 0\n" + S, 'max_foreach_depth must be a whole number >= 1, got 0', 'cell line 2, column 20', 'e.g. max_foreach_depth: 4'),
        ("max_subworkflow_depth: 1.5\n" + S, 'max_subworkflow_depth must be a whole number >= 1, got 1.5', 'cell line 2, column 24', 'e.g. max_subworkflow_depth: 4'),
        ("executor: ''\n" + S, "executor must be an executor name such as 'threads', got ''", 'cell line 2, column 11', 'executor: threads (or processes, or the name a plugin registers)'),
        ("executor: 3\n" + S, "executor must be an executor name such as 'threads', got 3", 'cell line 2, column 11', 'executor: threads (or processes, or the name a plugin registers)'),
        ("inputs: 3\n" + S, "inputs must map input names to types, got '3'", 'cell line 2, column 9', 'inputs: {date: str, limit: {type: int, default: 10}}'),
        ("inputs: {a-b: str}\n" + S, "input name must be a Python identifier, got 'a-b'", 'cell line 2, column 10', 'inputs: {date: str}'),
        ("inputs: {store: str}\n" + S, "input 'store' is reserved for run options", 'cell line 2, column 10', 'rename it; reserved names: observers, raise_on_failure, run_id, store'),
        ("inputs: {n: {type: int, zzz: 1}}\n" + S, "input 'n': unknown key 'zzz'", 'cell line 2, column 25', 'an input takes type and default: {type: int, default: 3}'),
        ("inputs: {n: 3}\n" + S, "input 'n': type must be one of str, int, float, bool, list, dict, any, got 3", 'cell line 2, column 13', 'n: str, or n: {type: int, default: 3}'),
        ("inputs: {n: zzzzz}\n" + S, "input 'n': type must be one of str, int, float, bool, list, dict, any, got 'zzzzz'", 'cell line 2, column 13', 'n: str, or n: {type: int, default: 3}'),
        ("inputs: {n: {type: int, default: x}}\n" + S, "input 'n': the default 'x' is not of type int", 'cell line 2, column 34', 'give a int default, or use type: any'),
        ("tasks:\n", 'tasks must be a non-empty list of steps, got nothing', 'cell line 2, column 1', 'tasks:\n    - id: fetch\n      run: shell\n      argv: [echo, hi]'),
        ("tasks: ~\n", 'tasks must be a non-empty list of steps, got nothing', 'cell line 2, column 8', 'tasks:\n    - id: fetch\n      run: shell\n      argv: [echo, hi]'),
        ("tasks: null\n", 'tasks must be a non-empty list of steps, got nothing', 'cell line 2, column 8', 'tasks:\n    - id: fetch\n      run: shell\n      argv: [echo, hi]'),
        ("tasks: ''\n", 'tasks must be a non-empty list of steps, got nothing', 'cell line 2, column 1', 'tasks:\n    - id: fetch\n      run: shell\n      argv: [echo, hi]'),
        ("tasks: []\n", 'tasks must be a non-empty list of steps, got a list', 'cell line 2, column 8', 'tasks:\n    - id: fetch\n      run: shell\n      argv: [echo, hi]'),
        ("tasks: 3\n", "tasks must be a non-empty list of steps, got '3'", 'cell line 2, column 8', 'tasks:\n    - id: fetch\n      run: shell\n      argv: [echo, hi]'),
        ("tasks:\n  - 3\n", "step 1 must be a mapping with an id, got '3'", 'cell line 3, column 5', '- id: fetch\n    run: python:fetch'),
        ("tasks:\n  - [a]\n", 'step 1 must be a mapping with an id, got a list', 'cell line 3, column 5', '- id: fetch\n    run: python:fetch'),
        ("tasks:\n  - run: shell\n", 'step 1 has no id', 'cell line 3, column 5', 'give every step an id: - id: fetch (letters, digits, underscores)'),
        ("tasks:\n  - id: 1a\n", "step 1: id must be a Python identifier, got '1a'", 'cell line 3, column 9', 'use letters, digits and underscores, not starting with a digit, e.g. fetch_data'),
        ("tasks:\n  - id: a\n    run: shell\n    argv: [ls]\n  - id: a\n", "task 'a' is defined twice (cell lines 3 and 6)", 'cell line 6, column 9', "rename one of the two steps called 'a'; task ids must be unique"),
        ("tasks:\n  - id: a\n    run: shell\n    argv: [ls]\n    needs: b\n", "task 'a': needs names 'b', which is not a task of this workflow", 'cell line 6, column 12', 'name an existing step id'),
        ("tasks:\n  - id: a\n    run: shell\n    argv: [ls]\n    after: [zz]\n", "task 'a': after names 'zz', which is not a task of this workflow", 'cell line 6, column 12', 'name an existing step id'),
        ("tasks:\n  - id: fetch\n    run: shell\n    argv: [ls]\n  - id: b\n    run: shell\n    argv: [ls]\n    after: [fetsh]\n", "task 'b': after names 'fetsh', which is not a task of this workflow (did you mean 'fetch'?)", 'cell line 9, column 12', 'name an existing step id'),
        ("tasks:\n  - id: a\n    run: shell\n    argv: [ls]\n    skip_to: {step: zz, when: 'true'}\n", "task 'a': skip_to names 'zz', which is not a task of this workflow", 'cell line 6, column 14', 'name an existing step id'),
        ("inputs: {day: str}\ntasks:\n  - id: a\n    run: shell\n    argv: [ls]\n    when: '{{inputs.dya}} == 1'\n", "task 'a' reads {{inputs.dya}}, but the workflow declares no input 'dya' (did you mean 'day'?)", 'cell line 7, column 11', 'declare it under inputs: (dya: str), or fix the name'),
        ("inputs: {day: str}\ntasks:\n  - id: a\n    run: shell\n    argv: ['{{inputs.zzz}}']\n", "task 'a' reads {{inputs.zzz}}, but the workflow declares no input 'zzz'", 'cell line 6, column 11', 'declare it under inputs: (zzz: str), or fix the name'),
        # located by the key: aliases (backTo, retryDelay, onTimeout), a step kind's settings, else run:
        ("tasks:\n  - id: fetch\n    run: shell\n    argv: [ls]\n  - id: a\n    run: shell\n    argv: [ls]\n    backTo: fetsh\n", "task 'a': back_to names 'fetsh', which is not a task of this workflow (did you mean 'fetch'?)", 'cell line 9, column 13', 'name an existing step id'),
        ("tasks:\n  - id: a\n    run: shell\n    argv: [ls]\n    retryDelay: fast\n", "task 'a': retry_delay must be a duration like 30, '500ms', '30s', '5m' or '2h', got 'fast'", 'cell line 6, column 17', 'docs/steps.md lists every step key and the values it accepts'),
        ("tasks:\n  - id: a\n    run: notebook\n    notebook: report.txt\n", "task 'a': notebook 'report.txt' is not a .ipynb file", 'cell line 5, column 15', 'docs/steps.md lists every step key and the values it accepts'),
        ("tasks:\n  - id: a\n    run: notebook\n", "task 'a' runs a notebook but names none", 'cell line 4, column 10', 'notebook: reports/child.ipynb (relative to the workflow file, or to the current folder)'),
        ("tasks:\n  - id: a\n    run: http\n    method: 3\n    url: http://x.org\n", "task 'a': method must be one of GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS, got 3", 'cell line 5, column 13', 'docs/steps.md lists every step key and the values it accepts'),
        ("tasks:\n  - id: a\n    run: http\n    url: 'ftp://x.org/'\n    method: GET\n", "task 'a': url must start with http:// or https://, got 'ftp://x.org/'", 'cell line 5, column 10', 'docs/steps.md lists every step key and the values it accepts'),
        ("tasks:\n  - id: a\n    run: http\n", "task 'a' runs http but has no url", 'cell line 3, column 5', 'url: https://...'),
        ("tasks:\n  - id: a\n    run: shell\n", "task 'a' runs shell but has no argv", 'cell line 3, column 5', 'argv: [ls, -l, data/] (a list: no shell interpolation)'),
        ("tasks:\n  - id: a\n    run: shell\n    shell: true\n    argv: [ls, '{{tasks.zz.output}}']\n", "task 'a': with shell: true, argv must be one command string, got ['ls', '{{tasks.zz.output}}']", 'cell line 6, column 11', "argv: 'ls -l | wc -l'  (runs through /bin/sh: never put untrusted values in it)"),
        ("tasks:\n  - id: a\n    run: shell\n    argv: [ls]\n    cwd: '{{tasks.zz.output}}'\n", "task 'a': {{tasks.zz.output}} names task 'zz', which is not in this workflow", 'cell line 6, column 10', 'fix the task id in the template'),
        ("tasks:\n  - id: a\n    run: http\n    url: http://x.org\n    headers: {A: '{{tasks.zz.output}}'}\n", "task 'a': {{tasks.zz.output}} names task 'zz', which is not in this workflow", 'cell line 6, column 14', 'fix the task id in the template'),
        ("tasks:\n  - id: a\n    run: workflow:helper_flow\n    input: {x: '{{tasks.zz.output}}'}\n", "task 'a': {{tasks.zz.output}} names task 'zz', which is not in this workflow", 'cell line 5, column 12', 'fix the task id in the template'),
        ("tasks:\n  - id: a\n    run: python:nope\n", "task 'a': python:nope names no function in the notebook", 'cell line 4, column 10', 'define `def nope(...)` in an earlier cell, or write module:function for an importable one'),
        ("tasks:\n  - id: a\n    run: workflow:nope_flow\n", "task 'a' calls workflow 'nope_flow', which is not defined (did you mean 'helper_flow'?)", 'cell line 3', "define workflow 'nope_flow' in an earlier cell (or load it) before this one"),
        ("tasks:\n  - id: a\n    run: shell\n    argv: [ls]\n    when: '{{tasks.zz.output}}'\n", "task 'a': {{tasks.zz.output}} names task 'zz', which is not in this workflow", 'cell line 6, column 11', 'fix the task id in the template'),
        ("tasks:\n  - id: a\n    run: shell\n    argv: [ls]\n    onTimeout: skip\n", "task 'a': on_timeout is set but the step has no timeout", 'cell line 6, column 16', 'add timeout: 30s (or remove on_timeout)'),
        ("tasks:\n  - id: a\n    run: shell\n    argv: [ls]\n    'on': 1\n", "task 'a': unknown key 'on' (did you mean 'json'?)", 'cell line 6, column 11', 'the step keys are: run, needs, after, input, output, when, switch, for_each, back_to, skip_to, continue_on_failure, fallback, compensate, circuit_breaker, timeout, on_timeout, executor, approval, sleep, retries, max_attempts, backoff, retry_delay, max_delay, jitter, retry_on, argv, shell, cwd, env, inherit_env, max_output, stdin, method, url, headers, json, params, max_body, notebook, parameters, kernel'),
        # an undeclared input is reported at the key that reads it, in templates and conditions
        ("inputs: {day: str}\ntasks:\n  - id: a\n    run: shell\n    argv: [ls]\n    back_to: {step: a, when: 'inputs.dya == 1'}\n", "task 'a' reads {{inputs.dya}}, but the workflow declares no input 'dya' (did you mean 'day'?)", 'cell line 7, column 14', 'declare it under inputs: (dya: str), or fix the name'),
        ("inputs: {day: str}\ntasks:\n  - id: a\n    run: shell\n    argv: [ls]\n  - id: b\n    run: shell\n    argv: [ls]\n    skip_to: {step: c, when: '{{inputs.dya}} == 1'}\n  - id: c\n    run: shell\n    argv: [ls]\n", "task 'b' reads {{inputs.dya}}, but the workflow declares no input 'dya' (did you mean 'day'?)", 'cell line 10, column 14', 'declare it under inputs: (dya: str), or fix the name'),
        ("inputs: {day: str}\ntasks:\n  - id: a\n    run: shell\n    argv: [ls]\n    when: 'inputs.dya == 1'\n", "task 'a' reads {{inputs.dya}}, but the workflow declares no input 'dya' (did you mean 'day'?)", 'cell line 7, column 11', 'declare it under inputs: (dya: str), or fix the name'),
        ("inputs: {day: str}\ntasks:\n  - id: a\n    run: shell\n    argv: [ls]\n    env: {X: 'a {{ b'}\n    when: '{{inputs.zz}}'\n", "unclosed '{{' at column 3 of template 'a {{ b'", 'cell line 7, column 10', 'close the reference with }}, like {{inputs.name}}'),
        ("inputs: {day: str}\ntasks:\n  - id: a\n    run: python:process\n    forEach: {items: '{{inputs.ids}}', as: id}\n", "task 'a' reads {{inputs.ids}}, but the workflow declares no input 'ids'", 'cell line 6, column 14', 'declare it under inputs: (ids: str), or fix the name'),
        ("inputs: {day: str}\ntasks:\n  - id: a\n    run: shell\n    argv: [ls]\n    approval: {message: 'ok {{inputs.dya}}'}\n", "task 'a' reads {{inputs.dya}}, but the workflow declares no input 'dya' (did you mean 'day'?)", 'cell line 7, column 15', 'declare it under inputs: (dya: str), or fix the name'),
        ("inputs: {day: str}\ntasks:\n  - id: a\n    run: shell\n    argv: [ls, '{{inputs.day}}']\n    when: '{{inputs.dya}} == 1'\n", "task 'a' reads {{inputs.dya}}, but the workflow declares no input 'dya' (did you mean 'day'?)", 'cell line 7, column 11', 'declare it under inputs: (dya: str), or fix the name'),
        ("inputs: {day: str}\ntasks:\n  - id: a\n    switch: {value: '{{inputs.dya}}', cases: {x: python:handle_a}}\n", "task 'a' reads {{inputs.dya}}, but the workflow declares no input 'dya' (did you mean 'day'?)", 'cell line 5, column 13', 'declare it under inputs: (dya: str), or fix the name'),
        ("inputs: {day: str}\ntasks:\n  - id: a\n    run: shell\n    argv: [ls, '{{inputs}}']\n", "task 'a': {{inputs}} names no input", 'cell line 6, column 11', '{{inputs.NAME}}'),
        ("tasks:\n  - id: a\n    <<: [{run: shell, argv: [ls]}, 3]\n", 'a merge key (<<) takes a mapping or a list of mappings', 'cell line 4, column 36', '<<: *defaults'),
        (S + "    after: a2\n", "task 'a': after names 'a2', which is not a task of this workflow (did you mean 'a'?)", 'cell line 6, column 12', 'name an existing step id'),
        ("tasks:\n  - id: a\n    switch: 3\n", "task 'a': switch must be a mapping with value, cases and optionally default, got 3", 'cell line 4, column 13', "switch: {value: '{{tasks.parse.output.kind}}', cases: {a: python:handle_a}, default: python:other}"),
        ("inputs: {n: {type: zz, default: 1}}\n" + S, "input 'n': type must be one of str, int, float, bool, list, dict, any, got 'zz'", 'cell line 2, column 20', 'n: str, or n: {type: int, default: 3}'),
        ("inputs: {day: str}\ntasks:\n  - id: a\n    run: shell\n    argv: [ls]\n    backTo: {step: a, when: 'inputs.dya == 1'}\n", "task 'a' reads {{inputs.dya}}, but the workflow declares no input 'dya' (did you mean 'day'?)", 'cell line 7, column 13', 'declare it under inputs: (dya: str), or fix the name'),
        ("inputs: {day: str}\ntasks:\n  - id: a\n    run: shell\n    argv: [ls]\n  - id: b\n    run: shell\n    argv: [ls]\n    skip_to: {step: c, when: 'inputs.dya == 1'}\n  - id: c\n    run: shell\n    argv: [ls]\n", "task 'b' reads {{inputs.dya}}, but the workflow declares no input 'dya' (did you mean 'day'?)", 'cell line 10, column 14', 'declare it under inputs: (dya: str), or fix the name'),
    ],
)  # fmt: skip
def test_each_error_says_exactly_what_where_and_how_to_fix(text, message, location, hint, parser):
    with pytest.raises(DefinitionError) as info:
        compile_yaml("flow", text, NS)
    err = info.value
    assert (err.message, err.location, err.hint) == (message, location, hint)


_FIX_YAML = "fix the YAML on that line: indent with spaces, and quote values that contain ': ', '#', '{{' or start with '@' or '`'"
_CONTROL = "remove the control character (or write it as an escape inside a double-quoted string)"


@pytest.mark.parametrize(
    "text, messages, location, hint",
    [
        # libyaml and PyYAML's pure-Python parser word their problems differently: (libyaml, python)
        ("tasks:\n  - id: a\n\trun: shell\n",
         ("invalid YAML: found a tab character that violates indentation (while scanning a plain scalar)",
          "invalid YAML: found character '\\t' that cannot start any token (while scanning for the next token)"),
         "cell line 4, column 1", "YAML indents with spaces, never tabs: replace the tab"),
        ("tasks:\n  - id: a\n    run: a: b\n",
         ("invalid YAML: mapping values are not allowed in this context", "invalid YAML: mapping values are not allowed here"),
         "cell line 4, column 11", "quote a value that contains ': ' (e.g. \"a: b\"), or fix the indentation"),
        ("tasks: []\n---\ntasks: []\n",
         ("invalid YAML: but found another document (expected a single document in the stream)",) * 2,
         "cell line 3, column 1", "a workflow is one YAML document: remove the '---' separator and what follows"),
        ("tasks:\n  - id: a\n    run: `x\n",
         # libyaml does not say which character: the compiler adds it
         ("invalid YAML: found character that cannot start any token ('`') (while scanning for the next token)",
          "invalid YAML: found character '`' that cannot start any token (while scanning for the next token)"),
         "cell line 4, column 10", "quote the value that starts with this character"),
        ("tasks:\n  - id: a\n    run: shell\n    argv: {a: 1\n",
         ("invalid YAML: did not find expected ',' or '}' (while parsing a flow mapping)",
          "invalid YAML: expected ',' or '}', but got '<stream end>' (while parsing a flow mapping)"),
         "cell line 6, column 1", _FIX_YAML),
        ("tasks:\n  - id: a\n    run: shell\n    argv: [*nope]\n",
         ("invalid YAML: found undefined alias", "invalid YAML: found undefined alias 'nope'"),
         "cell line 5, column 12", _FIX_YAML),
        ("tasks: [{id: a, run: shell, argv: [ls]}]\n...\nfoo\n",
         ("invalid YAML: did not find expected <document start>", "invalid YAML: expected '<document start>', but found '<scalar>'"),
         "cell line 4, column 1", _FIX_YAML),
        ("tasks:\n  - id: a\n    run: shell\n    argv: [echo, \"\x07\"]\n",
         ("invalid YAML: the character '\\x07' is not allowed (control characters are not allowed)",
          "invalid YAML: the character '\\x07' is not allowed (special characters are not allowed)"),
         "cell line 5, column 19", _CONTROL),
        ("\x01tasks: []\n",
         ("invalid YAML: the character '\\x01' is not allowed (control characters are not allowed)",
          "invalid YAML: the character '\\x01' is not allowed (special characters are not allowed)"),
         "cell line 2, column 1", _CONTROL),
        ("tasks:\n  - id: a\n    run: shell\n    argv: [ls]\n\x0c\n",
         ("invalid YAML: the character '\\x0c' is not allowed (control characters are not allowed)",
          "invalid YAML: the character '\\x0c' is not allowed (special characters are not allowed)"),
         "cell line 6, column 1", _CONTROL),
    ],
)  # fmt: skip
def test_invalid_yaml_is_reported_with_its_problem_place_and_fix(text, messages, location, hint, parser):
    err = compile_error(text)
    assert err.message == messages[0 if parser == "libyaml" else 1]
    assert (err.location, err.hint) == (location, hint)


def compile_error(text: str, name: str | None = "flow", **kw: Any) -> DefinitionError:
    with pytest.raises(DefinitionError) as info:
        compile_yaml(name, text, NS, **kw)
    return info.value


# --- limits and boundaries ---------------------------------------------------------------------

_ARGV = "tasks:\n  - id: a\n    run: shell\n    argv: [ls]\n"


def _deep_default(levels: int) -> str:
    # the root, inputs: and n: are three levels: the default adds the rest
    return "inputs: {n: {type: any, default: " + "[" * levels + "]" * levels + "}}\n" + _ARGV


def test_the_text_may_nest_exactly_64_levels(parser):
    assert cell(_deep_default(61)).declared_inputs[0].default is not None
    err = compile_error(_deep_default(62))
    assert (err.message, err.location, err.hint) == ("the YAML nests more than 64 levels deep", "cell line 2, column 95", "flatten the structure")


def _aliased_depth(levels: int) -> str:
    # A is 40 levels deep; m's default puts it under `levels` more: deeper than the text itself
    return (
        "inputs: {n: {type: any, default: &A " + "[" * 40 + "]" * 40 + "}, m: {type: any, default: "
        + "[" * levels + "*A" + "]" * levels + "}}\n" + _ARGV
    )


def test_values_may_nest_64_levels_through_aliases(parser):
    assert [d.name for d in cell(_aliased_depth(24)).declared_inputs] == ["n", "m"]
    err = compile_error(_aliased_depth(25))
    assert err.message == "values nest deeper than 64 levels (through aliases)"
    assert err.location == "cell line 2, column 76"
    assert err.hint == "flatten the structure, or use fewer nested aliases"


def test_aliases_may_add_exactly_max_alias_nodes_values(monkeypatch):
    # *v repeats a list of two: three values (the list and its items) added by the alias.
    text = "tasks:\n  - id: a\n    run: shell\n    argv: &v [ls, -l]\n  - id: b\n    run: shell\n    argv: *v\n"
    monkeypatch.setattr(yaml_compiler, "MAX_ALIAS_NODES", 3)
    assert compile_yaml("flow", text, NS)["b"].spec.action["argv"] == ["ls", "-l"]
    monkeypatch.setattr(yaml_compiler, "MAX_ALIAS_NODES", 2)
    err = compile_error(text)
    assert err.message == "aliases expand to more than 2 values"
    assert err.location == "cell line 5, column 19"
    assert err.hint == "use fewer nested aliases (this looks like a 'billion laughs' document)"


def test_merged_values_count_as_alias_values(monkeypatch):
    text = "tasks:\n  - &s {id: a, run: shell, argv: [ls]}\n  - {<<: *s, id: b}\n"
    monkeypatch.setattr(yaml_compiler, "MAX_ALIAS_NODES", 4)  # the merged mapping, run, argv and ls
    assert compile_yaml("flow", text, NS).task_ids == ("a", "b")
    monkeypatch.setattr(yaml_compiler, "MAX_ALIAS_NODES", 3)
    assert compile_error(text).message == "aliases expand to more than 3 values"


def test_whole_numbers_must_fit_in_64_bits(parser):
    wf = cell("""
        inputs:
          big: {type: int, default: 9223372036854775807}
          small: {type: int, default: -9223372036854775808}
          flag: {type: bool, default: true}
        tasks:
          - {id: a, run: shell, argv: [ls]}
        """)
    assert [d.default for d in wf.declared_inputs] == [2**63 - 1, -(2**63), True]


def test_merge_keys_explicit_keys_win_then_the_first_merged_mapping():
    wf = cell("""
        tasks:
          - id: a
            <<: [{run: shell, argv: [first], retries: 1}, {run: http, argv: [second], retries: 2, timeout: 5s}]
            retries: 3
        """)
    assert wf["a"].spec.kind == "shell"
    assert wf["a"].spec.action["argv"] == ["first"]
    assert (wf["a"].options.retries, wf["a"].options.timeout) == (3, 5.0)


def test_switch_case_labels_are_spelled_as_text():
    wf = cell("""
        tasks:
          - id: parse
            run: python:parse_json
            input: {fetch: 1}
          - id: route
            switch:
              value: "{{tasks.parse.output.kind}}"
              cases: {no: python:handle_a, 2.5: python:handle_b, ~: python:other, yes: python:other}
        """)
    assert list(wf["route"].spec.switch["cases"]) == ["false", "2.5", "null", "true"]


def test_switch_written_without_cases_mapping_keeps_its_values():
    wf = cell("""
        tasks:
          - id: parse
            run: python:parse_json
            input: {fetch: 1}
          - id: route
            switch: {value: "{{tasks.parse.output.kind}}", cases: {a: python:handle_a}, default: python:other}
        """)
    assert wf["route"].spec.switch["default"] == "python:other"


# --- names, the header line, workflow settings ---------------------------------------------------


@pytest.mark.parametrize(
    "name, text, kw, message, location, hint",
    [
        ("flow", b"tasks: []", {}, "a YAML workflow must be text, got bytes", "cell line 1", "pass the YAML document as a str"),
        # the header is the line above the text (the magic's), never line 0
        ("flow", 3, {"first_line": 1}, "a YAML workflow must be text, got int", "cell line 1", "pass the YAML document as a str"),
        ("flow", 3, {"first_line": 5, "origin": "x.yaml"}, "a YAML workflow must be text, got int", "x.yaml line 4", "pass the YAML document as a str"),
        (None, _ARGV, {}, "the workflow has no name", "cell line 1", "write %%workflow NAME, or add name: NAME to the YAML"),
        ("9x", _ARGV, {}, "workflow name must be a Python identifier, got '9x'", "cell line 1", "write %%workflow my_flow (letters, digits, underscores)"),
        (5, _ARGV, {}, "workflow name must be a Python identifier, got 5", "cell line 1", "write %%workflow my_flow (letters, digits, underscores)"),
        ("flow", "", {"origin": "f.yaml", "first_line": 1}, "the YAML workflow is empty", "f.yaml line 1", _SHAPE_HINT),
        ("flow", "name: other\n" + _ARGV, {"first_line": 7}, "the YAML says name: other, but the cell defines workflow 'flow'",
         "cell line 7, column 7", "make them agree, or remove name: (the cell's %%workflow flow names it)"),
    ],
)  # fmt: skip
def test_the_workflow_and_its_name_are_checked_at_the_header(name, text, kw, message, location, hint):
    err = compile_error(text, name=name, **kw)
    assert (err.message, err.location, err.hint) == (message, location, hint)


def test_the_compile_defaults_are_a_cell_whose_body_starts_on_line_2():
    wf = compile_yaml("flow", _ARGV, NS)
    assert wf.origin == "cell" and wf["a"].line == 3
    wf = compile_yaml("flow", _ARGV, NS, origin="f.yaml", first_line=1)
    assert wf.origin == "f.yaml" and wf["a"].line == 2


def test_an_unregistered_executor_is_reported_where_it_was_chosen():
    hint = "pick a registered executor, or install the plugin that provides this one"
    err = compile_error(_ARGV, executor="warp")  # the magic's flag: its line
    assert err.message.startswith("workflow 'flow' asks for executor 'warp', which is not registered")
    assert (err.location, err.hint) == ("cell line 1", hint)
    err = compile_error("executor: warp\n" + _ARGV)
    assert err.message.startswith("workflow 'flow' asks for executor 'warp', which is not registered")
    assert (err.location, err.hint) == ("cell line 2, column 11", hint)
    err = compile_error(_ARGV + "    executor: warp\n")  # a step's own: the step's line
    assert err.message.startswith("task 'a' asks for executor 'warp', which is not registered")
    assert (err.location, err.hint) == ("cell line 3", hint)
    assert compile_yaml("flow", "executor: warp\n" + _ARGV, NS, executor="threads").executor == "threads"


def test_model_errors_without_a_line_are_placed_at_tasks_or_the_executor_flag():
    hint = "use one of the accepted values above (help(kf.task) lists every option)"
    err = compile_error("name: flow\n" + _ARGV, max_parallel=0)
    assert type(err) is kf.OptionError  # relocated, still the same kind of error
    assert (err.message, err.location, err.hint) == ("max_parallel must be a whole number >= 1, got 0", "cell line 3, column 1", hint)
    err = compile_error(_ARGV, executor="")
    assert (err.message, err.location, err.hint) == ("executor must be an executor name such as 'threads', got ''", "cell line 1", hint)


def test_a_cycle_stays_a_cycle_error_at_its_lines():
    with pytest.raises(CycleError) as info:
        compile_yaml("flow", "tasks:\n  - {id: a, run: shell, argv: [ls], needs: b}\n  - {id: b, run: shell, argv: [ls], needs: a}\n", NS)
    assert info.value.cycle == ["a", "b", "a"]
    assert info.value.location == "cell lines 3, 4"
    assert info.value.hint == "remove one of these dependencies so the tasks form a DAG"


def test_limits_of_one_are_accepted():
    wf = cell("max_parallel: 1\nmax_foreach_depth: 1\nmax_subworkflow_depth: 1\n" + _ARGV)
    assert (wf.max_parallel, wf.max_foreach_depth, wf.max_subworkflow_depth) == (1, 1, 1)
    default = cell(_ARGV)
    assert (default.max_parallel, default.max_foreach_depth, default.max_subworkflow_depth, default.executor) == (8, 3, 5, "threads")


def test_inputs_left_empty_declare_none_and_a_default_alone_is_of_any_type():
    assert cell("inputs:\n" + _ARGV).declared_inputs == ()
    assert cell("inputs: null\n" + _ARGV).declared_inputs == ()
    wf = cell("inputs: {n: {default: 3}, m: {type: int}}\n" + _ARGV)
    assert wf.declared_inputs == (InputDecl("n", "any", True, 3), InputDecl("m", "int"))


# --- schedule: --------------------------------------------------------------------------------

_SCHEDULE_HINT = "schedule: {cron: '0 6 * * *', timezone: Europe/Paris}"


@pytest.mark.parametrize(
    "schedule, message, location, hint",
    [
        ("schedule: []\n", "schedule: is an empty list", "cell line 2, column 11", _SCHEDULE_HINT),
        ("schedule: daily\n", "schedule must be a mapping (or a list of mappings), got 'daily'", "cell line 2, column 11", _SCHEDULE_HINT),
        ("schedule: [daily]\n", "each schedule must be a mapping, got 'daily'", "cell line 2, column 12", _SCHEDULE_HINT),
        ("schedule: {cron: '0 6 * * *', target: x.ipynb}\n", "a schedule declared in a workflow runs this workflow: it takes no target:",
         "cell line 2, column 39", "remove target: (to schedule another file, declare the schedule there or use kf.schedule)"),
        ("schedule:\n  - {cron: '0 6 * * *'}\n  - {cron: '0 7 * * *'}\n", "two schedules are named 'flow' (cell lines 3 and 4)",
         "cell line 4, column 5", "give each schedule its own name: (the first one defaults to the workflow's name)"),
        # parse_schedule's own errors, at the key it names or at the schedule
        ("schedule: {every: 1h, cron: nope}\n", "schedule 'flow': give either cron or every, not both", "cell line 2, column 19",
         "keep one of them (or declare two schedules with distinct names)"),
        ("schedule: {timezone: UTC}\n", "schedule 'flow': no cron or every: the schedule would never fire", "cell line 2, column 11",
         "add cron: '*/15 * * * *' or every: 15m (or a webhook: to run it only when called)"),
    ],
)  # fmt: skip
def test_schedule_errors_point_at_the_schedule(schedule, message, location, hint):
    err = compile_error(schedule + _ARGV)
    assert (err.message, err.location, err.hint) == (message, location, hint)


def test_schedules_in_a_cell_have_no_target_and_in_a_file_run_the_file(tmp_path):
    wf = cell("schedule:\n  - {cron: '0 6 * * *'}\n  - {cron: '0 7 * * *', name: late}\n" + _ARGV)
    assert [(s.name, s.target, s.cron, s.origin) for s in wf.schedules] == [
        ("flow", None, "0 6 * * *", "cell"), ("late", None, "0 7 * * *", "cell")]
    path = tmp_path / "good.yaml"
    path.write_text("schedule: {cron: '0 6 * * *'}\n" + _ARGV)
    assert [(s.name, s.target, s.origin) for s in load(path, NS).schedules] == [("good", str(path), str(path))]
    assert cell(_ARGV).schedules == ()


def test_read_schedules_of_a_file_and_of_a_cells_text(tmp_path):
    path = tmp_path / "good.yaml"
    path.write_text("schedule: {cron: '0 6 * * *'}\n" + _ARGV)
    assert [(s.name, s.target, s.origin) for s in yaml_compiler.read_schedules(path)] == [("good", str(path), str(path))]
    named = tmp_path / "other.yaml"
    named.write_text("name: nightly\nschedule: {cron: '0 6 * * *'}\n" + _ARGV)
    assert [s.name for s in yaml_compiler.read_schedules(named)] == ["nightly"]
    assert [s.name for s in yaml_compiler.read_schedules(named, name="ignored")] == ["nightly"]
    plain = tmp_path / "plain.yaml"
    plain.write_text(_ARGV)
    assert yaml_compiler.read_schedules(plain) == []
    notebook = tmp_path / "nb.ipynb"
    notebook.write_text("{}")
    text = "schedule: {cron: '0 6 * * *'}\n" + _ARGV
    (s,) = yaml_compiler.read_schedules(text=text, name="cellflow", target=notebook, origin="nb.ipynb cell 3", first_line=2)
    assert (s.name, s.target, s.origin) == ("cellflow", str(notebook), "nb.ipynb cell 3")
    assert [(s.name, s.target, s.origin) for s in yaml_compiler.read_schedules(text=text)] == [("workflow", None, "cell")]
    with pytest.raises(DefinitionError, match="target file .*missing.ipynb' does not exist"):
        yaml_compiler.read_schedules(text=text, target=tmp_path / "missing.ipynb")
    assert [s.name for s in yaml_compiler.read_schedules(text="name: docname\n" + text)] == ["docname"]
    assert [s.name for s in yaml_compiler.read_schedules(text="name: ''\n" + text, name="fromcell")] == ["fromcell"]
    assert yaml_compiler.read_schedules(text="- a\n") == []
    assert yaml_compiler.read_schedules(text="") == []


def test_read_schedules_errors_name_the_file_or_cell_and_line(tmp_path):
    def error(*args, **kw):
        with pytest.raises(DefinitionError) as info:
            yaml_compiler.read_schedules(*args, **kw)
        return info.value.message, info.value.location, info.value.hint

    readable = "check that it is a readable file"
    assert error(tmp_path / "nope.yaml") == (
        f"cannot read workflow file '{tmp_path / 'nope.yaml'}': No such file or directory", str(tmp_path / "nope.yaml"), readable)
    assert error(tmp_path) == (f"cannot read workflow file '{tmp_path}': Is a directory", str(tmp_path), readable)
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"tasks:\n\xff\n")
    assert error(binary) == ("the file is not UTF-8 text", str(binary), "save the file as UTF-8")
    bad = "schedule: 3\n" + _ARGV
    assert error(text=bad, origin="o.yaml") == (
        "schedule must be a mapping (or a list of mappings), got '3'", "o.yaml line 1, column 11", _SCHEDULE_HINT)
    assert error(text=bad)[1] == "cell line 1, column 11"
    assert error(text=bad, origin="nb.ipynb", first_line=4)[1] == "nb.ipynb line 4, column 11"
    assert error(text="a: b: c\n")[:2] == ("invalid YAML: mapping values are not allowed in this context", "cell line 1, column 5")
    assert error(text="schedule: " + "[" * 70 + "]" * 70 + "\n") == (
        "the YAML nests more than 64 levels deep", "cell line 1, column 74", "flatten the structure")
    assert error(text="schedule: {}\nschedule: {}\n") == (
        "key 'schedule' is given twice in this mapping (cell lines 1 and 2)", "cell line 2, column 1",
        "remove one of them (YAML would silently keep only the last)")
    with pytest.raises(TypeError, match=r"^read_schedules\(\) needs a path or text=$"):
        yaml_compiler.read_schedules()


# --- files ------------------------------------------------------------------------------------


def test_load_errors_say_what_is_wrong_with_the_file(tmp_path):
    def error(path):
        with pytest.raises(DefinitionError) as info:
            load(path, NS)
        return info.value.message, info.value.location, info.value.hint

    import os

    missing = tmp_path / "nope.yaml"
    assert error(missing) == (
        f"no workflow file '{missing}' (looked in {os.getcwd()})", str(missing),
        "check the path; relative paths start at the current directory")
    assert error(tmp_path) == (f"cannot read workflow file '{tmp_path}': Is a directory", str(tmp_path), "check that it is a readable file")
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"tasks:\n  - id: a\n\xff\n")
    assert error(binary) == ("the file is not UTF-8 text (byte 0xff at offset 17)", f"{binary} line 3", "save the file as UTF-8")
    stem = tmp_path / "my-flow.yaml"
    stem.write_text(_ARGV)
    assert error(stem) == (
        "the file name gives the workflow the name 'my-flow', which is not a Python identifier", f"{stem} line 1",
        "add name: NAME to the file (letters, digits and underscores)")


# --- alerts:, relocated errors, the catalog ---------------------------------------------------


def test_alerts_are_set_for_the_workflow_and_their_errors_point_at_alerts():
    from kernelflow import alerting

    wf = compile_yaml("alerted", "alerts: {duration: {z: 7}, tasks: {a: {duration: {z: 5}}}}\n" + _ARGV, NS)
    rules = alerting.rules_for(wf)
    assert rules.rules["duration"].z == 7.0
    assert set(rules.tasks) == {"a"}
    err = compile_error("alerts: 3\n" + _ARGV)
    assert err.message == "alerts must be a mapping of checks (duration, error_rate, trend, stuck), channels and tasks, got 3"
    assert err.location == "cell line 2, column 1"
    assert err.hint == "e.g. alerts: {error_rate: {rate: 0.3}, channels: [ops]}; docs/alerts.md lists every check and setting"
    err = compile_error("alerts: {zzz: 1}\n" + _ARGV)  # an error with a hint of its own keeps it
    assert (err.location, err.hint) == ("cell line 2, column 1", "alerts: {duration: {z: 4}, channels: [ops]}")
    err = compile_error("alerts: {tasks: {zz: {duration: {z: 5}}}}\n" + _ARGV)  # the workflow's tasks are known
    assert "zz" in err.message and err.location == "cell line 2, column 1"


def test_a_relocated_error_keeps_its_kind_or_falls_back_to_definition_error():
    class Positional(DefinitionError):
        def __init__(self, code, message):  # another signature than DefinitionError's
            super().__init__(message)

    moved = yaml_compiler._relocated(Positional(1, "odd"), "cell line 9", default_hint="a hint")
    assert type(moved) is DefinitionError
    assert (moved.message, moved.location, moved.hint) == ("odd", "cell line 9", "a hint")
    moved = yaml_compiler._relocated(kf.OptionError("bad", hint="own"), "cell line 3", default_hint="a hint")
    assert type(moved) is kf.OptionError and (moved.message, moved.location, moved.hint) == ("bad", "cell line 3", "own")
    moved = yaml_compiler._relocated(CycleError(["a", "b", "a"]), "cell line 4")
    assert type(moved) is CycleError and moved.cycle == ["a", "b", "a"] and moved.location == "cell line 4"


def test_a_compiled_workflow_is_remembered_by_name():
    from kernelflow import catalog

    wf = compile_yaml("remembered_flow", _ARGV, NS)
    assert catalog.find("remembered_flow") is wf


# --- detection: the first key, a top-level tasks:, and Python that is also YAML ------------------


@pytest.mark.parametrize(
    "text",
    [
        "%YAML 1.2\n---\ntasks:\n  - id: a\n",  # a directive and a document start before the first key
        "...\ntasks:\n  - id: a\n",
        "  \n\t\ntasks:\n  - id: a\n",  # blank lines, even with tabs
        "my-key: 1\ntasks:\n  - a\n",  # dashes in the first key
        "tasks :\n  - a\n",
        "tasks:  # the steps\n  - a\n",
        "tasks:\t\n  - a\n",
        "x:\ntasks:\n - a\n",
        "steps: [{id: a}]\n",  # valid Python as well: steps: is a list
        "other: 1\nsteps: [a]\n",
        "tasks: [" + "-" * 100_000 + "1]\n",  # too deep for Python's parser: not Python
    ],
)
def test_these_bodies_are_yaml(text):
    assert looks_like_yaml(text) is True


@pytest.mark.parametrize(
    "text",
    [
        "tasks:x\n",  # no space after the colon: not a key
        "x:1\ntasks:\n - a\n",
        "1x: 2\ntasks:\n - a\n",  # the first key must be a name
        "x: 1\n  tasks:\n  - a\n",  # tasks: not at the top level
        "tasks: {a: 1}\n",  # valid Python, and tasks: is not a list
        "tasks: 1\nother: [a]\n",  # a list, but not under tasks:
        "tasks: [a]\nx: 'a' 'b'\n",  # valid Python, invalid YAML
    ],
)
def test_these_bodies_are_not_yaml(text):
    assert looks_like_yaml(text) is False


def test_the_ipython_namespace_is_the_running_shells_user_namespace(monkeypatch):
    import sys
    import types

    monkeypatch.delitem(sys.modules, "IPython", raising=False)
    assert yaml_compiler._ipython_namespace() is None  # IPython not imported: not even looked for
    shell = types.SimpleNamespace(user_ns={"parse_json": parse_json})
    fake = types.ModuleType("IPython")
    fake.get_ipython = lambda: shell  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "IPython", fake)
    assert yaml_compiler._ipython_namespace() is shell.user_ns
    fake.get_ipython = lambda: None  # type: ignore[attr-defined]  # imported, but no shell is running
    assert yaml_compiler._ipython_namespace() is None
    fake.get_ipython = lambda: types.SimpleNamespace()  # type: ignore[attr-defined]  # a shell without user_ns
    assert yaml_compiler._ipython_namespace() is None

    def broken():
        raise RuntimeError("no shell")

    fake.get_ipython = broken  # type: ignore[attr-defined]
    assert yaml_compiler._ipython_namespace() is None


def test_many_sibling_collections_are_not_nesting(parser):
    # the depth goes back down at the end of each collection
    siblings = "inputs: {n: {type: any, default: [" + ", ".join(["[1]"] * 70) + "]}}\n" + _ARGV
    assert cell(siblings).declared_inputs[0].default == [[1]] * 70


def test_needs_may_be_empty():
    assert cell(_ARGV + "    needs: null\n")["a"].deps == ()
    assert cell(_ARGV + "    needs: []\n")["a"].deps == ()


def test_read_schedules_of_a_file_may_run_another_target(tmp_path):
    # the scheduler reads a notebook's schedules from a file next to it: they run the notebook
    path = tmp_path / "flow.yaml"
    path.write_text("schedule: {cron: '0 6 * * *'}\n" + _ARGV)
    notebook = tmp_path / "nb.ipynb"
    notebook.write_text("{}")
    (s,) = yaml_compiler.read_schedules(path, target=notebook)
    assert (s.name, s.target) == ("flow", str(notebook))


def test_load_counts_the_lines_before_a_bad_byte_from_the_first(tmp_path):
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\ntasks:\n\xff\n")
    with pytest.raises(DefinitionError) as info:
        load(binary, NS)
    assert (info.value.message, info.value.location) == ("the file is not UTF-8 text (byte 0xff at offset 8)", f"{binary} line 3")


def test_merged_switch_cases_may_have_any_scalar_label():
    wf = cell("""
        tasks:
          - id: parse
            run: python:parse_json
            input: {fetch: 1}
          - id: route
            switch:
              value: "{{tasks.parse.output.kind}}"
              cases: {<<: {1: python:handle_a}, b: python:handle_b}
        """)
    assert wf["route"].spec.switch["cases"] == {"b": "python:handle_b", "1": "python:handle_a"}


def test_a_control_character_after_a_leading_newline_counts_that_line(parser):
    err = compile_error("\n\x01tasks: []\n")
    assert (err.location, err.hint) == ("cell line 3, column 1", _CONTROL)


def test_the_quoted_character_is_found_on_its_line_in_a_longer_document(parser):
    text = "tasks:\n  - id: a\n    run: `x\n  - id: b\n    run: shell\n  - id: c\n    run: shell\n"
    err = compile_error(text)
    assert "'`'" in err.message
    assert (err.location, err.hint) == ("cell line 4, column 10", "quote the value that starts with this character")
