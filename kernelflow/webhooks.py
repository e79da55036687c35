"""Webhook triggers: an optional HTTP server that starts runs on signed POSTs.

Nothing here runs unless something constructs a :class:`WebhookServer` and
calls :meth:`~WebhookServer.start` (the scheduler does, for
``kernelflow scheduler start --webhooks PORT``). The server binds to
127.0.0.1 by default and refuses any other address unless told
``allow_remote=True``; put a TLS-terminating reverse proxy in front for that.

A request is ``POST /hooks/<name>`` with a JSON object as its body, signed
with the trigger's secret: ``X-Kernelflow-Signature: sha256=<hex>`` (GitHub's
``X-Hub-Signature-256`` is accepted too), where ``<hex>`` is the HMAC-SHA256
of the raw body (see :func:`sign`). Checks run cheapest and most trusted
first: trigger name, body size, signature (constant-time), then JSON, the
trigger's filter, its rate limit, and only then the ``fire`` callback.

The server is the standard library's :class:`~http.server.ThreadingHTTPServer`:
requests are few and small, and it adds no dependency. Every response is a
small JSON object; no traceback or internal detail is ever sent.
"""

from __future__ import annotations

import difflib
import hashlib
import hmac
import json
import logging
import math
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

from .loopback import is_loopback
from .exceptions import DefinitionError, InputError, KernelflowError, OptionError
from .expressions import Condition, EvaluationError, ExpressionError, parse_condition

__all__ = [
    "MIN_SECRET_LENGTH",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "WebhookRefused",
    "WebhookServer",
    "WebhookTrigger",
    "parse_rate",
    "sign",
]

log = logging.getLogger("kernelflow.webhooks")

SIGNATURE_HEADER = "X-Kernelflow-Signature"
GITHUB_SIGNATURE_HEADER = "X-Hub-Signature-256"
TIMESTAMP_HEADER = "X-Kernelflow-Timestamp"

#: Secrets shorter than this are refused: the HMAC is only as strong as its key.
MIN_SECRET_LENGTH = 16

#: A signed timestamp older (or newer) than this is refused, which stops replays.
TIMESTAMP_TOLERANCE_S = 300

_SPEC_KEYS = ("secret_env", "filter", "rate", "input")
_NAME_OK = re.compile(r"[\w.-]+\Z")
_ENV_NAME_OK = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_ENV_NAME_USUAL = re.compile(r"[A-Z_][A-Z0-9_]*\Z")
_RATE = re.compile(r"\s*([0-9]{1,9})\s*/\s*([A-Za-z]+)\s*\Z")
_RATE_UNITS = {
    "s": 1.0, "sec": 1.0, "second": 1.0,
    "m": 60.0, "min": 60.0, "minute": 60.0,
    "h": 3600.0, "hr": 3600.0, "hour": 3600.0,
}  # fmt: skip
_RATE_HINT = "write the rate as COUNT/UNIT, like '10/s', '60/min' or '500/h'"
_SIGNATURE = re.compile(r"sha256=([0-9a-fA-F]{64})\Z")
_SECRET_HINT = "generate one with: openssl rand -hex 32"


# --------------------------------------------------------------------------- signing


def sign(secret: str | bytes, body: bytes, *, timestamp: int | None = None) -> str:
    """The signature header value for ``body``: ``"sha256=<hex>"``.

    Without ``timestamp`` this is the HMAC-SHA256 of the body (the same as
    GitHub's ``X-Hub-Signature-256``). With one, the signed message is
    ``b"<timestamp>." + body`` and the request must carry the same value in
    ``X-Kernelflow-Timestamp``; the server then refuses it once it is more
    than five minutes old, so a captured request cannot be replayed later.
    """
    return "sha256=" + _digest(secret, body, None if timestamp is None else str(int(timestamp)))


def _digest(secret: str | bytes, body: bytes, timestamp: str | None) -> str:
    key = secret.encode() if isinstance(secret, str) else secret
    message = body if timestamp is None else timestamp.encode() + b"." + body
    return hmac.new(key, message, hashlib.sha256).hexdigest()


# --------------------------------------------------------------------------- triggers


