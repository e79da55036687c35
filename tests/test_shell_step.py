"""The shell step against real subprocesses: argv, capture, limits, timeouts, cancellation."""

from __future__ import annotations

import os
import pickle
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import pytest

from kernelflow.exceptions import KernelflowError
from kernelflow.shell_step import kill_running, run_shell, running_tasks
from kernelflow.step_errors import (
    HttpStepError,
    ShellStepError,
    StepCancelledError,
    StepError,
    StepTimeoutError,
)

PY = sys.executable


def py(code: str) -> list[str]:
    """argv running ``code`` with this Python."""
    return [PY, "-c", code]


def process_gone(pid: int) -> bool:
    """True once ``pid`` no longer runs (a zombie waiting to be reaped counts as gone)."""
    stat = Path(f"/proc/{pid}/stat")
    if stat.parent.parent.joinpath("self").exists():
        try:
            state = stat.read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        return state in ("Z", "X")
    try:  # pragma: no cover - not Linux
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def wait_until_gone(pid: int, within: float = 10.0) -> bool:
    # SIGKILL is delivered asynchronously; give the kernel a moment to act on it.
    end = time.monotonic() + within
    while time.monotonic() < end:
        if process_gone(pid):
            return True
        time.sleep(0.02)
    return process_gone(pid)


def read_pid(path: Path, within: float = 10.0) -> int:
    end = time.monotonic() + within
    while time.monotonic() < end:
        text = path.read_text().strip() if path.exists() else ""
        if text:
            return int(text)
        time.sleep(0.02)
    raise AssertionError(f"{path} was never written")


# -- argv and what the child sees ---------------------------------------------------


def test_output_shape_and_capture():
    result = run_shell(py("import sys; print('out'); print('err', file=sys.stderr)"))
    assert result["exit_code"] == 0
    assert result["stdout"] == "out\n"
    assert result["stderr"] == "err\n"
    assert result["stdout_truncated"] is False and result["stderr_truncated"] is False
    assert isinstance(result["duration_s"], float) and result["duration_s"] >= 0
    assert set(result) == {"exit_code", "stdout", "stderr", "stdout_truncated", "stderr_truncated", "duration_s"}


def test_special_characters_stay_literal_without_a_shell(tmp_path: Path):
    marker = tmp_path / "pwned"
    args = ["$HOME", "a; touch " + str(marker), "`touch " + str(marker) + "`", "$(touch " + str(marker) + ")", "*", "a b", "'q'", '"dq"', "\\n"]
    result = run_shell(["printf", "%s\\n", *args])
    assert result["stdout"].splitlines() == args
    assert not marker.exists()


def test_path_arguments_and_cwd(tmp_path: Path):
    (tmp_path / "data.txt").write_text("contents")
    result = run_shell(["cat", Path("data.txt")], cwd=tmp_path)
    assert result["stdout"] == "contents"
    here = run_shell(py("import os; print(os.getcwd())"), cwd=str(tmp_path))
    assert Path(here["stdout"].strip()).resolve() == tmp_path.resolve()


def env_of(result: dict) -> dict[str, str]:
    return dict(line.split("=", 1) for line in result["stdout"].splitlines() if "=" in line)


