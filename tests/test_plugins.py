"""The plugin host: entry points, hook validation, third-party executors."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import kernelflow as kf
from kernelflow import plugin_host
from kernelflow.executor_api import ExecutorSpec

EXAMPLE = Path(__file__).parent / "plugin_example"


def test_builtins_register_through_entry_points():
    pm = plugin_host.get_plugin_manager()
    names = dict(pm.list_name_plugin())
    assert names["thread_executor"].__name__ == "kernelflow.plugins.thread_executor"
    assert names["folder_store"].__name__ == "kernelflow.plugins.folder_store"
    assert "threads" in plugin_host.executors()


def test_a_misspelt_hook_fails_loudly():
    class Typo:
        @kf.hookimpl
        def kernelflow_register_executorz(self):
            return []

    with pytest.raises(kf.PluginError, match="kernelflow_register_executorz"):
        plugin_host.register(Typo(), name="typo")
    assert not plugin_host.get_plugin_manager().has_plugin("typo")


def test_two_plugins_claiming_one_executor_name_are_named():
    class Clash:
        @kf.hookimpl
        def kernelflow_register_executors(self):
            return [ExecutorSpec("threads", lambda n: None)]

    plugin = Clash()
    plugin_host.register(plugin, name="clash")
    try:
        with pytest.raises(kf.PluginError, match="'threads' is registered by both 'thread_executor' and 'clash'"):
            plugin_host.executors()
    finally:
        plugin_host.unregister(plugin)
    assert "threads" in plugin_host.executors()


@pytest.mark.slow
def test_an_installed_third_party_plugin_supplies_an_executor(tmp_path):
    target = tmp_path / "site"
    source = tmp_path / "src"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(source)],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    script = textwrap.dedent(
        """
        import json, kernelflow as kf
        from kernelflow_tiny.plugin import ATTEMPTS
        def a():
            return 20
        @kf.task(executor="tiny")
        def b(a):
            return a + 1
        run = kf.workflow("third_party", [a, b]).run()
        started = kf.sql("SELECT task_id, payload->>'executor' AS ex FROM events WHERE type = 'TaskStarted' ORDER BY seq")
        print(json.dumps({"output": run.output, "attempts": ATTEMPTS, "started": started.rows(), "plugins": kf.plugin_names()}))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(target), "KERNELFLOW_HOME": str(tmp_path / "store")}
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert res.returncode == 0, res.stderr
    import json

    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["output"] == 21
    assert got["attempts"] == ["b"]  # the plugin's executor really ran b, and only b
    assert got["started"] == [["a", "threads"], ["b", "tiny"]]
    assert "tiny" in got["plugins"]


def test_a_plugin_that_fails_to_import_is_named(tmp_path):
    dist = tmp_path / "broken_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[kernelflow]\nbroken = no_such_module_here\n")
    script = "import kernelflow as kf\ndef a():\n    return 1\nkf.workflow('w', [a])\n"
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "KERNELFLOW_HOME": str(tmp_path / "store")}
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode != 0
    assert "kernelflow plugin 'broken' (no_such_module_here, from package 'broken-plugin') failed to import" in res.stderr
    assert "Reinstall or uninstall 'broken-plugin'" in res.stderr
