"""`kernelflow scheduler start --webhooks PORT`: signed POSTs start runs of webhook schedules (real processes, real HTTP)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from kernelflow.store import FolderStore
from kernelflow.webhooks import sign

pytestmark = pytest.mark.slow
SECRET = "s3cret-for-tests-0123456789"

FLOW = """\
name: deploy
inputs:
  action: str
  ref: {type: str, default: main}
schedule:
  name: on-push
  webhook: {secret_env: HOOK_SECRET, filter: "inputs.action == 'push'", rate: 5/min}
tasks:
  - id: echo
    run: shell
    argv: [echo, "{{inputs.action}} {{inputs.ref}}"]
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out waiting")


@pytest.fixture
def scheduler(tmp_path: Path):
    flow = tmp_path / "deploy.yaml"
    flow.write_text(FLOW)
    store, port = tmp_path / "store", free_port()
    env = {**os.environ, "HOOK_SECRET": SECRET}
    proc = subprocess.Popen(
        [sys.executable, "-m", "kernelflow", "--store", str(store), "scheduler", "start", str(flow), "--webhooks", str(port), "--grace", "5s"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def healthy():
        try:
            return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return proc.poll() is not None  # stop waiting if it died
    wait_until(healthy)
    assert proc.poll() is None, proc.stderr.read()
    yield url, store
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)


def post(url: str, body: dict, secret: str | None = SECRET) -> httpx.Response:
    raw = json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if secret is not None:
        headers["X-Kernelflow-Signature"] = sign(secret, raw)
    return httpx.post(f"{url}/hooks/on-push", content=raw, headers=headers, timeout=30)


def test_signed_posts_start_runs_and_bad_ones_start_nothing(scheduler):
    url, store = scheduler
    ok = post(url, {"action": "push", "ref": "v2"})
    assert ok.status_code == 202, ok.text
    assert ok.json()["outcome"] == "started" and ok.json()["schedule"] == "on-push"
    trigger_id = ok.json()["trigger_id"]

    def finished():
        rows = FolderStore(store).sql("SELECT status, inputs, trigger_id FROM runs").to_dicts()
        return rows if rows and rows[0]["status"] == "succeeded" else None
    rows = wait_until(finished)
    assert json.loads(rows[0]["inputs"]) == {"action": "push", "ref": "v2"} and rows[0]["trigger_id"] == trigger_id

    assert post(url, {"action": "push"}, secret="wrong-secret-0123456789").status_code == 401
    missing = post(url, {"action": "push"}, secret=None)
    assert missing.status_code == 401 and "missing X-Kernelflow-Signature" in missing.json()["error"]
    filtered = post(url, {"action": "tag"})
    assert filtered.status_code == 202 and filtered.json()["outcome"] == "filtered"
    too_big = post(url, {"action": "push", "blob": "x" * 2_000_000})
    assert too_big.status_code == 413
    # One trigger, settled when the scheduler saw its child end; the refused deliveries ran nothing.
    history = wait_until(lambda: (r := FolderStore(store).sql("SELECT kind, outcome FROM triggers").rows()) and r[0][1] != "started" and r)
    assert history == [("webhook", "succeeded")]
    assert FolderStore(store).sql("SELECT count(*) AS n FROM runs")["n"][0] == 1


def test_a_bad_webhook_spec_stops_the_scheduler_at_start(tmp_path: Path):
    flow = tmp_path / "deploy.yaml"
    flow.write_text(FLOW)
    env = {k: v for k, v in os.environ.items() if k != "HOOK_SECRET"}
    res = subprocess.run(
        [sys.executable, "-m", "kernelflow", "--store", str(tmp_path / "store"), "scheduler", "start", str(flow), "--webhooks", str(free_port())],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert res.returncode == 1
    assert "webhook trigger 'on-push'" in res.stderr and "HOOK_SECRET" in res.stderr
