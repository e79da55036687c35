"""Webhook triggers against the real server on 127.0.0.1: real HTTP requests, real runs."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

import kernelflow as kf
from kernelflow.exceptions import DefinitionError, InputError, KernelflowError, OptionError
from kernelflow.expressions import ExpressionError
from kernelflow.webhooks import WebhookRefused, WebhookServer, WebhookTrigger, parse_rate, sign

SECRET = "7f3c9a1e5b2d8c4f6a0e1b3d5c7f9a2e"  # 32 characters
OTHER_SECRET = "0123456789abcdef0123456789abcdef"


class Firing:
    """A ``fire`` callback that starts a real kernelflow run with the body as its inputs."""

    def __init__(self) -> None:
        def handle(action: str, number: int = 0) -> dict[str, Any]:
            return {"action": action, "number": number}

        self.workflow = kf.workflow("hooked", [handle])
        self.runs: list[Any] = []
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.lock = threading.Lock()

    def __call__(self, name: str, payload: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            self.calls.append((name, payload))
        run = self.workflow.start(**payload)
        with self.lock:
            self.runs.append(run)
        return {"run_id": run.run_id}


@pytest.fixture
def firing() -> Firing:
    return Firing()


@pytest.fixture
def serve(firing: Firing) -> Iterator[Any]:
    """``serve(*triggers, **server_options)`` starts a real server; all are stopped after the test."""
    servers: list[WebhookServer] = []

    def start(*triggers: WebhookTrigger, fire: Any = None, **options: Any) -> WebhookServer:
        server = WebhookServer({t.name: t for t in triggers}, fire or firing, **options).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def post(
    server: WebhookServer,
    name: str,
    body: Any,
    *,
    secret: str | None = SECRET,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    sent = {"Content-Type": "application/json"}
    if secret is not None:
        sent["X-Kernelflow-Signature"] = sign(secret, raw)
    sent.update(headers or {})
    return httpx.post(f"{server.url}/hooks/{name}", content=raw, headers=sent, timeout=30)


def healthy(server: WebhookServer) -> bool:
    response = httpx.get(f"{server.url}/healthz", timeout=10)
    return response.status_code == 200 and response.json() == {"ok": True}


def raw_exchange(server: WebhookServer, data: bytes, *, shut: bool = False, wait: float = 10.0) -> bytes:
    """Send bytes on a plain socket and return everything the server answers until it closes."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=wait) as sock:
        sock.sendall(data)
        if shut:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def status_of(raw: bytes) -> int:
    assert raw.startswith(b"HTTP/1."), raw[:200]
    return int(raw.split(b" ", 2)[1])


# --------------------------------------------------------------------------- signing


def test_sign_matches_githubs_published_example():
    # From GitHub's "Validating webhook deliveries" docs.
    assert sign("It's a Secret to Everybody", b"Hello, World!") == (
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    )


def test_sign_with_a_timestamp_signs_timestamp_dot_body():
    expected = hmac.new(SECRET.encode(), b"1700000000.{}", hashlib.sha256).hexdigest()
    assert sign(SECRET, b"{}", timestamp=1700000000) == f"sha256={expected}"


# --------------------------------------------------------------------------- firing real runs


def test_a_signed_post_starts_a_run_with_the_payload(serve, firing):
    server = serve(WebhookTrigger("github-push", SECRET))
    response = post(server, "github-push", {"action": "opened", "number": 7})

    assert response.status_code == 202, response.text
    body = response.json()
    assert body["outcome"] == "fired" and body["trigger"] == "github-push"
    assert firing.calls == [("github-push", {"action": "opened", "number": 7})]
    run = firing.runs[0].wait(30)
    assert body["run_id"] == run.run_id
    assert run.output == {"action": "opened", "number": 7}
    stored = kf.sql("SELECT status FROM runs WHERE run_id = ?", [run.run_id])
    assert stored["status"].to_list() == ["succeeded"]


def test_githubs_signature_header_is_accepted(serve, firing):
    server = serve(WebhookTrigger("gh", SECRET))
    raw = b'{"action": "closed"}'
    response = post(server, "gh", raw, secret=None, headers={"X-Hub-Signature-256": sign(SECRET, raw)})
    assert response.status_code == 202, response.text
    assert firing.runs[0].wait(30).output == {"action": "closed", "number": 0}


