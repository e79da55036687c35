"""A pytest plugin loaded (``-p mutmut_plugin``) only in the runs of scripts/mutation.

``--recursion-limit=N`` raises Python's recursion limit for the run. mutmut 3 wraps
every mutated function in a trampoline: one call of it takes three Python frames
instead of one, so recursive code (the expression parser, which tests its own nesting
limit of 64 in tests/test_expressions.py::test_nesting_limit_is_64) hits the default
limit of 1000 long before its own, and mutmut's clean run fails. modules.tsv gives the
option to the modules that need it only: other tests rely on the default limit (e.g.
tests/test_cell_compiler.py::test_a_default_too_deep_to_record_is_a_definition_error
expects ast.unparse to recurse out at 1000).

``--without-plugin=NAME`` unregisters one of kernelflow's plugins for the run. The engine's
lines use it for the anomaly detector: every run it observes loads the workflow's history
from the store first (a DuckDB connection and a query, about 20 % of an engine test that
starts from an empty store, as each test does), and no engine test looks at its alerts;
its own tests (tests/test_anomaly*.py) run in the ordinary suite.
"""

import sys

_unregistered: set[str] = set()


def pytest_addoption(parser):
    parser.addoption("--recursion-limit", type=int, default=None,
                     help="sys.setrecursionlimit() for this run (scripts/mutation)")
    parser.addoption("--without-plugin", action="append", default=[], metavar="NAME",
                     help="unregister this kernelflow plugin for the run (scripts/mutation)")


def pytest_configure(config):
    limit = config.getoption("--recursion-limit")
    if limit:
        sys.setrecursionlimit(limit)
    names = config.getoption("--without-plugin")
    if names:
        from kernelflow.plugin_host import get_plugin_manager

        pm = get_plugin_manager()
        for name in names:
            plugin = pm.get_plugin(name)
            if plugin is None and name in _unregistered:  # mutmut runs pytest several times in one process
                continue
            if plugin is None:
                raise SystemExit(f"--without-plugin={name}: no such kernelflow plugin; known: {', '.join(n for n, _ in pm.list_name_plugin())}")
            pm.unregister(plugin)
            _unregistered.add(name)
