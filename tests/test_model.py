"""The workflow model: validation, JSON round trip, versions."""

from __future__ import annotations

import pytest

import kernelflow as kf
from kernelflow.model import Param, Task, Workflow


def _fns(src: str) -> list:
    ns: dict = {}
    exec(compile(src, "<test>", "exec"), ns)
    return [v for k, v in ns.items() if callable(v) and not k.startswith("__")]


ETL = '''
def extract(url: str, limit=10):
    return list(range(limit))

def clean(extract):
    return [x for x in extract if x % 2 == 0]

def publish(clean, table="daily"):
    return {"table": table, "n": len(clean)}
'''


def test_dependencies_and_inputs_come_from_parameter_names():
    wf = kf.workflow("etl", _fns(ETL))
    assert wf.order == ("extract", "clean", "publish")
    assert wf["clean"].deps == ("extract",)
    assert [p.name for p in wf["publish"].inputs] == ["table"]
    inputs = {i.name: i.required for i in wf.inputs}
    assert inputs == {"url": True, "limit": False, "table": False}
    assert wf.sinks() == ("publish",)
    assert wf.levels() == [["extract"], ["clean"], ["publish"]]


def test_json_round_trip_keeps_definition_and_version():
    fns = _fns(ETL)
    wf = kf.workflow("etl", fns, max_parallel=3)
    again = Workflow.from_json(wf.to_json(), namespace={f.__name__: f for f in fns})
    assert again == wf
    assert again.version == wf.version
    assert again.to_dict() == wf.to_dict()
    assert set(again.functions) == {"extract", "clean", "publish"}


def test_json_definition_edited_by_hand_is_refused():
    wf = kf.workflow("etl", _fns(ETL))
    d = wf.to_dict()
    d["tasks"][2]["params"][1]["default"] = "'weekly'"
    with pytest.raises(kf.DefinitionError, match="hashes to"):
        Workflow.from_dict(d)
    del d["version"]
    assert Workflow.from_dict(d).version != wf.version


def test_version_ignores_comments_whitespace_and_docstrings():
    base = kf.workflow("etl", _fns(ETL)).version
    cosmetic = ETL.replace("def clean(extract):\n", 'def clean(extract):\n    """Keep evens."""\n    # why: odd rows are test data\n\n')
    cosmetic = cosmetic.replace("x % 2 == 0", "x  %  2 == 0")
    assert kf.workflow("etl", _fns(cosmetic)).version == base


@pytest.mark.parametrize(
    "edit",
    [
        ("x % 2 == 0", "x % 2 == 1"),  # a constant
        ("limit=10", "limit=11"),  # a default
        ('table="daily"', 'table="weekly"'),
        ("len(clean)", "len(clean) + 0"),  # an operation
        ("if x % 2 == 0]", "if not x % 2 == 0]"),
    ],
)
def test_version_changes_with_any_behaviour_edit(edit):
    base = kf.workflow("etl", _fns(ETL)).version
    assert kf.workflow("etl", _fns(ETL.replace(*edit))).version != base


def test_version_changes_with_options_and_wiring():
    fns = _fns(ETL)
    base = kf.workflow("etl", fns)
    assert kf.workflow("etl", fns, max_parallel=2).version != base.version
    assert kf.workflow("etl2", fns).version != base.version
    retried = _fns(ETL)
    kf.task(retries=2)(retried[1])
    assert kf.workflow("etl", retried).version != base.version


def test_cycle_error_prints_the_cycle_path():
    fns = _fns("def a(c): pass\ndef b(a): pass\ndef c(b): pass\ndef d(): pass\n")
    with pytest.raises(kf.CycleError) as err:
        kf.workflow("loop", fns)
    assert err.value.cycle == ["a", "b", "c", "a"]
    assert "a -> b -> c -> a" in str(err.value)


def test_unknown_after_dependency_is_named_with_a_suggestion():
    fns = _fns("def extract(): pass\ndef load(): pass\n")
    kf.task(after=["extrac"])(fns[1])
    with pytest.raises(kf.DefinitionError, match=r"(?s)'load' depends on 'extrac'.*did you mean 'extract'"):
        kf.workflow("wf", fns)