def test_upper_case_hex_in_the_signature_is_accepted(serve, firing):
    server = serve(WebhookTrigger("gh", SECRET))
    raw = b'{"action": "x"}'
    response = post(server, "gh", raw, secret=None, headers={"X-Kernelflow-Signature": "sha256=" + sign(SECRET, raw)[7:].upper()})
    assert response.status_code == 202, response.text


def test_triggers_are_read_on_every_request(firing):
    triggers: dict[str, WebhookTrigger] = {}
    with WebhookServer(lambda: triggers, firing) as server:
        assert post(server, "late", {"action": "a"}).status_code == 404
        triggers["late"] = WebhookTrigger("late", SECRET)
        assert post(server, "late", {"action": "a"}).status_code == 202
        del triggers["late"]
        assert post(server, "late", {"action": "a"}).status_code == 404
    assert len(firing.calls) == 1


def test_a_body_that_does_not_fit_the_workflow_is_422_and_starts_nothing(serve, firing):
    server = serve(WebhookTrigger("hook", SECRET))
    response = post(server, "hook", {"action": "opened", "colour": "red"})
    assert response.status_code == 422
    assert "workflow 'hooked' has no input 'colour'" in response.json()["error"]
    assert firing.runs == []


def test_kernelflow_errors_from_fire_are_409_and_others_500_without_internals(serve):
    def refuse(name: str, payload: dict) -> dict:
        raise KernelflowError("schedule 'hook' is paused; resume it with kernelflow scheduler resume hook")

    def crash(name: str, payload: dict) -> dict:
        raise RuntimeError("secret internal detail /srv/app.py line 12")

    refusing = serve(WebhookTrigger("hook", SECRET), fire=refuse)
    response = post(refusing, "hook", {"action": "a"})
    assert response.status_code == 409
    assert response.json()["error"] == (
        "webhook trigger 'hook': schedule 'hook' is paused; resume it with kernelflow scheduler resume hook"
    )

    crashing = serve(WebhookTrigger("hook", SECRET), fire=crash)
    response = post(crashing, "hook", {"action": "a"})
    assert response.status_code == 500
    assert "internal detail" not in response.text and "Traceback" not in response.text
    assert response.json()["error"] == "webhook trigger 'hook': starting the run failed; the server's log has the details"
    assert healthy(crashing)


# --------------------------------------------------------------------------- signatures


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"X-Kernelflow-Signature": sign(OTHER_SECRET, b'{"action": "opened"}')}, id="wrong-secret"),
        pytest.param({"X-Kernelflow-Signature": sign(SECRET, b'{"action": "closed"}')}, id="other-body"),
        pytest.param({"X-Hub-Signature-256": sign(OTHER_SECRET, b'{"action": "opened"}')}, id="github-wrong-secret"),
        pytest.param({"X-Kernelflow-Signature": "sha256=" + "0" * 64}, id="zeros"),
        pytest.param({"X-Kernelflow-Signature": "sha1=" + "0" * 40}, id="sha1"),
        pytest.param({"X-Kernelflow-Signature": sign(SECRET, b'{"action": "opened"}')[7:]}, id="no-prefix"),
    ],
)
def test_a_bad_signature_is_401_and_fires_nothing(serve, firing, headers):
    server = serve(WebhookTrigger("hook", SECRET))
    response = post(server, "hook", b'{"action": "opened"}', secret=None, headers=headers)
    assert response.status_code == 401
    assert "signature" in response.json()["error"].lower()
    assert firing.calls == []
    assert server.stats()["hook"] == {"bad_signature": 1}


def test_a_missing_signature_is_401_saying_how_to_sign(serve, firing):
    server = serve(WebhookTrigger("hook", SECRET))
    response = post(server, "hook", {"action": "opened"}, secret=None)
    assert response.status_code == 401
    error = response.json()["error"]
    assert error.startswith("missing X-Kernelflow-Signature header; sign the body with HMAC-SHA256")
    assert "sha256=<hex digest>" in error
    assert firing.calls == []


def test_the_signature_is_checked_before_the_json_is_parsed(serve, firing):
    server = serve(WebhookTrigger("hook", SECRET))
    response = post(server, "hook", b"not json", secret=OTHER_SECRET)
    assert response.status_code == 401  # not 400: an unsigned body is not even looked at


