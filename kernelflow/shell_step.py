"""The shell step: run a command as an argv list, capture its output, stop it for sure.

:func:`run_shell` is what a ``run: shell`` step (and ``kf.shell(...)``) does.
Its promises (PRODUCT.md, "Reliability promises"):

- **argv, not a command line.** The command is a list of arguments handed to
  the OS as is; nothing is interpolated (``$HOME``, ``;`` and backticks stay
  literal). ``shell=True`` runs one string through ``/bin/sh -c`` and is
  unsafe with untrusted values; it has to be asked for.
- **A timeout stops everything the step started.** The child runs in its own
  session (so its own process group); on timeout or cancellation the whole
  group gets SIGTERM, then SIGKILL after :data:`KILL_GRACE` seconds.
  Processes left behind in the group when the command exits are stopped the
  same way: a step's processes do not outlive it (a process that must, has to
  leave the group itself, e.g. with ``setsid``).
- **Bounded memory.** stdout and stderr are read concurrently (no deadlock on
  full pipes) and only the last ``max_output`` bytes of each are kept.
- **Secrets stay masked.** ``mask`` is applied to every text that leaves:
  the captured output and every error message.

POSIX only (process groups and signals).
"""

from __future__ import annotations

import math
import os
import select
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any

from .step_errors import ShellStepError, StepCancelledError, StepError, StepTimeoutError

__all__ = ["KILL_GRACE", "kill_running", "run_shell", "running_tasks"]

#: Seconds between SIGTERM and SIGKILL when a step's process group is stopped.
KILL_GRACE = 2.0

# How often the supervising loop wakes when nothing is read, to notice the
# child's exit, the timeout and cancellation. Reads do not wait for it: select
# returns as soon as a pipe has data.
_POLL = 0.05
# After the command exits, how long its pipes may stay open (held by a
# background process it started) before the leftovers are stopped.
_LINGER = 0.5
# After the group is killed, how long to wait for the pipes to close. Only a
# process that left the group (setsid) but kept our pipe can hold them longer.
_FINAL_DRAIN = 1.0
_CHUNK = 65536
# A write of at most this many bytes to a pipe that select() reports writable
# cannot block (POSIX guarantees at least 512; Linux's is 4096).
_PIPE_BUF = getattr(select, "PIPE_BUF", 512)

# Lines / characters of stderr quoted in an error message.
_TAIL_LINES = 20
_TAIL_CHARS = 2000

_UNSAFE_SHELL_HINT = (
    "set shell: true, which runs the string through /bin/sh — unsafe with untrusted values"
)


def _identity(text: str) -> str:
    return text


# -- the registry of running steps (for cancellation from another thread) ----


class _Running:
    """One running shell step, as :func:`kill_running` sees it."""

    def __init__(self, proc: subprocess.Popen[bytes], task_id: str):
        self.proc = proc
        # start_new_session=True makes the child a session and group leader:
        # its pid is the id of the group that holds everything it starts.
        self.pgid = proc.pid
        self.task_id = task_id
        self.cancelled = threading.Event()
        # Held while signalling, and by run_shell while it marks the step
        # done, so a kill never lands after the step has let go of its group.
        self.lock = threading.Lock()
        self.done = False


_registry_lock = threading.Lock()
_running: dict[int, _Running] = {}


def kill_running(task_id: str | None = None) -> int:
    """Stop the process groups of running shell steps; return how many were signalled.

    With ``task_id``, only that task's steps; without, all of them. The
    groups get SIGTERM now; each :func:`run_shell` call escalates to SIGKILL
    after :data:`KILL_GRACE` seconds and raises
    :class:`~kernelflow.step_errors.StepCancelledError`. Safe to call from any
    thread (the engine calls it when a run is interrupted).
    """
    with _registry_lock:
        targets = [r for r in _running.values() if task_id is None or r.task_id == task_id]
    count = 0
    for entry in targets:
        with entry.lock:
            if entry.done:
                continue
            entry.cancelled.set()
            _signal_group(entry.pgid, signal.SIGTERM)
            count += 1
    return count


def running_tasks() -> list[str]:
    """Task ids of the shell steps running now (one entry per running step)."""
    with _registry_lock:
        return [r.task_id for r in _running.values() if not r.done]


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        # The group is gone (everything exited); nothing to stop.
        pass


