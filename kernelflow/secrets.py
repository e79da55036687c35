"""Secrets: resolved at run time by provider plugins, masked everywhere after.

A run resolves ``{{secrets.NAME}}`` through the ``kernelflow_secret_providers``
hook when a step needs it, and from then on every text the run records or
shows (event payloads, error messages, tracebacks, shell and HTTP output)
goes through its :class:`Masker`, which replaces each resolved value with
``***``. Values are never stored: templates keep the reference, not the value.
"""

from __future__ import annotations

import threading
from typing import Any, Protocol, runtime_checkable

from .exceptions import KernelflowError

MASK = "***"


@runtime_checkable
class SecretProvider(Protocol):
    """Where secret values come from (environment, a vault, a cloud secret manager)."""

    name: str

    def get(self, name: str) -> str | None:
        """The secret's value, or ``None`` if this provider does not have it."""


class SecretNotFoundError(KernelflowError):
    """No provider has the secret a template names."""


class Masker:
    """Replaces every secret value a run has resolved with ``***``."""

    def __init__(self) -> None:
        self._values: list[str] = []
        self._lock = threading.Lock()

    def __bool__(self) -> bool:
        return bool(self._values)

    def add(self, value: str) -> None:
        # Very short values would mask innocent text everywhere; they are
        # still never stored (templates keep the reference), only not scrubbed.
        if len(value) >= 3 and value not in self._values:
            with self._lock:
                # Longest first, so a secret that contains another is masked whole.
                self._values = sorted({*self._values, value}, key=len, reverse=True)

    def text(self, text: str) -> str:
        for value in self._values:
            if value in text:
                text = text.replace(value, MASK)
        return text

    def value(self, obj: Any) -> Any:
        """``obj`` with secrets masked in every string inside lists, tuples and dicts."""
        if not self._values:
            return obj
        if isinstance(obj, str):
            return self.text(obj)
        if isinstance(obj, dict):
            return {self.value(k): self.value(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [self.value(v) for v in obj]
        if isinstance(obj, tuple):
            items = [self.value(v) for v in obj]
            if hasattr(obj, "_fields"):  # a namedtuple takes its fields as arguments
                return type(obj)(*items)
            try:
                return type(obj)(items)
            except TypeError:
                return tuple(items)
        return obj

    def contains(self, text: str) -> bool:
        return any(v in text for v in self._values)


class Secrets:
    """``ctx["secrets"]`` for templates: resolves lazily, remembers values for masking."""

    def __init__(self, masker: Masker) -> None:
        self._masker = masker
        self._cache: dict[str, str] = {}

    def __getitem__(self, name: str) -> str:
        if name in self._cache:
            return self._cache[name]
        from .plugin_host import call_each, plugin_failed

        # A provider plugin that raises (its hook, or its get) is reported and
        # skipped: the next provider is asked.
        providers = [(plugin, p) for plugin, found in call_each("kernelflow_secret_providers") for p in found]
        failed = []
        for plugin, provider in providers:
            label = getattr(provider, "name", type(provider).__name__)
            try:
                value = provider.get(name)
            except Exception as exc:  # noqa: BLE001
                plugin_failed(plugin, f"secret provider {label!r} get({name!r})", exc, "the next provider was asked")
                failed.append(f"{label!r} raised {type(exc).__name__}")
                continue
            if value is not None:
                value = str(value)
                self._masker.add(value)
                self._cache[name] = value
                return value
        names = ", ".join(getattr(p, "name", type(p).__name__) for _, p in providers) or "none"
        broke = f"; {', '.join(failed)}" if failed else ""
        raise SecretNotFoundError(
            f"secret {name!r} was not found by any secret provider (providers: {names}{broke}); "
            f"with the built-in env provider, set the environment variable {name} before the run"
        )
