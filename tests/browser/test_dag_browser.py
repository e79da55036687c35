"""The DAG of a workflow in a real JupyterLab (headless Chromium, see lab.py).

The DAG widget's DOM contract (widgets/dag.py + dag.js): a root ``div.kf-dag``
with ``data-run-status``; one SVG ``g.kf-node[data-task][data-status]`` per
task; a header ``.kf-dag-header`` with ``.kf-count[data-status]``; a click on a
node opens ``.kf-details[data-task]`` with ``.kf-details-output``,
``-logs``, ``-error``, ``-attempts`` and ``-inputs``. Its static fallback
(``text/html``) is ``div.kernelflow-dag`` with a Graphviz SVG whose node groups
have the classes ``kf-task kf-<status>``.

Waits are generous timeouts; no assertion is about timing.
"""

from __future__ import annotations

import os

import nbformat
from kernelflow.widgets.fallback import embedded_svgs
import papermill
import pytest

from .lab import REPO, Lab, NotebookPage, expect

pytestmark = pytest.mark.browser

QUICKSTART = REPO / "notebooks" / "01-quickstart.ipynb"
QUICKSTART_TASKS = {"extract", "clean", "stats", "audit", "report"}
# The README's picture is written by this suite; into docs/ only when asked
# (KERNELFLOW_UPDATE_README_PICTURE=1), since each run draws a new run id.
README_PICTURE = (
    REPO / "docs" / "images" / "dag-widget.png"
    if os.environ.get("KERNELFLOW_UPDATE_README_PICTURE") == "1"
    else REPO / "test-artifacts" / "browser" / "dag-widget.png"
)
# What JupyterLab / ipywidgets / anywidget print when a widget cannot show.
WIDGET_ERROR_TEXTS = (
    "Error displaying widget",
    "Error rendering",
    "model not found",
    "Failed to load model class",
    "Could not create a view",
)

ETL = '''%%workflow etl --max-parallel 4
def extract(n: int):
    return [{"id": i, "value": i * 1.5} for i in range(n)]

def clean(extract):
    return [row for row in extract if row["id"] % 3 != 0]

def stats(clean):
    return {"rows": len(clean), "total": sum(r["value"] for r in clean)}

def audit(extract):
    return {"seen": len(extract)}
'''

RUN_TIMEOUT = 120_000  # ms; a generous bound for a run to show as finished
SHOW_TIMEOUT = 30_000  # ms; for the widget to appear or react


def cell_index(path, prefix: str) -> int:
    """Index of the first cell of the notebook at ``path`` whose source starts with ``prefix``."""
    nb = nbformat.read(path, as_version=4)
    for i, cell in enumerate(nb.cells):
        if cell.source.lstrip().startswith(prefix):
            return i
    raise AssertionError(f"no cell starting with {prefix!r} in {path}")


def node_statuses(dag) -> dict[str, str]:
    """``{task id: data-status}`` of every node the DAG widget draws now."""
    return dag.locator("g.kf-node").evaluate_all(
        "nodes => Object.fromEntries(nodes.map(n => [n.getAttribute('data-task'), n.getAttribute('data-status')]))"
    )


def expect_nodes(dag, tasks: set[str], status: str, timeout: float = RUN_TIMEOUT) -> None:
    """Every task of ``tasks`` is drawn and reaches ``status``; no other node is drawn."""
    for task in sorted(tasks):
        expect(dag.locator(f'g.kf-node[data-task="{task}"]')).to_have_attribute("data-status", status, timeout=timeout)
    assert set(node_statuses(dag)) == tasks


def save_widget_picture(dag, path, pad: int = 12) -> None:
    """A screenshot of just the DAG widget, shrunk to what it draws and padded.

    The widget spans the output's width; for the picture only, it is styled
    ``width: fit-content`` with some padding, then restored.
    """
    dag.scroll_into_view_if_needed()
    before = dag.evaluate(
        """(el, pad) => {
            const before = el.getAttribute('style');
            const background = 'var(--jp-layout-color0, white)';
            Object.assign(el.style, {width: 'fit-content', padding: pad + 'px', background});
            return before;
        }""",
        pad,
    )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        dag.screenshot(path=str(path), animations="disabled")
    finally:
        dag.evaluate(
            "(el, before) => before === null ? el.removeAttribute('style') : el.setAttribute('style', before)", before
        )


