"""Shared fixtures."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kernelflow.store import FolderStore


@pytest.fixture
def tmp_store(tmp_path: Path) -> Iterator[FolderStore]:
    """A fresh FolderStore at ``tmp_path / "store"`` (not created on disk until written)."""
    store = FolderStore(tmp_path / "store")
    yield store
    store.close()


@pytest.fixture(autouse=True)
def kernelflow_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Every test gets its own default store (``$KERNELFLOW_HOME``), closed afterwards."""
    from kernelflow.store_access import close_stores, use_store

    home = tmp_path / "kernelflow-home"
    monkeypatch.setenv("KERNELFLOW_HOME", str(home))
    use_store(None)
    yield home
    poller = sys.modules.get("kernelflow.widgets.poller")
    if poller is not None:  # widgets of this test must not poll its store after it (nor during a fork)
        poller.clear()
    # Alert rules and channels are per process: one test's must not reach the next.
    alerting = sys.modules.get("kernelflow.alerting")
    if alerting is not None:
        alerting.reset()
    channels = sys.modules.get("kernelflow.alert_channels_api")
    if channels is not None:
        for name in channels.channel_names():
            channels.remove_channel(name)
    close_stores()
    use_store(None)


@pytest.fixture
def kernel_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Kernels inherit this process's environment: give them a private store and IPython dir."""
    store = tmp_path / "store"
    monkeypatch.setenv("KERNELFLOW_HOME", str(store))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    return store
