"""A pytest plugin loaded (``-p mutmut_plugin``) only in the runs of scripts/mutation.

mutmut 3 wraps every mutated function in a trampoline: one call of it takes three
Python frames instead of one. Recursive code (the expression parser, which tests its
own nesting limit of 64 in tests/test_expressions.py::test_nesting_limit_is_64) then
hits Python's recursion limit of 1000 long before its own limit, and the clean run fails.
A limit five times higher gives the wrapped code the same room the plain code has.
"""

import sys


def pytest_configure(config):  # noqa: ARG001 - pytest hook
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 5000))