def assert_no_widget_error(nb: NotebookPage) -> None:
    text = nb.page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook").inner_text()
    shown = [t for t in WIDGET_ERROR_TEXTS if t.lower() in text.lower()]
    assert not shown, f"widget error text in the notebook: {shown}"


def test_smoke_workflow_cell_renders_in_lab(lab: Lab) -> None:
    nb = lab.notebook("smoke", ["import kernelflow as kf\n%load_ext kernelflow", ETL])
    assert nb.run_all(), nb.error_outputs()
    out = nb.output(1)
    # Today plain HTML (div.kernelflow-dag); with the widget, div.kf-dag.
    expect(out.locator(".kf-dag, .kernelflow-dag").first).to_be_visible(timeout=SHOW_TIMEOUT)
    assert "etl" in out.inner_text()
    assert "extract" in " ".join(out.locator("svg text").all_text_contents())


@pytest.mark.browser(device_scale_factor=2)  # a sharp README picture
def test_quickstart_run_shows_the_dag_widget_and_node_details(lab: Lab) -> None:
    """(a) The quickstart notebook in Lab: its run's DAG widget ends all-succeeded; a click shows a task's output."""
    nb = lab.open(QUICKSTART, trusted=True)
    run_cell = cell_index(QUICKSTART, "run = etl.run(")
    assert nb.run_all(timeout=180_000), nb.error_outputs()
    assert_no_widget_error(nb)

    dag = nb.output(run_cell).locator("div.kf-dag").first
    expect(dag).to_be_visible(timeout=SHOW_TIMEOUT)
    expect(dag).to_have_attribute("data-run-status", "succeeded", timeout=RUN_TIMEOUT)
    expect_nodes(dag, QUICKSTART_TASKS, "succeeded")
    expect(dag.locator('.kf-dag-header .kf-count[data-status="succeeded"]')).to_contain_text(
        str(len(QUICKSTART_TASKS)), timeout=SHOW_TIMEOUT
    )

    # The README's picture of the widget: just the widget, after the run.
    save_widget_picture(dag, README_PICTURE)

    # Details are fetched from the kernel on click (it is idle: the run is over).
    dag.locator('g.kf-node[data-task="stats"]').click()
    details = nb.output(run_cell).locator('.kf-details[data-task="stats"]')
    expect(details).to_be_visible(timeout=SHOW_TIMEOUT)
    # n = 12 rows, ids 0..11; clean drops ids divisible by 3: 8 rows remain.
    expect(details.locator(".kf-details-output")).to_contain_text("rows", timeout=SHOW_TIMEOUT)
    expect(details.locator(".kf-details-output")).to_contain_text("8")
    expect(details.locator(".kf-details-inputs")).to_contain_text("clean")
    expect(details.locator(".kf-details-attempts")).to_be_attached()
    details.scroll_into_view_if_needed()


def test_node_details_show_a_table_the_logs_and_the_error(lab: Lab) -> None:
    """Details of a finished run's nodes: a polars DataFrame as an HTML table, captured output, a traceback."""
    cells = [
        "import kernelflow as kf\n%load_ext kernelflow",
        '''%%workflow details
import logging
import polars as pl

def table():
    print("making the table")
    logging.getLogger("kf-browser-test").warning("a logged warning")
    return pl.DataFrame({"city": ["Oslo", "Lima"], "temp": [3, 19]})

def boom(table):
    raise ValueError("boom on purpose")
''',
        "run = details.run(raise_on_failure=False)",
    ]
    nb = lab.notebook("node-details", cells)
    assert nb.run_all(), nb.error_outputs()
    out = nb.output(2)
    dag = out.locator("div.kf-dag").first
    expect(dag).to_have_attribute("data-run-status", "failed", timeout=RUN_TIMEOUT)
    expect(dag.locator('g.kf-node[data-task="table"]')).to_have_attribute("data-status", "succeeded")
    expect(dag.locator('g.kf-node[data-task="boom"]')).to_have_attribute("data-status", "failed")

    dag.locator('g.kf-node[data-task="table"]').click()
    details = out.locator('.kf-details[data-task="table"]')
    expect(details.locator(".kf-details-output table")).to_be_visible(timeout=SHOW_TIMEOUT)
    expect(details.locator(".kf-details-output table")).to_contain_text("Oslo")
    expect(details.locator(".kf-details-logs")).to_contain_text("making the table")
    expect(details.locator(".kf-details-logs")).to_contain_text("a logged warning")

    dag.locator('g.kf-node[data-task="boom"]').click()
    details = out.locator('.kf-details[data-task="boom"]')
    expect(details.locator(".kf-details-error")).to_contain_text("ValueError", timeout=SHOW_TIMEOUT)
    expect(details.locator(".kf-details-error")).to_contain_text("boom on purpose")
    details.scroll_into_view_if_needed()


