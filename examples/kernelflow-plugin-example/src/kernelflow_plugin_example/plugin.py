"""The module the ``kernelflow`` entry point names: only hook implementations.

Each function is named like a hook in ``kernelflow.plugins.hookspecs`` and
marked ``@kernelflow.hookimpl``. kernelflow checks them when it loads the
plugin: a misspelt name, or a parameter the hook does not have, is refused
with an error naming this plugin (``kernelflow plugins`` shows what loaded).
"""

from __future__ import annotations

from kernelflow import hookimpl
from kernelflow.alert_channels_api import ChannelSpec
from kernelflow.executor_api import ExecutorSpec

from .jsonl_channel import JsonLinesChannel
from .timed_executor import TimedExecutor


@hookimpl
def kernelflow_register_executors() -> list[ExecutorSpec]:
    return [ExecutorSpec("timed", TimedExecutor, "a thread per attempt, with each attempt's duration recorded")]


@hookimpl
def kernelflow_register_alert_channels() -> list[ChannelSpec]:
    return [ChannelSpec("jsonl", JsonLinesChannel, "appends each alert to a file as a JSON line")]