def parse_rate(text: object, *, what: str = "rate") -> tuple[int, float]:
    """``"10/min"`` -> ``(10, 60.0)``: a count per period in seconds; ``ValueError`` naming ``what`` otherwise."""
    m = _RATE.match(text) if isinstance(text, str) else None
    if m is None:
        raise ValueError(f"{what} must look like '10/s', '60/min' or '500/h', got {text!r}")
    count, unit = int(m.group(1)), m.group(2).lower()
    unit = unit[:-1] if unit.endswith("s") and unit[:-1] in _RATE_UNITS else unit
    if unit not in _RATE_UNITS:
        raise ValueError(f"{what} has an unknown unit {m.group(2)!r} in {text!r} (the units are s, min and h)")
    if count < 1:
        raise ValueError(f"{what} must allow at least one request, got {text!r}")
    return count, _RATE_UNITS[unit]


def _did_you_mean(word: str, choices: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _filter_error(name: str, err: ExpressionError) -> ExpressionError:
    """The expression language's own error, placed at the trigger, with a webhook-specific fix where one helps."""
    hint = err.hint
    if "unknown reference root" in err.message:
        # The body is `inputs` here; people reach for payload.x / body.x first.
        hint = "in a webhook filter the JSON body is `inputs`: write inputs.action == 'opened' (inputs.pull_request.draft, ...)"
    return ExpressionError(
        f"filter: {err.message}",
        location=f"webhook trigger {name!r}",
        hint=hint,
        expression=err.expression,
        column=err.column,
    )


@dataclass(frozen=True)
class WebhookTrigger:
    """One webhook: ``POST /hooks/<name>`` signed with ``secret`` starts a run.

    ``filter`` is a kernelflow condition (see docs/expressions.md) over the
    JSON body, which it sees as ``inputs``: ``"inputs.action == 'opened'"``.
    ``rate`` bounds how many runs the trigger starts: ``"N/s"``, ``"N/min"``
    or ``"N/h"`` (a token bucket holding N, refilled evenly over the period).
    Everything is checked on construction (:class:`~kernelflow.DefinitionError`).
    The secret never appears in ``repr`` or in any message.
    """

    name: str
    secret: str = field(repr=False)
    filter: str | None = None
    rate: str = "60/min"
    input: str | None = None
    """The run input that receives the whole body; None: the body's fields are the inputs."""
    condition: Condition | None = field(init=False, repr=False, compare=False, default=None)
    rate_count: int = field(init=False, repr=False, compare=False, default=0)
    rate_period: float = field(init=False, repr=False, compare=False, default=0.0)

    def __post_init__(self) -> None:
        name = self.name
        if not isinstance(name, str) or not _NAME_OK.match(name):
            raise DefinitionError(
                f"webhook trigger name must be letters, digits, '_', '.' or '-', got {name!r}",
                hint="the name is the URL path /hooks/<name>; rename the schedule, like 'github-push'",
            )
        where = f"webhook trigger {name!r}"
        if not isinstance(self.secret, str) or len(self.secret) < MIN_SECRET_LENGTH:
            got = f"{len(self.secret)} characters" if isinstance(self.secret, str) else type(self.secret).__name__
            raise DefinitionError(
                f"the secret must be a string of at least {MIN_SECRET_LENGTH} characters, got {got}",
                location=where,
                hint=_SECRET_HINT,
            )
        condition = None
        if self.filter is not None:
            if not isinstance(self.filter, str):
                raise DefinitionError(
                    f"filter must be a condition written as text, got {type(self.filter).__name__} {self.filter!r}",
                    location=where,
                    hint="quote it, like filter: \"inputs.action == 'opened'\"",
                )
            try:
                condition = parse_condition(self.filter)
            except ExpressionError as err:
                raise _filter_error(name, err) from None
        try:
            count, period = parse_rate(self.rate)
        except ValueError as err:
            raise DefinitionError(str(err), location=where, hint=_RATE_HINT) from None
        object.__setattr__(self, "condition", condition)
        object.__setattr__(self, "rate_count", count)
        object.__setattr__(self, "rate_period", period)

    @classmethod
    def from_spec(
        cls, name: str, spec: Mapping[str, Any], environ: Mapping[str, str] = os.environ
    ) -> WebhookTrigger:
        """A trigger from a schedule's ``webhook:`` mapping:
        ``{"secret_env": "GITHUB_HOOK_SECRET", "filter": "inputs.action == 'opened'", "rate": "10/min"}``.

        ``secret_env`` names the environment variable holding the secret (it is
        read from ``environ`` now). Raises one :class:`~kernelflow.DefinitionError`
        naming the trigger, the bad key and the fix.
        """
        where = f"webhook trigger {name!r}"
        if not isinstance(spec, Mapping):
            raise DefinitionError(
                f"webhook must be a mapping, got {type(spec).__name__} {spec!r}",
                location=where,
                hint="write webhook: {secret_env: MY_HOOK_SECRET, filter: \"inputs.action == 'opened'\", rate: 10/min}",
            )
        for key in spec:
            if key not in _SPEC_KEYS:
                raise DefinitionError(
                    f"unknown key {key!r}{_did_you_mean(str(key), _SPEC_KEYS)}",
                    location=where,
                    hint="the keys of webhook: are " + ", ".join(_SPEC_KEYS),
                )
        env = spec.get("secret_env")
        if env is None:
            raise DefinitionError(
                "secret_env is missing: a webhook needs a secret to check signatures",
                location=where,
                hint=f"put the secret in an environment variable and name it: secret_env: MY_HOOK_SECRET ({_SECRET_HINT})",
            )
        if not isinstance(env, str) or not _ENV_NAME_OK.match(env):
            # Never echo the value: people paste the secret itself here.
            shown = f"a {type(env).__name__}" if not isinstance(env, str) else f"a text of {len(env)} characters"
            raise DefinitionError(
                f"secret_env must be the NAME of an environment variable (letters, digits, _), got {shown}",
                location=where,
                hint="secret_env names the variable, not the secret: secret_env: MY_HOOK_SECRET, then export MY_HOOK_SECRET=...",
            )
        secret = environ.get(env)
        if not secret and not _ENV_NAME_USUAL.match(env) and len(env) >= MIN_SECRET_LENGTH:
            # A long lower-case or mixed word that names no variable is most likely the secret itself.
            raise DefinitionError(
                f"secret_env names no environment variable that is set (it is {len(env)} characters; not shown "
                "in case it is the secret itself)",
                location=where,
                hint="secret_env names the variable, not the secret: secret_env: MY_HOOK_SECRET, then export MY_HOOK_SECRET=...",
            )
        if not secret:
            raise DefinitionError(
                f"environment variable {env} (secret_env) is {'empty' if secret == '' else 'not set'}",
                location=where,
                hint=f"set it where the scheduler runs: export {env}=$(openssl rand -hex 32), and give the sender the same value",
            )
        if len(secret) < MIN_SECRET_LENGTH:
            raise DefinitionError(
                f"the secret in {env} has {len(secret)} characters; at least {MIN_SECRET_LENGTH} are required",
                location=where,
                hint=f"use a longer random secret: export {env}=$(openssl rand -hex 32)",
            )
        rate = spec.get("rate", "60/min")
        if isinstance(rate, (int, float)) and not isinstance(rate, bool):
            raise DefinitionError(
                f"rate must say its period, got the number {rate!r}",
                location=where,
                hint=f"{_RATE_HINT}; in YAML quote it if needed: rate: '{rate}/min'",
            )
        target = spec.get("input")
        if target is not None and (not isinstance(target, str) or not target.isidentifier()):
            raise DefinitionError(
                f"input must be the name of one of the workflow's inputs, got {target!r}",
                location=where,
                hint="input: payload (the run then gets the whole JSON body as its input 'payload')",
            )
        return cls(name=name, secret=secret, filter=spec.get("filter"), rate=rate, input=target)


# --------------------------------------------------------------------------- rate limiting


class _Bucket:
    """A token bucket: ``count`` requests at once, refilled at ``count`` per ``period`` seconds."""

    def __init__(self, count: int, period: float):
        self.key = (count, period)
        self.capacity = float(count)
        self.per_second = count / period
        self.tokens = float(count)
        self.stamp = time.monotonic()

    def take(self) -> float:
        """0 if a token was taken, else the seconds until one will be there."""
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.per_second)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.per_second


