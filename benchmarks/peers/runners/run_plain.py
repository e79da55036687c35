"""Plain Python: the same generated functions called directly, in order (the floor)."""

from __future__ import annotations

import time

import common


def main() -> None:
    spec = common.parse_args()
    workload, n = spec["workload"], int(spec["n"])
    started = time.perf_counter()
    namespace: dict = {}
    exec(compile(common.source_of(workload, n), "<workload>", "exec"), namespace)
    fns = [namespace[name] for name in common.names_of(workload, n)]
    define_s = time.perf_counter() - started

    if workload == "fanout":
        root, children, join = fns[0], fns[1:-1], fns[-1]

        def run_once():
            value = root()
            return join(*[fn(value) for fn in children])

        def check(result):
            assert result == n, result

    else:
        first, rest = fns[0], fns[1:]

        def run_once():
            value = first()
            for fn in rest:
                value = fn(value)
            return value

        def check(result):
            assert result in (None, 0), result

    common.measure(spec, run_once, check, import_s=0.0, define_s=define_s, per_sample=1 if workload == "sleep" else 100)


if __name__ == "__main__":
    main()