def test_a_signed_timestamp_is_accepted_when_fresh_and_refused_when_stale(serve, firing):
    server = serve(WebhookTrigger("hook", SECRET))
    raw = b'{"action": "opened"}'
    now = int(time.time())

    fresh = post(server, "hook", raw, secret=None, headers={
        "X-Kernelflow-Timestamp": str(now), "X-Kernelflow-Signature": sign(SECRET, raw, timestamp=now),
    })  # fmt: skip
    assert fresh.status_code == 202, fresh.text

    stale = post(server, "hook", raw, secret=None, headers={
        "X-Kernelflow-Timestamp": str(now - 3600), "X-Kernelflow-Signature": sign(SECRET, raw, timestamp=now - 3600),
    })  # fmt: skip
    assert stale.status_code == 401
    assert re.match(r"X-Kernelflow-Timestamp is 36\d\d s old; at most 300 s is accepted", stale.json()["error"])

    # A timestamp added to a request signed without it does not verify.
    added = post(server, "hook", raw, headers={"X-Kernelflow-Timestamp": str(now)})
    assert added.status_code == 401
    assert len(firing.calls) == 1


# --------------------------------------------------------------------------- bodies


def test_a_body_over_the_limit_is_413_fires_nothing_and_the_server_stays_up(serve, firing):
    server = serve(WebhookTrigger("hook", SECRET), max_body=1000)
    big = json.dumps({"action": "x" * 5000}).encode()
    response = post(server, "hook", big)
    assert response.status_code == 413
    assert response.json()["error"] == f"the body is {len(big)} bytes; webhook trigger 'hook' accepts at most 1000"
    assert firing.calls == []
    assert healthy(server)
    assert post(server, "hook", {"action": "small"}).status_code == 202


def test_a_huge_content_length_is_refused_without_reading_the_body(serve, firing):
    server = serve(WebhookTrigger("hook", SECRET), max_body=1000)
    started = time.monotonic()
    answer = raw_exchange(
        server,
        b"POST /hooks/hook HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000000\r\n"
        b"X-Kernelflow-Signature: " + sign(SECRET, b"{}").encode() + b"\r\n\r\n{}",
        shut=True,
    )
    assert status_of(answer) == 413
    assert time.monotonic() - started < 5  # it did not wait for a terabyte
    assert firing.calls == []
    assert healthy(server)


def test_expect_100_continue_gets_the_413_before_sending_the_body(serve):
    server = serve(WebhookTrigger("hook", SECRET), max_body=1000)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(
            b"POST /hooks/hook HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n"
            b"X-Kernelflow-Signature: sha256=" + b"0" * 64 + b"\r\n\r\n"
        )
        answer = sock.recv(65536)
    assert status_of(answer) == 413


def test_expect_100_continue_gets_a_continue_for_an_acceptable_request(serve, firing):
    server = serve(WebhookTrigger("hook", SECRET))
    raw = b'{"action": "opened"}'
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(
            b"POST /hooks/hook HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nExpect: 100-continue\r\n"
            b"X-Kernelflow-Signature: %s\r\n\r\n" % (len(raw), sign(SECRET, raw).encode())
        )
        assert sock.recv(65536).startswith(b"HTTP/1.1 100")
        sock.sendall(raw)
        answer = b"".join(iter(lambda: sock.recv(65536), b""))
    assert status_of(answer) == 202
    assert firing.calls == [("hook", {"action": "opened"})]


def test_a_missing_content_length_is_411(serve, firing):
    server = serve(WebhookTrigger("hook", SECRET))
    answer = raw_exchange(server, b"POST /hooks/hook HTTP/1.1\r\nHost: x\r\n\r\n", shut=True)
    assert status_of(answer) == 411
    assert b"Content-Length header is missing" in answer
    chunked = raw_exchange(
        server, b"POST /hooks/hook HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", shut=True
    )
    assert status_of(chunked) == 411
    assert firing.calls == []


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"{not json", "the body is not valid JSON: Expecting property name enclosed in double quotes: line 1 column 2"),
        (b"[1, 2]", "the body must be a JSON object, got a JSON array"),
        (b'"text"', "the body must be a JSON object, got a JSON string"),
        (b'{"n": NaN}', "the body is not valid JSON: NaN is not valid JSON"),
        (b"\xff\xfe", "the body is not valid JSON"),
        (b"[" * 100_000, "the body is not valid JSON"),
    ],
    ids=["syntax", "array", "string", "nan", "bytes", "deep"],
)
def test_a_signed_body_that_is_not_a_json_object_is_400(serve, firing, raw, expected):
    server = serve(WebhookTrigger("hook", SECRET))
    response = post(server, "hook", raw)
    assert response.status_code == 400
    assert response.json()["error"].startswith(expected)
    assert firing.calls == []