# --------------------------------------------------------------------------- the server


class WebhookRefused(KernelflowError):
    """Raised by a ``fire`` callback to refuse a delivery with a chosen HTTP status.

    ``status`` is a 4xx or 5xx code (409 by default; 503 with ``retry_after``
    seconds suits "the scheduler is stopping, send it again later"). The
    message is sent to the client as the ``error``.
    """

    def __init__(self, message: str, *, status: int = 409, retry_after: int | None = None):
        if not (isinstance(status, int) and 400 <= status <= 599):
            raise ValueError(f"WebhookRefused status must be a 4xx or 5xx code, got {status!r}")
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class _Reject(Exception):
    """Stop handling this request and answer ``status`` with ``{"error": message}``."""

    def __init__(self, status: int, message: str, *, outcome: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.outcome = outcome
        self.headers = dict(headers or {})


class WebhookServer:
    """Serve webhook triggers over HTTP on a daemon thread (off until :meth:`start`).

    ``triggers`` is called on every request and returns the enabled triggers by
    name (a plain mapping is accepted too), so the caller can add and remove
    them without restarting the server. ``fire(name, payload)`` starts a run
    for trigger ``name`` with the JSON body as ``payload`` and returns what the
    response should say (``{"run_id": ..., "outcome": ...}``); it is called
    from the server's request threads, possibly several at once. A
    :class:`WebhookRefused` it raises answers with its own status, an
    :class:`~kernelflow.InputError` 422, another
    :class:`~kernelflow.KernelflowError` 409, anything else 500 (logged
    here; the client only learns that it failed).

    ``host`` must be a loopback address unless ``allow_remote=True``.
    ``max_body`` bounds the body in bytes; ``timeout`` bounds, in seconds,
    each socket read and the reading of the whole body.
    """

    def __init__(
        self,
        triggers: Callable[[], Mapping[str, WebhookTrigger]] | Mapping[str, WebhookTrigger],
        fire: Callable[[str, dict[str, Any]], Mapping[str, Any] | None],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        max_body: int = 1_000_000,
        allow_remote: bool = False,
        timeout: float = 10.0,
    ) -> None:
        if not isinstance(host, str) or not host:
            raise OptionError(f"webhook server: host must be an address like '127.0.0.1', got {host!r}")
        if not is_loopback(host) and not allow_remote:
            raise OptionError(
                f"webhook server: refusing to listen on {host!r}, which is not a loopback address",
                hint="keep the default 127.0.0.1 and put a TLS reverse proxy (nginx, Caddy) in front of it; "
                "to listen on another address anyway, pass allow_remote=True",
            )
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise OptionError(f"webhook server: port must be 0 (any free port) to 65535, got {port!r}")
        if isinstance(max_body, bool) or not isinstance(max_body, int) or max_body < 1:
            raise OptionError(f"webhook server: max_body must be a positive number of bytes, got {max_body!r}")
        if not (isinstance(timeout, (int, float)) and 0 < timeout < math.inf):
            raise OptionError(f"webhook server: timeout must be a positive number of seconds, got {timeout!r}")
        self._triggers = triggers if callable(triggers) else (lambda: triggers)
        self._fire = fire
        self.host = host
        self._requested_port = port
        self.max_body = max_body
        self.timeout = float(timeout)
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._buckets: dict[str, _Bucket] = {}
        self._counts: dict[str, dict[str, int]] = {}

    # -- lifecycle

    def start(self) -> WebhookServer:
        """Bind and serve on a daemon thread; returns ``self``. :class:`~kernelflow.KernelflowError` if the port is taken."""
        if self._httpd is not None:
            raise KernelflowError(f"the webhook server is already running at {self.url}; stop() it first")
        server_class = _HTTPServer6 if ":" in self.host else _HTTPServer
        try:
            httpd = server_class((self.host, self._requested_port), _Handler)
        except OSError as err:
            raise KernelflowError(
                f"webhook server: cannot listen on {self.host}:{self._requested_port}: {err.strerror or err}; "
                "choose another port (0 picks a free one)"
            ) from None
        httpd.owner = self
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, name="kernelflow-webhooks", daemon=True
        )
        self._thread.start()
        log.info("webhook server listening on %s", self.url)
        return self

    def stop(self) -> None:
        """Stop accepting requests and close the socket (requests in flight finish on their own threads)."""
        httpd, thread = self._httpd, self._thread
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        if thread is not None:
            thread.join(timeout=5)
        self._httpd = None
        self._thread = None

    def __enter__(self) -> WebhookServer:
        return self if self._httpd is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._httpd is not None

    @property
    def port(self) -> int:
        """The port listened on (the one picked by the system when 0 was asked for)."""
        if self._httpd is None:
            raise KernelflowError("the webhook server is not running; call start() first")
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``; triggers are at ``{url}/hooks/<name>``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def stats(self) -> dict[str, dict[str, int]]:
        """Requests so far by trigger name and outcome (``fired``, ``filtered``, ``bad_signature``, ``rate_limited``, ...).

        Requests to unknown names are counted under ``""``."""
        with self._lock:
            return {name: dict(counts) for name, counts in self._counts.items()}

    # -- used by the handler

    def _count(self, name: str, outcome: str) -> None:
        with self._lock:
            counts = self._counts.setdefault(name, {})
            counts[outcome] = counts.get(outcome, 0) + 1

    def _take_token(self, trigger: WebhookTrigger) -> float:
        with self._lock:
            bucket = self._buckets.get(trigger.name)
            if bucket is None or bucket.key != (trigger.rate_count, trigger.rate_period):
                bucket = self._buckets[trigger.name] = _Bucket(trigger.rate_count, trigger.rate_period)
            return bucket.take()

    def _lookup(self, name: str) -> WebhookTrigger:
        try:
            triggers = self._triggers()
            trigger = triggers.get(name) if name else None
        except Exception:  # noqa: BLE001 - the caller's registry broke; the client gets a plain 500
            log.exception("webhook server: reading the triggers failed")
            raise _Reject(500, "the server could not read its webhook triggers", outcome="error") from None
        if trigger is None:
            # Name only what was asked for: the list of triggers is not for unauthenticated clients.
            raise _Reject(404, f"no webhook trigger named {name!r}", outcome="unknown")
        return trigger

    def _handle_post(self, handler: _Handler, name: str) -> tuple[int, dict[str, Any]]:
        trigger = self._lookup(name)
        where = f"webhook trigger {name!r}"
        headers = handler.headers

        if headers.get("Transfer-Encoding"):
            raise _Reject(411, "send the body with a Content-Length header; chunked bodies are not accepted", outcome="bad_request")
        length_text = headers.get("Content-Length")
        if length_text is None:
            raise _Reject(411, "the Content-Length header is missing; send the body with its length", outcome="bad_request")
        if not length_text.strip().isdigit() or len(length_text.strip()) > 18:
            raise _Reject(400, f"Content-Length must be a number of bytes, got {length_text[:40]!r}", outcome="bad_request")
        length = int(length_text)
        if length > self.max_body:
            raise _Reject(
                413,
                f"the body is {length} bytes; {where} accepts at most {self.max_body}",
                outcome="too_large",
            )

        header = SIGNATURE_HEADER if headers.get(SIGNATURE_HEADER) else GITHUB_SIGNATURE_HEADER
        signature = headers.get(header)
        if not signature:
            raise _Reject(
                401,
                f"missing {SIGNATURE_HEADER} header; sign the body with HMAC-SHA256 using the trigger's secret "
                f"and send it as '{SIGNATURE_HEADER}: sha256=<hex digest>' (see docs/webhooks.md)",
                outcome="bad_signature",
            )
        match = _SIGNATURE.match(signature.strip())
        if match is None:
            raise _Reject(
                401,
                f"the {header} header must look like 'sha256=' followed by the 64 hex digits of the body's HMAC-SHA256",
                outcome="bad_signature",
            )

        body = handler.read_body(length, self.timeout)

        timestamp = headers.get(TIMESTAMP_HEADER)
        if timestamp is not None and not (timestamp.isdigit() and len(timestamp) <= 12):
            raise _Reject(401, f"{TIMESTAMP_HEADER} must be a Unix time in whole seconds", outcome="bad_signature")
        # Hex digits are compared lower-case; the comparison itself is constant-time.
        if not hmac.compare_digest(_digest(trigger.secret, body, timestamp), match.group(1).lower()):
            raise _Reject(
                401,
                "the signature does not match the body; sign the exact bytes sent with the trigger's secret"
                + (f" (with {TIMESTAMP_HEADER}, sign '<timestamp>.' + body)" if timestamp is not None else ""),
                outcome="bad_signature",
            )
        if timestamp is not None:
            age = time.time() - int(timestamp)
            if abs(age) > TIMESTAMP_TOLERANCE_S:
                raise _Reject(
                    401,
                    f"{TIMESTAMP_HEADER} is {abs(age):.0f} s {'old' if age > 0 else 'in the future'}; "
                    f"at most {TIMESTAMP_TOLERANCE_S} s is accepted (check the sender's clock, sign each request anew)",
                    outcome="bad_signature",
                )

        try:
            payload = json.loads(body, parse_constant=_refuse_constant)
        except (ValueError, RecursionError) as err:
            raise _Reject(400, f"the body is not valid JSON: {err}; send a JSON object (Content-Type: application/json)", outcome="bad_request") from None
        if not isinstance(payload, dict):
            raise _Reject(400, f"the body must be a JSON object, got a JSON {_json_kind(payload)}", outcome="bad_request")

        if trigger.condition is not None:
            try:
                passed = trigger.condition.evaluate({"inputs": payload})
            except EvaluationError as err:
                # The language speaks of workflow inputs; here `inputs` is the request body.
                reason = err.message.replace("the workflow has no input", "the body has no field").replace("(inputs:", "(fields:")
                raise _Reject(422, f"{where}: the filter could not be evaluated: {reason}", outcome="filter_error") from None
            if not passed:
                self._count(name, "filtered")
                return 202, {"trigger": name, "outcome": "filtered"}

        wait = self._take_token(trigger)
        if wait > 0:
            retry_after = max(1, math.ceil(wait))
            raise _Reject(
                429,
                f"{where} allows {trigger.rate}; try again in {retry_after} s",
                outcome="rate_limited",
                headers={"Retry-After": str(retry_after)},
            )

        try:
            result = self._fire(name, payload)
        except WebhookRefused as err:
            retry = {"Retry-After": str(max(1, int(err.retry_after)))} if err.retry_after is not None else None
            raise _Reject(err.status, f"{where}: {err}", outcome="refused", headers=retry) from None
        except InputError as err:
            raise _Reject(422, f"{where}: {err}", outcome="failed") from None
        except KernelflowError as err:
            raise _Reject(409, f"{where}: {err}", outcome="failed") from None
        except Exception:  # noqa: BLE001 - never send our internals; the log has the traceback
            log.exception("webhook trigger %r: fire() raised", name)
            raise _Reject(500, f"{where}: starting the run failed; the server's log has the details", outcome="error") from None
        self._count(name, "fired")
        return 202, {"trigger": name, "outcome": "fired", **dict(result or {})}


