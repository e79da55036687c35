"""Helper of scripts/mutation: stage a module for mutmut, collect its results, print the table.

    python quality/mutation/mutation.py modules [--core] [MODULE ...]
    python quality/mutation/mutation.py stage MODULE          -> prints the work dir and the mutant filter
    python quality/mutation/mutation.py collect MODULE --seconds S --rev REV
    python quality/mutation/mutation.py table [--markdown FILE]

Why a staged tree: mutmut 3 names a mutant after its file's path relative to where it
runs (store/segments.py -> ``store.segments.x_append__mutmut_1``) and ties tests to
mutants through ``orig.__module__`` (``kernelflow.store.segments``). The package-dir
mapping (pyproject.toml) makes those differ for store/, plugins/, widgets/ and
kernel_ext/, so mutmut would report every store mutant as "no tests". In
``.mutation/<module>/`` the files are laid out as the installed package is
(``kernelflow/store/segments.py``, symlinks to the work tree), mutmut copies that to
``mutants/`` and puts it first on ``sys.path``: ``import kernelflow.store`` then loads
the mutated copy (the editable install's finder comes after the path finder).

Results go to ``.mutation/results/<module>.json`` (git-ignored), one file per module.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shutil
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
WORK = ROOT / ".mutation"
RESULTS = WORK / "results"

STATUSES = ("killed", "timeout", "survived", "no tests", "suspicious", "segfault", "skipped",
            "caught by type check", "not checked", "check was interrupted by user")


# ---------------------------------------------------------------- the module table

class Module:
    def __init__(self, path: str, mutants: str, run: str, tests: list[str], options: list[str]):
        self.path, self.mutants, self.run, self.tests, self.options = path, mutants, run, tests, options
        # A slice of a big file: 'NAME=GLOB,GLOB...' in the mutants column. Each slice is a
        # line of its own (own test list, own staged dir .mutation/<module>@NAME/, own results).
        self.slice: str | None = None
        self.globs: list[str] = [] if mutants == "*" else [mutants]
        if "=" in mutants:
            name, _, globs = mutants.partition("=")
            if not re.fullmatch(r"[A-Za-z0-9_]+", name) or not globs:
                raise SystemExit(f"modules.tsv: a slice is NAME=GLOB[,GLOB...] with NAME of letters, digits, _; got {mutants!r}")
            self.slice, self.globs = name, [self._glob(g) for g in globs.split(",") if g]

    def _glob(self, entry: str) -> str:
        """A slice's entry as a glob of mutant names: a whole glob (it starts with the import
        path) as is; ``Class.method`` / ``Class.*`` / ``function`` for the file's own names."""
        base = self.staged[: -len(".py")].replace("/", ".")
        if entry.startswith(base + "."):
            return entry
        if "." in entry:
            cls, _, method = entry.partition(".")
            return f"{base}.xǁ{cls}ǁ*" if method == "*" else f"{base}.xǁ{cls}ǁ{method}__mutmut_*"
        return f"{base}.x_{entry}__mutmut_*"

    @property
    def staged(self) -> str:
        """The file's path in the staged tree = its import path."""
        for package, folder in package_dirs().items():
            prefix = folder.rstrip("/") + "/"
            if self.path.startswith(prefix):
                return package.replace(".", "/") + "/" + self.path[len(prefix):]
        raise SystemExit(f"{self.path}: not in any package folder of pyproject.toml")

    @property
    def slug(self) -> str:
        base = self.staged[: -len(".py")].replace("/", ".")
        return f"{base}@{self.slice}" if self.slice else base

    @property
    def mutant_filter(self) -> str | None:
        """The globs of mutant names, comma separated (None: every mutant of the file)."""
        return ",".join(self.globs) if self.globs else None

    def selects(self, key: str) -> bool:
        return not self.globs or any(fnmatch.fnmatch(key, g) for g in self.globs)


def package_dirs() -> dict[str, str]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))
    mapping = data["tool"]["setuptools"]["package-dir"]
    # longest folder first, so "store/x.py" is not taken for the "kernelflow" folder
    return dict(sorted(mapping.items(), key=lambda kv: -len(kv[1])))