def _group_alive(pgid: int) -> bool:
    """Whether any process of the group is still running (zombies do not count)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - a group we cannot signal is not ours
        return False
    if not _HAVE_PROC:  # pragma: no cover - not Linux: zombies count as alive
        return True
    # kill(0) also succeeds for zombies: killed background processes whose
    # new parent (init, in a container often slow to reap) has not collected
    # them yet. Waiting on those would spend the whole grace for nothing.
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # exited meanwhile
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and ")".
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            return True
    return False


_HAVE_PROC = os.path.isfile("/proc/self/stat")


# -- bounded, concurrent capture ---------------------------------------------


class _Tail:
    """Keeps the last ``limit`` bytes fed to it (the tail is what explains a failure)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.buf = bytearray()
        self.truncated = False

    def feed(self, data: bytes) -> None:
        self.buf += data
        excess = len(self.buf) - self.limit
        if excess > 0:
            # Deleting from the front of a bytearray is cheap in CPython, and
            # the buffer never grows past limit + one chunk.
            del self.buf[:excess]
            self.truncated = True

    def text(self) -> str:
        return self.buf.decode("utf-8", errors="replace")


class _Pipes:
    """The child's stdin/stdout/stderr, served by one selector in the calling thread.

    One thread doing select() (as subprocess.communicate does on POSIX) reads
    both outputs as they come, so a child filling one pipe never blocks
    while we wait on the other, and feeds stdin without a helper thread.
    """

    def __init__(self, proc: subprocess.Popen[bytes], stdin: bytes | None, max_output: int):
        self.sel = selectors.DefaultSelector()
        self.out = _Tail(max_output)
        self.err = _Tail(max_output)
        assert proc.stdout is not None and proc.stderr is not None
        self.sel.register(proc.stdout, selectors.EVENT_READ, self.out)
        self.sel.register(proc.stderr, selectors.EVENT_READ, self.err)
        self._stdin: IO[bytes] | None = proc.stdin
        self._input = memoryview(stdin or b"")
        self._offset = 0
        if self._stdin is not None:
            if self._input:
                self.sel.register(self._stdin, selectors.EVENT_WRITE, None)
            else:
                self._close(self._stdin)  # empty input: EOF right away

    @property
    def open(self) -> bool:
        return bool(self.sel.get_map())

    def pump(self, timeout: float) -> None:
        """Move data for up to ``timeout`` seconds (less as soon as something happened)."""
        if not self.open:
            time.sleep(max(timeout, 0))
            return
        for key, _events in self.sel.select(max(timeout, 0)):
            if key.data is None:
                self._write_stdin(key.fileobj)  # type: ignore[arg-type]
                continue
            data = os.read(key.fd, _CHUNK)
            if data:
                key.data.feed(data)
            else:
                self._close(key.fileobj)  # type: ignore[arg-type]

    def _write_stdin(self, stream: IO[bytes]) -> None:
        # select() said writable: a write of up to PIPE_BUF bytes cannot block.
        chunk = self._input[self._offset : self._offset + _PIPE_BUF]
        try:
            self._offset += os.write(stream.fileno(), chunk)
        except BrokenPipeError:
            # The child exited or closed stdin without reading it all; that is
            # its business, not an error of the step.
            self._offset = len(self._input)
        if self._offset >= len(self._input):
            self._close(stream)

    def _close(self, stream: IO[bytes]) -> None:
        try:
            self.sel.unregister(stream)
        except (KeyError, ValueError):
            pass
        try:
            stream.close()
        except OSError:
            pass

    def close(self) -> None:
        for key in list(self.sel.get_map().values()):
            self._close(key.fileobj)  # type: ignore[arg-type]
        if self._stdin is not None and not self._stdin.closed:
            self._close(self._stdin)
        self.sel.close()


# -- validation ---------------------------------------------------------------


