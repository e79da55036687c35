"""Alert delivery: hand alerts to channels off the run's path, with retries,
rate limits and de-duplication, and record every outcome on the run.

:func:`deliver` decides at once, under a lock, what happens to each channel's
notification, queues it and returns (a few microseconds); one daemon worker
thread, started on first use, does the sending and the recording. So a
channel that is slow, hangs or raises never slows or crashes a run.

What :func:`deliver` decides, per channel:

- **De-duplication**: one notification per ``(channel, key)`` per
  :data:`DEDUPE_S` seconds; later alerts with that key are held back.
- **Rate limit**: at most :data:`PER_MINUTE` notifications per channel in
  any :data:`RATE_WINDOW_S` (60 s) window; alerts past it are held back.
- What is held back is counted and folded into the next notification that
  goes out: duplicates of a key into that key's next notification, alerts
  the rate limit held back into the channel's next one (``suppressed: N``).

So over any span of ``T`` seconds a channel sends at most
``PER_MINUTE * ceil(T / RATE_WINDOW_S)`` notifications, and at most
``ceil(T / DEDUPE_S)`` per key: 100 alerts with one key in a minute make
one notification, 100 with distinct keys make ``PER_MINUTE``.

Each send gets a timeout (the channel's ``timeout_s``, else
:data:`SEND_TIMEOUT_S`) and runs on a helper thread the worker abandons
:data:`SEND_GRACE_S` after it, in case a channel ignores its timeout. A
failure that may pass (a timeout, a 5xx, a refused connection) is retried
after ``BACKOFF_S * 2**(attempt-1)`` seconds (capped at :data:`BACKOFF_MAX_S`,
plus up to :data:`JITTER` of it at random), :data:`MAX_ATTEMPTS` attempts in
all; one that cannot (a 4xx, a missing secret) gives up at once.

Every outcome is an ``AlertDelivery`` event on the run that raised the alert:
``alert_seq``, ``channel``, ``status`` (``sent``, ``failed`` (will be
retried; ``retry_in_s`` says when), ``gave_up``, ``suppressed`` (``reason``:
``duplicate`` or ``rate_limit``)), ``attempt`` (0 for suppressed), ``error``,
``suppressed`` (held-back alerts folded into this notification). While this
process drives the run (``run`` given and holding its lease) the event goes
through ``run._emit``; otherwise the worker takes the run's lease and appends
after its last event, retrying for :data:`RECORD_RETRY_S` while another
process drives it.
"""

from __future__ import annotations

import atexit
import dataclasses
import heapq
import inspect
import itertools
import logging
import random
import threading
import time
from collections import defaultdict, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import events as ev
from .run_append import NoSuchRun, append_if_free

if TYPE_CHECKING:  # pragma: no cover
    from kernelflow.widgets.alert import Alert

    from .run import Run

__all__ = ["deliver", "flush", "pending", "reset"]

log = logging.getLogger("kernelflow.alerts")

# Tunable (tests shorten them).
SEND_TIMEOUT_S = 5.0
"""Seconds one send may take, unless the channel sets ``timeout_s``."""
SEND_GRACE_S = 1.0
"""How long past its timeout the worker waits for a send before abandoning it."""
MAX_ATTEMPTS = 5
BACKOFF_S = 1.0
"""The first retry's delay; each further retry doubles it."""
BACKOFF_MAX_S = 60.0
JITTER = 0.25
"""Up to this fraction of each delay is added at random, so many senders do not retry in step."""
DEDUPE_S = 600.0
"""One notification per (channel, key) per this many seconds."""
PER_MINUTE = 10
"""Notifications per channel per :data:`RATE_WINDOW_S`."""
RATE_WINDOW_S = 60.0
RECORD_RETRY_S = 60.0
"""How long to keep trying to record an outcome on a run another process drives."""
EXIT_FLUSH_S = 2.0
"""At interpreter exit, how long to wait for queued deliveries."""

SENT, FAILED, GAVE_UP, SUPPRESSED = "sent", "failed", "gave_up", "suppressed"


@dataclass
class _Send:
    alert: Alert
    name: str
    channel: Any
    run_id: str
    alert_seq: int
    store: Any
    run: Run | None
    suppressed: int
    attempt: int = 1


@dataclass
class _Record:
    run_id: str
    store: Any
    run: Run | None
    payload: dict[str, Any]
    deadline: float = field(default_factory=lambda: time.monotonic() + RECORD_RETRY_S)
    tries: int = 0


# --- state, shared by deliver() and the worker ------------------------------------------

_cond = threading.Condition()
_queue: list[tuple[float, int, _Send | _Record]] = []  # a heap by due time
_counter = itertools.count()
_busy = 0
_worker: threading.Thread | None = None
_exit_hook = False

_limits = threading.Lock()
_last_sent: dict[tuple[str, str], float] = {}  # (channel, key) -> monotonic time admitted
_window: dict[str, deque[float]] = defaultdict(deque)  # channel -> times admitted in the rate window
_held_key: dict[tuple[str, str], int] = defaultdict(int)  # duplicates held back, per key
_held_rate: dict[str, int] = defaultdict(int)  # held back by the rate limit, per channel