def _refuse_constant(word: str) -> Any:
    raise ValueError(f"{word} is not valid JSON")


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array"


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True  # a stuck client must not keep the process alive
    request_queue_size = 64
    owner: WebhookServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver prints these to stderr; a client resetting mid-request is routine here.
        log.debug("webhook server: a connection from %s failed", client_address, exc_info=True)


class _HTTPServer6(_HTTPServer):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    # One request per connection: no keep-alive state to get wrong after an unread body.
    protocol_version = "HTTP/1.1"
    server_version = "kernelflow-webhooks"
    server: _HTTPServer
    body_unread = False

    def setup(self) -> None:
        self.timeout = self.server.owner.timeout  # StreamRequestHandler applies it to the socket
        super().setup()

    def version_string(self) -> str:
        return self.server_version  # no Python version for strangers

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        log.debug("%s %s", self.address_string(), format % args)

    def handle_expect_100(self) -> bool:
        # Answer "100 Continue" only once the request passed the checks that need no body
        # (see read_body), so an oversized or unsigned request is refused before it is sent.
        return True

    # -- responses

    def reply(self, status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> None:
        data = json.dumps(body, default=str, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Connection", "close")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        self.close_connection = True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # The stdlib's errors (malformed request line, headers too long, unknown method) as JSON too.
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = "error"
        self.close_connection = True
        try:
            self.reply(code, {"error": message or phrase})
        except OSError:
            pass

    def read_body(self, length: int, timeout: float) -> bytes:
        """Exactly ``length`` bytes (already checked against max_body), within ``timeout`` seconds in all."""
        if self.headers.get("Expect", "").lower() == "100-continue":
            self.send_response_only(100)
            self.end_headers()
        deadline = time.monotonic() + timeout
        chunks: list[bytes] = []
        got = 0
        self.body_unread = True
        while got < length:
            if time.monotonic() > deadline:
                raise _Reject(408, f"the body did not arrive within {timeout:g} s", outcome="bad_request")
            try:
                chunk = self.rfile.read1(min(65536, length - got))
            except TimeoutError:
                raise _Reject(408, f"the body did not arrive within {timeout:g} s", outcome="bad_request") from None
            if not chunk:
                raise _Reject(400, f"the body ended after {got} of the {length} bytes in Content-Length", outcome="bad_request")
            chunks.append(chunk)
            got += len(chunk)
        self.body_unread = False
        return b"".join(chunks)

    def linger(self) -> None:
        """After answering without reading the body: let the client finish sending before the socket closes.

        Closing a socket with unread input makes the kernel send a reset,
        which can destroy the response before the client reads it. So: end
        our side, then discard what the client still sends, bounded in bytes
        and time.
        """
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(0.5)
            budget = self.server.owner.max_body + 65536
            deadline = time.monotonic() + 2.0
            while budget > 0 and time.monotonic() < deadline:
                data = self.connection.recv(min(65536, budget))
                if not data:
                    break
                budget -= len(data)
        except OSError:
            pass

    # -- routing

    def _route(self) -> tuple[str, str | None]:
        """("hooks", name), ("healthz", None) or ("", None)."""
        path = urlsplit(self.path).path
        if path == "/healthz":
            return "healthz", None
        if path.startswith("/hooks/"):
            name = unquote(path[len("/hooks/") :])
            if name and "/" not in name:
                return "hooks", name
        return "", None

    def _dispatch(self) -> None:
        owner = self.server.owner
        kind, name = self._route()
        allowed = {"healthz": "GET", "hooks": "POST"}.get(kind)
        if kind == "":
            owner._count("", "unknown")
            self.reply(404, {"error": "not found; webhooks are POST /hooks/<name>, health is GET /healthz"})
        elif self.command != allowed and not (kind == "healthz" and self.command == "HEAD"):
            self.reply(405, {"error": f"{self.path.split('?')[0]} accepts {allowed} only"}, {"Allow": allowed or ""})
        elif kind == "healthz":
            self.reply(200, {"ok": True})
        else:
            assert name is not None
            length = (self.headers.get("Content-Length") or "0").strip()
            self.body_unread = bool(self.headers.get("Transfer-Encoding")) or not length.isdigit() or int(length) > 0
            try:
                status, body = owner._handle_post(self, name)
            except _Reject as rejection:
                owner._count(name if rejection.outcome != "unknown" else "", rejection.outcome)
                log.info("webhook %r: %d %s", name, rejection.status, rejection.outcome)
                self.reply(rejection.status, {"error": rejection.message, "trigger": name}, rejection.headers)
            else:
                self.reply(status, body)
            if self.body_unread:
                self.linger()

    def _safe_dispatch(self) -> None:
        try:
            self._dispatch()
        except (TimeoutError, ConnectionError, BrokenPipeError):
            self.close_connection = True  # the client went away or stalled; nothing to answer
        except Exception:  # noqa: BLE001 - one bad request must not take the server thread's state with it
            log.exception("webhook server: unexpected error handling %s %s", self.command, self.path)
            self.close_connection = True
            try:
                self.reply(500, {"error": "internal error; the server's log has the details"})
            except OSError:
                pass

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = _safe_dispatch