def test_env_adds_to_and_overrides_the_inherited_environment(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("KF_PARENT_ONLY", "parent")
    monkeypatch.setenv("KF_OVERRIDDEN", "old")
    seen = env_of(run_shell(["env"], env={"KF_OVERRIDDEN": "new", "KF_ADDED": "added"}))
    assert seen["KF_PARENT_ONLY"] == "parent"
    assert seen["KF_OVERRIDDEN"] == "new"
    assert seen["KF_ADDED"] == "added"


def test_inherit_env_false_gives_only_env_and_path(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("KF_PARENT_ONLY", "parent")
    seen = env_of(run_shell(["env"], env={"KF_ADDED": "added"}, inherit_env=False))
    assert seen == {"KF_ADDED": "added", "PATH": os.environ["PATH"]}


def test_stdin_is_fed_and_defaults_to_empty():
    assert run_shell(["cat"], stdin="hello\nwörld")["stdout"] == "hello\nwörld"
    assert run_shell(["cat"], stdin="")["stdout"] == ""
    # Without stdin the child reads /dev/null: EOF at once, never the notebook's stdin.
    assert run_shell(["cat"])["stdout"] == ""


def test_large_stdin_and_outputs_do_not_deadlock():
    # Both directions well past the 64 KiB pipe buffers at the same time.
    data = "x" * 3_000_000
    code = "import sys; d = sys.stdin.read(); sys.stderr.write(d); sys.stdout.write(d)"
    result = run_shell(py(code), stdin=data, max_output=10_000_000)
    assert result["stdout"] == data
    assert result["stderr"] == data


def test_undecodable_output_is_replaced_not_an_error():
    result = run_shell(py("import sys; sys.stdout.buffer.write(b'ok \\xff\\xfe end')"))
    assert result["stdout"] == "ok \ufffd\ufffd end"


def test_output_is_truncated_to_its_tail_with_flags_and_bounded_memory():
    # ~20 MB on stdout, a little on stderr; only the last 100 kB of stdout is kept.
    code = (
        "import sys\n"
        "chunk = 'y' * 1_000_000\n"
        "for _ in range(20): sys.stdout.write(chunk)\n"
        "sys.stdout.write('THE-END')\n"
        "sys.stderr.write('small')\n"
    )
    tracemalloc.start()
    try:
        result = run_shell(py(code), max_output=100_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result["stdout_truncated"] is True
    assert result["stderr_truncated"] is False
    assert len(result["stdout"]) == 100_000
    assert result["stdout"].endswith("THE-END")
    assert result["stderr"] == "small"
    assert peak < 5_000_000, f"run_shell buffered {peak} bytes for a 100 kB limit"


def test_max_output_zero_keeps_nothing_but_says_so():
    result = run_shell(["echo", "hi"], max_output=0)
    assert result["stdout"] == "" and result["stdout_truncated"] is True
    assert result["stderr"] == "" and result["stderr_truncated"] is False


# -- failures ---------------------------------------------------------------------


def test_nonzero_exit_names_the_task_code_and_stderr_tail():
    code = "import sys\nfor i in range(100): print(f'line {i}', file=sys.stderr)\nsys.exit(3)"
    with pytest.raises(ShellStepError) as info:
        run_shell(py(code), task_id="build")
    err = info.value
    assert isinstance(err, StepError) and isinstance(err, KernelflowError)
    assert err.exit_code == 3
    assert err.task_id == "build"
    assert str(err).startswith("shell step 'build' exited with code 3: ")
    assert "line 99" in str(err) and "line 80" in str(err)
    assert "line 79" not in str(err)  # the last 20 lines, not everything
    assert err.stderr_tail.splitlines() == [f"line {i}" for i in range(80, 100)]


def test_stderr_tail_is_bounded_in_characters():
    code = "import sys\nsys.stderr.write('z' * 50_000)\nsys.exit(1)"
    with pytest.raises(ShellStepError) as info:
        run_shell(py(code))
    assert len(info.value.stderr_tail) <= 2001
    assert len(str(info.value)) < 2200


def test_nonzero_exit_without_stderr_quotes_stdout():
    with pytest.raises(ShellStepError) as info:
        run_shell(py("print('partial result'); raise SystemExit(2)"), task_id="t")
    assert "exited with code 2" in str(info.value)
    assert "partial result" in str(info.value)
    assert info.value.stderr_tail == ""


def test_signal_death_names_the_signal():
    with pytest.raises(ShellStepError) as info:
        run_shell(["sh", "-c", "echo dying >&2; kill -9 $$"], task_id="victim")
    assert info.value.exit_code == -9
    assert "shell step 'victim' was killed by SIGKILL" in str(info.value)
    assert "dying" in str(info.value)


def test_command_not_found():
    with pytest.raises(StepError) as info:
        run_shell(["nosuchcmd-kf", "--help"], task_id="x")
    assert str(info.value) == (
        "shell step 'x': command not found: 'nosuchcmd-kf' (argv[0]); check the name or PATH"
    )


def test_command_not_found_with_inherit_env_false_uses_path():
    # PATH is kept, so a command found by name still runs.
    assert run_shell(["echo", "ok"], inherit_env=False)["stdout"] == "ok\n"


def test_not_executable(tmp_path: Path):
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    with pytest.raises(StepError, match="permission denied"):
        run_shell([str(script)])


def test_bad_cwd_names_the_directory(tmp_path: Path):
    missing = tmp_path / "nope"
    with pytest.raises(StepError) as info:
        run_shell(["ls"], cwd=missing, task_id="x")
    assert str(missing) in str(info.value) and "does not exist" in str(info.value)
    a_file = tmp_path / "file"
    a_file.write_text("")
    with pytest.raises(StepError, match="is not a directory"):
        run_shell(["ls"], cwd=a_file)


def test_a_string_argv_is_refused_without_shell():
    with pytest.raises(StepError) as info:
        run_shell("ls -l", task_id="x")
    assert "argv must be a list of arguments, not a string; write ['ls', '-l']" in str(info.value)
    assert "shell: true" in str(info.value) and "unsafe" in str(info.value)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], "argv is empty"),
        (["echo", 3], "argv[1] must be a string"),
        (["echo", "ok", None], "argv[2] must be a string (or a path), got NoneType"),
        (["echo", b"bytes"], "argv[1] must be a string"),
        (["echo", "nul\0"], "argv[1] contains a NUL character"),
        ({"echo": 1}, "argv must be a list of arguments, got dict"),
    ],
)
def test_bad_argv_elements_are_named(argv, expected):
    with pytest.raises(StepError) as info:
        run_shell(argv)
    assert expected in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"timeout": 0}, "timeout must be positive"),
        ({"timeout": "5s"}, "timeout must be a number"),
        ({"max_output": -1}, "max_output must be 0 or more"),
        ({"max_output": 1.5}, "max_output must be a whole number"),
        ({"env": {"N": 3}}, "env['N'] must be a string, got int"),
        ({"env": {"A=B": "x"}}, "not a valid variable name"),
        ({"stdin": b"bytes"}, "stdin must be a string"),
    ],
)
def test_bad_options_are_refused_before_running(kwargs, expected):
    with pytest.raises(StepError) as info:
        run_shell(["echo"], **kwargs)
    assert expected in str(info.value)