_hung: dict[str, threading.Thread] = {}  # channel -> a send that outlived its deadline
_accepts_suppressed: dict[type, bool] = {}


def deliver(
    alert: Alert,
    *,
    channels: Sequence[str],
    run_id: str,
    alert_seq: int,
    key: str,
    store: Any,
    run: Run | None = None,
) -> None:
    """Send ``alert`` (an :class:`~kernelflow.widgets.alert.Alert`, or an
    ``AlertRaised`` payload) to each of ``channels`` in the background and return at once.

    ``alert_seq`` is the seq of the run's ``AlertRaised`` event, ``key`` what
    de-duplicates the alert (the same key within :data:`DEDUPE_S` is held
    back), ``store`` the store the run is in. Pass ``run`` (the
    :class:`~kernelflow.run.Run`) while this process drives it: outcomes are
    then recorded through it. Never raises for a channel's sake: an unknown
    channel name is recorded as ``gave_up``.
    """
    from kernelflow.widgets.alert import Alert

    if not isinstance(alert, Alert):
        if not isinstance(alert, Mapping):
            raise TypeError(f"deliver() takes an Alert (or an AlertRaised payload), got {type(alert).__name__}")
        alert = Alert.from_dict({k: v for k, v in alert.items() if k not in ("key", "channels")})
    if isinstance(channels, str):
        channels = [channels]
    from .alert_channels_api import ChannelConfigError, channel

    now = time.monotonic()
    items: list[_Send | _Record] = []
    with _limits:
        for name in channels:
            try:
                found = channel(name)
            except ChannelConfigError as exc:
                items.append(_record_of(run_id, store, run, alert_seq, name, GAVE_UP, 0, " ".join(str(exc).split()), 0))
                continue
            last = _last_sent.get((name, key))
            if last is not None and now - last < DEDUPE_S:
                _held_key[(name, key)] += 1
                items.append(_record_of(run_id, store, run, alert_seq, name, SUPPRESSED, 0, None, 0, reason="duplicate"))
                continue
            window = _window[name]
            while window and now - window[0] >= RATE_WINDOW_S:
                window.popleft()
            if len(window) >= PER_MINUTE:
                _held_rate[name] += 1
                items.append(_record_of(run_id, store, run, alert_seq, name, SUPPRESSED, 0, None, 0, reason="rate_limit"))
                continue
            window.append(now)
            _last_sent[(name, key)] = now
            folded = _held_key.pop((name, key), 0) + _held_rate.pop(name, 0)
            items.append(_Send(alert, name, found, run_id, alert_seq, store, run, folded))
        if len(_last_sent) > 4096:
            _prune(now)
    _put(items, now)


def _prune(now: float) -> None:
    for k in [k for k, t in _last_sent.items() if now - t >= DEDUPE_S and not _held_key.get(k)]:
        del _last_sent[k]


def _record_of(run_id: str, store: Any, run: Run | None, alert_seq: int, name: str, status: str, attempt: int,
               error: str | None, suppressed: int, **extra: Any) -> _Record:  # fmt: skip
    payload = {"alert_seq": alert_seq, "channel": name, "status": status, "attempt": attempt,
               "error": error, "suppressed": suppressed, **extra}  # fmt: skip
    return _Record(run_id, store, run, payload)


def _put(items: Sequence[_Send | _Record], due: float) -> None:
    global _worker, _exit_hook
    if not items:
        return
    with _cond:
        for item in items:
            heapq.heappush(_queue, (due, next(_counter), item))
        if _worker is None or not _worker.is_alive():
            _worker = threading.Thread(target=_work, name="kernelflow-alerts", daemon=True)
            _worker.start()
            if not _exit_hook:
                atexit.register(_flush_at_exit)
                _exit_hook = True
        _cond.notify_all()


def pending() -> int:
    """Sends and records queued or in progress (retries waiting for their time included)."""
    with _cond:
        return len(_queue) + _busy


def flush(timeout: float | None = None) -> bool:
    """Wait until every queued send and record is done (or ``timeout`` seconds
    pass); True if the queue is empty. Called at interpreter exit with
    :data:`EXIT_FLUSH_S`."""
    deadline = None if timeout is None else time.monotonic() + timeout
    with _cond:
        while _queue or _busy:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            _cond.wait(left)
    return True


def _flush_at_exit() -> None:
    if not flush(EXIT_FLUSH_S):
        log.warning("kernelflow: %d alert deliveries were still pending at exit and are dropped", pending())


def reset() -> None:
    """Forget the rate-limit and de-duplication state (tests; a fresh start)."""
    with _limits:
        _last_sent.clear()
        _window.clear()
        _held_key.clear()
        _held_rate.clear()
    _hung.clear()


# --- the worker ----------------------------------------------------------------------------


