"""The contract between kernelflow and an alert channel plugin, and the channels configured here.

A channel *type* (``webhook``, ``slack``, ``email``, or a plugin's own) is a
:class:`ChannelSpec` returned by the ``kernelflow_register_alert_channels``
hook. A *channel* is a named, configured instance of a type::

    kf.alert_channel("ops", "slack", url="{{secrets.SLACK_WEBHOOK}}")

``configure_channel`` calls the type's ``factory(**settings)``; the object it
returns must check every setting right there (a malformed URL, a missing SMTP
host, a zero timeout, a setting it does not know) and raise
:class:`ChannelConfigError` naming the setting and the fix, so mistakes show
where they are written rather than when the first alert is lost. It then
sends with ``send(alert, *, timeout)``, raising on failure (raise
:class:`ChannelSendError` with ``retry=False`` for failures that retrying
cannot fix). :mod:`kernelflow.alert_delivery` calls ``send`` on a background
thread, with retries, rate limits and de-duplication.

A channel's ``send`` may also accept ``suppressed: int`` (keyword): how many
alerts the rate limits held back since the previous notification; channels
without it get that count appended to the alert's message instead.

Settings may hold ``{{secrets.NAME}}`` references (:func:`secret_refs`,
:func:`resolve_secrets`): they are resolved through the secret providers at
each send, never stored, and masked in the errors kernelflow records.
"""

from __future__ import annotations

import difflib
import inspect
import math
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

from .exceptions import DefinitionError, KernelflowError

if TYPE_CHECKING:  # pragma: no cover
    from kernelflow.widgets.alert import Alert

    from .secrets import Masker

__all__ = [
    "AlertChannel",
    "ChannelConfigError",
    "ChannelSendError",
    "ChannelSpec",
    "channel",
    "channel_names",
    "channel_types",
    "check_settings",
    "check_timeout",
    "check_url",
    "configure_channel",
    "remove_channel",
    "resolve_secrets",
    "secret_refs",
]


@runtime_checkable
class AlertChannel(Protocol):
    """A configured channel: ``send`` one alert or raise."""

    def send(self, alert: Alert, *, timeout: float) -> None:
        """Deliver ``alert`` within ``timeout`` seconds; raise on any failure."""


@dataclass(frozen=True)
class ChannelSpec:
    """What an alert channel plugin registers: the type's ``name`` (what users
    pass as ``type``), a ``factory(**settings)`` that returns an
    :class:`AlertChannel` after checking the settings, and a one-line
    ``description``."""

    name: str
    factory: Callable[..., AlertChannel]
    description: str = ""


class ChannelConfigError(DefinitionError):
    """A channel's settings are invalid; nothing was configured."""


class ChannelSendError(KernelflowError):
    """A send failed. ``retry=False`` when trying again cannot help (a 404, a
    rejected recipient, a missing secret): delivery then gives up at once."""

    def __init__(self, message: str, *, retry: bool = True) -> None:
        super().__init__(message)
        self.retry = retry


# --- helpers for channel implementations ---------------------------------------------

