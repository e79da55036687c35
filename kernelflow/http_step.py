"""The HTTP step: one request, its JSON (or text) as the output, clear errors otherwise.

:func:`http_request` is what a ``run: http`` step (and ``kf.http(...)``) does.
It uses httpx's synchronous client, follows redirects, and turns everything
that is not a 2xx response into a :class:`~kernelflow.step_errors.StepError`
whose message names the task, the method and the URL. ``mask`` hides secrets
in everything that leaves: the output, error messages, the URL shown (whose
password and secret-looking query values are redacted besides).
"""

from __future__ import annotations

import json as jsonlib
import math
import time
from collections.abc import Callable, Mapping
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx

from .step_errors import HttpStepError, StepError, StepTimeoutError
from .steps import HTTP_METHODS

__all__ = ["METHODS", "http_request"]

# One list of methods, checked when a step is defined and when it is called.
METHODS = HTTP_METHODS

# Characters of a response body quoted in an error message.
_EXCERPT_CHARS = 500

# Query parameters whose values are redacted in URLs shown in messages, even
# when no mask knows them (signed URLs, API keys passed in the query).
_SECRET_PARAMS = {
    "access_token", "api_key", "apikey", "auth", "code", "key", "password",
    "secret", "sig", "signature", "token", "x-amz-signature", "x-amz-credential",
    "x-amz-security-token",
}


def _identity(text: str) -> str:
    return text


