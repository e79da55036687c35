"""Hamilton: the generated functions as a module, a driver built with the defaults, ``dr.execute``.

Hamilton resolves dependencies by parameter name, like kernelflow, so the
workload is the same generated module (with the type annotations Hamilton
reads). The default driver runs nodes one after another in the process and
stores nothing.

Its default executor recurses once per level of dependencies, so a chain of
1,000 steps exceeds Python's default recursion limit (1,000 frames):
``RecursionError: maximum recursion depth exceeded`` in ``hamilton/node.py``.
The runner raises the limit to 20,000 first, as a user with a deep chain would.
"""

from __future__ import annotations

import sys
import time
import types

import common

RECURSION_LIMIT = 20_000


def main() -> None:
    spec = common.parse_args()
    workload, n = spec["workload"], int(spec["n"])
    sys.setrecursionlimit(RECURSION_LIMIT)
    started = time.perf_counter()
    from hamilton import driver

    import_s = time.perf_counter() - started

    started = time.perf_counter()
    module = types.ModuleType(f"peers_{workload}_{n}")
    sys.modules[module.__name__] = module
    exec(compile(common.source_of(workload, n, annotate=True), "<workload>", "exec"), module.__dict__)
    dr = driver.Builder().with_modules(module).build()
    final = "join" if workload == "fanout" else f"t{n - 1}"
    define_s = time.perf_counter() - started

    def run_once():
        return dr.execute([final])

    def check(result):
        value = result[final]
        expected = n if workload == "fanout" else 0
        if hasattr(value, "iloc"):  # a pandas result builder
            value = value.iloc[0]
        assert value == expected, result

    common.measure(
        spec, run_once, check, import_s=import_s, define_s=define_s, extra=lambda: {"recursion_limit": RECURSION_LIMIT}
    )


if __name__ == "__main__":
    main()
