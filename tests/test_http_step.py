"""The HTTP step against a real local HTTP server (tests/http_server.py)."""

from __future__ import annotations

import socket

import pytest
from http_server import HttpTestServer, http_server_fixture  # noqa: F401 - the `http_server` fixture

from kernelflow.exceptions import KernelflowError
from kernelflow.http_step import METHODS, http_request, shown_url
from kernelflow.step_errors import HttpStepError, StepError, StepTimeoutError


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- successful responses ---------------------------------------------------------------


def test_get_returns_parsed_json(http_server: HttpTestServer):
    http_server.route("GET", "/items", json=[{"id": 1}, {"id": 2}])
    assert http_request("GET", http_server.url + "/items") == [{"id": 1}, {"id": 2}]
    [seen] = http_server.requests
    assert (seen.method, seen.path, seen.body) == ("GET", "/items", b"")


def test_post_sends_the_json_body_and_headers(http_server: HttpTestServer):
    http_server.route("POST", "/items", status=201, json={"id": 7, "ok": True})
    out = http_request(
        "post",  # any case
        http_server.url + "/items",
        json={"name": "wörld", "n": 3, "tags": ["a"]},
        headers={"X-Request-Id": "abc", "Authorization": "Bearer t"},
    )
    assert out == {"id": 7, "ok": True}
    [seen] = http_server.requests
    assert seen.method == "POST"
    assert seen.json == {"name": "wörld", "n": 3, "tags": ["a"]}
    assert seen.headers["content-type"] == "application/json"
    assert seen.headers["x-request-id"] == "abc"
    assert seen.headers["authorization"] == "Bearer t"


def test_params_go_into_the_query_string(http_server: HttpTestServer):
    http_server.route("GET", "/search", json={"hits": 0})
    http_request("GET", http_server.url + "/search", params={"q": "a b", "n": 2})
    assert http_server.requests[0].path == "/search?q=a+b&n=2"


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE", "OPTIONS"])
def test_other_methods(http_server: HttpTestServer, method: str):
    http_server.route(method, "/thing", json={"method": method})
    assert http_request(method, http_server.url + "/thing") == {"method": method}
    assert http_server.requests[0].method == method


def test_text_body_is_returned_as_text(http_server: HttpTestServer):
    http_server.route("GET", "/text", body=b"hello", content_type="text/plain")
    assert http_request("GET", http_server.url + "/text") == "hello"


def test_a_body_that_parses_as_json_is_json_whatever_the_content_type(http_server: HttpTestServer):
    http_server.route("GET", "/untyped", body=b'{"a": [1, 2]}', content_type="text/plain")
    http_server.route("GET", "/number", body=b"42")
    http_server.route("GET", "/nan", body=b"NaN", content_type="text/plain")
    assert http_request("GET", http_server.url + "/untyped") == {"a": [1, 2]}
    assert http_request("GET", http_server.url + "/number") == 42
    assert http_request("GET", http_server.url + "/nan") == "NaN"  # not JSON


def test_json_content_type_with_a_broken_body_falls_back_to_text(http_server: HttpTestServer):
    http_server.route("GET", "/broken", body=b"{not json", content_type="application/json")
    assert http_request("GET", http_server.url + "/broken") == "{not json"


def test_empty_bodies_204_and_head_give_none(http_server: HttpTestServer):
    http_server.route("GET", "/empty", status=200)
    http_server.route("DELETE", "/gone", status=204)
    http_server.route("HEAD", "/items", json={"ignored": True})
    assert http_request("GET", http_server.url + "/empty") is None
    assert http_request("DELETE", http_server.url + "/gone") is None
    assert http_request("HEAD", http_server.url + "/items") is None


def test_redirects_are_followed(http_server: HttpTestServer):
    http_server.route("GET", "/old", status=302, headers={"Location": "/new"})
    http_server.route("GET", "/new", json={"moved": True})
    assert http_request("GET", http_server.url + "/old") == {"moved": True}
    assert [r.path for r in http_server.requests] == ["/old", "/new"]


# -- errors -----------------------------------------------------------------------------


def test_404_names_task_method_url_and_body(http_server: HttpTestServer):
    url = http_server.url + "/missing"
    with pytest.raises(HttpStepError) as info:
        http_request("GET", url, task_id="fetch")
    err = info.value
    assert isinstance(err, StepError) and isinstance(err, KernelflowError)
    assert err.status == 404
    assert err.task_id == "fetch"
    assert str(err) == f"http step 'fetch': GET {url} returned 404 Not Found: no route for GET /missing"
    assert err.body_excerpt == "no route for GET /missing"


def test_503_message_format(http_server: HttpTestServer):
    http_server.route("POST", "/path", status=503, body="down for maintenance", content_type="text/plain")
    with pytest.raises(HttpStepError) as info:
        http_request("POST", http_server.url + "/path", json={"x": 1}, task_id="notify")
    assert str(info.value) == (
        f"http step 'notify': POST {http_server.url}/path returned 503 Service Unavailable: down for maintenance"
    )


