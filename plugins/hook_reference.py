"""The hook reference in ``docs/plugins.md``, generated from :mod:`kernelflow.plugins.hookspecs`.

Each hook is rendered with its exact signature (as written in the
hookspecs, annotations included), whether it stops at the first result, and
its docstring, under the banner comment that groups it. The text goes
between the ``<!-- hook reference: start -->`` and ``<!-- hook reference:
end -->`` markers; everything else in the file is left alone.

    python -m kernelflow.plugins.hook_reference            # rewrite docs/plugins.md
    python -m kernelflow.plugins.hook_reference --check    # exit 1 if it is out of date

``tests/test_docs.py`` fails when the file and the hookspecs disagree.
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from kernelflow.plugins import hookspecs

START = "<!-- hook reference: start -->"
END = "<!-- hook reference: end -->"
COMMAND = "python -m kernelflow.plugins.hook_reference"
DOC = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"
"""``docs/plugins.md`` of a source checkout (kernelflow installed editable)."""

_BANNER = re.compile(r"^# --- (.+?) -*$")
_DEF = re.compile(r"^def (kernelflow_\w+)\(")
_ROLE = re.compile(r":(?:class|func|meth|mod|data|exc|attr|obj):`~?([^`]+)`")


def hooks() -> list[tuple[str, list[str]]]:
    """``(group title, [hook name, ...])`` in the order of the hookspecs module."""
    groups: list[tuple[str, list[str]]] = []
    for line in inspect.getsource(hookspecs).splitlines():
        banner = _BANNER.match(line)
        if banner:
            groups.append((banner.group(1).strip(), []))
            continue
        found = _DEF.match(line)
        if found:
            if not groups:
                groups.append(("hooks", []))
            groups[-1][1].append(found.group(1))
    return [(title, names) for title, names in groups if names]


def _markdown(doc: str) -> str:
    """A hookspec docstring (reStructuredText-ish) as Markdown."""
    text = _ROLE.sub(lambda m: f"`{m.group(1)}`", inspect.cleandoc(doc))
    text = re.sub(r"``(.+?)``", r"`\1`", text, flags=re.S)
    out: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.rstrip().endswith("::"):
            # A literal block: the indented lines after a paragraph ending in "::".
            out.append(line.rstrip()[:-1])
            i += 1
            block: list[str] = []
            while i < len(lines) and (not lines[i].strip() or lines[i].startswith((" ", "\t"))):
                block.append(lines[i])
                i += 1
            out += ["", "```", *inspect.cleandoc("\n".join(block)).splitlines(), "```", ""]
            continue
        out.append(line)
        i += 1
    return "\n".join(out).strip()


def render() -> str:
    """The reference: the text that goes between the markers."""
    from kernelflow.plugin_host import signature_text

    parts = [
        (
            f"<!-- Generated from the docstrings in plugins/hookspecs.py by `{COMMAND}`: "
            "edit those and run it, not this text. -->"
        ),
    ]
    for title, names in hooks():
        parts.append(f"### {title[0].upper()}{title[1:]}")
        for name in names:
            spec = getattr(hookspecs, name)
            opts = getattr(spec, f"{hookspecs.PROJECT}_spec", None) or {}
            params = ", ".join(inspect.signature(spec).parameters)
            if opts.get("firstresult"):
                how = "**firstresult**: implementations are called in turn and the first non-None result is the answer."
            else:
                how = "**Collected**: every implementation is called, each on its own; kernelflow uses all their non-None results."
            parts += [
                f"#### `{name}({params})`",
                f"```text\n{signature_text(spec, name)}\n```",
                how,
                _markdown(spec.__doc__ or "(no docstring)"),
            ]
    return "\n\n".join(parts) + "\n"


def update(text: str) -> str:
    """``text`` (a Markdown file) with the reference between its markers replaced."""
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"the file has no {START} ... {END} markers; add them where the hook reference goes")
    return text[: start + len(START)] + "\n\n" + render() + "\n" + text[end:]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description="Regenerate the hook reference in docs/plugins.md.")
    parser.add_argument("path", nargs="?", type=Path, default=DOC, help=f"the Markdown file (default {DOC})")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if the file is out of date")
    args = parser.parse_args(argv)
    if not args.path.is_file():
        print(f"error: no file {args.path}; pass the path of docs/plugins.md", file=sys.stderr)
        return 2
    old = args.path.read_text(encoding="utf-8")
    try:
        new = update(old)
    except ValueError as exc:
        print(f"error: {args.path}: {exc}", file=sys.stderr)
        return 1
    if args.check:
        if new != old:
            print(f"{args.path} is out of date with kernelflow.plugins.hookspecs; run `{COMMAND}`", file=sys.stderr)
            return 1
        print(f"{args.path} is up to date")
        return 0
    if new != old:
        args.path.write_text(new, encoding="utf-8")
        print(f"updated the hook reference in {args.path}")
    else:
        print(f"{args.path} was up to date")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