def _check_argv(argv: Any, shell: bool, task_id: str, mask: Callable[[str], str]) -> list[str]:
    where = f"shell step '{task_id}'"
    if shell:
        if not isinstance(argv, str):
            raise StepError(
                f"{where}: with shell: true, argv must be ONE string for /bin/sh -c, "
                f"got {type(argv).__name__}; without shell: true, pass a list of arguments",
                task_id=task_id,
            )
        if not argv.strip():
            raise StepError(f"{where}: the shell command is empty", task_id=task_id)
        if "\0" in argv:
            raise StepError(f"{where}: the shell command contains a NUL character", task_id=task_id)
        return ["/bin/sh", "-c", argv]
    if isinstance(argv, str):
        raise StepError(
            f"{where}: argv must be a list of arguments, not a string; write ['ls', '-l'] "
            f"(or {_UNSAFE_SHELL_HINT})",
            task_id=task_id,
        )
    if not isinstance(argv, (list, tuple)):
        raise StepError(
            f"{where}: argv must be a list of arguments, got {type(argv).__name__}",
            task_id=task_id,
        )
    if not argv:
        raise StepError(f"{where}: argv is empty; give at least the command to run", task_id=task_id)
    out: list[str] = []
    for i, arg in enumerate(argv):
        if isinstance(arg, os.PathLike):
            arg = os.fspath(arg)
        if not isinstance(arg, str):
            shown = f" {mask(repr(arg))}" if isinstance(arg, (bytes, int, float)) else ""
            raise StepError(
                f"{where}: argv[{i}] must be a string (or a path), got {type(arg).__name__}{shown}; "
                "quote it in YAML, or convert it with str() in Python",
                task_id=task_id,
            )
        if "\0" in arg:
            raise StepError(f"{where}: argv[{i}] contains a NUL character", task_id=task_id)
        out.append(arg)
    return out


def _child_env(env: Mapping[str, str] | None, inherit_env: bool, task_id: str) -> dict[str, str]:
    where = f"shell step '{task_id}'"
    if env is not None and not isinstance(env, Mapping):
        raise StepError(f"{where}: env must be a mapping of names to strings, got {type(env).__name__}", task_id=task_id)
    if inherit_env:
        result = dict(os.environ)
    else:
        # PATH alone, so that commands are still found by name.
        result = {"PATH": os.environ.get("PATH", os.defpath)}
    for key, value in (env or {}).items():
        if not isinstance(key, str) or not key or "=" in key or "\0" in key:
            raise StepError(f"{where}: env name {key!r} is not a valid variable name", task_id=task_id)
        if not isinstance(value, str):
            # The value is not shown: env is where secrets go.
            raise StepError(
                f"{where}: env[{key!r}] must be a string, got {type(value).__name__}; quote it",
                task_id=task_id,
            )
        if "\0" in value:
            raise StepError(f"{where}: env[{key!r}] contains a NUL character", task_id=task_id)
        result[key] = value
    return result


def _check_number(name: str, value: Any, task_id: str, *, integer: bool = False) -> None:
    where = f"shell step '{task_id}'"
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise StepError(f"{where}: {name} must be a {'whole ' if integer else ''}number, got {value!r}", task_id=task_id)
    if not math.isfinite(value) or value < 0 or (name == "timeout" and value == 0):
        raise StepError(f"{where}: {name} must be {'positive' if name == 'timeout' else '0 or more'}, got {value!r}", task_id=task_id)


# -- messages -----------------------------------------------------------------


def _tail_text(text: str, lines: int = _TAIL_LINES, chars: int = _TAIL_CHARS) -> str:
    """The last ``lines`` lines of ``text``, at most ``chars`` characters, stripped."""
    kept = "\n".join(text.rstrip().splitlines()[-lines:])
    if len(kept) > chars:
        kept = "…" + kept[-chars:]
    return kept.strip()


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _exit_message(task_id: str, code: int, stdout: str, stderr: str) -> tuple[str, str]:
    """(message, stderr tail) for a command that ended unsuccessfully; texts already masked."""
    if code < 0:
        head = f"shell step '{task_id}' was killed by {_signal_name(-code)} (exit code {code})"
    else:
        head = f"shell step '{task_id}' exited with code {code}"
    tail = _tail_text(stderr)
    if tail:
        return f"{head}: {tail}", tail
    out_tail = _tail_text(stdout, lines=5, chars=500)
    if out_tail:
        return f"{head} (stderr was empty; stdout ended with: {out_tail})", tail
    return f"{head} (no output)", tail


