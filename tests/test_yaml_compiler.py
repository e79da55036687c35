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