def test_a_slow_client_is_timed_out_and_the_server_stays_up(serve, firing):
    server = serve(WebhookTrigger("hook", SECRET), timeout=0.5)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(
            b"POST /hooks/hook HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
            b"X-Kernelflow-Signature: sha256=" + b"0" * 64 + b"\r\n\r\n{\"a\""
        )
        answer = sock.recv(65536)  # no more is sent: the server must give up, not wait forever
    assert status_of(answer) == 408
    assert firing.calls == []
    assert healthy(server)


@pytest.mark.parametrize(
    "garbage",
    [b"\x00\x01\x02 garbage\r\n\r\n", b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", b"POST\r\n\r\n", b""],
    ids=["binary", "long-line", "no-path", "empty"],
)
def test_garbage_on_the_socket_does_not_hurt_the_server(serve, garbage):
    server = serve(WebhookTrigger("hook", SECRET))
    answer = raw_exchange(server, garbage, shut=True)
    assert b"Traceback" not in answer
    if answer.startswith(b"HTTP/"):
        assert 400 <= status_of(answer) < 500
    elif answer:  # a request line without a version is answered the HTTP/0.9 way: the body alone
        assert "error" in json.loads(answer)
    assert healthy(server)


# --------------------------------------------------------------------------- routing


def test_routes_and_methods(serve, firing):
    server = serve(WebhookTrigger("hook", SECRET), WebhookTrigger("deploy-prod", SECRET))
    assert healthy(server)

    unknown = post(server, "nope", {"action": "a"})
    assert unknown.status_code == 404
    assert unknown.json()["error"] == "no webhook trigger named 'nope'"
    assert "deploy-prod" not in unknown.text  # the names that exist are not revealed

    assert httpx.get(f"{server.url}/elsewhere").status_code == 404
    wrong = httpx.get(f"{server.url}/hooks/hook")
    assert wrong.status_code == 405 and wrong.headers["Allow"] == "POST"
    assert httpx.put(f"{server.url}/hooks/hook", content=b"{}").status_code == 405
    assert httpx.delete(f"{server.url}/hooks/hook").status_code == 405
    assert httpx.post(f"{server.url}/healthz", content=b"{}").status_code == 405
    assert firing.calls == []


# --------------------------------------------------------------------------- filters


def test_the_filter_decides_whether_a_run_starts(serve, firing):
    server = serve(WebhookTrigger("pr", SECRET, filter="inputs.action == 'opened' && inputs.number > 2"))

    skipped = post(server, "pr", {"action": "closed", "number": 5})
    assert skipped.status_code == 202
    assert skipped.json() == {"trigger": "pr", "outcome": "filtered"}
    assert post(server, "pr", {"action": "opened", "number": 1}).json()["outcome"] == "filtered"
    assert firing.calls == []

    fired = post(server, "pr", {"action": "opened", "number": 5})
    assert fired.status_code == 202 and fired.json()["outcome"] == "fired"
    assert [payload for _, payload in firing.calls] == [{"action": "opened", "number": 5}]
    assert firing.runs[0].wait(30).output == {"action": "opened", "number": 5}
    assert server.stats()["pr"] == {"filtered": 2, "fired": 1}


def test_a_filter_that_cannot_be_evaluated_is_422(serve, firing):
    server = serve(WebhookTrigger("pr", SECRET, filter="inputs.number > 2"))
    missing = post(server, "pr", {"action": "opened"})
    assert missing.status_code == 422
    assert missing.json()["error"] == (
        "webhook trigger 'pr': the filter could not be evaluated: "
        "{{inputs.number}}: the body has no field 'number' (fields: action)"
    )
    wrong_type = post(server, "pr", {"action": "opened", "number": "five"})
    assert wrong_type.status_code == 422
    assert "cannot compare str 'five' with int 2 using >" in wrong_type.json()["error"]
    assert firing.calls == []


# --------------------------------------------------------------------------- rate limits


def test_a_burst_over_the_rate_gets_429_with_retry_after(serve, firing):
    # 3 per minute refills one every 20 s: far slower than this burst takes.
    server = serve(WebhookTrigger("hook", SECRET, rate="3/min"))
    responses = [post(server, "hook", {"action": "a", "number": i}) for i in range(8)]
    codes = [r.status_code for r in responses]
    assert codes.count(202) == 3 and codes.count(429) == 5, codes
    assert codes[:3] == [202, 202, 202]
    limited = responses[-1]
    assert int(limited.headers["Retry-After"]) >= 1
    assert limited.json()["error"].startswith("webhook trigger 'hook' allows 3/min; try again in ")
    assert len(firing.calls) == 3


def test_a_concurrent_burst_fires_exactly_the_rate(serve, firing):
    server = serve(WebhookTrigger("hook", SECRET, rate="4/min"))
    with ThreadPoolExecutor(max_workers=12) as pool:
        codes = list(pool.map(lambda i: post(server, "hook", {"action": "a", "number": i}).status_code, range(12)))
    assert sorted(codes) == [202] * 4 + [429] * 8
    assert len(firing.calls) == 4


def test_the_rate_limit_recovers(serve, firing):
    server = serve(WebhookTrigger("hook", SECRET, rate="2/s"))
    deadline = time.monotonic() + 10
    saw_429 = False
    while time.monotonic() < deadline and not saw_429:
        saw_429 = post(server, "hook", {"action": "a"}).status_code == 429
    assert saw_429
    fired_before = len(firing.calls)
    recovered = False
    while time.monotonic() < deadline and not recovered:
        time.sleep(0.1)
        recovered = post(server, "hook", {"action": "b"}).status_code == 202
    assert recovered
    assert len(firing.calls) == fired_before + 1


def test_filtered_and_unsigned_requests_do_not_use_up_the_rate(serve, firing):
    server = serve(WebhookTrigger("hook", SECRET, filter="inputs.action == 'go'", rate="1/h"))
    for _ in range(5):
        assert post(server, "hook", {"action": "wait"}).json()["outcome"] == "filtered"
        assert post(server, "hook", {"action": "go"}, secret=OTHER_SECRET).status_code == 401
    assert post(server, "hook", {"action": "go"}).status_code == 202
    assert post(server, "hook", {"action": "go"}).status_code == 429


# --------------------------------------------------------------------------- concurrency


def test_concurrent_signed_requests_each_start_their_own_run(serve, firing):
    server = serve(WebhookTrigger("hook", SECRET, rate="1000/s"))
    with ThreadPoolExecutor(max_workers=16) as pool:
        responses = list(pool.map(lambda i: post(server, "hook", {"action": "a", "number": i}), range(32)))
    assert [r.status_code for r in responses] == [202] * 32
    run_ids = {r.json()["run_id"] for r in responses}
    assert len(run_ids) == 32
    outputs = sorted(run.wait(60).output["number"] for run in firing.runs)
    assert outputs == list(range(32))
    stored = kf.sql("SELECT count(*) AS n FROM runs WHERE workflow = 'hooked' AND status = 'succeeded'")
    assert stored["n"].to_list() == [32]


# --------------------------------------------------------------------------- server options


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10", "example.org", "::"])
def test_a_non_loopback_host_is_refused(firing, host):
    with pytest.raises(OptionError) as caught:
        WebhookServer({}, firing, host=host)
    assert f"refusing to listen on {host!r}, which is not a loopback address" in str(caught.value)
    assert "TLS reverse proxy" in str(caught.value) and "allow_remote=True" in str(caught.value)


def test_allow_remote_permits_other_hosts_and_loopback_needs_nothing(firing):
    WebhookServer({}, firing, host="0.0.0.0", allow_remote=True)  # constructing binds nothing
    with WebhookServer({}, firing, host="localhost") as server:
        assert healthy(server)
        assert server.url == f"http://localhost:{server.port}"


def test_the_server_is_off_until_started_and_stop_closes_the_port(firing):
    server = WebhookServer({"hook": WebhookTrigger("hook", SECRET)}, firing)
    assert not server.running
    with pytest.raises(KernelflowError, match="not running; call start"):
        _ = server.port
    server.start()
    port = server.port
    assert healthy(server)
    server.stop()
    assert not server.running
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
    server.stop()  # twice is fine


def test_a_taken_port_is_a_clear_error(serve, firing):
    server = serve(WebhookTrigger("hook", SECRET))
    with pytest.raises(KernelflowError, match=f"cannot listen on 127.0.0.1:{server.port}"):
        WebhookServer({}, firing, port=server.port).start()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"port": 70000}, "port must be 0 (any free port) to 65535"),
        ({"max_body": 0}, "max_body must be a positive number of bytes"),
        ({"timeout": 0}, "timeout must be a positive number of seconds"),
    ],
)
def test_bad_server_options(firing, options, message):
    with pytest.raises(OptionError, match=re.escape(message)):
        WebhookServer({}, firing, **options)


