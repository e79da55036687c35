"""The built-in alert channel types: ``webhook``, ``slack`` and ``email``.

They register through ``kernelflow_register_alert_channels`` and the
``kernelflow`` entry-point group, as a third-party channel would. Each checks
its settings when it is configured and raises
:class:`~kernelflow.alert_channels_api.ChannelSendError` when a send fails
(``retry=False`` when trying again cannot help: a 4xx answer, a refused
recipient, a missing secret). URLs, header values and the SMTP password may
be ``{{secrets.NAME}}`` references, resolved at each send and masked in errors.

- ``webhook``: POSTs ``Alert.to_dict()`` plus ``text`` (a one-line summary)
  and ``suppressed`` as JSON. Settings: ``url``, ``headers``, ``timeout_s``.
- ``slack``: a Slack incoming-webhook message: ``text`` (the notification
  line) and ``blocks`` (a ``section`` in mrkdwn and a ``context`` line).
  Settings: ``url``, ``timeout_s``.
- ``email``: a plain-text mail over SMTP (``smtplib``). Settings: ``host``,
  ``port`` (25, or 587 with ``starttls``), ``sender``, ``to`` (addresses),
  ``starttls``, ``username``, ``password``, ``subject_prefix``, ``timeout_s``.
"""

from __future__ import annotations

import re
import smtplib
import ssl
from collections.abc import Mapping, Sequence
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr
from typing import TYPE_CHECKING, Any

import httpx
import orjson
from kernelflow.plugins.hookspecs import hookimpl

from kernelflow.alert_channels_api import (
    ChannelConfigError,
    ChannelSendError,
    ChannelSpec,
    check_text,
    check_timeout,
    check_url,
    redact_url,
    resolve_secrets,
    url_problem,
)
from kernelflow.secrets import Masker

if TYPE_CHECKING:  # pragma: no cover
    from kernelflow.widgets.alert import Alert

USER_AGENT = "kernelflow-alerts"
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def summary(alert: Alert, suppressed: int = 0) -> str:
    """One line: ``[WARNING] etl.load duration_s: 42.1 s — baseline 12.0 s ± 1.3, z = 23.2 — <message> (run r-1, rule duration)``."""
    text = f"[{alert.severity.upper()}] {alert.subject} {alert.metric}: {alert.figure()}"
    if alert.message:
        text += f" — {alert.message}"
    text += f" (run {alert.run_id}, rule {alert.rule})"
    if suppressed:
        text += f" [+{suppressed} similar alert{'s' if suppressed != 1 else ''} held back]"
    return text


# --- HTTP ---------------------------------------------------------------------------------


class _HttpChannel:
    type_name = "webhook"

    def __init__(self, url: Any, timeout_s: Any = None, headers: Any = None) -> None:
        self.url = check_url(self.type_name, "url", url)
        self.timeout_s = None if timeout_s is None else check_timeout(self.type_name, "timeout_s", timeout_s)
        self.headers = self._check_headers(headers)
        self.masker = Masker()

    def _check_headers(self, headers: Any) -> dict[str, str]:
        if headers is None:
            return {}
        if not isinstance(headers, Mapping):
            raise ChannelConfigError(
                f"alert channel type {self.type_name!r}: headers must be a mapping of header name to value, got {headers!r:.60}",
                hint='for example headers={"Authorization": "Bearer {{secrets.HOOK_TOKEN}}"}',
            )
        checked = {}
        for name, value in headers.items():
            if not isinstance(name, str) or not _HEADER_NAME.match(name):
                raise ChannelConfigError(
                    f"alert channel type {self.type_name!r}: {name!r:.60} is not a valid HTTP header name",
                    hint="header names are letters, digits and '-', e.g. 'X-Api-Key'",
                )
            checked[name] = check_text(self.type_name, f"headers[{name!r}]", value, example="Bearer {{secrets.HOOK_TOKEN}}")
        return checked

    def payload(self, alert: Alert, suppressed: int) -> dict[str, Any]:
        raise NotImplementedError

    def send(self, alert: Alert, *, timeout: float, suppressed: int = 0) -> None:
        url = resolve_secrets(self.url, self.masker)
        problem = url_problem(url)
        if problem:
            raise ChannelSendError(f"{self.type_name} url (from a secret) is not a usable URL: {problem}", retry=False)
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
        headers.update({k: resolve_secrets(v, self.masker) for k, v in self.headers.items()})
        body = orjson.dumps(self.payload(alert, suppressed))
        where = redact_url(url)
        try:
            response = httpx.post(url, content=body, headers=headers, timeout=timeout, follow_redirects=False)
        except httpx.TimeoutException:
            raise ChannelSendError(f"{where} did not answer within {timeout:g} s") from None
        except httpx.HTTPError as exc:
            raise ChannelSendError(self.masker.text(f"could not reach {where}: {type(exc).__name__}: {exc}")) from None
        if not 200 <= response.status_code < 300:
            text = response.text.strip().replace("\n", " ")[:200]
            retry = response.status_code in (408, 425, 429) or response.status_code >= 500
            raise ChannelSendError(
                self.masker.text(f"{where} answered HTTP {response.status_code}" + (f": {text}" if text else "")), retry=retry
            )