def _start_error(
    exc: OSError, argv: list[str], cwd: str | None, task_id: str, mask: Callable[[str], str]
) -> StepError:
    where = f"shell step '{task_id}'"
    command = argv[0]
    # subprocess reports a failed chdir in the child with the directory as
    # the error's filename, and a failed exec with the executable.
    if cwd is not None and exc.filename == cwd:
        return StepError(f"{where}: cannot use working directory {mask(cwd)!r}: {exc.strerror}", task_id=task_id)
    if isinstance(exc, FileNotFoundError):
        if os.path.sep in command and os.path.isfile(os.path.join(cwd or "", command)):
            return StepError(
                f"{where}: {mask(command)!r} (argv[0]) exists but its interpreter (the #! line) was not found",
                task_id=task_id,
            )
        return StepError(
            f"{where}: command not found: {mask(command)!r} (argv[0]); check the name or PATH",
            task_id=task_id,
        )
    if isinstance(exc, PermissionError):
        return StepError(
            f"{where}: cannot run {mask(command)!r} (argv[0]): permission denied; is it executable?",
            task_id=task_id,
        )
    return StepError(f"{where}: cannot run {mask(command)!r} (argv[0]): {exc.strerror or exc}", task_id=task_id)


# -- the step -------------------------------------------------------------------


def run_shell(
    argv: Sequence[str | os.PathLike[str]] | str,
    *,
    shell: bool = False,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    inherit_env: bool = True,
    timeout: float | None = None,
    max_output: int = 1_000_000,
    stdin: str | None = None,
    task_id: str = "shell",
    mask: Callable[[str], str] = _identity,
) -> dict[str, Any]:
    """Run a command and return what it did, or raise a :class:`StepError` saying why not.

    Args:
        argv: the command and its arguments, e.g. ``["ls", "-l", path]``;
            each element a string or a path. Nothing is interpolated.
        shell: run ``argv`` — then ONE string — with ``/bin/sh -c``. Unsafe:
            never put untrusted values into it.
        cwd: working directory of the command.
        env: variables added to (overriding) the inherited environment.
        inherit_env: False gives the command only ``env`` plus ``PATH``.
        timeout: seconds before the command's whole process group is stopped
            and :class:`StepTimeoutError` raised; None waits forever.
        max_output: bytes kept of each of stdout and stderr: the LAST ones
            (the end explains a failure); the ``*_truncated`` flags say whether
            anything was dropped.
        stdin: text fed to the command's standard input (utf-8). Without it
            the command reads from /dev/null, never from the notebook.
        task_id: the step's id, named in error messages.
        mask: applied to every text that leaves (outputs, error messages), to
            hide secrets.

    Returns:
        ``{"exit_code": 0, "stdout": str, "stderr": str, "stdout_truncated":
        bool, "stderr_truncated": bool, "duration_s": float}``; text decoded as
        utf-8 (undecodable bytes replaced).

    Raises:
        ShellStepError: the command exited non-zero or was killed by a signal.
        StepTimeoutError: it ran past ``timeout``.
        StepCancelledError: :func:`kill_running` stopped it.
        StepError: bad arguments, command not found, bad working directory.
    """
    args = _check_argv(argv, shell, task_id, mask)
    if timeout is not None:
        _check_number("timeout", timeout, task_id)
    _check_number("max_output", max_output, task_id, integer=True)
    if stdin is not None and not isinstance(stdin, str):
        raise StepError(f"shell step '{task_id}': stdin must be a string, got {type(stdin).__name__}", task_id=task_id)
    child_env = _child_env(env, inherit_env, task_id)
    cwd_str = os.fspath(cwd) if cwd is not None else None
    if cwd_str is not None and not os.path.isdir(cwd_str):
        what = "is not a directory" if os.path.exists(cwd_str) else "does not exist"
        raise StepError(
            f"shell step '{task_id}': working directory {mask(cwd_str)!r} {what}"
            + (f" (relative to {mask(os.getcwd())!r})" if not os.path.isabs(cwd_str) else ""),
            task_id=task_id,
        )

    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            args,
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd_str,
            env=child_env,
            start_new_session=True,  # own process group: a timeout can stop all of it
        )
    except OSError as exc:
        raise _start_error(exc, args, cwd_str, task_id, mask) from None

    entry = _Running(proc, task_id)
    with _registry_lock:
        _running[proc.pid] = entry
    pipes: _Pipes | None = None
    outcome: str | None = None
    try:
        pipes = _Pipes(proc, stdin.encode("utf-8") if stdin is not None else None, max_output)
        outcome = _supervise(proc, pipes, entry, started, timeout)
        if outcome != "exited" or _group_alive(entry.pgid):
            # Timed out, cancelled, or the command left processes behind.
            _stop_group(proc, entry.pgid, pipes)
        _drain(pipes, _FINAL_DRAIN)
    finally:
        if outcome is None:
            # Leaving on an exception (e.g. KeyboardInterrupt in the notebook):
            # nothing the step started may keep running.
            _signal_group(entry.pgid, signal.SIGKILL)
            _reap(proc)
        with entry.lock:
            entry.done = True
        with _registry_lock:
            _running.pop(proc.pid, None)
        if pipes is not None:
            pipes.close()
    code = _reap(proc)
    duration = time.monotonic() - started

    stdout = mask(pipes.out.text())
    stderr = mask(pipes.err.text())
    if outcome == "timeout":
        assert timeout is not None
        tail = _tail_text(stderr)
        raise StepTimeoutError(
            f"shell step '{task_id}' timed out after {timeout:g}s; its process group was stopped"
            + (f"; stderr ended with: {tail}" if tail else ""),
            timeout=timeout,
            task_id=task_id,
        )
    if outcome == "cancelled":
        raise StepCancelledError(f"shell step '{task_id}' was cancelled; its process group was stopped", task_id=task_id)
    if code != 0:
        message, tail = _exit_message(task_id, code, stdout, stderr)
        raise ShellStepError(message, exit_code=code, stderr_tail=tail, task_id=task_id)
    return {
        "exit_code": code,
        "stdout": stdout,
        "stderr": stderr,
        "stdout_truncated": pipes.out.truncated,
        "stderr_truncated": pipes.err.truncated,
        "duration_s": duration,
    }


