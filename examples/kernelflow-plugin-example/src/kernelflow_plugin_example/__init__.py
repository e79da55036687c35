"""An example kernelflow plugin.

- ``timed``: an executor that runs each task attempt on its own thread and
  records how long it took (:func:`timings`).
- ``jsonl``: an alert channel type that appends each alert to a file as one
  JSON object per line.

Installed, it is found through its entry point (group ``kernelflow``, name
``example``, module :mod:`kernelflow_plugin_example.plugin`)::

    @kf.task(executor="timed")
    def load(): ...

    kf.alert_channel("audit", "jsonl", path="alerts.jsonl")
"""

from .jsonl_channel import JsonLinesChannel
from .timed_executor import TimedExecutor, Timing, clear_timings, timings

__all__ = ["JsonLinesChannel", "TimedExecutor", "Timing", "clear_timings", "timings"]
