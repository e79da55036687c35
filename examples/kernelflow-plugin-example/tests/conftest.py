"""Fixtures for testing a kernelflow plugin: a private store and no leftover channels."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import kernelflow as kf
from kernelflow import alert_channels_api


@pytest.fixture(autouse=True)
def private_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Each test runs its workflows in its own store, never in ~ or the current folder."""
    home = tmp_path / "kernelflow-home"
    monkeypatch.setenv("KERNELFLOW_HOME", str(home))
    kf.use_store(None)  # forget a store chosen earlier: $KERNELFLOW_HOME applies
    before = set(alert_channels_api.channel_names())
    yield home
    for name in set(alert_channels_api.channel_names()) - before:
        alert_channels_api.remove_channel(name)
    kf.use_store(None)
