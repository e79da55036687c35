"""The plugin host: entry points, hook validation, one test per hook, plugins that fail.

The rule that keeps hooks honest (``test_every_hook_has_a_test``): for each hook
``kernelflow_X`` in ``kernelflow.plugins.hookspecs``, this module has a test named
``test_hook_kernelflow_X...`` that defines an implementation of the hook (a
``@kf.hookimpl`` function named ``kernelflow_X``), registers it, makes kernelflow
call it, and asserts on what kernelflow did with the result.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import textwrap
import threading
import warnings
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import pytest

import kernelflow as kf
from kernelflow import alert_channels_api, alert_delivery, plugin_host
from kernelflow.alert_channels_api import ChannelSpec
from kernelflow.executor_api import ExecutorSpec
from kernelflow.plugin_host import PluginWarning
from kernelflow.plugins import hookspecs
from kernelflow.plugins.thread_executor import run_attempt
from kernelflow.store import FolderStore
from kernelflow.widgets.alert import Alert

HOOKS = sorted(name for name, obj in vars(hookspecs).items() if name.startswith("kernelflow_") and callable(obj))


@contextmanager
def registered(plugin: object, name: str):
    plugin_host.register(plugin, name=name)
    try:
        yield plugin
    finally:
        plugin_host.unregister(plugin)


def events(run, type_: str) -> list[dict]:
    return [e.payload for e in run.store.read_run(run.run_id) if e.type == type_]


def an_alert(run_id: str = "r-1") -> Alert:
    return Alert(workflow="etl", task="load", run_id=run_id, metric="duration_s", value=42.1, baseline=12.0,
                 spread=1.3, score=23.2, rule="duration", severity="warning", message="slow",
                 raised_at=datetime.now(timezone.utc))  # fmt: skip


class Inline:
    """A minimal executor: each attempt on the calling thread."""

    name = "inline"

    def __init__(self, max_parallel):
        self.calls = []

    def submit(self, call, report):
        self.calls.append(call.task_id)
        report(run_attempt(call))
        return self

    def cancel(self):
        return False

    def shutdown(self, wait=False):
        pass


# --- the meta-test ------------------------------------------------------------------------


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_test(hook: str):
    tests = {name: fn for name, fn in globals().items() if name.startswith(f"test_hook_{hook}") and callable(fn)}
    assert tests, f"{hook} has no test: add test_hook_{hook}[_what] to tests/test_plugins.py (see this module's docstring)"
    implementing = [name for name, fn in tests.items() if f"def {hook}(" in (src := inspect.getsource(fn))
                    and "@kf.hookimpl" in src and "assert" in src]  # fmt: skip
    assert implementing, f"{', '.join(tests)} must register a @kf.hookimpl named {hook} and assert what kernelflow did with it"


def test_the_meta_test_sees_every_hook():
    assert set(HOOKS) >= {
        "kernelflow_register_executors", "kernelflow_open_store", "kernelflow_run_observers",
        "kernelflow_secret_providers", "kernelflow_register_alert_channels",
    }  # fmt: skip


# --- one test per hook --------------------------------------------------------------------


def test_hook_kernelflow_register_executors_runs_tasks_on_the_plugin_executor():
    made = []

    class Plugin:
        @kf.hookimpl
        def kernelflow_register_executors(self):
            def factory(max_parallel):
                made.append(Inline(max_parallel))
                return made[-1]

            return [ExecutorSpec("inline", factory, "runs tasks on the calling thread")]

    with registered(Plugin(), "inline-executor"):
        def a():
            return 20

        @kf.task(executor="inline")
        def b(a):
            return a + 1

        run = kf.workflow("on_inline", [a, b]).run()
    assert run.output == 21
    assert [e["executor"] for e in events(run, "TaskStarted")] == ["threads", "inline"]
    assert [x.calls for x in made] == [["b"]]  # one executor for the run, and it ran b only
    assert "inline" not in plugin_host.executors()


def test_hook_kernelflow_open_store_lets_a_plugin_claim_locations(tmp_path):
    opened = []

    class Memo:
        @kf.hookimpl(tryfirst=True)
        def kernelflow_open_store(self, location):
            if not location.startswith("memo://"):
                return None  # the folder store answers for paths
            opened.append(location)
            return FolderStore(tmp_path / location.removeprefix("memo://"))

    with registered(Memo(), "memo-store"):
        kf.use_store("memo://team")

        def a():
            return 1

        run = kf.workflow("in_memo", [a]).run()
        assert kf.open_store() is run.store
    assert opened == ["memo://team"]  # asked once, then the process keeps the store open
    assert isinstance(run.store, FolderStore) and Path(run.store.location) == tmp_path / "team"
    assert [r[0] for r in kf.history().select("run_id").rows()] == [run.run_id]


def test_hook_kernelflow_run_observers_watch_every_event():
    seen, finished, asked = [], [], []

    class Watcher:
        def on_events(self, run, events):
            seen.extend(e.type for e in events)

        def on_finish(self, run):
            finished.append(run.status)

    class Plugin:
        @kf.hookimpl
        def kernelflow_run_observers(self, run):
            asked.append((run.workflow.name, threading.current_thread() is threading.main_thread()))
            return [Watcher()]

    with registered(Plugin(), "watcher"):
        def a():
            return 1

        kf.workflow("watched_by_plugin", [a]).run()
    assert asked == [("watched_by_plugin", True)]  # once, on the thread that starts the run
    assert seen[0] == "RunStarted" and seen[-1] == "RunSucceeded"
    assert finished == ["succeeded"]


def test_hook_kernelflow_secret_providers_resolve_templates(monkeypatch):
    monkeypatch.setenv("KF_PLUGIN_TOKEN", "from-the-environment")
    asked = []

    class Vault:
        name = "vault"

        def get(self, name):
            asked.append(name)
            return "s3cr3t-from-vault" if name == "KF_PLUGIN_TOKEN" else None

    class Plugin:
        @kf.hookimpl
        def kernelflow_secret_providers(self):
            return [Vault()]

    with registered(Plugin(), "vault-secrets"):
        @kf.task(input={"token": "{{secrets.KF_PLUGIN_TOKEN}}"})
        def use(token):
            print(f"using {token}")
            return len(token)

        run = kf.workflow("secret_from_plugin", [use]).run()
    assert asked == ["KF_PLUGIN_TOKEN"]
    assert run.output == len("s3cr3t-from-vault")  # asked before the built-in env provider
    assert events(run, "TaskLogged")[0]["text"] == "using ***\n"  # and masked like any secret


def test_hook_kernelflow_register_alert_channels_adds_a_type_delivery_uses():
    sent = []

    class Memory:
        def __init__(self, *, label: str):
            self.label = label

        def send(self, alert, *, timeout):
            sent.append((self.label, alert.subject))

    class Plugin:
        @kf.hookimpl
        def kernelflow_register_alert_channels(self):
            return [ChannelSpec("memory", Memory, "keeps alerts in a list")]

    def a():
        return 1

    run = kf.workflow("alerted", [a]).run()
    with registered(Plugin(), "memory-channel"):
        assert alert_channels_api.channel_types()["memory"].description == "keeps alerts in a list"
        kf.alert_channel("mem", "memory", label="ops")
        alert_delivery.deliver(an_alert(run.run_id), channels=["mem"], run_id=run.run_id, alert_seq=0, key="k-1", store=run.store)
        assert alert_delivery.flush(10)
    assert sent == [("ops", "etl.load")]
    assert [(p["channel"], p["status"]) for p in events(run, "AlertDelivery")] == [("mem", "sent")]


# --- the example package, installed by scripts/setup ---------------------------------------


def test_the_installed_example_plugin_is_found_through_its_entry_point_and_works(tmp_path):
    try:
        dist = distribution("kernelflow-plugin-example")
    except PackageNotFoundError:
        pytest.fail("the example plugin is not installed: run scripts/setup (pip install ./examples/kernelflow-plugin-example)")
    [ep] = [ep for ep in dist.entry_points if ep.group == "kernelflow"]
    assert (ep.name, ep.value) == ("example", "kernelflow_plugin_example.plugin")
    origin = plugin_host.origin("example")
    assert (origin.distribution, origin.version, origin.builtin) == ("kernelflow-plugin-example", dist.version, False)
    plugin = plugin_host.get_plugin_manager().get_plugin("example")
    assert plugin.__name__ == "kernelflow_plugin_example.plugin"

    from kernelflow_plugin_example import timings

    def extract():
        return [1, 2, 3]

    @kf.task(executor="timed", retries=1, retry_delay=0)
    def total(extract):
        return sum(extract)

    run = kf.workflow("on_the_example", [extract, total]).run()
    assert run.output == 6
    assert [e["executor"] for e in events(run, "TaskStarted")] == ["threads", "timed"]
    assert [(t.task_id, t.outcome) for t in timings(run.run_id)] == [("total", "ok")]

    path = tmp_path / "alerts.jsonl"
    kf.alert_channel("audit", "jsonl", path=str(path))
    alert_delivery.deliver(an_alert(run.run_id), channels=["audit"], run_id=run.run_id, alert_seq=0, key="k-example", store=run.store)
    assert alert_delivery.flush(10)
    [line] = path.read_text().splitlines()
    assert json.loads(line)["run_id"] == run.run_id
    assert [(p["channel"], p["status"]) for p in events(run, "AlertDelivery")] == [("audit", "sent")]


# --- the plugin host ----------------------------------------------------------------------


def test_builtins_register_through_entry_points():
    pm = plugin_host.get_plugin_manager()
    names = dict(pm.list_name_plugin())
    assert names["thread_executor"].__name__ == "kernelflow.plugins.thread_executor"
    assert names["folder_store"].__name__ == "kernelflow.plugins.folder_store"
    assert "threads" in plugin_host.executors()
    assert plugin_host.origin("thread_executor").builtin


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

    with registered(Clash(), "clash"):
        with pytest.raises(kf.PluginError, match="'threads' is registered by both 'thread_executor' and 'clash'"):
            plugin_host.executors()
    assert "threads" in plugin_host.executors()


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


# --- a hook implementation with the wrong signature is refused at load ---------------------


def test_a_hookimpl_taking_a_parameter_the_hook_does_not_have_is_refused():
    class Wrong:
        @kf.hookimpl
        def kernelflow_open_store(self, location, mode):
            return None

    with pytest.raises(kf.PluginError) as info:
        plugin_host.register(Wrong(), name="wrong-store")
    assert str(info.value) == (
        "kernelflow plugin 'wrong-store' implements kernelflow_open_store as kernelflow_open_store(location, mode), "
        "but the hook is kernelflow_open_store(location: str) -> EventStore | None: kernelflow does not pass 'mode'. "
        "A hook implementation takes some or all of its hook's parameters, by name, and no others; "
        "fix the plugin (see kernelflow.plugins.hookspecs)."
    )
    pm = plugin_host.get_plugin_manager()
    assert not pm.has_plugin("wrong-store")  # nothing half-registered is left behind
    assert all(impl.plugin_name != "wrong-store" for impl in pm.hook.kernelflow_open_store.get_hookimpls())


def test_a_hookimpl_taking_fewer_parameters_is_fine():
    class Fewer:
        @kf.hookimpl
        def kernelflow_run_observers(self):
            return None

    with registered(Fewer(), "fewer"):
        def a():
            return 1

        assert kf.workflow("fewer_params", [a]).run().output == 1


@pytest.mark.slow
def test_an_installed_plugin_with_a_wrong_signature_is_refused_naming_its_package(tmp_path):
    source = tmp_path / "src"
    (source / "kf_wrong_sig").mkdir(parents=True)
    (source / "pyproject.toml").write_text(textwrap.dedent("""
        [build-system]
        requires = ["setuptools>=68"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "kf-wrong-sig"
        version = "0.3.0"

        [project.entry-points.kernelflow]
        wrongsig = "kf_wrong_sig.plugin"
    """))  # fmt: skip
    (source / "kf_wrong_sig" / "__init__.py").write_text("")
    (source / "kf_wrong_sig" / "plugin.py").write_text(textwrap.dedent("""
        from kernelflow import hookimpl

        @hookimpl
        def kernelflow_register_executors(max_parallel):
            return []
    """))  # fmt: skip
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(source)],
        check=True, capture_output=True, cwd=tmp_path,
    )  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(target), "KERNELFLOW_HOME": str(tmp_path / "store")}
    res = subprocess.run([sys.executable, "-m", "kernelflow", "plugins"], env=env, capture_output=True, text=True,
                         cwd=tmp_path, timeout=120)  # fmt: skip
    assert res.returncode == 1
    assert res.stderr.strip() == (
        "error: kernelflow plugin 'wrongsig' (entry point kf_wrong_sig.plugin, package kf-wrong-sig 0.3.0) "
        "implements kernelflow_register_executors as kernelflow_register_executors(max_parallel), "
        "but the hook is kernelflow_register_executors() -> list[ExecutorSpec]: kernelflow does not pass 'max_parallel'. "
        "A hook implementation takes some or all of its hook's parameters, by name, and no others; "
        "fix the plugin (see kernelflow.plugins.hookspecs)."
    )


# --- a plugin that raises is reported with its name and does not take the run down ---------


def plain_workflow(name: str, **task_options):
    def a():
        return 1

    @kf.task(**task_options)
    def b(a):
        return a + 1

    return kf.workflow(name, [a, b])


def test_a_plugin_raising_in_run_observers_is_skipped_once_and_the_others_still_watch():
    seen = []

    class Watcher:
        def on_events(self, run, events):
            seen.extend(events)

        def on_finish(self, run):
            pass

    class Good:
        @kf.hookimpl
        def kernelflow_run_observers(self, run):
            return [Watcher()]

    class Bad:
        @kf.hookimpl
        def kernelflow_run_observers(self, run):
            raise RuntimeError("no display here")

    with registered(Good(), "good-observer"), registered(Bad(), "bad-observer"):
        wf = plain_workflow("observed_despite")
        with pytest.warns(PluginWarning) as caught:
            first = wf.run()
            second = wf.run()
    assert (first.output, second.output) == (2, 2)
    messages = [str(w.message) for w in caught if issubclass(w.category, PluginWarning)]
    assert messages == [  # reported once, not at every run
        (
            "kernelflow plugin 'bad-observer' raised in kernelflow_run_observers: RuntimeError: no display here; "
            "it was skipped and the run goes on"
        )
    ]
    assert len(seen) == len(first.store.read_run(first.run_id)) + len(second.store.read_run(second.run_id))


@pytest.mark.parametrize("method", ["on_events", "on_finish"])
def test_an_observer_that_raises_is_detached_naming_its_plugin(method):
    calls = []

    class Fragile:
        def on_events(self, run, events):
            calls.append("on_events")
            if method == "on_events":
                raise ValueError("cannot draw")

        def on_finish(self, run):
            calls.append("on_finish")
            raise ValueError("cannot draw")

    class Plugin:
        @kf.hookimpl
        def kernelflow_run_observers(self, run):
            return [Fragile()]

    with registered(Plugin(), "fragile-display"):
        with pytest.warns(PluginWarning, match=(
            rf"run r-\w+: kernelflow plugin 'fragile-display': observer Fragile raised ValueError: cannot draw "
            rf"\(in {method}\); it was detached, the run goes on"
        )):  # fmt: skip
            run = plain_workflow("fragile").run()
    assert run.status == "succeeded"
    assert calls.count(method) == 1  # detached after the first failure


def test_a_secret_provider_plugin_that_raises_is_skipped(monkeypatch):
    monkeypatch.setenv("KF_PLUGIN_SECRET", "env-value")

    class Down:
        name = "vault"

        def get(self, name):
            raise ConnectionError("vault unreachable")

    class DownPlugin:
        @kf.hookimpl
        def kernelflow_secret_providers(self):
            return [Down()]

    class BrokenHook:
        @kf.hookimpl
        def kernelflow_secret_providers(self):
            raise ImportError("no vault client installed")

    with registered(DownPlugin(), "vault-down"), registered(BrokenHook(), "vault-broken"):
        @kf.task(input={"token": "{{secrets.KF_PLUGIN_SECRET}}"})
        def use(token):
            return token == "env-value"

        with pytest.warns(PluginWarning) as caught:
            run = kf.workflow("secret_despite", [use]).run()
        assert run.output is True  # the built-in env provider answered
        messages = sorted(str(w.message) for w in caught if issubclass(w.category, PluginWarning))
        assert messages == [
            (
                "kernelflow plugin 'vault-broken' raised in kernelflow_secret_providers: "
                "ImportError: no vault client installed; it was skipped and the run goes on"
            ),
            (
                "kernelflow plugin 'vault-down' raised in secret provider 'vault' get('KF_PLUGIN_SECRET'): "
                "ConnectionError: vault unreachable; the next provider was asked"
            ),
        ]
        monkeypatch.delenv("KF_PLUGIN_SECRET")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PluginWarning)
            missing = kf.workflow("secret_despite", [use]).run(raise_on_failure=False)
    assert "providers: vault, env; 'vault' raised ConnectionError" in missing.failures["use"].message


def test_a_plugin_raising_in_register_alert_channels_leaves_the_other_types():
    class Broken:
        @kf.hookimpl
        def kernelflow_register_alert_channels(self):
            raise KeyError("teams")

    with registered(Broken(), "broken-channels"):
        with pytest.warns(PluginWarning, match="kernelflow plugin 'broken-channels' raised in "
                          "kernelflow_register_alert_channels: KeyError: 'teams'; its channel types are not available"):
            kf.alert_channel("ops", "webhook", url="https://hooks.example.com/a")
        assert alert_channels_api.channel_type("ops") == "webhook"


def test_a_channel_whose_send_raises_is_recorded_and_given_up_on(monkeypatch):
    monkeypatch.setattr(alert_delivery, "MAX_ATTEMPTS", 1)

    class Exploding:
        def __init__(self):
            pass

        def send(self, alert, *, timeout):
            raise RuntimeError("socket closed")

    class Plugin:
        @kf.hookimpl
        def kernelflow_register_alert_channels(self):
            return [ChannelSpec("exploding", Exploding)]

    run = plain_workflow("alert_despite").run()
    with registered(Plugin(), "exploding-channel"):
        kf.alert_channel("boom", "exploding")
        alert_delivery.deliver(an_alert(run.run_id), channels=["boom"], run_id=run.run_id, alert_seq=0, key="k-boom", store=run.store)
        assert alert_delivery.flush(10)
    [record] = events(run, "AlertDelivery")
    assert (record["channel"], record["status"], record["error"]) == ("boom", "gave_up", "RuntimeError: socket closed")


def test_a_plugin_raising_in_register_executors_does_not_stop_runs_on_other_executors():
    class Broken:
        @kf.hookimpl
        def kernelflow_register_executors(self):
            raise RuntimeError("cluster config missing")

    with registered(Broken(), "broken-cluster"):
        with pytest.warns(PluginWarning, match="kernelflow plugin 'broken-cluster' raised in kernelflow_register_executors: "
                          "RuntimeError: cluster config missing; its executors are not available"):
            assert plain_workflow("threads_despite").run().output == 2
        with pytest.raises(kf.PluginError, match=r"no executor named 'cluster'; registered executors: .*threads.* "
                           r"\(kernelflow plugin 'broken-cluster' raised in kernelflow_register_executors"):
            plugin_host.executor_spec("cluster")


class Flaky:
    """An executor whose submit raises on the first ``failures`` calls."""

    name = "flaky"
    failures = 1

    def __init__(self, max_parallel):
        self.submits = 0

    def submit(self, call, report):
        self.submits += 1
        if self.submits <= self.failures:
            raise ConnectionError("scheduler refused the job")
        report(run_attempt(call))
        return self

    def shutdown(self, wait=False):
        pass


class FlakyPlugin:
    @kf.hookimpl
    def kernelflow_register_executors(self):
        return [ExecutorSpec("flaky", Flaky, "fails to submit")]


def test_an_executor_raising_in_submit_fails_that_attempt_and_the_retry_goes_on():
    with registered(FlakyPlugin(), "flaky-executor"):
        run = plain_workflow("submit_retried", executor="flaky", retries=1, retry_delay=0).run()
    assert run.output == 2
    [retrying] = events(run, "TaskRetrying")
    assert retrying["error"]["exc_type"] == "PluginError"
    assert retrying["error"]["message"] == (
        "executor 'flaky' from plugin 'flaky-executor' raised instead of starting the attempt: "
        "ConnectionError: scheduler refused the job"
    )
    assert "scheduler refused the job" in retrying["error"]["traceback"]


def test_an_executor_that_always_raises_fails_the_task_not_the_engine(monkeypatch):
    monkeypatch.setattr(Flaky, "failures", 99)
    with registered(FlakyPlugin(), "flaky-executor"):
        wf = plain_workflow("submit_failed", executor="flaky")
        run = wf.run(raise_on_failure=False)
    assert run.status == "failed" and run.engine_error is None
    assert run.failures["b"].exc_type == "PluginError"
    assert "plugin 'flaky-executor'" in run.failures["b"].message
    [failed] = events(run, "RunFailed")
    assert "interrupted" not in failed


def test_an_executor_factory_that_raises_fails_the_attempt():
    def factory(max_parallel):
        raise OSError("no GPU")

    class Plugin:
        @kf.hookimpl
        def kernelflow_register_executors(self):
            return [ExecutorSpec("gpu", factory)]

    with registered(Plugin(), "gpu-executor"):
        run = plain_workflow("no_gpu", executor="gpu").run(raise_on_failure=False)
    assert run.status == "failed" and run.engine_error is None
    assert run.failures["b"].message == (
        "executor 'gpu' from plugin 'gpu-executor' raised instead of starting the attempt: OSError: no GPU"
    )


def test_an_executor_raising_in_shutdown_is_reported_and_the_run_keeps_its_outcome():
    class Sticky(Inline):
        def shutdown(self, wait=False):
            raise RuntimeError("workers would not stop")

    class Plugin:
        @kf.hookimpl
        def kernelflow_register_executors(self):
            return [ExecutorSpec("sticky", Sticky)]

    with registered(Plugin(), "sticky-executor"):
        with pytest.warns(PluginWarning, match="kernelflow plugin 'sticky-executor' raised in executor 'sticky' shutdown: "
                          "RuntimeError: workers would not stop"):
            run = plain_workflow("sticky_end", executor="sticky").run()
    assert run.status == "succeeded"


# --- kernelflow plugins -------------------------------------------------------------------


def test_kernelflow_plugins_lists_each_plugin_its_origin_hooks_and_what_it_provides(capsys):
    from kernelflow.cli import main

    class Broken:
        @kf.hookimpl
        def kernelflow_register_alert_channels(self):
            raise RuntimeError("bad config")

        @kf.hookimpl
        def kernelflow_run_observers(self, run):
            return None

    with registered(Broken(), "half-broken"):
        assert main(["plugins", "--json"]) == 0
        rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)["plugins"]}
        assert main(["plugins"]) == 0
        text = capsys.readouterr().out
    assert rows["thread_executor"] == {
        "name": "thread_executor", "object": "kernelflow.plugins.thread_executor", "kind": "built-in",
        "entry_point": "kernelflow.plugins.thread_executor", "distribution": "kernelflow", "version": kf.__version__,
        "hooks": ["kernelflow_register_executors"], "provides": {"executors": ["threads"]}, "errors": [],
    }  # fmt: skip
    assert rows["folder_store"]["provides"] == {"store": True}
    assert rows["env_secrets"]["provides"] == {"secret_providers": ["env"]}
    assert rows["alert_channels"]["provides"] == {"alert_channels": ["webhook", "slack", "email"]}
    example = rows["example"]
    assert (example["kind"], example["distribution"], example["object"]) == (
        "third-party", "kernelflow-plugin-example", "kernelflow_plugin_example.plugin")
    assert example["provides"] == {"executors": ["timed"], "alert_channels": ["jsonl"]}
    broken = rows["half-broken"]
    assert (broken["kind"], broken["distribution"], broken["version"]) == ("run time", None, None)
    assert broken["object"].endswith(".Broken")
    assert broken["hooks"] == ["kernelflow_register_alert_channels", "kernelflow_run_observers"]
    assert broken["provides"] == {"run_observers": True}
    assert broken["errors"] == ["kernelflow_register_alert_channels raised RuntimeError: bad config"]
    assert "example  (third-party, kernelflow-plugin-example 0.1.0)  kernelflow_plugin_example.plugin\n" in text
    assert "    provides: executors: timed; alert channels: jsonl\n" in text
    assert "half-broken  (run time, registered in this process)" in text
    assert "    error: kernelflow_register_alert_channels raised RuntimeError: bad config\n" in text