def test_500_quotes_only_the_first_500_characters(http_server: HttpTestServer):
    http_server.route("GET", "/boom", status=500, body="E" * 400 + "F" * 2000)
    with pytest.raises(HttpStepError) as info:
        http_request("GET", http_server.url + "/boom")
    err = info.value
    assert err.status == 500
    assert err.body_excerpt == "E" * 400 + "F" * 100
    assert str(err).endswith("returned 500 Internal Server Error: " + err.body_excerpt)


def test_error_with_an_empty_body(http_server: HttpTestServer):
    http_server.route("GET", "/nothing", status=500)
    with pytest.raises(HttpStepError, match=r"returned 500 Internal Server Error \(empty body\)$"):
        http_request("GET", http_server.url + "/nothing")


def test_a_redirect_to_an_error_says_where_it_ended(http_server: HttpTestServer):
    http_server.route("GET", "/old", status=301, headers={"Location": "/missing"})
    with pytest.raises(HttpStepError) as info:
        http_request("GET", http_server.url + "/old")
    assert f"GET {http_server.url}/old (redirected to {http_server.url}/missing) returned 404" in str(info.value)


def test_timeout_against_a_slow_route(http_server: HttpTestServer):
    http_server.route("GET", "/slow", delay=5, json={"late": True})
    with pytest.raises(StepTimeoutError) as info:
        http_request("GET", http_server.url + "/slow", timeout=0.5, task_id="slowpoke")
    err = info.value
    assert isinstance(err, TimeoutError)
    assert err.timeout == 0.5
    assert str(err) == f"http step 'slowpoke': GET {http_server.url}/slow timed out after 0.5s; the request was aborted"


def test_connection_refused():
    url = f"http://127.0.0.1:{closed_port()}/x"
    with pytest.raises(HttpStepError) as info:
        http_request("GET", url, task_id="ping")
    err = info.value
    assert err.status is None
    assert str(err).startswith(f"http step 'ping': could not connect to {url}: ")
    assert str(err).endswith("; is the server running?")


def test_unknown_host():
    # .invalid never resolves (RFC 2606); no network needed to fail.
    with pytest.raises(HttpStepError) as info:
        # No timeout: a slow resolver must end in its own failure, not ours.
        http_request("GET", "http://no-such-host.invalid/x", timeout=None)
    assert info.value.status is None
    assert "could not connect to http://no-such-host.invalid/x" in str(info.value)


def test_bad_method_lists_the_allowed_ones():
    with pytest.raises(StepError) as info:
        http_request("FETCH", "http://127.0.0.1/x", task_id="t")
    message = str(info.value)
    assert "http step 't': method 'FETCH' is not one of" in message
    assert all(m in message for m in METHODS)


@pytest.mark.parametrize("url", ["ftp://example.org/x", "example.org/x", "http://", "/relative", "https:///path"])
def test_bad_urls_are_refused(url: str):
    with pytest.raises(StepError, match="must be an absolute http:// or https:// URL with a host"):
        http_request("GET", url)


def test_a_body_that_is_not_json_is_refused():
    with pytest.raises(StepError, match="the json body cannot be sent as JSON"):
        http_request("POST", "http://127.0.0.1/x", json={"when": object()})


def test_bad_timeout_and_headers_are_refused():
    with pytest.raises(StepError, match="timeout must be a positive number"):
        http_request("GET", "http://127.0.0.1/x", timeout=0)
    with pytest.raises(StepError, match="must map a string to a string"):
        http_request("GET", "http://127.0.0.1/x", headers={"X-N": 3})  # type: ignore[dict-item]


def test_max_body_refuses_huge_responses(http_server: HttpTestServer):
    http_server.route("GET", "/big", body=b"x" * 100_000)
    with pytest.raises(HttpStepError, match="larger than max_body=1000 bytes") as info:
        http_request("GET", http_server.url + "/big", max_body=1000)
    assert info.value.status == 200


# -- secrets ----------------------------------------------------------------------------

SECRET = "s3cr3t-t0ken"


def mask(text: str) -> str:
    return text.replace(SECRET, "***")


def test_mask_applies_to_url_body_and_output(http_server: HttpTestServer):
    http_server.route("GET", "/fail", status=401, body=f"bad token {SECRET}")
    with pytest.raises(HttpStepError) as info:
        http_request("GET", f"{http_server.url}/fail?auth_token={SECRET}", mask=mask)
    assert SECRET not in str(info.value) and SECRET not in info.value.body_excerpt
    assert "bad token ***" in str(info.value)
    assert "auth_token=***" in str(info.value)

    http_server.route("GET", "/ok", json={"echo": SECRET, SECRET: [SECRET]})
    assert http_request("GET", http_server.url + "/ok", mask=mask) == {"echo": "***", "***": ["***"]}
    http_server.route("GET", "/text", body=f"x {SECRET}", content_type="text/plain")
    assert http_request("GET", http_server.url + "/text", mask=mask) == "x ***"


def test_passwords_and_secret_query_values_never_show_in_urls():
    url = f"http://user:pw-{SECRET}@127.0.0.1:{closed_port()}/x?token=abc&page=2"
    with pytest.raises(HttpStepError) as info:
        http_request("GET", url)  # no mask: redaction alone
    assert SECRET not in str(info.value)
    assert "user:***@127.0.0.1" in str(info.value)
    assert "token=***&page=2" in str(info.value)
    assert shown_url("https://h/p?q=1") == "https://h/p?q=1"
