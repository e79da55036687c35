"""The ``jsonl`` alert channel type: settings checked at configuration, alerts appended as JSON lines."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

import kernelflow as kf
from kernelflow.alert_channels_api import ChannelConfigError, ChannelSendError, channel, channel_types
from kernelflow.widgets.alert import Alert


def an_alert(**changes):
    fields = dict(workflow="etl", task="load", run_id="r-1", metric="duration_s", value=42.1, baseline=12.0,
                  spread=1.3, score=23.2, rule="duration", severity="warning", message="slow",
                  raised_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc))  # fmt: skip
    return Alert(**{**fields, **changes})


def test_the_type_is_registered():
    assert channel_types()["jsonl"].description == "appends each alert to a file as a JSON line"


def test_each_alert_is_appended_as_one_json_line(tmp_path):
    path = tmp_path / "alerts.jsonl"
    kf.alert_channel("audit", "jsonl", path=str(path))
    audit = channel("audit")
    audit.send(an_alert(), timeout=5)
    audit.send(an_alert(task="publish"), timeout=5, suppressed=2)
    first, second = [json.loads(line) for line in path.read_text().splitlines()]
    assert (first["workflow"], first["task"], first["value"], first["suppressed"]) == ("etl", "load", 42.1, 0)
    assert first["text"] == "etl.load: 42.1 s — baseline 12.0 s ± 1.3, z = 23.2"
    assert first["raised_at"] == 1767323045000000  # UTC microseconds, as in the AlertRaised event
    assert (second["task"], second["suppressed"]) == ("publish", 2)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"path": ""}, "path must be a non-empty file path"),
        ({"path": "{tmp}/missing/alerts.jsonl"}, "the folder of path '{tmp}/missing/alerts.jsonl' does not exist"),
        ({"path": "{tmp}"}, "path '{tmp}' is a folder, not a file"),
        ({"path": "{tmp}/a.jsonl", "timeout_s": 0}, "timeout_s must be a number of seconds above 0"),
        ({"pth": "{tmp}/a.jsonl"}, "unknown setting 'pth' (did you mean 'path'?)"),
        ({}, "the setting 'path' is required"),
    ],
)
def test_bad_settings_are_refused_when_the_channel_is_configured(tmp_path, settings, message):
    settings = {k: v.format(tmp=tmp_path) if isinstance(v, str) else v for k, v in settings.items()}
    with pytest.raises(ChannelConfigError) as info:
        kf.alert_channel("audit", "jsonl", **settings)
    assert message.format(tmp=tmp_path) in str(info.value)
    assert "alert channel 'audit' (jsonl)" in str(info.value)  # kernelflow says which channel


def test_a_folder_removed_after_configuration_fails_the_send_without_retrying(tmp_path):
    folder = tmp_path / "logs"
    folder.mkdir()
    kf.alert_channel("audit", "jsonl", path=str(folder / "alerts.jsonl"))
    folder.rmdir()
    with pytest.raises(ChannelSendError, match="its folder is gone") as info:
        channel("audit").send(an_alert(), timeout=5)
    assert info.value.retry is False