def shown_url(url: str, mask: Callable[[str], str] = _identity) -> str:
    """``url`` as it may appear in a message: password and secret query values redacted, then masked."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return mask(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{hostport}" if ":" in userinfo else f"{user}@{hostport}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(k.lower() in _SECRET_PARAMS for k, _ in pairs):
            query = urlencode([(k, "***" if k.lower() in _SECRET_PARAMS else v) for k, v in pairs], safe="*")
    return mask(urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment)))


def _mask_output(value: Any, mask: Callable[[str], str]) -> Any:
    """Apply ``mask`` to every string in a parsed JSON value (keys included)."""
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, list):
        return [_mask_output(v, mask) for v in value]
    if isinstance(value, dict):
        return {mask(k) if isinstance(k, str) else k: _mask_output(v, mask) for k, v in value.items()}
    return value


def _decode(body: bytes, response: httpx.Response) -> str:
    encoding = response.charset_encoding or "utf-8"
    try:
        return body.decode(encoding, errors="replace")
    except LookupError:  # an unknown charset named by the server
        return body.decode("utf-8", errors="replace")


def _reason(response: httpx.Response) -> str:
    if response.reason_phrase:
        return response.reason_phrase
    try:
        return HTTPStatus(response.status_code).phrase
    except ValueError:
        return ""


def _check_arguments(
    method: Any, url: Any, headers: Any, params: Any, timeout: Any, max_body: Any, task_id: str, mask: Callable[[str], str]
) -> tuple[str, str]:
    where = f"http step '{task_id}'"
    if not isinstance(method, str) or method.upper() not in METHODS:
        raise StepError(
            f"{where}: method {mask(repr(method))} is not one of {', '.join(METHODS)} (any case)",
            task_id=task_id,
        )
    if not isinstance(url, str):
        raise StepError(f"{where}: url must be a string, got {type(url).__name__}", task_id=task_id)
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError as exc:
        raise StepError(f"{where}: url {shown_url(url, mask)!r} is not a valid URL: {exc}", task_id=task_id) from None
    if parts.scheme.lower() not in ("http", "https") or not host:
        raise StepError(
            f"{where}: url {shown_url(url, mask)!r} must be an absolute http:// or https:// URL with a host, "
            "e.g. 'https://api.example.org/items'",
            task_id=task_id,
        )
    if headers is not None:
        if not isinstance(headers, Mapping):
            raise StepError(f"{where}: headers must be a mapping of names to strings", task_id=task_id)
        for name, value in headers.items():
            if not isinstance(name, str) or not isinstance(value, str):
                # The value is not shown: headers are where tokens go.
                raise StepError(
                    f"{where}: header {mask(repr(name))} must map a string to a string, got {type(value).__name__}",
                    task_id=task_id,
                )
    if params is not None and not isinstance(params, Mapping):
        raise StepError(f"{where}: params must be a mapping, got {type(params).__name__}", task_id=task_id)
    for name, value in (("timeout", timeout), ("max_body", max_body)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise StepError(f"{where}: {name} must be a positive number or None, got {value!r}", task_id=task_id)
    return method.upper(), url


def http_request(
    method: str,
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    json: Any = None,
    params: Mapping[str, Any] | None = None,
    timeout: float | None = 30.0,
    max_body: int | None = 50_000_000,
    task_id: str = "http",
    mask: Callable[[str], str] = _identity,
) -> Any:
    """Send one HTTP request; return the response's parsed JSON, its text, or None.

    Args:
        method: GET, POST, PUT, PATCH, DELETE, HEAD or OPTIONS (any case).
        url: an absolute http:// or https:// URL.
        headers: request headers.
        json: a body to send as JSON (``Content-Type: application/json``);
            None sends no body.
        params: query parameters added to the URL.
        timeout: seconds; bounds connecting and each read and write, and the
            request as a whole is aborted once it is past it (checked between
            reads of the body). None waits forever.
        max_body: response bodies larger than this many bytes are refused
            (:class:`HttpStepError`) instead of filling memory; None: no limit.
        task_id: the step's id, named in error messages.
        mask: applied to every text that leaves (output strings, messages).

    Returns:
        For a 2xx response: the parsed JSON body when the content type is JSON
        or the body parses as JSON; else the body as text; None for 204, for
        HEAD and for an empty body.

    Raises:
        HttpStepError: a non-2xx response (``status`` set), or no response at
            all: connection refused, DNS failure, broken connection
            (``status`` None).
        StepTimeoutError: the request ran past ``timeout``.
        StepError: bad arguments (method, URL, a body that is not JSON).
    """
    verb, url = _check_arguments(method, url, headers, params, timeout, max_body, task_id, mask)
    where = f"http step '{task_id}'"
    target = f"{verb} {shown_url(url, mask)}"

    content: bytes | None = None
    request_headers = dict(headers or {})
    if json is not None:
        try:
            content = jsonlib.dumps(json, ensure_ascii=False, allow_nan=False).encode("utf-8")
        except (TypeError, ValueError) as exc:
            raise StepError(f"{where}: the json body cannot be sent as JSON: {mask(str(exc))}", task_id=task_id) from None
        if not any(k.lower() == "content-type" for k in request_headers):
            request_headers["Content-Type"] = "application/json"

    def timed_out() -> StepTimeoutError:
        assert timeout is not None
        return StepTimeoutError(
            f"{where}: {target} timed out after {timeout:g}s; the request was aborted",
            timeout=timeout,
            task_id=task_id,
        )

    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        with (
            httpx.Client(follow_redirects=True, timeout=httpx.Timeout(timeout)) as client,
            client.stream(verb, url, headers=request_headers, params=params, content=content) as response,
        ):
            body = bytearray()
            # Streamed, so that max_body and the overall deadline are checked
            # as the body arrives rather than after all of it is in memory.
            for chunk in response.iter_bytes():
                body += chunk
                if max_body is not None and len(body) > max_body:
                    raise HttpStepError(
                        f"{where}: {target} returned a body larger than max_body={max_body} bytes; "
                        "raise max_body or ask the server for less",
                        status=response.status_code,
                        task_id=task_id,
                    )
                if deadline is not None and time.monotonic() > deadline:
                    raise timed_out()
    except httpx.TimeoutException:
        raise timed_out() from None
    except httpx.ConnectError as exc:
        raise HttpStepError(
            f"{where}: could not connect to {shown_url(url, mask)}: {mask(str(exc) or type(exc).__name__)}; "
            "is the server running?",
            status=None,
            task_id=task_id,
        ) from None
    except httpx.TooManyRedirects:
        raise HttpStepError(f"{where}: {target} redirected too many times", status=None, task_id=task_id) from None
    except httpx.InvalidURL as exc:
        raise StepError(f"{where}: url {shown_url(url, mask)!r} is not valid: {mask(str(exc))}", task_id=task_id) from None
    except httpx.TransportError as exc:
        # Broken connections, protocol errors: no usable response.
        raise HttpStepError(
            f"{where}: {target} failed: {type(exc).__name__}: {mask(str(exc))}",
            status=None,
            task_id=task_id,
        ) from None
    except TypeError as exc:
        # httpx refuses params it cannot put in a query string.
        raise StepError(f"{where}: bad request arguments: {mask(str(exc))}", task_id=task_id) from None

    status = response.status_code
    if not 200 <= status < 300:
        excerpt = mask(_decode(bytes(body), response))[:_EXCERPT_CHARS]
        redirected = f" (redirected to {shown_url(str(response.url), mask)})" if response.history else ""
        message = f"{where}: {target}{redirected} returned {status} {_reason(response)}".rstrip()
        message += f": {excerpt}" if excerpt.strip() else " (empty body)"
        raise HttpStepError(message, status=status, body_excerpt=excerpt, task_id=task_id)

    if status == 204 or verb == "HEAD" or not body:
        return None
    text = _decode(bytes(body), response)
    # JSON when it parses as JSON, whatever the content type says; NaN and
    # Infinity are not JSON (a text body "NaN" stays text).
    try:
        value = jsonlib.loads(text, parse_constant=_reject_constant)
    except ValueError:
        return mask(text)
    return _mask_output(value, mask)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