def test_shell_true_runs_a_string_through_sh():
    result = run_shell("echo $((1 + 2)) | tr 3 x; echo \"$KF_V\"", shell=True, env={"KF_V": "v"})
    assert result["stdout"] == "x\nv\n"


def test_shell_true_requires_a_string():
    with pytest.raises(StepError, match="with shell: true, argv must be ONE string"):
        run_shell(["echo", "hi"], shell=True)
    with pytest.raises(StepError, match="empty"):
        run_shell("  ", shell=True)


# -- stopping ---------------------------------------------------------------------


def test_timeout_kills_the_whole_process_group(tmp_path: Path):
    pidfile = tmp_path / "pid"
    with pytest.raises(StepTimeoutError) as info:
        run_shell(["sh", "-c", f"sleep 60 & echo $! > {pidfile}; echo waiting >&2; wait"], timeout=0.5, task_id="hang")
    err = info.value
    assert isinstance(err, TimeoutError) and isinstance(err, StepError)
    assert err.timeout == 0.5
    assert err.task_id == "hang"
    assert "shell step 'hang' timed out after 0.5s" in str(err)
    assert "waiting" in str(err)  # the stderr so far
    assert wait_until_gone(read_pid(pidfile)), "the grandchild survived the timeout"
    assert "hang" not in running_tasks()


@pytest.mark.slow
def test_timeout_escalates_to_sigkill_when_sigterm_is_ignored(tmp_path: Path):
    pidfile = tmp_path / "pid"
    script = f"trap '' TERM; sh -c 'trap \"\" TERM; echo $$ > {pidfile}; while :; do sleep 1; done' & wait"
    with pytest.raises(StepTimeoutError):
        run_shell(["sh", "-c", script], timeout=0.5)
    assert wait_until_gone(read_pid(pidfile)), "a SIGTERM-ignoring grandchild survived"


