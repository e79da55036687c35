"""Alert channels: the hook, the registry, settings checked at configuration,
and the built-in webhook, Slack and email channels against real servers on 127.0.0.1."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from email import message_from_bytes, policy
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from http_server import HttpTestServer, http_server_fixture  # noqa: F401 - the fixture
from kernelflow.widgets.alert import Alert

import kernelflow as kf
from kernelflow import alert_channels_api as api
from kernelflow import plugin_host
from kernelflow.alert_channels_api import (
    ChannelConfigError,
    ChannelSendError,
    ChannelSpec,
)
from kernelflow.exceptions import DefinitionError, PluginError

NOW = datetime(2025, 3, 4, 5, 6, 7, tzinfo=timezone.utc)


def make_alert(**changes: Any) -> Alert:
    fields: dict[str, Any] = {
        "workflow": "etl", "task": "load", "run_id": "r-123", "metric": "duration_s", "value": 42.1,
        "baseline": 12.0, "spread": 1.3, "score": 23.2, "rule": "duration", "severity": "warning",
        "message": "load took 3.5x its usual time", "raised_at": NOW,
        "history": [(NOW - timedelta(minutes=i), 12.0 + i % 2) for i in range(5, 0, -1)],
    }  # fmt: skip
    fields.update(changes)
    return Alert(**fields)


@pytest.fixture(autouse=True)
def no_channels_left() -> Iterator[None]:
    yield
    for name in api.channel_names():
        api.remove_channel(name)


# --- the hook and the registry ------------------------------------------------------------


def test_builtin_types_come_from_the_hook_through_an_entry_point():
    names = dict(plugin_host.get_plugin_manager().list_name_plugin())
    assert names["alert_channels"].__name__ == "kernelflow.plugins.alert_channels"
    types = api.channel_types()
    assert {"webhook", "slack", "email"} <= set(types)
    assert all(isinstance(spec, ChannelSpec) and spec.description for spec in types.values())


class Memory:
    """A third-party channel type that keeps what it is sent."""

    def __init__(self, *, label: str = "") -> None:
        if not isinstance(label, str):
            raise ChannelConfigError("alert channel type 'memory': label must be a string", hint="label='x'")
        self.label = label
        self.sent: list[Alert] = []

    def send(self, alert: Alert, *, timeout: float) -> None:
        self.sent.append(alert)


class MemoryPlugin:
    @kf.hookimpl
    def kernelflow_register_alert_channels(self):
        return [ChannelSpec("memory", Memory, "keeps alerts in a list")]


def test_a_plugin_adds_a_channel_type_and_settings_are_checked_for_it_too():
    plugin = MemoryPlugin()
    plugin_host.register(plugin, name="memory-channels")
    try:
        made = api.configure_channel("mine", "memory", label="x")
        assert api.channel("mine") is made and api.channel_names() == ["mine"]
        assert api.channel_type("mine") == "memory"
        with pytest.raises(ChannelConfigError, match=r"alert channel 'mine' \(memory\): unknown setting 'lable' \(did you mean 'label'\?\)"):
            api.configure_channel("mine", "memory", lable="x")
        with pytest.raises(ChannelConfigError, match="label must be a string"):
            api.configure_channel("mine", "memory", label=3)
        assert api.channel("mine") is made  # a failed reconfiguration keeps the old one
        # Two plugins claiming one type: an error naming both.
        twin = MemoryPlugin()
        plugin_host.register(twin, name="memory-twin")
        try:
            with pytest.raises(PluginError, match="'memory' is registered by both 'memory-channels' and 'memory-twin'"):
                api.channel_types()
        finally:
            plugin_host.unregister(twin)
    finally:
        plugin_host.unregister(plugin)
    assert "memory" not in api.channel_types()


def test_unknown_type_lists_the_known_ones_and_unknown_channel_lists_the_configured():
    with pytest.raises(ChannelConfigError) as info:
        api.configure_channel("ops", "webhok", url="https://x.example")
    text = str(info.value)
    assert "no channel type 'webhok' (did you mean 'webhook'?)" in text
    listed = text.split("registered types: ")[1].split(";")[0].split(", ")
    assert listed == sorted(listed) and {"email", "slack", "webhook"} <= set(listed)  # plugins may add more
    assert isinstance(info.value, DefinitionError)
    api.configure_channel("ops", "webhook", url="https://x.example/hook")
    with pytest.raises(ChannelConfigError, match=r"no alert channel named 'oops' \(did you mean 'ops'\?\)\n  fix: configured: ops"):
        api.channel("oops")
    with pytest.raises(ChannelConfigError, match="alert channel name must be"):
        api.configure_channel("", "webhook", url="https://x.example")


# --- settings checked at configuration ------------------------------------------------------


@pytest.mark.parametrize(
    ("type_", "settings", "message"),
    [
        ("webhook", {"url": "htp://x"}, "url 'htp://x' is not a usable URL: the scheme is 'htp'; only http and https"),
        ("webhook", {"url": "http//x"}, "url 'http//x' is not a usable URL: it has no scheme"),
        ("webhook", {"url": "ftp://x.example/a"}, "the scheme is 'ftp'"),
        ("webhook", {"url": "http://"}, "it has no host"),
        ("webhook", {"url": "http://x.example:99999/"}, "is not a usable URL: Port out of range"),
        ("webhook", {"url": "http://a b.example/"}, "it contains whitespace"),
        ("webhook", {"url": ""}, "url must be a non-empty string"),
        ("webhook", {"url": 42}, "url must be a non-empty string, got 42"),
        ("webhook", {}, "the setting 'url' is required"),
        ("webhook", {"url": "https://x.example", "timeout_s": 0}, "timeout_s must be a number of seconds above 0"),
        ("webhook", {"url": "https://x.example", "timeout_s": -1}, "timeout_s must be a number of seconds above 0"),
        ("webhook", {"url": "https://x.example", "timeout_s": float("nan")}, "timeout_s must be a number"),
        ("webhook", {"url": "https://x.example", "timeout_s": "5"}, "timeout_s must be a number"),
        ("webhook", {"url": "https://x.example", "tiemout_s": 5}, "unknown setting 'tiemout_s' (did you mean 'timeout_s'?)"),
        ("webhook", {"url": "https://x.example", "headers": ["a"]}, "headers must be a mapping"),
        ("webhook", {"url": "https://x.example", "headers": {"Bad Name": "v"}}, "is not a valid HTTP header name"),
        ("webhook", {"url": "https://x.example", "headers": {"X-A": "v\r\nInjected: 1"}}, "must not contain control characters"),
        ("webhook", {"url": "https://x.example/{{inputs.x}}"}, "has a template that is not a secret reference"),
        ("slack", {"url": "hooks.slack.com/services/T/B/x"}, "it has no scheme"),
        ("slack", {"url": "https://hooks.slack.com/x", "channel": "#ops"}, "unknown setting 'channel'"),
        ("email", {"sender": "a@example.com", "to": ["b@example.com"]}, "the setting 'host' is required"),
        ("email", {"host": "smtp.example.com", "sender": "a@example.com"}, "the setting 'to' is required"),
        ("email", {"host": "smtp.example.com", "sender": "a@example.com", "to": []}, "to must list at least one recipient"),
        ("email", {"host": "smtp.example.com", "sender": "a@example.com", "to": ["nobody"]}, "to[0] 'nobody' is not an email address"),
        ("email", {"host": "smtp.example.com", "sender": "me", "to": ["b@example.com"]}, "sender 'me' is not an email address"),
        ("email", {"host": "smtp://smtp.example.com", "sender": "a@example.com", "to": "b@example.com"}, "host must be the SMTP server's host name"),
        ("email", {"host": "smtp.example.com", "port": 0, "sender": "a@example.com", "to": "b@example.com"}, "port must be a whole number from 1 to 65535, got 0"),
        ("email", {"host": "smtp.example.com", "port": 70000, "sender": "a@example.com", "to": "b@example.com"}, "port must be a whole number"),
        ("email", {"host": "smtp.example.com", "port": "25", "sender": "a@example.com", "to": "b@example.com"}, "port must be a whole number"),
        ("email", {"host": "smtp.example.com", "sender": "a@example.com", "to": "b@example.com", "username": "u"}, "give username and password together"),
        ("email", {"host": "smtp.example.com", "sender": "a@example.com", "to": "b@example.com", "starttls": "yes"}, "starttls must be True or False"),
        ("email", {"host": "smtp.example.com", "sender": "a@example.com", "to": "b@example.com", "subject_prefix": "a\nb"}, "subject_prefix must be one line"),
        ("email", {"host": "smtp.example.com", "sender": "a@example.com", "to": "b@example.com", "timeout_s": 0}, "timeout_s must be a number of seconds above 0"),
    ],
)
def test_bad_settings_are_rejected_at_configuration_naming_channel_and_setting(type_, settings, message):
    with pytest.raises(ChannelConfigError) as info:
        api.configure_channel("ops", type_, **settings)
    text = str(info.value)
    assert text.startswith(f"alert channel 'ops' ({type_}): "), text
    assert message in text, text
    assert "\n  fix: " in text, "every message says how to fix it"
    assert "ops" not in api.channel_names()


def test_good_settings_are_accepted():
    api.configure_channel("hook", "webhook", url="https://hooks.example.com/a?b=1", headers={"X-Key": "{{secrets.K}}"}, timeout_s=2)
    api.configure_channel("secret-url", "slack", url="{{secrets.SLACK_URL}}")
    api.configure_channel("mail", "email", host="smtp.example.com", sender="Alerts <a@example.com>", to="b@example.com",
                          starttls=True, username="u", password="{{secrets.SMTP_PW}}")  # fmt: skip
    assert api.channel_names() == ["hook", "mail", "secret-url"]
    assert api.channel("mail").port == 587  # the submission port with starttls


# --- webhook and Slack against a real HTTP server ----------------------------------------------


def test_webhook_posts_the_alert_as_json_with_a_text_summary(http_server: HttpTestServer, monkeypatch):
    monkeypatch.setenv("HOOK_TOKEN", "tok-5ecret")
    http_server.route("POST", "/hook", status=204)
    ch = api.configure_channel("ops", "webhook", url=http_server.url_for("/hook?src=kf"),
                               headers={"Authorization": "Bearer {{secrets.HOOK_TOKEN}}"})  # fmt: skip
    alert = make_alert()
    ch.send(alert, timeout=2, suppressed=3)
    (req,) = http_server.requests
    assert req.method == "POST" and req.path == "/hook?src=kf"
    assert req.headers["content-type"] == "application/json"
    assert req.headers["authorization"] == "Bearer tok-5ecret"
    body = req.json
    assert {k: body[k] for k in alert.to_dict()} == alert.to_dict()
    assert Alert.from_dict({k: body[k] for k in alert.to_dict()}) == alert
    assert body["suppressed"] == 3
    assert body["text"] == (
        "[WARNING] etl.load duration_s: 42.1 s — baseline 12.0 s ± 1.3, z = 23.2 — load took 3.5x its usual time "
        "(run r-123, rule duration) [+3 similar alerts held back]"
    )


def test_webhook_failures_raise_with_whether_to_retry_and_secrets_masked(http_server: HttpTestServer, monkeypatch):
    monkeypatch.setenv("HOOK_TOKEN", "tok-5ecret")
    http_server.route("POST", "/down", status=503, body="overloaded; token tok-5ecret")
    http_server.route("POST", "/gone", status=404, body="no such hook")
    http_server.route("POST", "/slow", status=200, delay=3)
    headers = {"X-Token": "{{secrets.HOOK_TOKEN}}"}
    down = api.configure_channel("down", "webhook", url=http_server.url_for("/down"), headers=headers)
    with pytest.raises(ChannelSendError) as info:
        down.send(make_alert(), timeout=2)
    assert info.value.retry is True
    assert str(info.value) == f"{http_server.url} answered HTTP 503: overloaded; token ***"
    gone = api.configure_channel("gone", "webhook", url=http_server.url_for("/gone"))
    with pytest.raises(ChannelSendError, match="answered HTTP 404: no such hook") as info:
        gone.send(make_alert(), timeout=2)
    assert info.value.retry is False  # a 4xx will not get better
    slow = api.configure_channel("slow", "webhook", url=http_server.url_for("/slow"))
    with pytest.raises(ChannelSendError, match=r"did not answer within 0.2 s") as info:
        slow.send(make_alert(), timeout=0.2)
    assert info.value.retry is True
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    closed = api.configure_channel("closed", "webhook", url=f"http://127.0.0.1:{port}/x")
    with pytest.raises(ChannelSendError, match=f"could not reach http://127.0.0.1:{port}: ConnectError"):
        closed.send(make_alert(), timeout=1)


def test_a_missing_secret_fails_the_send_without_retry(http_server: HttpTestServer, monkeypatch):
    monkeypatch.delenv("NO_SUCH_HOOK_URL", raising=False)
    ch = api.configure_channel("ops", "slack", url="{{secrets.NO_SUCH_HOOK_URL}}")
    with pytest.raises(ChannelSendError, match="secret 'NO_SUCH_HOOK_URL' was not found") as info:
        ch.send(make_alert(), timeout=1)
    assert info.value.retry is False
    monkeypatch.setenv("NO_SUCH_HOOK_URL", "htp://typo")
    with pytest.raises(ChannelSendError, match="not a usable URL: the scheme is 'htp'"):
        ch.send(make_alert(), timeout=1)
    assert http_server.requests == []


def test_slack_payload_has_text_and_mrkdwn_blocks(http_server: HttpTestServer, monkeypatch):
    http_server.route("POST", "/services/T0/B0/xyz", status=200, body="ok")
    monkeypatch.setenv("SLACK_URL", http_server.url_for("/services/T0/B0/xyz"))
    ch = api.configure_channel("team", "slack", url="{{secrets.SLACK_URL}}")
    alert = make_alert(severity="critical", message="p99 <1s> & rising", task=None)
    ch.send(alert, timeout=2)
    body = http_server.requests[0].json
    assert set(body) == {"text", "blocks"}
    assert body["text"].startswith("[CRITICAL] etl duration_s: 42.1 s — baseline 12.0 s ± 1.3, z = 23.2")
    section, context = body["blocks"]
    assert section["type"] == "section" and section["text"]["type"] == "mrkdwn"
    text = section["text"]["text"]
    assert text.splitlines()[0] == ":rotating_light: *CRITICAL* `etl` · duration_s"
    assert "*42.1 s — baseline 12.0 s ± 1.3, z = 23.2*" in text
    assert "p99 &lt;1s&gt; &amp; rising" in text  # Slack's escapes
    assert context["type"] == "context"
    assert context["elements"][0] == {"type": "mrkdwn", "text": "run `r-123` · rule `duration` · 2025-03-04 05:06:07 UTC"}
    # the held-back count, when there is one
    ch.send(alert, timeout=2, suppressed=1)
    assert "_+1 similar alert held back by the rate limits_" in http_server.requests[1].json["blocks"][0]["text"]["text"]


# --- email against a real SMTP server -------------------------------------------------------------


class Inbox:
    def __init__(self) -> None:
        self.envelopes: list[Any] = []

    async def handle_DATA(self, server, session, envelope):
        self.envelopes.append(envelope)
        return "250 OK"

    def messages(self) -> list[Any]:
        return [message_from_bytes(e.content, policy=policy.default) for e in self.envelopes]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def smtp_server(**kwargs: Any) -> tuple[Controller, Inbox]:
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port(), **kwargs)
    controller.start()
    return controller, inbox


@pytest.fixture
def smtp() -> Iterator[tuple[Controller, Inbox]]:
    controller, inbox = smtp_server()
    try:
        yield controller, inbox
    finally:
        controller.stop()


def test_email_is_received_with_subject_and_plain_text_body(smtp):
    controller, inbox = smtp
    ch = api.configure_channel("mail", "email", host="127.0.0.1", port=controller.port, sender="Alerts <alerts@example.com>",
                               to=["ops@example.com", "dev@example.com"], subject_prefix="[kf-test]")  # fmt: skip
    ch.send(make_alert(), timeout=5, suppressed=4)
    (envelope,) = inbox.envelopes
    assert envelope.mail_from == "alerts@example.com"
    assert envelope.rcpt_tos == ["ops@example.com", "dev@example.com"]
    (msg,) = inbox.messages()
    assert msg["Subject"] == "[kf-test] WARNING etl.load duration_s: 42.1 s — baseline 12.0 s ± 1.3, z = 23.2"
    assert msg["To"] == "ops@example.com, dev@example.com"
    assert msg.get_content_type() == "text/plain"
    body = msg.get_content()
    for line in (
        "load took 3.5x its usual time",
        "value:     42.1",
        "baseline:  12 ± 1.3",
        "z-score:   23.2",
        "run id:    r-123",
        "task:      load",
        "rule:      duration",
        "raised at: 2025-03-04 05:06:07 UTC",
        "4 similar alerts were held back",
    ):
        assert line in body, (line, body)


def test_email_logs_in_with_a_password_from_a_secret(monkeypatch):
    seen: list[tuple[str, str]] = []

    def authenticator(server, session, envelope, mechanism, auth_data):
        assert isinstance(auth_data, LoginPassword)
        seen.append((auth_data.login.decode(), auth_data.password.decode()))
        return AuthResult(success=auth_data.password == b"pw-from-env", handled=False)

    controller, inbox = smtp_server(authenticator=authenticator, auth_require_tls=False)
    try:
        monkeypatch.setenv("SMTP_PW", "pw-from-env")
        ch = api.configure_channel("mail", "email", host="127.0.0.1", port=controller.port, sender="a@example.com",
                                   to="ops@example.com", username="alerts", password="{{secrets.SMTP_PW}}")  # fmt: skip
        ch.send(make_alert(), timeout=5)
        assert seen == [("alerts", "pw-from-env")] and len(inbox.envelopes) == 1
        monkeypatch.setenv("SMTP_PW", "wrong-pw")
        with pytest.raises(ChannelSendError, match="rejected the login of 'alerts'") as info:
            ch.send(make_alert(), timeout=5)
        assert info.value.retry is False and "wrong-pw" not in str(info.value)
    finally:
        controller.stop()


def test_email_to_a_server_that_is_not_there_is_a_retryable_failure():
    ch = api.configure_channel("mail", "email", host="127.0.0.1", port=free_port(), sender="a@example.com", to="b@example.com")
    with pytest.raises(ChannelSendError, match=r"could not send through SMTP server 127.0.0.1:\d+: ConnectionRefusedError") as info:
        ch.send(make_alert(), timeout=2)
    assert info.value.retry is True
