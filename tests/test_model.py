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


# --- TaskOptions: every option's accepted values, its boundaries and its exact message ----------

OPTIONS_HINT = "use one of the accepted values above (help(kf.task) lists every option)"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"retries": -1}, "retries must be a whole number >= 0, got -1"),
        ({"retries": 1.5}, "retries must be a whole number >= 0, got 1.5"),
        ({"retries": True}, "retries must be a whole number >= 0, got True"),  # a bool is an int to Python
        ({"backoff": "Fixed"}, "backoff must be one of fixed, linear, exponential, got 'Fixed'"),
        ({"retry_delay": -0.5}, "retry_delay must be a number of seconds >= 0, got -0.5"),
        ({"retry_delay": "1"}, "retry_delay must be a number of seconds >= 0, got '1'"),
        ({"retry_delay": False}, "retry_delay must be a number of seconds >= 0, got False"),
        ({"max_delay": -1}, "max_delay must be a number of seconds >= 0, got -1"),
        ({"max_delay": "300"}, "max_delay must be a number of seconds >= 0, got '300'"),
        ({"max_delay": True}, "max_delay must be a number of seconds >= 0, got True"),
        ({"executor": ""}, "executor must be an executor name such as 'threads', got ''"),
        ({"executor": 3}, "executor must be an executor name such as 'threads', got 3"),
        ({"after": ("a", 1)}, "after must be a list of task names, got ['a', 1]"),
        ({"jitter": -0.01}, "jitter must be a fraction between 0 and 1 (0.2 = ±20%), got -0.01"),
        ({"jitter": 1.01}, "jitter must be a fraction between 0 and 1 (0.2 = ±20%), got 1.01"),
        ({"jitter": "0.1"}, "jitter must be a fraction between 0 and 1 (0.2 = ±20%), got '0.1'"),
        ({"jitter": True}, "jitter must be a fraction between 0 and 1 (0.2 = ±20%), got True"),
        ({"retry_on": ("ValueError", "")}, "retry_on must list exception types or their names, got ['ValueError', '']"),
        ({"retry_on": (ValueError,)}, "retry_on must list exception types or their names, got [<class 'ValueError'>]"),
        ({"on_timeout": "abort"}, "on_timeout must be one of fail, skip, retry, fallback, got 'abort'"),
    ],
)
def test_task_options_refuse_each_bad_value_with_its_message(kwargs, message):
    with pytest.raises(kf.OptionError) as err:
        kf.TaskOptions(**kwargs)
    assert err.value.message == message
    assert err.value.hint == OPTIONS_HINT


@pytest.mark.parametrize(
    "kwargs",
    [
        {"retries": 0},
        {"retries": 7},
        {"backoff": "linear"},
        {"backoff": "exponential"},
        {"retry_delay": 0},
        {"retry_delay": 0.25},
        {"max_delay": 0},
        {"executor": None},
        {"executor": "processes"},
        {"after": ("a", "b")},
        {"jitter": 0},
        {"jitter": 1},
        {"jitter": 0.5},
        {"retry_on": ("ValueError", "builtins.KeyError")},
        {"on_timeout": "fail"},
        {"on_timeout": "skip"},
        {"on_timeout": "fallback"},
    ],
)
def test_task_options_accept_the_boundary_values(kwargs):
    options = kf.TaskOptions(**kwargs)
    for key, value in kwargs.items():
        assert getattr(options, key) == value


def test_task_options_build_defaults_are_the_plain_defaults():
    assert kf.TaskOptions.build() == kf.TaskOptions()
    assert kf.TaskOptions.build().to_dict() == {
        "retries": 0,
        "backoff": "fixed",
        "retry_delay": 1.0,
        "max_delay": 300.0,
        "timeout": None,
        "executor": None,
        "after": [],
        "jitter": 0.0,
        "retry_on": [],
        "on_timeout": "retry",
    }


def test_task_options_build_converts_user_values():
    options = kf.TaskOptions.build(
        retries=2,
        backoff="linear",
        retry_delay="500ms",
        max_delay="2m",
        timeout="30s",
        executor="processes",
        after="extract",  # one name is a list of one
        jitter=0.25,
        retry_on=[ValueError, "TimeoutError"],
        on_timeout="skip",
    )
    assert options.to_dict() == {
        "retries": 2,
        "backoff": "linear",
        "retry_delay": 0.5,
        "max_delay": 120.0,
        "timeout": 30.0,
        "executor": "processes",
        "after": ["extract"],
        "jitter": 0.25,
        "retry_on": ["ValueError", "TimeoutError"],
        "on_timeout": "skip",
    }
    assert options.key() == (2, "linear", 0.5, 120.0, 30.0, "processes", ("extract",), 0.25, ("ValueError", "TimeoutError"), "skip")
    assert type(options.retry_delay) is float and type(options.max_delay) is float
    assert kf.TaskOptions.build(retry_on=KeyError).retry_on == ("KeyError",)  # one class
    assert kf.TaskOptions.build(retry_on="KeyError").retry_on == ("KeyError",)  # one name, not its letters
    assert kf.TaskOptions.build(after=["a", "b"]).after == ("a", "b")