_SECRET_REF = re.compile(r"\{\{\s*secrets\.([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_SETTING_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def secret_refs(value: str) -> list[str]:
    """The secret names ``{{secrets.NAME}}`` references in ``value`` name."""
    return _SECRET_REF.findall(value)


def resolve_secrets(value: str, masker: Masker | None = None) -> str:
    """``value`` with each ``{{secrets.NAME}}`` replaced by the secret, asked of
    the secret providers (hook ``kernelflow_secret_providers``) now. Resolved
    values are added to ``masker`` so errors can be scrubbed of them. Raises
    :class:`ChannelSendError` (not retried) when a secret is missing."""
    if "{{" not in value:
        return value
    from .secrets import Masker, SecretNotFoundError, Secrets

    secrets = Secrets(masker if masker is not None else Masker())
    try:
        return _SECRET_REF.sub(lambda m: secrets[m.group(1)], value)
    except SecretNotFoundError as exc:
        raise ChannelSendError(str(exc), retry=False) from None


def _where(type_name: str) -> str:
    return f"alert channel type {type_name!r}"


def check_settings(type_name: str, settings: dict[str, Any], allowed: tuple[str, ...], required: tuple[str, ...] = ()) -> None:
    """Raise :class:`ChannelConfigError` for a setting not in ``allowed`` (with the
    closest allowed one) or a ``required`` one that is missing or None."""
    for key in settings:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            raise ChannelConfigError(
                f"{_where(type_name)}: unknown setting {key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""),
                hint=f"its settings are {', '.join(allowed)}",
            )
    for key in required:
        if settings.get(key) is None:
            raise ChannelConfigError(
                f"{_where(type_name)}: the setting {key!r} is required",
                hint=f"pass {key}=... to kf.alert_channel(name, {type_name!r}, ...)",
            )


def check_text(type_name: str, setting: str, value: Any, *, example: str) -> str:
    """A non-empty string without control characters, else :class:`ChannelConfigError`."""
    if not isinstance(value, str) or not value.strip():
        raise ChannelConfigError(
            f"{_where(type_name)}: {setting} must be a non-empty string, got {value!r:.80}",
            hint=f"for example {setting}={example!r}",
        )
    if any(ord(c) < 32 for c in value):
        raise ChannelConfigError(
            f"{_where(type_name)}: {setting} must not contain control characters (newlines, tabs), got {value!r:.80}",
            hint=f"for example {setting}={example!r}",
        )
    _check_refs(type_name, setting, value)
    return value


def _check_refs(type_name: str, setting: str, value: str) -> None:
    rest = _SECRET_REF.sub("", value)
    if "{{" in rest or "}}" in rest:
        raise ChannelConfigError(
            f"{_where(type_name)}: {setting} has a template that is not a secret reference: {value!r:.80}",
            hint="settings can only reference secrets, written {{secrets.NAME}}",
        )


def check_url(type_name: str, setting: str, value: Any) -> str:
    """An absolute ``http://`` or ``https://`` URL with a host, else
    :class:`ChannelConfigError`. A URL that is (or holds) a ``{{secrets.NAME}}``
    reference is checked when it is resolved, at send time."""
    example = "https://hooks.example.com/alerts"
    check_text(type_name, setting, value, example=example)
    if secret_refs(value):
        return value
    problem = url_problem(value)
    if problem:
        raise ChannelConfigError(
            f"{_where(type_name)}: {setting} {value!r:.120} is not a usable URL: {problem}",
            hint=f"write an absolute http(s) URL such as {example!r}, or {{{{secrets.NAME}}}} to read it from a secret",
        )
    return value


def url_problem(value: str) -> str | None:
    """Why ``value`` is not an absolute http(s) URL with a host, or None."""
    if any(c.isspace() for c in value):
        return "it contains whitespace"
    if "://" not in value:
        return "it has no scheme (it must start with http:// or https://)"
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        return str(exc)
    if parts.scheme.lower() not in ("http", "https"):
        return f"the scheme is {parts.scheme!r}; only http and https are supported"
    if not parts.hostname:
        return "it has no host"
    if port == 0:
        return "port 0 is not a port"
    return None


def check_timeout(type_name: str, setting: str, value: Any, *, maximum: float = 300.0) -> float:
    """A finite number of seconds in (0, ``maximum``], else :class:`ChannelConfigError`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 < value <= maximum:
        raise ChannelConfigError(
            f"{_where(type_name)}: {setting} must be a number of seconds above 0 and at most {maximum:g}, got {value!r:.60}",
            hint=f"for example {setting}=5",
        )
    return float(value)


def redact_url(url: str) -> str:
    """``scheme://host:port`` of ``url``: enough to say where, without the path
    and query (which hold tokens in Slack-style webhook URLs)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<url>"
    return f"{parts.scheme}://{host}{port}"


# --- the channels configured in this process ------------------------------------------

_lock = threading.Lock()
_channels: dict[str, tuple[str, AlertChannel]] = {}


def channel_types() -> dict[str, ChannelSpec]:
    """Every channel type registered through ``kernelflow_register_alert_channels``, by name.

    A plugin whose hook raises is reported (a warning naming it) and left out."""
    from .exceptions import PluginError
    from .plugin_host import get_plugin_manager, plugin_failed

    found: dict[str, ChannelSpec] = {}
    owner: dict[str, str] = {}
    for impl in get_plugin_manager().hook.kernelflow_register_alert_channels.get_hookimpls():
        try:
            specs = list(impl.function() or [])
        except Exception as exc:  # noqa: BLE001 - the other plugins' channels still work
            plugin_failed(impl.plugin_name, "kernelflow_register_alert_channels", exc, "its channel types are not available")
            continue
        for spec in specs:
            if spec.name in found:
                raise PluginError(
                    f"alert channel type {spec.name!r} is registered by both {owner[spec.name]!r} "
                    f"and {impl.plugin_name!r}; uninstall one of them"
                )
            found[spec.name] = spec
            owner[spec.name] = impl.plugin_name
    return found


def configure_channel(name: str, type: str, **settings: Any) -> AlertChannel:
    """Configure (or reconfigure) the channel ``name`` of type ``type`` with
    ``settings``, checked now; returns the channel object.

    Raises :class:`ChannelConfigError` naming the channel, the setting and the
    fix; an unknown ``type`` lists the registered ones.
    """
    if not isinstance(name, str) or not _SETTING_NAME.match(name):
        raise ChannelConfigError(
            f"an alert channel name must be a non-empty string of letters, digits, '_', '-' or '.', got {name!r:.60}",
            hint='for example kf.alert_channel("ops", "webhook", url="https://...")',
        )
    types = channel_types()
    if type not in types:
        close = difflib.get_close_matches(str(type), list(types), n=1)
        raise ChannelConfigError(
            f"alert channel {name!r}: no channel type {type!r}" + (f" (did you mean {close[0]!r}?)" if close else ""),
            hint=f"registered types: {', '.join(sorted(types)) or 'none'}; a plugin can add others "
            "through the kernelflow_register_alert_channels hook",
        )
    spec = types[type]
    _check_against_signature(name, spec, settings)
    location = f"alert channel {name!r} ({type})"
    try:
        made = spec.factory(**settings)
    except ChannelConfigError as exc:
        raise _located(exc, type, location) from None
    except (TypeError, ValueError) as exc:  # a third-party factory that checks with plain errors
        raise ChannelConfigError(str(exc), location=location) from exc
    if not callable(getattr(made, "send", None)):
        raise ChannelConfigError(
            f"the factory of type {type!r} returned {made!r:.60}, which has no send(alert, *, timeout) method",
            location=location,
            hint="fix the plugin that registers this type",
        )
    with _lock:
        _channels[name] = (type, made)
    return made


def _check_against_signature(name: str, spec: ChannelSpec, settings: dict[str, Any]) -> None:
    # Unknown settings are caught here for any factory with a plain signature,
    # so third-party types get the same message as the built-ins.
    try:
        params = inspect.signature(spec.factory).parameters.values()
    except (TypeError, ValueError):
        return
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return
    allowed = tuple(p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))
    required = tuple(
        p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    )
    try:
        check_settings(spec.name, settings, allowed, required)
    except ChannelConfigError as exc:
        raise _located(exc, spec.name, f"alert channel {name!r} ({spec.name})") from None


def _located(exc: ChannelConfigError, type_name: str, location: str) -> ChannelConfigError:
    # "alert channel type 'webhook': url ..." becomes "alert channel 'ops' (webhook): url ...".
    message = exc.message.removeprefix(f"{_where(type_name)}: ")
    return ChannelConfigError(message, location=exc.location or location, hint=exc.hint)


def channel(name: str) -> AlertChannel:
    """The configured channel ``name``; an unknown name is an error listing the configured ones."""
    with _lock:
        found = _channels.get(name)
        known = sorted(_channels)
    if found is None:
        close = difflib.get_close_matches(str(name), known, n=1)
        raise ChannelConfigError(
            f"no alert channel named {name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""),
            hint=f"configured: {', '.join(known) or 'none'}; add one with kf.alert_channel(name, type, **settings)",
        )
    return found[1]


def channel_type(name: str) -> str:
    """The type name of the configured channel ``name``."""
    channel(name)
    with _lock:
        return _channels[name][0]


def channel_names() -> list[str]:
    """The names of the channels configured in this process, sorted."""
    with _lock:
        return sorted(_channels)


def remove_channel(name: str) -> None:
    """Forget the channel ``name`` (no error if it is not configured)."""
    with _lock:
        _channels.pop(name, None)