# --------------------------------------------------------------------------- triggers from a spec


def test_from_spec_reads_the_secret_from_the_environment():
    trigger = WebhookTrigger.from_spec(
        "gh", {"secret_env": "GH_SECRET", "filter": "inputs.action == 'opened'", "rate": "10/min"},
        environ={"GH_SECRET": SECRET},
    )  # fmt: skip
    assert (trigger.secret, trigger.filter, trigger.rate) == (SECRET, "inputs.action == 'opened'", "10/min")
    assert (trigger.rate_count, trigger.rate_period) == (10, 60.0)
    assert SECRET not in repr(trigger)
    assert WebhookTrigger.from_spec("gh", {"secret_env": "GH_SECRET"}, environ={"GH_SECRET": SECRET}).rate == "60/min"


@pytest.mark.parametrize(
    ("spec", "environ", "expected"),
    [
        (
            {"filter": "inputs.a == 1"},
            {},
            "webhook trigger 'gh': secret_env is missing: a webhook needs a secret to check signatures\n"
            "  fix: put the secret in an environment variable and name it: secret_env: MY_HOOK_SECRET "
            "(generate one with: openssl rand -hex 32)",
        ),
        (
            {"secret_env": "GH_SECRET"},
            {},
            "webhook trigger 'gh': environment variable GH_SECRET (secret_env) is not set\n"
            "  fix: set it where the scheduler runs: export GH_SECRET=$(openssl rand -hex 32), "
            "and give the sender the same value",
        ),
        (
            {"secret_env": "GH_SECRET"},
            {"GH_SECRET": ""},
            "webhook trigger 'gh': environment variable GH_SECRET (secret_env) is empty\n",
        ),
        (
            {"secret_env": "GH_SECRET"},
            {"GH_SECRET": "short"},
            "webhook trigger 'gh': the secret in GH_SECRET has 5 characters; at least 16 are required\n"
            "  fix: use a longer random secret: export GH_SECRET=$(openssl rand -hex 32)",
        ),
        (
            {"secret_env": "GH_SECRET", "rate": "10/fortnight"},
            {"GH_SECRET": SECRET},
            "webhook trigger 'gh': rate has an unknown unit 'fortnight' in '10/fortnight' (the units are s, min and h)\n"
            "  fix: write the rate as COUNT/UNIT, like '10/s', '60/min' or '500/h'",
        ),
        (
            {"secret_env": "GH_SECRET", "rate": "fast"},
            {"GH_SECRET": SECRET},
            "webhook trigger 'gh': rate must look like '10/s', '60/min' or '500/h', got 'fast'\n",
        ),
        (
            {"secret_env": "GH_SECRET", "rate": 10},
            {"GH_SECRET": SECRET},
            "webhook trigger 'gh': rate must say its period, got the number 10\n",
        ),
        (
            {"secret_env": "GH_SECRET", "rate": "0/s"},
            {"GH_SECRET": SECRET},
            "webhook trigger 'gh': rate must allow at least one request, got '0/s'\n",
        ),
        (
            {"secret_env": "GH_SECRET", "filtre": "inputs.a == 1"},
            {"GH_SECRET": SECRET},
            "webhook trigger 'gh': unknown key 'filtre' (did you mean 'filter'?)\n"
            "  fix: the keys of webhook: are secret_env, filter, rate",
        ),
        (
            {"secret": "GH_SECRET"},
            {"GH_SECRET": SECRET},
            "webhook trigger 'gh': unknown key 'secret' (did you mean 'secret_env'?)\n",
        ),
        (
            ["secret_env", "GH_SECRET"],
            {},
            "webhook trigger 'gh': webhook must be a mapping, got list",
        ),
    ],
    ids=["no-secret-env", "unset", "empty", "short", "rate-unit", "rate-text", "rate-number", "rate-zero",
         "typo", "secret-key", "not-a-mapping"],
)  # fmt: skip
def test_from_spec_errors(spec, environ, expected):
    with pytest.raises(DefinitionError) as caught:
        WebhookTrigger.from_spec("gh", spec, environ=environ)
    assert str(caught.value).startswith(expected)


