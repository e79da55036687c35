"""The static DAG: SVG inside HTML where Graphviz's dot exists, text where it does not."""

from __future__ import annotations

import html
import os
import subprocess
import sys
import textwrap

import kernelflow as kf
from kernelflow.widgets.dag_static import dag_html, has_dot
from kernelflow.widgets.fallback import embedded_svgs


def _wf():
    def extract():
        return [1, 2]

    def clean(extract):
        raise ValueError("bad row")

    def audit(extract):
        return 1

    return kf.workflow("etl", [extract, clean, audit])


def test_svg_inside_html_coloured_by_status():
    assert has_dot(), "the test environment installs graphviz (scripts/setup)"
    run = _wf().run(raise_on_failure=False)
    page = dag_html(run.workflow, run.state)
    # An <img> with the SVG as a data URI: untrusted JupyterLab strips inline <svg> (see widgets/fallback.py).
    assert "<svg" not in page and page.count("<img class='kf-dag-picture'") == 1
    (svg,) = (html.unescape(s) for s in embedded_svgs(page))
    assert 'id="task-clean"' in svg and "kf-task kf-failed" in svg and "kf-task kf-succeeded" in svg
    assert "1 failed" in page and "2 succeeded" in page


def test_without_dot_the_html_carries_the_text_dag():
    script = textwrap.dedent(
        """
        import kernelflow as kf
        from kernelflow.widgets.dag_static import dag_html, has_dot
        def extract():
            return 1
        def clean(extract):
            return 2
        print(has_dot())
        print(dag_html(kf.workflow("etl", [extract, clean])))
        """
    )
    env = {**os.environ, "PATH": os.path.dirname(sys.executable)}  # python, but no /usr/bin/dot
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    first, page = res.stdout.split("\n", 1)
    assert first == "False"
    assert "<svg" not in page and "<pre>" in page and "clean ← extract" in page