def _work() -> None:
    global _busy
    while True:
        with _cond:
            while True:
                now = time.monotonic()
                if _queue and _queue[0][0] <= now:
                    _, _, item = heapq.heappop(_queue)
                    _busy += 1
                    break
                _cond.wait(_queue[0][0] - now if _queue else None)
        try:
            if isinstance(item, _Send):
                _attempt(item)
            else:
                _record(item)
        except Exception:
            log.exception("kernelflow alert delivery: unexpected error")
        finally:
            with _cond:
                _busy -= 1
                _cond.notify_all()


def _attempt(job: _Send) -> None:
    from .alert_channels_api import ChannelSendError

    timeout = getattr(job.channel, "timeout_s", None) or SEND_TIMEOUT_S
    error: BaseException | None
    stuck = _hung.get(job.name)
    if stuck is not None and stuck.is_alive():
        error = ChannelSendError(f"an earlier send on channel {job.name!r} has not returned yet")
    else:
        _hung.pop(job.name, None)
        error = _send_with_deadline(job, timeout)
    if error is None:
        _put([_record_of(job.run_id, job.store, job.run, job.alert_seq, job.name, SENT, job.attempt, None, job.suppressed)], time.monotonic())
        return
    text = _error_text(error, job.run)
    retry = getattr(error, "retry", True)
    if retry and job.attempt < MAX_ATTEMPTS:
        delay = min(BACKOFF_MAX_S, BACKOFF_S * 2 ** (job.attempt - 1)) * (1 + random.random() * JITTER)
        record = _record_of(job.run_id, job.store, job.run, job.alert_seq, job.name, FAILED, job.attempt, text,
                            job.suppressed, retry_in_s=round(delay, 3))  # fmt: skip
        now = time.monotonic()
        _put([record], now)
        job.attempt += 1
        _put([job], now + delay)
        return
    _put([_record_of(job.run_id, job.store, job.run, job.alert_seq, job.name, GAVE_UP, job.attempt, text, job.suppressed)], time.monotonic())
    log.warning("kernelflow: alert for run %s not delivered to channel %r: %s", job.run_id, job.name, text)


def _send_with_deadline(job: _Send, timeout: float) -> BaseException | None:
    from .alert_channels_api import ChannelSendError

    outcome: list[BaseException | None] = []
    alert, kwargs = job.alert, {}
    if job.suppressed:
        if _takes_suppressed(job.channel):
            kwargs["suppressed"] = job.suppressed
        else:
            n = job.suppressed
            note = f"(+{n} similar alert{'s' if n != 1 else ''} held back)"
            alert = dataclasses.replace(alert, message=f"{alert.message} {note}".strip())

    def call() -> None:
        try:
            job.channel.send(alert, timeout=timeout, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - reported as the attempt's outcome
            outcome.append(exc)
        else:
            outcome.append(None)

    thread = threading.Thread(target=call, name=f"kernelflow-alert-send-{job.name}", daemon=True)
    thread.start()
    thread.join(timeout + SEND_GRACE_S)
    if thread.is_alive():
        _hung[job.name] = thread
        return ChannelSendError(f"channel {job.name!r} did not return within {timeout:g} s (its timeout) + {SEND_GRACE_S:g} s")
    return outcome[0] if outcome else ChannelSendError("the send ended without an outcome")


def _takes_suppressed(channel: Any) -> bool:
    kind = type(channel)
    known = _accepts_suppressed.get(kind)
    if known is None:
        try:
            params = inspect.signature(channel.send).parameters.values()
            known = any(p.name == "suppressed" or p.kind is p.VAR_KEYWORD for p in params)
        except (TypeError, ValueError):
            known = False
        _accepts_suppressed[kind] = known
    return known


def _error_text(error: BaseException, run: Run | None) -> str:
    from .alert_channels_api import ChannelSendError

    text = str(error) if isinstance(error, ChannelSendError) else f"{type(error).__name__}: {error}"
    masker = getattr(run, "masker", None)
    if masker:
        text = masker.text(text)
    return text[:2000]


def _record(rec: _Record) -> None:
    run = rec.run
    # While this process drives the run, its handle numbers the events.
    if run is not None and run._lease is not None and not run._done.is_set():
        run._emit(ev.ALERT_DELIVERY, payload=rec.payload)
        return
    store = run.store if run is not None else rec.store
    try:
        event = append_if_free(store, rec.run_id, ev.ALERT_DELIVERY, payload=rec.payload)
    except NoSuchRun:
        log.warning("kernelflow: no run %s in %s to record AlertDelivery on", rec.run_id, store.location)
        return
    if event is None:  # another driver holds the run: try again shortly
        rec.tries += 1
        now = time.monotonic()
        if now >= rec.deadline:
            log.warning(
                "kernelflow: could not record AlertDelivery %s on run %s: its lease stayed taken for %g s",
                rec.payload, rec.run_id, RECORD_RETRY_S,
            )  # fmt: skip
            return
        _put([rec], now + min(0.05 * 2 ** min(rec.tries, 5), 1.0))