def test_from_spec_never_echoes_a_secret_pasted_into_secret_env():
    pasted = "s3cr3t-value with spaces!!"
    with pytest.raises(DefinitionError) as caught:
        WebhookTrigger.from_spec("gh", {"secret_env": pasted}, environ={})
    message = str(caught.value)
    assert pasted not in message
    assert message.startswith(
        "webhook trigger 'gh': secret_env must be the NAME of an environment variable (letters, digits, _), "
        f"got a text of {len(pasted)} characters"
    )


def test_from_spec_does_not_echo_a_secret_that_looks_like_a_variable_name():
    pasted = "a3f9c0d1e2b34f5a6b7c8d9e0f1a2b3c"  # openssl rand -hex 16: letters and digits, like a name
    with pytest.raises(DefinitionError) as caught:
        WebhookTrigger.from_spec("gh", {"secret_env": pasted}, environ={})
    assert pasted not in str(caught.value)
    assert "secret_env names no environment variable that is set (it is 32 characters" in str(caught.value)
    # ... while an unusual but set variable is simply used.
    assert WebhookTrigger.from_spec("gh", {"secret_env": pasted}, environ={pasted: SECRET}).secret == SECRET


def test_from_spec_reports_the_filters_own_syntax_error():
    with pytest.raises(ExpressionError) as caught:
        WebhookTrigger.from_spec("gh", {"secret_env": "S", "filter": "inputs.action = 'opened'"}, environ={"S": SECRET})
    assert isinstance(caught.value, DefinitionError)
    assert str(caught.value) == (
        "webhook trigger 'gh': filter: '=' is not an operator (did you mean '=='?) at column 15 "
        "of condition \"inputs.action = 'opened'\"\n  fix: use '=='"
    )
    assert caught.value.column == 15


