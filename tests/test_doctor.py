"""``kernelflow doctor`` and the health checks it reports, through the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

import kernelflow as kf
from kernelflow import plugin_host
from kernelflow.doctor import diagnose
from kernelflow.executor_api import ExecutorSpec
from kernelflow.health import Health
from kernelflow.plugins.thread_executor import ThreadExecutor
from kernelflow.store import FolderStore
from kernelflow.store_access import close_stores


def doctor(*args: str, store: Path | str | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "kernelflow"]
    if store is not None:
        cmd += ["--store", str(store)]
    return subprocess.run([*cmd, "doctor", *args], capture_output=True, text=True, timeout=180,
                          env={**os.environ, **(env or {})})  # fmt: skip


def a_store(path: Path) -> Path:
    """A store on disk with one run in it, closed (its segment compacted)."""
    kf.use_store(path)
    try:

        def a():
            return 1

        kf.workflow("doctor_flow", [a]).run()
    finally:
        close_stores()
        kf.use_store(None)
    return path


def listing(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def line(stdout: str, prefix: str) -> str:
    found = [ln for ln in stdout.splitlines() if ln.startswith(prefix)]
    assert found, f"no line starts with {prefix!r} in:\n{stdout}"
    return found[0]


# --- the store -------------------------------------------------------------------------------


def test_a_healthy_store_is_reported_with_its_schema_size_and_writability(tmp_path: Path) -> None:
    store = a_store(tmp_path / "store")
    before = listing(store)
    res = doctor(store=store)
    assert res.returncode == 0, res.stdout + res.stderr
    text = line(res.stdout, "ok       store: ")
    assert f"{store} (schema 2, " in text and " files, writable)" in text
    assert "executor threads" in res.stdout and "plugins: " in res.stdout
    assert listing(store) == before  # the write probe left nothing behind


def test_a_store_not_created_yet_stays_uncreated(tmp_path: Path) -> None:
    where = tmp_path / "later" / "store"
    res = doctor(store=where)
    assert res.returncode == 0, res.stdout
    assert "not created yet" in line(res.stdout, "ok       store: ")
    assert not (tmp_path / "later").exists()


@pytest.fixture
def unwritable(tmp_path: Path) -> Iterator[Path]:
    """A store folder this process really cannot create files in.

    Permission bits do not stop root, so as root the folder is made immutable
    (``chattr +i``); skipped where neither works.
    """
    store = a_store(tmp_path / "store")
    undo: list[list[str]] = []
    store.chmod(0o555)
    if _writable(store):
        store.chmod(0o755)
        made = subprocess.run(["chattr", "+i", str(store)], capture_output=True, check=False)
        if made.returncode == 0:
            undo.append(["chattr", "-i", str(store)])
    try:
        if _writable(store):
            pytest.skip("cannot make a folder unwritable here (not root with chattr, nor a user chmod stops)")
        yield store
    finally:
        for cmd in undo:
            subprocess.run(cmd, check=False)
        store.chmod(0o755)


def _writable(folder: Path) -> bool:
    probe = folder / ".probe"
    try:
        probe.write_text("x")
    except OSError:
        return False
    probe.unlink()
    return True


def test_a_read_only_store_folder_is_an_error_with_a_fix(unwritable: Path) -> None:
    # The store itself opens it fine (reads work), so only a real write shows the problem.
    assert FolderStore(unwritable).health().status == "error"
    res = doctor(store=unwritable)
    assert res.returncode == 1, res.stdout
    assert f"{unwritable} is not writable: creating a file in {unwritable} failed" in line(res.stdout, "error    store: ")
    assert "fix: Make " in res.stdout and "or point --store / $KERNELFLOW_HOME at a folder you can write" in res.stdout
    assert res.stdout.rstrip().splitlines()[-1].startswith("error: 1 problem(s) to fix")


def test_a_store_under_a_file_is_an_error_with_a_fix(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    where = tmp_path / "notes.txt" / "store"
    with pytest.raises(kf.StoreError, match="Not a directory"):  # what the store does with it
        FolderStore(where)
    res = doctor(store=where)
    assert res.returncode == 1
    assert f"{tmp_path / 'notes.txt'} is a file, so the store folder {where} cannot be created under it" in res.stdout
    assert f"fix: Move the file {tmp_path / 'notes.txt'} away" in res.stdout


def test_a_store_with_a_newer_schema_is_an_error_with_a_fix(tmp_path: Path) -> None:
    store = a_store(tmp_path / "store")
    marker = orjson.loads((store / "store.json").read_bytes())
    (store / "store.json").write_bytes(orjson.dumps({**marker, "schema_version": 99, "written_by": "9.0"}))
    with pytest.raises(kf.StoreVersionError, match="schema version 99"):  # the store refuses to open it
        FolderStore(store)
    res = doctor("--json", store=store)
    assert res.returncode == 1
    got = json.loads(res.stdout)
    (check,) = [c for c in got["checks"] if c["component"] == "store"]
    assert check["status"] == "error" and "schema version 99" in check["detail"]
    assert check["fix"].startswith("Upgrade kernelflow (`pip install -U kernelflow`)")
    assert check["info"]["schema_version"] == 99 and check["info"]["supported_schema_version"] == 2


# --- tools, --json -------------------------------------------------------------------------


def test_a_missing_dot_is_a_warning_with_how_to_install_it(tmp_path: Path) -> None:
    path = os.path.dirname(sys.executable)  # python, without /usr/bin's dot
    res = doctor(store=tmp_path / "store", env={"PATH": path})
    assert res.returncode == 0, res.stdout  # optional: a warning, not a failure
    assert "Graphviz `dot` is not on PATH" in line(res.stdout, "warning  tool dot: ")
    assert "fix: Install Graphviz: `apt install graphviz`" in res.stdout
    assert res.stdout.rstrip().splitlines()[-1].startswith("warning: kernelflow can run;")


def test_json_has_one_entry_per_check(tmp_path: Path) -> None:
    store = a_store(tmp_path / "store")
    res = doctor("--json", store=store)
    assert res.returncode == 0, res.stdout + res.stderr
    got = json.loads(res.stdout)
    assert set(got) == {"status", "exit_code", "errors", "warnings", "checks"}
    assert got["exit_code"] == 0 and got["errors"] == 0 and got["status"] in ("ok", "warning")
    for check in got["checks"]:
        assert set(check) == {"component", "status", "detail", "fix", "info"}
        assert check["status"] in ("ok", "warning", "error")
    components = [c["component"] for c in got["checks"]]
    assert components[:2] == ["kernelflow", "store"]
    assert {"executor threads", "plugins", "tool dot", "tool chromium", "tool dask", "tool opentelemetry"} <= set(components)
    info = got["checks"][1]["info"]
    assert info["path"] == str(store) and info["schema_version"] == 2 and info["writable"] is True
    assert info["bytes"] > 0 and info["files"] > 0
    plugins = next(c for c in got["checks"] if c["component"] == "plugins")
    assert {"folder_store", "thread_executor", "opentelemetry"} <= set(plugins["info"]["loaded"])


# --- plugins -------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_plugin_that_fails_to_import_is_reported_and_the_rest_still_checked(tmp_path: Path) -> None:
    source = tmp_path / "src"
    (source / "kf_broken_plugin").mkdir(parents=True)
    (source / "kf_broken_plugin" / "__init__.py").write_text("raise ImportError('needs libfoo, which is not installed')\n")
    (source / "pyproject.toml").write_text(textwrap.dedent("""
        [build-system]
        requires = ["setuptools>=68"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "kf-broken-plugin"
        version = "0.1.0"

        [project.entry-points.kernelflow]
        broken = "kf_broken_plugin"

        [tool.setuptools]
        packages = ["kf_broken_plugin"]
    """))
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(source)],
                   check=True, capture_output=True, cwd=tmp_path)  # fmt: skip
    store = a_store(tmp_path / "store")
    env = {"PYTHONPATH": str(site)}
    plain = subprocess.run([sys.executable, "-m", "kernelflow", "--store", str(store), "history"],
                           capture_output=True, text=True, env={**os.environ, **env}, timeout=120)  # fmt: skip
    assert plain.returncode == 1 and "'broken'" in plain.stderr  # any other command refuses to start

    res = doctor(store=store, env=env)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "ImportError: needs libfoo, which is not installed" in line(res.stdout, "error    plugin broken: ")
    assert "fix: Reinstall or uninstall 'kf-broken-plugin'" in res.stdout
    assert line(res.stdout, "ok       store: ")  # the rest is checked with the plugins that did load
    assert line(res.stdout, "ok       executor threads: ")
    got = json.loads(doctor("--json", store=store, env=env).stdout)
    plugins = next(c for c in got["checks"] if c["component"] == "plugins")
    assert plugins["info"]["failed"] == ["broken"] and "folder_store" in plugins["info"]["loaded"]


def test_a_plugin_with_a_misspelt_hook_is_reported(tmp_path: Path) -> None:
    site = tmp_path / "site"
    dist = site / "kf_misspelt-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: kf-misspelt\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[kernelflow]\nmisspelt = kf_misspelt\n")
    (site / "kf_misspelt.py").write_text(
        "import kernelflow as kf\n\n@kf.hookimpl\ndef kernelflow_register_executor():\n    return []\n"
    )
    res = doctor(store=tmp_path / "store", env={"PYTHONPATH": str(site)})
    assert res.returncode == 1, res.stdout + res.stderr
    assert "kernelflow_register_executor" in line(res.stdout, "error    plugin misspelt: ")
    assert line(res.stdout, "ok       executor threads: ")


# --- in process: third-party stores and executors --------------------------------------------


class _Plugin:
    """Executors with health checks of every kind, and a store without one."""

    def __init__(self, checks: dict[str, Any]) -> None:
        self.checks = checks

    @kf.hookimpl
    def kernelflow_register_executors(self) -> list[ExecutorSpec]:
        return [ExecutorSpec(name, ThreadExecutor, f"test executor {name}", health=check)
                for name, check in self.checks.items()]  # fmt: skip

    @kf.hookimpl(tryfirst=True)
    def kernelflow_open_store(self, location: str) -> Any:
        return _BareStore(location) if location.startswith("bare://") else None


class _BareStore:
    def __init__(self, location: str) -> None:
        self.location = location

    def close(self) -> None:
        pass


@pytest.fixture
def plugin() -> Iterator[_Plugin]:
    release = threading.Event()

    def hangs() -> Health:
        release.wait(30)
        return Health("x", "ok", "late")

    def raises() -> Health:
        raise RuntimeError("bug in the check")

    made = _Plugin({
        "t_ok": lambda: Health("whatever", "ok", "cluster reachable", info={"workers": 2}),
        "t_down": lambda: Health("whatever", "error", "scheduler tcp://10.0.0.1:8786 unreachable", "start it"),
        "t_hangs": hangs,
        "t_raises": raises,
    })  # fmt: skip
    plugin_host.register(made, name="doctor_test")
    yield made
    release.set()
    plugin_host.unregister(made)


def test_executor_checks_are_called_with_a_timeout_and_named(plugin: _Plugin, tmp_path: Path) -> None:
    report = diagnose(tmp_path / "store", timeout=0.5)
    found = {h.component: h for h in report.checks}
    assert found["executor t_ok"].status == "ok" and found["executor t_ok"].info == {"workers": 2}
    assert found["executor t_down"].status == "error" and found["executor t_down"].fix == "start it"
    assert found["executor t_hangs"].status == "warning"
    assert "did not answer within 0.5 s" in found["executor t_hangs"].detail
    assert found["executor t_raises"].status == "warning"
    assert "raised RuntimeError: bug in the check" in found["executor t_raises"].detail
    assert report.exit_code == 1  # an executor that says it is broken is an error


def test_a_store_without_a_health_check_is_reported_not_crashed_on(plugin: _Plugin) -> None:
    report = diagnose("bare://somewhere", timeout=0.5)
    store = next(h for h in report.checks if h.component == "store")
    assert store.status == "ok" and "has no health check" in store.detail