def read_modules() -> list[Module]:
    modules = []
    for line in (HERE / "modules.tsv").read_text("utf-8").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        path, mutants, run, *tests = line.split()
        if run not in ("core", "slow"):
            raise SystemExit(f"modules.tsv: run must be core or slow, got {run!r} for {path}")
        options = [t for t in tests if t.startswith("-")]
        modules.append(Module(path, mutants, run, [t for t in tests if not t.startswith("-")], options))
    slugs = [m.slug for m in modules]
    for slug in set(slugs):
        if slugs.count(slug) > 1:
            raise SystemExit(f"modules.tsv: {slug} is listed twice; give each slice of a file its own NAME=globs")
    return modules


def find_modules(name: str) -> list[Module]:
    """The lines for ``name``: a slug names one line; a file's path names all its slices."""
    modules = read_modules()
    for m in modules:
        if name == m.slug:
            return [m]
    found = [m for m in modules if name in (m.path, m.staged, m.slug, "./" + m.path)]
    if not found:
        raise SystemExit(f"{name}: not in quality/mutation/modules.tsv; known: {', '.join(m.path for m in modules)}")
    return found


def find_module(name: str) -> Module:
    found = find_modules(name)
    if len(found) > 1:
        raise SystemExit(f"{name}: has several slices in modules.tsv ({', '.join(m.slug for m in found)}); name one")
    return found[0]


# ---------------------------------------------------------------- staging

def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(value)


def stage(module: Module) -> Path:
    work = WORK / module.slug
    work.mkdir(parents=True, exist_ok=True)
    # Everything but mutants/ (mutmut's cache of mutants and results) is laid anew.
    for child in work.iterdir():
        if child.name == "mutants":
            continue
        if child.is_symlink() or child.is_file():
            child.unlink()
        else:
            shutil.rmtree(child)
    for package, folder in package_dirs().items():
        src, dest = ROOT / folder, work / package.replace(".", "/")
        for dirpath, dirnames, filenames in os.walk(src):
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            rel = Path(dirpath).relative_to(src)
            for name in filenames:
                if name.endswith((".pyc", ".pyo")):
                    continue
                target = dest / rel / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.symlink_to(Path(dirpath) / name)
    for name in ("tests", "docs"):
        (work / name).symlink_to(ROOT / name)
    (work / "mutmut_plugin.py").symlink_to(HERE / "mutmut_plugin.py")

    settings = tomllib.loads((HERE / "mutmut.toml").read_text("utf-8"))["tool"]["mutmut"]
    settings["source_paths"] = ["kernelflow"]
    settings["only_mutate"] = [module.staged]
    settings["pytest_add_cli_args_test_selection"] = list(module.tests)
    extra = ["-m", "not slow"] if module.run == "core" else []
    settings["pytest_add_cli_args"] = list(settings.get("pytest_add_cli_args", [])) + extra + module.options
    text = (ROOT / "pyproject.toml").read_text("utf-8")
    text = re.sub(r"(?ms)^\[tool\.mutmut\].*?(?=^\[|\Z)", "", text)
    text += "\n# Generated by quality/mutation/mutation.py from quality/mutation/mutmut.toml and modules.tsv\n[tool.mutmut]\n"
    text += "".join(f"{key} = {_toml_value(value)}\n" for key, value in settings.items())
    (work / "pyproject.toml").write_text(text, "utf-8")
    return work


# ---------------------------------------------------------------- results

def _line_of(source_lines: list[str], orig_code: str, class_name: str | None) -> int | None:
    """1-based line in the source where the function whose code is ``orig_code`` starts."""
    first = orig_code.split("\n", 1)[0].strip()
    start = 0
    if class_name:
        for i, line in enumerate(source_lines):
            if re.match(rf"\s*class {re.escape(class_name)}\b", line):
                start = i
                break
    for i in range(start, len(source_lines)):
        if source_lines[i].strip() == first:
            return i + 1
    return None