def _supervise(
    proc: subprocess.Popen[bytes], pipes: _Pipes, entry: _Running, started: float, timeout: float | None
) -> str:
    """Pump the pipes until the command is done; return "exited", "timeout" or "cancelled"."""
    deadline = None if timeout is None else started + timeout
    exited_at: float | None = None
    while True:
        # Cancellation first: kill_running sets the flag before it signals,
        # so a command that died of that signal is reported as cancelled.
        if entry.cancelled.is_set():
            return "cancelled"
        returned = proc.poll() is not None
        if returned and not pipes.open:
            return "exited"
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            return "timeout"
        if returned:
            exited_at = now if exited_at is None else exited_at
            if now - exited_at >= _LINGER:
                # The command is done but something it started holds its
                # output open; the caller stops the leftovers.
                return "exited"
        wait = _POLL if deadline is None else min(_POLL, deadline - now)
        pipes.pump(wait)


def _stop_group(proc: subprocess.Popen[bytes], pgid: int, pipes: _Pipes) -> None:
    """SIGTERM the group, SIGKILL it after the grace, and reap the command."""
    _signal_group(pgid, signal.SIGTERM)
    end = time.monotonic() + KILL_GRACE
    while True:
        # Everything ended on SIGTERM (pipes closed means their holders are gone).
        if proc.poll() is not None and not pipes.open and not _group_alive(pgid):
            break
        remaining = end - time.monotonic()
        if remaining <= 0:
            break
        # Keep reading meanwhile: a child blocked on a full pipe cannot exit.
        pipes.pump(min(_POLL, remaining))
    # Unconditionally: catches whatever ignored SIGTERM (a no-op on an empty group).
    _signal_group(pgid, signal.SIGKILL)
    _reap(proc)


def _drain(pipes: _Pipes, limit: float) -> None:
    end = time.monotonic() + limit
    while pipes.open:
        remaining = end - time.monotonic()
        if remaining <= 0:
            return
        pipes.pump(min(_POLL, remaining))


def _reap(proc: subprocess.Popen[bytes]) -> int:
    try:
        return proc.wait(timeout=KILL_GRACE + 5)
    except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILLed yet alive: uninterruptible sleep
        return proc.returncode if proc.returncode is not None else -int(signal.SIGKILL)