def test_processes_left_behind_are_stopped_when_the_command_exits(tmp_path: Path):
    pidfile = tmp_path / "pid"
    result = run_shell(["sh", "-c", f"sleep 60 > /dev/null 2>&1 & echo $! > {pidfile}; echo done"])
    assert result["stdout"] == "done\n"
    assert wait_until_gone(read_pid(pidfile))


def test_a_background_process_holding_the_output_does_not_block_the_step(tmp_path: Path):
    pidfile = tmp_path / "pid"
    result = run_shell(["sh", "-c", f"sleep 60 & echo $! > {pidfile}; echo done"])
    assert result["exit_code"] == 0 and result["stdout"] == "done\n"
    assert wait_until_gone(read_pid(pidfile))


def run_in_thread(**kwargs) -> tuple[threading.Thread, dict]:
    box: dict = {}

    def target():
        try:
            box["result"] = run_shell(**kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, box


def wait_for_running(task_id: str, within: float = 10.0) -> None:
    end = time.monotonic() + within
    while task_id not in running_tasks():
        assert time.monotonic() < end, f"{task_id} never started"
        time.sleep(0.01)


def test_kill_running_from_another_thread_stops_that_task(tmp_path: Path):
    pidfile = tmp_path / "pid"
    thread, box = run_in_thread(argv=["sh", "-c", f"sleep 60 & echo $! > {pidfile}; wait"], task_id="long")
    other, other_box = run_in_thread(argv=["sleep", "60"], task_id="other")
    wait_for_running("long")
    wait_for_running("other")
    grandchild = read_pid(pidfile)

    assert kill_running("no-such-task") == 0
    assert kill_running("long") == 1
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert isinstance(box.get("error"), StepCancelledError)
    assert "shell step 'long' was cancelled" in str(box["error"])
    assert wait_until_gone(grandchild)
    assert other.is_alive(), "only the named task is stopped"

    assert kill_running() == 1
    other.join(timeout=30)
    assert isinstance(other_box.get("error"), StepCancelledError)
    assert running_tasks() == []
    assert kill_running() == 0


# -- secrets ----------------------------------------------------------------------

SECRET = "s3cr3t-t0ken"


def mask(text: str) -> str:
    return text.replace(SECRET, "***")


def test_mask_applies_to_stdout_and_stderr():
    code = "import os, sys; print('token=' + os.environ['TOKEN']); print(os.environ['TOKEN'], file=sys.stderr)"
    result = run_shell(py(code), env={"TOKEN": SECRET}, mask=mask)
    assert result["stdout"] == "token=***\n"
    assert result["stderr"] == "***\n"


def test_mask_applies_to_error_messages():
    code = "import sys; print('bad token ' + sys.argv[1], file=sys.stderr); sys.exit(4)"
    with pytest.raises(ShellStepError) as info:
        run_shell([PY, "-c", code, SECRET], mask=mask)
    assert SECRET not in str(info.value) and SECRET not in info.value.stderr_tail
    assert "bad token ***" in str(info.value)

    with pytest.raises(StepError) as info:
        run_shell([f"cmd-{SECRET}"], mask=mask)
    assert SECRET not in str(info.value)

    with pytest.raises(StepTimeoutError) as info:
        run_shell(["sh", "-c", f"echo {SECRET} >&2; sleep 30"], timeout=0.5, mask=mask)
    assert SECRET not in str(info.value) and "***" in str(info.value)


# -- the errors themselves ----------------------------------------------------------


@pytest.mark.parametrize(
    "err",
    [
        StepError("plain", task_id="t"),
        StepTimeoutError("slow", timeout=1.5, task_id="t"),
        StepCancelledError("stop", task_id="t"),
        ShellStepError("failed", exit_code=3, stderr_tail="tail", task_id="t"),
        HttpStepError("bad", status=503, body_excerpt="down", task_id="t"),
        HttpStepError("no server", status=None),
    ],
    ids=lambda e: type(e).__name__,
)
def test_errors_pickle_with_their_attributes(err: StepError):
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is type(err)
    assert str(copy) == str(err)
    assert vars(copy) == vars(err)