def test_reload_mid_run_shows_the_widget_again_and_it_finishes(lab: Lab) -> None:
    """(d) Reload the page while a background run (wf.start()) goes on: the widget comes back from the kernel."""
    release = lab.root / f"release-{lab.new_path('gate').stem}"
    cells = [
        "import kernelflow as kf\n%load_ext kernelflow",
        f'''%%workflow slow --max-parallel 2
import time, pathlib

def first():
    time.sleep(1)
    return 1

def side(first):
    time.sleep(1.5)
    return first + 1

def gate(first):
    """Runs until the test creates the release file (so the reload surely happens mid-run)."""
    release = pathlib.Path({str(release)!r})
    for _ in range(1800):
        if release.exists():
            return "released"
        time.sleep(0.1)
    raise TimeoutError("the test never released the gate")

def last(gate, side):
    time.sleep(1)
    return [gate, side]
''',
        "run = slow.start()",
        "kf.dag(run)",
    ]
    tasks = {"first", "side", "gate", "last"}
    nb = lab.notebook("reload-mid-run", cells)
    assert nb.run_all(), nb.error_outputs()

    dag = nb.output(3).locator("div.kf-dag").first
    expect(dag).to_be_visible(timeout=SHOW_TIMEOUT)
    expect(dag.locator('g.kf-node[data-task="gate"]')).to_have_attribute("data-status", "running", timeout=RUN_TIMEOUT)
    nb.save()
    before = node_statuses(dag)
    assert before["gate"] == "running" and before["last"] != "succeeded", before

    nb.reload()
    dag = nb.output(3).locator("div.kf-dag").first
    expect(dag).to_be_visible(timeout=SHOW_TIMEOUT)
    assert_no_widget_error(nb)
    # Still mid-run after the reload: the gate waits for the test.
    expect(dag.locator('g.kf-node[data-task="gate"]')).to_have_attribute("data-status", "running", timeout=SHOW_TIMEOUT)
    assert node_statuses(dag)["last"] != "succeeded"

    release.touch()
    expect(dag).to_have_attribute("data-run-status", "succeeded", timeout=RUN_TIMEOUT)
    expect_nodes(dag, tasks, "succeeded")
    dag.scroll_into_view_if_needed()


def test_executed_notebook_untrusted_shows_the_static_dag(lab: Lab, kernel_env, tmp_path) -> None:
    """(e) The quickstart run headless by papermill, opened untrusted: Lab shows the static SVG, coloured by status."""
    executed = lab.new_path("quickstart-executed")
    papermill.execute_notebook(str(QUICKSTART), str(executed), cwd=str(tmp_path), progress_bar=False)
    run_cell = cell_index(executed, "run = etl.run(")

    nb = lab.open(executed)  # papermill does not sign: untrusted for this server
    trusted = nb.page.evaluate(
        "(i) => window.jupyterapp.shell.currentWidget.content.model.cells.get(i).trusted", run_cell
    )
    assert trusted is False

    out = nb.output(run_cell)
    fallback = out.locator("div.kernelflow-dag").first
    expect(fallback).to_be_visible(timeout=SHOW_TIMEOUT)  # Lab chose the text/html of the bundle
    fallback.scroll_into_view_if_needed()
    # The picture is an <img> with the SVG as a data URI: Lab's sanitizer keeps it (it drops inline <svg>).
    picture = fallback.locator("img.kf-dag-picture")
    expect(picture).to_be_visible(timeout=SHOW_TIMEOUT)
    drawn = picture.evaluate("(img) => img.complete && img.naturalWidth > 0 && img.naturalHeight > 0")
    assert drawn, "the DAG picture did not decode"
    box = picture.bounding_box()
    assert box is not None and box["width"] > 100 and box["height"] > 20
    (svg,) = embedded_svgs(picture.evaluate("(img) => img.outerHTML.replaceAll('\"', \"'\")"))
    assert svg.count("kf-task kf-succeeded") == len(QUICKSTART_TASKS)  # coloured by the final status
    assert out.locator("div.kf-dag").count() == 0  # no live widget in an untrusted notebook
    assert_no_widget_error(nb)