def test_a_filter_on_payload_says_the_body_is_inputs():
    with pytest.raises(ExpressionError) as caught:
        WebhookTrigger("gh", SECRET, filter="payload.action == 'opened'")
    assert "unknown reference root 'payload'" in str(caught.value)
    assert caught.value.hint.startswith("in a webhook filter the JSON body is `inputs`: write inputs.action == 'opened'")


@pytest.mark.parametrize("name", ["", "a/b", "with space", None])
def test_a_trigger_name_must_fit_in_a_url_path(name):
    with pytest.raises(DefinitionError, match="webhook trigger name must be letters, digits"):
        WebhookTrigger(name, SECRET)


def test_a_short_secret_is_refused_without_showing_it():
    with pytest.raises(DefinitionError) as caught:
        WebhookTrigger("gh", "hunter2")
    assert "hunter2" not in str(caught.value)
    assert "at least 16 characters, got 7 characters" in str(caught.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1/s", (1, 1.0)), ("60/min", (60, 60.0)), ("500 / h", (500, 3600.0)), ("10/sec", (10, 1.0)), ("3/hours", (3, 3600.0)), ("2/Minutes", (2, 60.0))],
)
def test_parse_rate(text, expected):
    assert parse_rate(text) == expected


@pytest.mark.parametrize("text", ["", "10", "/min", "1.5/s", "-1/s", "10/fortnight", "10 per minute", None, True])
def test_parse_rate_refuses(text):
    with pytest.raises(ValueError, match="rate"):
        parse_rate(text)


def test_fire_gets_an_input_error_as_422_not_500(serve):
    def strict(name: str, payload: dict) -> dict:
        raise InputError("workflow 'hooked' needs input 'action'")

    server = serve(WebhookTrigger("hook", SECRET), fire=strict)
    response = post(server, "hook", {})
    assert response.status_code == 422
    assert response.json()["error"] == "webhook trigger 'hook': workflow 'hooked' needs input 'action'"


def test_fire_can_refuse_with_its_own_status_and_retry_after(serve):
    def stopping(name: str, payload: dict) -> dict:
        raise WebhookRefused("the scheduler is shutting down; send it again in a minute", status=503, retry_after=60)

    server = serve(WebhookTrigger("hook", SECRET), fire=stopping)
    response = post(server, "hook", {"action": "a"})
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "60"
    assert response.json()["error"] == "webhook trigger 'hook': the scheduler is shutting down; send it again in a minute"
    assert server.stats()["hook"] == {"refused": 1}
