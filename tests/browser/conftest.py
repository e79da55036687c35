"""Fixtures for browser tests: one JupyterLab and one Chromium per session, a fresh page per test.

Every test using ``lab`` leaves a screenshot in
``test-artifacts/browser/<test name>.png`` (also when it fails). Without
Chromium or playwright the tests fail with one message saying how to fix it:
a skipped browser test would hide the gap.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .lab import Browser, Lab, LabServer, missing_prerequisites


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "browser(**context_options): drives a real JupyterLab in headless Chromium (tests/browser; needs "
        "`bash scripts/setup`); keyword arguments go to the test's Playwright browser context"
    )


@pytest.fixture(scope="package")  # torn down after tests/browser: Playwright's loop must not outlive it
def _browser_base() -> Iterator[Path]:
    problem = missing_prerequisites()
    if problem:
        pytest.fail(problem, pytrace=False)
    base = Path(tempfile.mkdtemp(prefix="kernelflow-browser-"))
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="package")  # torn down after tests/browser: Playwright's loop must not outlive it
def lab_server(_browser_base: Path) -> Iterator[LabServer]:
    server = LabServer(_browser_base)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="package")  # torn down after tests/browser: Playwright's loop must not outlive it
def chromium(_browser_base: Path) -> Iterator[Browser]:
    browser = Browser(_browser_base)
    yield browser
    browser.close()


@pytest.fixture
def lab(lab_server: LabServer, chromium: Browser, request: pytest.FixtureRequest) -> Iterator[Lab]:
    # @pytest.mark.browser(device_scale_factor=2, ...) passes options to the test's browser context.
    marker = request.node.get_closest_marker("browser")
    session = Lab(lab_server, chromium, **(marker.kwargs if marker else {}))
    yield session
    try:
        if not session.page.is_closed():
            path = session.screenshot(request.node.name)
            print(f"screenshot: {path}")
        if session.console:
            print("browser console (errors and warnings):\n  " + "\n  ".join(session.console[-40:]))
    finally:
        session.close()
