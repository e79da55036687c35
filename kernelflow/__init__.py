"""kernelflow: workflows that live in the notebook.

>>> import kernelflow as kf
>>> def extract(): return [1, 2, 3]
>>> def total(extract): return sum(extract)
>>> kf.workflow("demo", [extract, total]).order
('extract', 'total')

In Jupyter, ``%load_ext kernelflow`` adds the ``%%workflow`` and ``%%kfsql``
cell magics and the ``%workflow`` line magic.
"""

from __future__ import annotations

from typing import Any

from .api import diff, history, plugin_names, sql, workflows
from .alerting import alert_channel, alerts
from .approvals import approvals, approve, reject
from .durable import context, now, random, remember, sleep
from .recovery import unfinished_runs
from .retention_api import gc
from .resume import fork, resume
from .replay import replay  # the function: it shadows the module of the same name
from .circuits import circuit, circuits
from .dask_api import use_dask
from .dead_letters import dlq
from .decorators import approval, for_each, task
from .definitions import workflow
from .engine import back_to, skip_to
from .step_factories import http, notebook, shell, step, subworkflow, switch
from .records import record, records
from .schedule_api import schedule, schedules, unschedule
from .schedules import Schedule
from .yaml_compiler import load
from .events import Event
from .exceptions import (
    CycleError,
    DefinitionError,
    InputError,
    KernelflowError,
    NotAStoreError,
    OptionError,
    PluginError,
    RunFailedError,
    StoreError,
    StoreVersionError,
    TaskFailure,
)
from .model import Task, TaskOptions, Workflow
from .plugins.hookspecs import hookimpl
from .reducer import RunState, TaskState, fold
from .run import Run
from .store_access import open_store, store_location, use_store
from .plugins.otel_listener import use_opentelemetry  # imports no OpenTelemetry until a run is traced

__version__ = "0.1.0"

__all__ = [
    "CycleError",
    "DefinitionError",
    "Event",
    "InputError",
    "KernelflowError",
    "NotAStoreError",
    "OptionError",
    "PluginError",
    "Run",
    "Schedule",
    "RunFailedError",
    "RunState",
    "StoreError",
    "StoreVersionError",
    "Task",
    "TaskFailure",
    "TaskOptions",
    "TaskState",
    "Workflow",
    "alert_channel",
    "alerts",
    "approval",
    "approvals",
    "approve",
    "back_to",
    "circuit",
    "circuits",
    "context",
    "dag",
    "diff",
    "dlq",
    "for_each",
    "fork",
    "gc",
    "fold",
    "history",
    "hookimpl",
    "http",
    "load",
    "notebook",
    "now",
    "open_store",
    "plugin_names",
    "random",
    "record",
    "records",
    "reject",
    "schedule",
    "schedules",
    "remember",
    "replay",
    "resume",
    "shell",
    "skip_to",
    "sleep",
    "sql",
    "step",
    "store_location",
    "subworkflow",
    "switch",
    "task",
    "timeline",
    "unschedule",
    "unfinished_runs",
    "use_opentelemetry",
    "use_dask",
    "use_store",
    "workflow",
    "workflows",
]


def dag(target: Any) -> Any:
    """The live DAG widget of a workflow, a :class:`Run` or a run id (read from the store).

    A run that is not finished keeps updating the widget as its events arrive,
    whoever drives it. Needs a notebook to show the widget; its static HTML
    shows elsewhere.
    """
    from .widgets.dag import dag as make

    return make(target)


def timeline(target: Any) -> Any:
    """A run's timeline (task bars over time) with a slider that scrubs the DAG through its history."""
    from .widgets.timeline import timeline as make

    return make(target)


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext kernelflow``: the one place the core hands over to the notebook layer."""
    from .kernel_ext import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    from .kernel_ext import unload_ipython_extension as unload

    unload(ipython)
