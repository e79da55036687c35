"""A pytest plugin loaded (``-p mutmut_plugin``) only in the runs of scripts/mutation.

``--recursion-limit=N`` raises Python's recursion limit for the run. mutmut 3 wraps
every mutated function in a trampoline: one call of it takes three Python frames
instead of one, so recursive code (the expression parser, which tests its own nesting
limit of 64 in tests/test_expressions.py::test_nesting_limit_is_64) hits the default
limit of 1000 long before its own, and mutmut's clean run fails. modules.tsv gives the
option to the modules that need it only: other tests rely on the default limit (e.g.
tests/test_cell_compiler.py::test_a_default_too_deep_to_record_is_a_definition_error
expects ast.unparse to recurse out at 1000).
"""

import sys


def pytest_addoption(parser):
    parser.addoption("--recursion-limit", type=int, default=None,
                     help="sys.setrecursionlimit() for this run (scripts/mutation)")


def pytest_configure(config):
    limit = config.getoption("--recursion-limit")
    if limit:
        sys.setrecursionlimit(limit)
