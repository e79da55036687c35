"""The docs stay true: their Python examples run, and every hook is documented."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from kernelflow.plugins import hookspecs

DOCS = Path(__file__).resolve().parents[1] / "docs"
DOC_FILES = sorted(p for p in DOCS.glob("*.md") if "```python" in p.read_text())


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: p.name)
def test_doc_examples_run(path: Path):
    namespace: dict = {"__name__": f"docs_{path.stem}"}
    for i, block in enumerate(python_blocks(path)):
        code = compile(block, f"{path.name} (python block {i + 1})", "exec", dont_inherit=True)
        exec(code, namespace)


def test_concept_docs_have_examples():
    assert {p.name for p in DOC_FILES} >= {"concepts.md", "sql.md", "plugins.md"}


HOOKS = [name for name, obj in vars(hookspecs).items() if name.startswith("kernelflow_") and callable(obj)]


def test_there_are_hooks():
    assert set(HOOKS) >= {"kernelflow_register_executors", "kernelflow_open_store", "kernelflow_run_observers"}


@pytest.mark.parametrize("name", HOOKS)
def test_every_hook_has_a_docstring_and_is_documented_with_its_signature(name: str):
    from kernelflow.plugin_host import signature_text

    spec = getattr(hookspecs, name)
    assert spec.__doc__ and len(spec.__doc__.split()) > 10, f"{name} needs a docstring saying when it is called and what it returns"
    params = ", ".join(inspect.signature(spec).parameters)
    text = (DOCS / "plugins.md").read_text()
    assert f"`{name}({params})`" in text, f"docs/plugins.md must list `{name}({params})`"
    assert f"\n{signature_text(spec, name)}\n" in text, f"docs/plugins.md must show {signature_text(spec, name)}"


def test_the_hook_reference_is_generated_from_the_hookspecs():
    from kernelflow.plugins import hook_reference

    text = (DOCS / "plugins.md").read_text()
    assert text == hook_reference.update(text), (
        "docs/plugins.md's hook reference is out of date with kernelflow/plugins/hookspecs.py "
        f"(plugins/hookspecs.py in the repository): run `{hook_reference.COMMAND}` and commit the result"
    )


def test_every_event_type_is_documented():
    from kernelflow import events as ev

    text = (DOCS / "events.md").read_text()
    missing = [t for t in ev.EVENT_TYPES if f"`{t}`" not in text]
    assert missing == [], f"docs/events.md does not describe {missing}"