def test_duplicate_task_ids_are_refused():
    one = _fns("def a(): return 1\n")[0]
    two = _fns("def a(): return 2\n")[0]
    with pytest.raises(kf.DefinitionError, match="task 'a' is defined twice"):
        kf.workflow("wf", [one, two])


@pytest.mark.parametrize(
    "bad, message",
    [
        (42, "must be a function defined with def, got int 42"),
        (lambda: 1, "is a lambda"),
        (print, "must be a function defined with def, got builtin_function_or_method"),
    ],
)
def test_non_functions_are_refused(bad, message):
    ok = _fns("def a(): pass\n")[0]
    with pytest.raises(kf.DefinitionError, match=message):
        kf.workflow("wf", [ok, bad])


def test_functions_must_be_a_list():
    with pytest.raises(kf.DefinitionError, match="must be a list of functions"):
        kf.workflow("wf", "abc")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"retries": -1}, "retries must be a whole number >= 0"),
        ({"retries": 1.5}, "retries must be a whole number"),
        ({"backoff": "linear-ish"}, "backoff must be one of fixed, linear, exponential"),
        ({"timeout": "soon"}, "timeout must be a duration like"),
        ({"timeout": 0}, "timeout must be a duration greater than zero"),
        ({"timeout": True}, "timeout must be a duration"),
        ({"retry_delay": "fast"}, "retry_delay must be a duration"),
        ({"executor": ""}, "executor must be an executor name"),
    ],
)
def test_bad_task_options(kwargs, message):
    with pytest.raises(kf.OptionError, match=message):
        kf.task(**kwargs)


def test_task_options_positional_is_a_clear_error():
    with pytest.raises(kf.OptionError, match="takes its options by keyword"):
        kf.task(3)


@pytest.mark.parametrize(
    "kwargs, message",
    [({"max_parallel": 0}, "max_parallel must be a whole number >= 1"), ({"executor": "gpu"}, "executor 'gpu'.*not registered")],
)
def test_bad_workflow_options(kwargs, message):
    with pytest.raises(kf.OptionError, match=message):
        kf.workflow("wf", _fns("def a(): pass\n"), **kwargs)


def test_unknown_task_executor_is_refused_at_definition():
    fns = _fns("def a(): pass\n")
    kf.task(executor="quantum")(fns[0])
    with pytest.raises(kf.OptionError, match="task 'a' asks for executor 'quantum'.*registered: .*threads"):
        kf.workflow("wf", fns)


def test_self_dependency_and_star_args_are_refused():
    with pytest.raises(kf.DefinitionError, match="named after itself"):
        kf.workflow("wf", _fns("def a(a): pass\n"))
    with pytest.raises(kf.DefinitionError, match=r"\*args or \*\*kwargs"):
        kf.workflow("wf", _fns("def a(*xs): pass\n"))


def test_reserved_input_names_are_refused():
    with pytest.raises(kf.DefinitionError, match="'run_id', which is reserved"):
        kf.workflow("wf", _fns("def a(run_id): pass\n"))


def test_workflow_name_must_be_an_identifier():
    with pytest.raises(kf.DefinitionError, match="must be a Python identifier"):
        kf.workflow("my flow", _fns("def a(): pass\n"))


def test_retry_delays_fixed_and_exponential_with_cap():
    fixed = kf.TaskOptions.build(retries=3, retry_delay="2s")
    assert [fixed.delay_before(a) for a in (2, 3, 4)] == [2.0, 2.0, 2.0]
    exp = kf.TaskOptions.build(retries=5, backoff="exponential", retry_delay=1, max_delay=5)
    assert [exp.delay_before(a) for a in (2, 3, 4, 5, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_build_validates_tasks_directly():
    t = Task("a", (Param("b"),), ("b",))
    with pytest.raises(kf.DefinitionError, match="'a' depends on 'b', which is not a task"):
        Workflow.build("wf", [t])
