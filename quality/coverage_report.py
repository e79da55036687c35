"""Line and branch coverage of kernelflow's core, as a markdown table.

Used by ``scripts/coverage``; reads the JSON report coverage.py wrote and
the core modules listed in ``quality/mutation/modules.tsv`` (the same list
mutation testing uses), and prints one row per module plus the total.

    python quality/coverage_report.py coverage.json [--min-branch 90]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODULES = REPO / "quality" / "mutation" / "modules.tsv"


def core_modules() -> list[str]:
    """Every module of modules.tsv, 'core' and 'slow' alike, in its order."""
    names = []
    for line in MODULES.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            names.append(line.split()[0])
    return list(dict.fromkeys(names))  # a file cut in slices has a line per slice


def rows(report: dict, modules: list[str]) -> list[tuple[str, int, int, int, int]]:
    """(module, statements, covered statements, branches, covered branches)."""
    files = {Path(name).resolve().relative_to(REPO).as_posix(): data for name, data in report["files"].items()
             if Path(name).resolve().is_relative_to(REPO)}
    out = []
    for module in modules:
        data = files.get(module)
        if data is None:
            raise SystemExit(f"coverage: {module} was never imported by the tests; is it still in the repository?")
        s = data["summary"]
        out.append((module, s["num_statements"], s["covered_lines"], s["num_branches"], s["covered_branches"]))
    return out


def pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f} %" if whole else "–"


def table(lines: list[tuple[str, int, int, int, int]]) -> str:
    out = ["| module | statements | line coverage | branches | branch coverage |", "|---|---|---|---|---|"]
    for module, stmts, covered, branches, cbranches in lines:
        out.append(f"| `{module}` | {stmts:,} | {pct(covered, stmts)} | {branches:,} | {pct(cbranches, branches)} |")
    total = [sum(col) for col in zip(*(line[1:] for line in lines))]
    out.append(f"| **core, all** | {total[0]:,} | {pct(total[1], total[0])} | {total[2]:,} | {pct(total[3], total[2])} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="coverage.py's JSON report")
    parser.add_argument("--min-branch", type=float, default=None, help="fail if the core's branch coverage is below this")
    args = parser.parse_args(argv)
    lines = rows(json.loads(args.report.read_text()), core_modules())
    print(table(lines))
    if args.min_branch is not None:
        branches = sum(line[3] for line in lines)
        covered = sum(line[4] for line in lines)
        if branches and 100 * covered / branches < args.min_branch:
            print(f"coverage: branch coverage of the core {100 * covered / branches:.1f} % is below {args.min_branch} %", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