class WebhookChannel(_HttpChannel):
    """POSTs the alert as JSON: ``Alert.to_dict()`` plus ``text`` and ``suppressed``."""

    type_name = "webhook"

    def __init__(self, *, url: Any, headers: Any = None, timeout_s: Any = None) -> None:
        super().__init__(url, timeout_s, headers)

    def payload(self, alert: Alert, suppressed: int) -> dict[str, Any]:
        return {**alert.to_dict(), "text": summary(alert, suppressed), "suppressed": suppressed}


_SLACK_ICONS = {"info": ":information_source:", "warning": ":warning:", "critical": ":rotating_light:"}


def _mrkdwn(text: str) -> str:
    # Slack's only required escapes: the characters of its <link|label> syntax.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class SlackChannel(_HttpChannel):
    """A Slack incoming-webhook message: ``text`` plus ``blocks`` (section, context)."""

    type_name = "slack"

    def __init__(self, *, url: Any, timeout_s: Any = None) -> None:
        super().__init__(url, timeout_s)

    def payload(self, alert: Alert, suppressed: int) -> dict[str, Any]:
        head = f"{_SLACK_ICONS[alert.severity]} *{alert.severity.upper()}* `{_mrkdwn(alert.subject)}` · {_mrkdwn(alert.metric)}"
        lines = [head, f"*{_mrkdwn(alert.figure())}*"]
        if alert.message:
            lines.append(_mrkdwn(alert.message[:2000]))
        if suppressed:
            lines.append(f"_+{suppressed} similar alert{'s' if suppressed != 1 else ''} held back by the rate limits_")
        meta = (
            f"run `{_mrkdwn(alert.run_id)}` · rule `{_mrkdwn(alert.rule)}` · "
            f"{alert.raised_at.strftime('%Y-%m-%d %H:%M:%S')} UTC"
        )
        return {
            "text": summary(alert, suppressed),
            "blocks": [
                {"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(lines)}},
                {"type": "context", "elements": [{"type": "mrkdwn", "text": meta}]},
            ],
        }


# --- email ----------------------------------------------------------------------------------


def _address(setting: str, value: Any) -> str:
    example = "ops@example.com"
    check_text("email", setting, value, example=example)
    _, addr = parseaddr(value)
    if "@" not in addr or addr.startswith("@") or addr.endswith("@"):
        raise ChannelConfigError(
            f"alert channel type 'email': {setting} {value!r:.80} is not an email address",
            hint=f"for example {setting}={example!r} or {setting}='Ops <{example}>'",
        )
    return value


class EmailChannel:
    """A plain-text mail over SMTP: the figure, the baseline, the z-score, the run id."""

    type_name = "email"

    def __init__(
        self,
        *,
        host: Any,
        sender: Any,
        to: Any,
        port: Any = None,
        starttls: Any = False,
        username: Any = None,
        password: Any = None,
        subject_prefix: Any = "[kernelflow]",
        timeout_s: Any = None,
    ) -> None:
        self.host = check_text("email", "host", host, example="smtp.example.com")
        if "://" in host or "/" in host or " " in host:
            raise ChannelConfigError(
                f"alert channel type 'email': host must be the SMTP server's host name, got {host!r:.80}",
                hint="for example host='smtp.example.com' (no scheme, no path; the port goes in port=)",
            )
        if not isinstance(starttls, bool):
            raise ChannelConfigError(
                f"alert channel type 'email': starttls must be True or False, got {starttls!r:.40}",
                hint="starttls=True upgrades the connection to TLS (usually with port 587)",
            )
        self.starttls = starttls
        if port is None:
            port = 587 if starttls else 25
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise ChannelConfigError(
                f"alert channel type 'email': port must be a whole number from 1 to 65535, got {port!r:.40}",
                hint="usually 25, 587 (with starttls=True) or 465",
            )
        self.port = port
        self.sender = _address("sender", sender)
        if isinstance(to, str):
            to = [to]
        if not isinstance(to, Sequence) or not to:
            raise ChannelConfigError(
                f"alert channel type 'email': to must list at least one recipient address, got {to!r:.60}",
                hint="for example to=['ops@example.com']",
            )
        self.to = [_address(f"to[{i}]", addr) for i, addr in enumerate(to)]
        if (username is None) != (password is None):
            raise ChannelConfigError(
                "alert channel type 'email': give username and password together (or neither, for a server without login)",
                hint="for example username='alerts', password='{{secrets.SMTP_PASSWORD}}'",
            )
        self.username = None if username is None else check_text("email", "username", username, example="alerts")
        self.password = None if password is None else check_text("email", "password", password, example="{{secrets.SMTP_PASSWORD}}")
        if not isinstance(subject_prefix, str) or "\n" in subject_prefix or "\r" in subject_prefix:
            raise ChannelConfigError(
                f"alert channel type 'email': subject_prefix must be one line of text, got {subject_prefix!r:.60}",
                hint="for example subject_prefix='[kernelflow]'",
            )
        self.subject_prefix = subject_prefix
        self.timeout_s = None if timeout_s is None else check_timeout("email", "timeout_s", timeout_s)
        self.masker = Masker()

    def message(self, alert: Alert, suppressed: int = 0) -> EmailMessage:
        """The mail for ``alert`` (what :meth:`send` sends)."""
        msg = EmailMessage()
        subject = f"{alert.severity.upper()} {alert.subject} {alert.metric}: {alert.figure()}"
        msg["Subject"] = f"{self.subject_prefix} {subject}".strip()
        msg["From"] = self.sender
        msg["To"] = ", ".join(self.to)
        msg["Date"] = formatdate(localtime=False)
        msg["Message-ID"] = make_msgid(domain="kernelflow.alerts")
        body = [
            f"{alert.severity.upper()}: {alert.subject} · {alert.metric}",
            "",
            alert.message or f"{alert.metric} is not like its baseline",
            "",
            f"  value:     {alert.value:g}",
            f"  baseline:  {alert.baseline:g} ± {alert.spread:g}",
            f"  z-score:   {alert.score:.1f}",
            f"  figure:    {alert.figure()}",
            "",
            f"  workflow:  {alert.workflow}",
            f"  task:      {alert.task or '(the whole run)'}",
            f"  run id:    {alert.run_id}",
            f"  rule:      {alert.rule}",
            f"  raised at: {alert.raised_at.strftime('%Y-%m-%d %H:%M:%S')} UTC",
        ]
        if suppressed:
            body += ["", f"{suppressed} similar alert{'s' if suppressed != 1 else ''} were held back by the rate limits since the previous notification."]
        body += ["", f"kernelflow show {alert.run_id}"]
        msg.set_content("\n".join(body) + "\n")
        return msg

    def send(self, alert: Alert, *, timeout: float, suppressed: int = 0) -> None:
        msg = self.message(alert, suppressed)
        password = None if self.password is None else resolve_secrets(self.password, self.masker)
        where = f"SMTP server {self.host}:{self.port}"
        try:
            with smtplib.SMTP(self.host, self.port, timeout=timeout) as smtp:
                if self.starttls:
                    smtp.starttls(context=ssl.create_default_context())
                if self.username is not None:
                    smtp.login(self.username, password or "")
                refused = smtp.send_message(msg)
        except smtplib.SMTPRecipientsRefused as exc:
            raise ChannelSendError(f"{where} refused every recipient: {_refusals(exc.recipients)}", retry=False) from None
        except smtplib.SMTPAuthenticationError as exc:
            raise ChannelSendError(self.masker.text(f"{where} rejected the login of {self.username!r}: {exc.smtp_code} {_decode(exc.smtp_error)}"), retry=False) from None
        except smtplib.SMTPNotSupportedError as exc:
            raise ChannelSendError(f"{where} does not support {exc} (set starttls or username accordingly)", retry=False) from None
        except smtplib.SMTPResponseException as exc:
            # 4xx: try later; 5xx: the server said no for good.
            raise ChannelSendError(f"{where} answered {exc.smtp_code} {_decode(exc.smtp_error)}", retry=exc.smtp_code < 500) from None
        except TimeoutError:
            raise ChannelSendError(f"{where} did not answer within {timeout:g} s") from None
        except (OSError, smtplib.SMTPException) as exc:
            raise ChannelSendError(self.masker.text(f"could not send through {where}: {type(exc).__name__}: {exc}")) from None
        if refused:
            # Retrying would mail the accepted recipients twice.
            raise ChannelSendError(f"{where} refused some recipients: {_refusals(refused)}", retry=False)


def _decode(raw: Any) -> str:
    return raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)


def _refusals(recipients: Mapping[str, Any]) -> str:
    return "; ".join(f"{addr} ({code} {_decode(text)})" for addr, (code, text) in recipients.items())


@hookimpl
def kernelflow_register_alert_channels() -> list[ChannelSpec]:
    return [
        ChannelSpec("webhook", WebhookChannel, "POSTs each alert as JSON to a URL"),
        ChannelSpec("slack", SlackChannel, "posts to a Slack (or compatible) incoming-webhook URL"),
        ChannelSpec("email", EmailChannel, "mails each alert over SMTP"),
    ]