def test_task_options_build_zero_retry_delay_means_no_wait():
    # parse_duration refuses 0 (a timeout of 0 makes no sense); a retry delay of 0 does.
    assert kf.TaskOptions.build(retry_delay=0).retry_delay == 0.0
    assert kf.TaskOptions.build(retry_delay=0.0).retry_delay == 0.0
    assert kf.TaskOptions.build(retry_delay=1).retry_delay == 1.0
    assert kf.TaskOptions.build(retry_delay=2).retry_delay == 2.0


def test_task_options_build_max_attempts_is_retries_plus_one():
    assert kf.TaskOptions.build(max_attempts=1).retries == 0
    assert kf.TaskOptions.build(max_attempts=4).retries == 3
    assert kf.TaskOptions.build(retries=3, max_attempts=4).retries == 3
    assert kf.TaskOptions.build(retries=3).retries == 3


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_attempts": 0}, "max_attempts must be a whole number >= 1, got 0"),
        ({"max_attempts": 2.0}, "max_attempts must be a whole number >= 1, got 2.0"),
        ({"max_attempts": True}, "max_attempts must be a whole number >= 1, got True"),
        ({"retries": 2, "max_attempts": 4}, "retries=2 and max_attempts=4 disagree (max_attempts = retries + 1)"),
        ({"retries": 4, "max_attempts": 4}, "retries=4 and max_attempts=4 disagree (max_attempts = retries + 1)"),
        ({"retry_delay": "fast"}, "retry_delay must be a duration like 30, '500ms', '30s', '5m' or '2h', got 'fast'"),
        ({"max_delay": "long"}, "max_delay must be a duration like 30, '500ms', '30s', '5m' or '2h', got 'long'"),
        ({"timeout": 0}, "timeout must be greater than zero, got 0"),
        ({"timeout": "soon"}, "timeout must be a duration like 30, '500ms', '30s', '5m' or '2h', got 'soon'"),
        ({"after": 5}, "after must be a list of task names, got 5"),
        ({"retry_on": 5}, "retry_on must list exception types or their names, got 5"),
        ({"retry_on": [ValueError, int]}, "retry_on must list exception types, got the class int"),
        ({"retries": -1}, "retries must be a whole number >= 0, got -1"),
    ],
)
def test_task_options_build_refuses_bad_values_with_their_message(kwargs, message):
    with pytest.raises(kf.OptionError) as err:
        kf.TaskOptions.build(**kwargs)
    assert err.value.message == message
    assert err.value.hint == OPTIONS_HINT


def test_retry_delays_linear_and_jitter_band():
    linear = kf.TaskOptions.build(retries=5, backoff="linear", retry_delay=2, max_delay=7)
    assert [linear.delay_before(a) for a in (2, 3, 4, 5)] == [2.0, 4.0, 6.0, 7.0]
    exp = kf.TaskOptions.build(retries=5, backoff="exponential", retry_delay=3, max_delay=100)
    assert [exp.delay_before(a) for a in (2, 3, 4)] == [3.0, 6.0, 12.0]
    jittered = kf.TaskOptions.build(retries=2, retry_delay=10, jitter=0.2)
    assert jittered.delay_before(2) == 10.0  # the default rand is the middle of the band
    assert jittered.delay_before(2, rand=0.0) == pytest.approx(8.0)
    assert jittered.delay_before(2, rand=1.0) == pytest.approx(12.0)
    assert jittered.delay_before(2, rand=0.75) == pytest.approx(11.0)
    # without jitter, rand changes nothing
    assert kf.TaskOptions.build(retries=2, retry_delay=10).delay_before(2, rand=0.0) == 10.0


class _AppError(ValueError):
    pass


def test_retry_on_matches_the_exception_class_its_bases_or_qualified_names():
    anything = kf.TaskOptions()
    assert anything.retries_error(KeyError("x")) is True
    assert anything.retries_error(None) is True
    by_name = kf.TaskOptions(retry_on=("ValueError",))
    assert by_name.retries_error(None) is True  # a timeout has no exception: always retried
    assert by_name.retries_error(ValueError()) is True
    assert by_name.retries_error(_AppError()) is True  # a subclass
    assert by_name.retries_error(KeyError()) is False
    qualified = kf.TaskOptions(retry_on=(f"{__name__}._AppError",))
    assert qualified.retries_error(_AppError()) is True
    assert qualified.retries_error(ValueError()) is False
    assert kf.TaskOptions(retry_on=("builtins.ValueError",)).retries_error(_AppError()) is True
    assert kf.TaskOptions(retry_on=("KeyError", "ValueError")).retries_error(ValueError()) is True


@pytest.mark.parametrize(
    "kwargs, text",
    [
        ({}, ""),
        ({"retries": 3}, "retries=3"),
        ({"retries": 3, "backoff": "exponential"}, "retries=3 exponential"),
        ({"backoff": "linear"}, ""),  # a backoff without retries does nothing
        ({"timeout": 30.0}, "timeout=30s"),
        ({"timeout": 30.0, "on_timeout": "skip"}, "timeout=30s, on_timeout=skip"),
        ({"on_timeout": "skip"}, ""),
        ({"executor": "processes"}, "executor=processes"),
        ({"retries": 1, "backoff": "linear", "timeout": 90.0, "on_timeout": "fail", "executor": "dask"}, "retries=1 linear, timeout=90s, on_timeout=fail, executor=dask"),
    ],
)
def test_task_options_describe_lists_what_is_not_default(kwargs, text):
    assert kf.TaskOptions(**kwargs).describe() == text
