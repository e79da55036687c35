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

from .api import history, plugin_names, sql, workflows
from .decorators import task
from .definitions import workflow
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
    "RunFailedError",
    "RunState",
    "StoreError",
    "StoreVersionError",
    "Task",
    "TaskFailure",
    "TaskOptions",
    "TaskState",
    "Workflow",
    "fold",
    "history",
    "hookimpl",
    "open_store",
    "plugin_names",
    "sql",
    "store_location",
    "task",
    "use_store",
    "workflow",
    "workflows",
]


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext kernelflow``: the one place the core hands over to the notebook layer."""
    from .kernel_ext import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    from .kernel_ext import unload_ipython_extension as unload

    unload(ipython)