def collect(module: Module, seconds: float, rev: str, sample_size: int | None = None) -> dict:
    work = WORK / module.slug
    os.chdir(work)
    from mutmut.mutation.data import SourceFileMutationData
    from mutmut.mutation.diff_apply import get_diff_for_mutant, read_functions_from_index
    from mutmut.stats import status_by_exit_code
    from mutmut.utils.format_utils import orig_function_and_class_names_from_key
    import libcst as cst
    import mutmut

    data = SourceFileMutationData(path=Path(module.staged))
    data.load()
    keys = [k for k in sorted(data.exit_code_by_key) if module.selects(k)]
    in_file = len(keys)
    if sample_size:  # only the drawn mutants count, whatever earlier runs left in the cache
        keys = _drawn(keys, module, sample_size)
    counts = {s: 0 for s in STATUSES}
    listed = []
    source_lines = (ROOT / module.path).read_text("utf-8").splitlines()
    for key in keys:
        status = status_by_exit_code[data.exit_code_by_key[key]]
        counts[status] = counts.get(status, 0) + 1
        if status in ("survived", "no tests", "suspicious", "segfault"):
            func, class_name = orig_function_and_class_names_from_key(key)
            diff = get_diff_for_mutant(key, path=Path(module.staged))
            # line of the function in the source: from the original function's code
            functions = read_functions_from_index(key, Path(module.staged))
            orig_code = cst.Module([functions[0]]).code.strip() if functions else ""
            start = _line_of(source_lines, orig_code, class_name) if orig_code else None
            changed = [ln for ln in diff.splitlines() if ln[:1] in "+-" and not ln.startswith(("+++", "---"))]
            line_no = None
            hunk = re.search(r"^@@ -(\d+)", diff, re.M)
            if start and hunk:
                body = diff[hunk.end():].split("\n")[1:]
                first_change = next((i for i, ln in enumerate(body) if ln[:1] in "+-"), 0)
                line_no = start + int(hunk.group(1)) - 1 + first_change
            listed.append({"mutant": key, "status": status, "function": (f"{class_name}." if class_name else "") + func,
                           "line": line_no, "changed": changed, "diff": diff})
    scored = sum(counts[s] for s in ("killed", "timeout", "caught by type check", "survived", "no tests",
                                     "suspicious", "segfault"))
    killed = counts["killed"] + counts["timeout"] + counts["caught by type check"]
    result = {
        "module": module.path, "import": module.slug, "mutants": module.mutants, "tests": module.tests,
        "run": module.run, "rev": rev, "date": time.strftime("%Y-%m-%d"), "seconds": round(seconds, 1),
        "tool": f"mutmut {mutmut.__version__ if hasattr(mutmut, '__version__') else _mutmut_version()}",
        "total": len(keys), "scored": scored, "killed_or_timeout": killed,
        "score": round(100.0 * killed / scored, 1) if scored else None,
        "counts": counts, "not_killed": listed,
        "sampled": bool(sample_size) and len(keys) < in_file, "mutants_in_file": in_file,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{module.slug}.json").write_text(json.dumps(result, indent=1, ensure_ascii=False), "utf-8")
    return result


def sample(module: Module, size: int) -> list[str]:
    """A fixed random sample of ``size`` of the line's mutants (all of them if it has fewer).

    Generates the mutants first, as the start of ``mutmut run`` does (so the run that
    follows finds them up to date), then draws with a seed made from the line's slug: the
    same code gives the same sample on every machine, and a changed file a new one.
    """
    work = WORK / module.slug
    os.chdir(work)
    sys.path.insert(0, str(work))
    import contextlib
    import io
    from mutmut.__main__ import copy_also_copy_files, copy_src_dir, create_mutants, setup_source_paths
    from mutmut.mutation.data import SourceFileMutationData

    with contextlib.redirect_stdout(io.StringIO()):  # mutmut prints every file it copies
        copy_src_dir()
        copy_also_copy_files()
        setup_source_paths()
        create_mutants(1)
    data = SourceFileMutationData(path=Path(module.staged))
    data.load()
    return _drawn([k for k in data.exit_code_by_key if module.selects(k)], module, size)


def _drawn(keys: list[str], module: Module, size: int) -> list[str]:
    import random

    keys = sorted(keys)
    if len(keys) <= size:
        return keys
    return sorted(random.Random(f"{module.slug}:{len(keys)}").sample(keys, size))


def _mutmut_version() -> str:
    from importlib.metadata import version
    return version("mutmut")


def table(markdown: Path | None) -> None:
    order = {m.slug: i for i, m in enumerate(read_modules())}
    results = [json.loads(p.read_text("utf-8")) for p in sorted(RESULTS.glob("*.json"))]
    results.sort(key=lambda r: order.get(r["import"], 99))
    if not results:
        print("no results yet (.mutation/results/ is empty)")
        return
    head = ("module", "killed", "total", "score", "survived", "timeout", "no tests", "other", "time", "rev")
    rows = []
    for r in results:
        c = r["counts"]
        other = c.get("suspicious", 0) + c.get("segfault", 0) + c.get("not checked", 0) + c.get("skipped", 0)
        if r["mutants"] == "*":
            name = r["module"]
        elif "=" in r["mutants"]:
            name = f"{r['module']} ({r['mutants'].partition('=')[0]})"
        else:
            name = f"{r['module']} ({r['mutants'].rsplit('.', 1)[-1]})"
        if r.get("sampled"):
            name += f" [{r['total']} of {r['mutants_in_file']}]"
        rows.append((name, str(r["killed_or_timeout"]), str(r["scored"]),
                     f"{r['score']:.1f} %" if r["score"] is not None else "-",
                     str(c.get("survived", 0)), str(c.get("timeout", 0)), str(c.get("no tests", 0)), str(other),
                     f"{r['seconds'] / 60:.1f} min", r["rev"][:9]))
    killed = sum(r["killed_or_timeout"] for r in results)
    scored = sum(r["scored"] for r in results)
    rows.append(("all", str(killed), str(scored), f"{100.0 * killed / scored:.1f} %" if scored else "-",
                 *(str(sum(r["counts"].get(k, 0) for r in results)) for k in ("survived", "timeout", "no tests")), "",
                 f"{sum(r['seconds'] for r in results) / 60:.1f} min", ""))
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    print(fmt.format(*head))
    for row in rows:
        print(fmt.format(*row))
    print("killed = killed + timeout; total = mutants tested (killed, survived, timeout, no tests, suspicious);"
          " 'other' = suspicious, segfault, not checked")
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        out += ["| " + " | ".join(row) + " |" for row in rows]
        out.append("")
        for r in results:
            if not r["not_killed"]:
                continue
            out.append(f"### {r['module']}: not killed ({len(r['not_killed'])})\n")
            for s in r["not_killed"]:
                where = f"line {s['line']}" if s["line"] else "?"
                out.append(f"- `{s['mutant'].rsplit('.', 1)[-1]}` ({s['status']}, {s['function']}, {where})")
                out.append("  ```diff")
                out += [f"  {ln}" for ln in s["changed"]]
                out.append("  ```")
            out.append("")
        markdown.write_text("\n".join(out), "utf-8")


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("modules")
    p.add_argument("names", nargs="*")
    p = sub.add_parser("stage")
    p.add_argument("name")
    p = sub.add_parser("collect")
    p.add_argument("name")
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--rev", required=True)
    p.add_argument("--sample", type=int, default=None)
    p = sub.add_parser("sample")
    p.add_argument("name")
    p.add_argument("size", type=int)
    p = sub.add_parser("table")
    p.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    if args.command == "modules":
        chosen = [m for n in args.names for m in find_modules(n)] if args.names else [m for m in read_modules() if m.run == "core"]
        for m in chosen:
            print(f"{m.path}\t{m.slug}\t{m.mutant_filter or ''}")
    elif args.command == "stage":
        print(stage(find_module(args.name)))
    elif args.command == "collect":
        r = collect(find_module(args.name), args.seconds, args.rev, args.sample)
        print(f"{r['module']}: {r['killed_or_timeout']}/{r['scored']} killed"
              f" ({r['score']} %), {r['counts']['survived']} survived, {r['counts']['no tests']} no tests")
    elif args.command == "sample":
        print("\n".join(sample(find_module(args.name), args.size)))
    elif args.command == "table":
        table(args.markdown)


if __name__ == "__main__":
    sys.exit(main())
