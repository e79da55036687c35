"""A real JupyterLab driven by a real Chromium (Playwright), for browser tests.

One :class:`LabServer` (a ``jupyter lab`` subprocess) and one Chromium serve
the whole test session; each test gets a fresh browser context and page
through :class:`Lab`. Everything Jupyter, IPython, Chromium and kernelflow
write goes into one temporary folder:

- ``root/``: the server's root folder; notebooks are written here,
- ``kernelflow-home/``: ``$KERNELFLOW_HOME`` of the server and so of every
  kernel it starts (the kernelflow store of these tests),
- ``jupyter-config/``, ``jupyter-data/``, ``jupyter-runtime/``,
  ``lab-settings/``, ``lab-workspaces/``, ``ipython/``, ``browser-home/``.

Waiting follows ``../shared/notes/browser-and-batch-facts.md``: a kernel is
idle only when the status bar says ``| Idle`` *and* the toolbar's execution
indicator says ``idle`` (the indicator alone reads idle for a moment before
the kernel even exists).

Playwright is imported lazily so that a machine without it gets one clear
failure (see :func:`missing_prerequisites`) instead of an import error.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import nbformat

CHROMIUM = "/usr/bin/chromium"
# --headless is also what Playwright adds; the background-networking flags stop
# Chromium from reaching out to the internet (notes: "Browser").
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SETUP_HINT = "run `bash scripts/setup` (it installs Debian's chromium and the `test` extra with playwright)"

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "browser"
VIEWPORT = {"width": 1100, "height": 900}

# Both signals of a really idle kernel, for the notebook panel in view.
_IDLE_JS = """() => {
  const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
  if (!panel) return false;
  const indicator = panel.querySelector('.jp-Notebook-ExecutionIndicator');
  if (!indicator || indicator.getAttribute('data-status') !== 'idle') return false;
  const bar = document.querySelector('#jp-main-statusbar');
  return !!bar && /\\|\\s*Idle/.test(bar.textContent || '');
}"""


def missing_prerequisites() -> str | None:
    """Why the browser tests cannot run here (``None`` when they can)."""
    problems = []
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:
        problems.append(f"the Python package playwright is not importable ({exc})")
    if not os.access(CHROMIUM, os.X_OK):
        problems.append(f"{CHROMIUM} is missing (Debian package chromium)")
    if not problems:
        return None
    return "browser tests cannot run: " + "; ".join(problems) + f". To fix: {SETUP_HINT}."


def expect(actual: Any, message: str | None = None) -> Any:
    """``playwright.sync_api.expect``, imported when used (see :func:`missing_prerequisites`)."""
    from playwright.sync_api import expect as _expect

    return _expect(actual, message)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def safe_name(text: str) -> str:
    """A file-name-safe form of a test name (``test_x[param]`` -> ``test_x-param``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "unnamed"


class LabServer:
    """``jupyter lab`` in a subprocess, with every directory it writes under ``base``."""

    def __init__(self, base: Path) -> None:
        self.base = Path(base)
        self.root = self.base / "root"
        self.kernelflow_home = self.base / "kernelflow-home"
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.base / "jupyter-lab.log"
        self.env = self._env()

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        dirs = {
            "JUPYTER_CONFIG_DIR": "jupyter-config",
            "JUPYTER_DATA_DIR": "jupyter-data",
            "JUPYTER_RUNTIME_DIR": "jupyter-runtime",
            "JUPYTERLAB_SETTINGS_DIR": "lab-settings",
            "JUPYTERLAB_WORKSPACES_DIR": "lab-workspaces",
            "IPYTHONDIR": "ipython",
        }
        for var, sub in dirs.items():
            path = self.base / sub
            path.mkdir(parents=True, exist_ok=True)
            env[var] = str(path)
        # Kernels inherit the server's environment: a private kernelflow store.
        env["KERNELFLOW_HOME"] = str(self.kernelflow_home)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _suppress_news_popup(self) -> None:
        # The "get notified about Jupyter news?" toast asks while fetchNews is
        # "none" (its default). The notes stop it with an override in
        # <sys.prefix>/share/jupyter/lab/settings/overrides.json; a *user*
        # setting in our private JUPYTERLAB_SETTINGS_DIR does the same without
        # writing outside the temporary folder.
        settings = Path(self.env["JUPYTERLAB_SETTINGS_DIR"]) / "@jupyterlab" / "apputils-extension"
        path = settings / "notification.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))

    def start(self, timeout: float = 90.0) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._suppress_news_popup()
        cmd = [
            sys.executable, "-m", "jupyter", "lab",
            "--allow-root", "--no-browser",
            "--ServerApp.ip=127.0.0.1", f"--port={self.port}", "--port-retries=0",
            f"--ServerApp.root_dir={self.root}",
            "--IdentityProvider.token=", "--ServerApp.password=",
            "--ServerApp.disable_check_xsrf=True",
            "--LabApp.news_url=None",
            "--LabApp.expose_app_in_browser=True",
        ]  # fmt: skip
        log = open(self.log_path, "wb")  # noqa: SIM115 (lives as long as the server)
        self.proc = subprocess.Popen(
            cmd, cwd=self.root, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/api/status", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"jupyter lab did not answer /api/status within {timeout:.0f}s:\n{self.log_tail()}")
            time.sleep(0.2)

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(method, f"{self.url}{path}", timeout=kwargs.pop("timeout", 30), **kwargs)

    def session_ids(self, notebook_path: str) -> list[str]:
        sessions = self.api("GET", "/api/sessions").json()
        return [s["id"] for s in sessions if s.get("path") == notebook_path]

    def stop(self) -> None:
        """Shut down kernels (they live in their own sessions) and the server's process group."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(httpx.HTTPError):
            self.api("POST", "/api/shutdown", timeout=10)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=15)
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            if self.proc.poll() is not None:
                break
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=wait)


class Browser:
    """One headless Chromium for the session (Playwright's sync API)."""

    def __init__(self, base: Path) -> None:
        from playwright.sync_api import sync_playwright

        home = Path(base) / "browser-home"
        home.mkdir(parents=True, exist_ok=True)
        # Playwright gives Chromium a throw-away --user-data-dir of its own
        # (deleted on close); HOME/XDG keep anything else out of the real $HOME.
        env = dict(os.environ)
        env.update(
            HOME=str(home),
            XDG_CONFIG_HOME=str(home / ".config"),
            XDG_CACHE_HOME=str(home / ".cache"),
            XDG_DATA_HOME=str(home / ".local" / "share"),
        )
        self._pw = sync_playwright().start()
        try:
            self.browser = self._pw.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS, env=env
            )
        except Exception:
            self._pw.stop()
            raise

    def close(self) -> None:
        try:
            self.browser.close()
        finally:
            self._pw.stop()


class NotebookPage:
    """A notebook open in JupyterLab: run cells, wait for the kernel, read outputs."""

    def __init__(self, lab: Lab, path: str) -> None:
        self.lab = lab
        self.path = path  # relative to the server root
        self.page = lab.page

    # -- opening and waiting --------------------------------------------------
    def open(self, timeout: float = 60_000) -> NotebookPage:
        self.page.goto(f"{self.lab.server.url}/lab/tree/{self.path}?reset")
        self._wait_loaded(timeout)
        return self

    def _wait_loaded(self, timeout: float) -> None:
        self.page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook").wait_for(timeout=timeout)
        self.page.wait_for_function("() => !!window.jupyterapp", timeout=timeout)
        self.wait_idle(timeout)
        # A tidy view: no file browser in the way of outputs and screenshots.
        self.page.evaluate("() => window.jupyterapp.shell.collapseLeft()")

    def wait_idle(self, timeout: float = 60_000) -> None:
        """Wait until the kernel is really idle (status bar *and* toolbar indicator)."""
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        try:
            self.page.wait_for_function(_IDLE_JS, timeout=timeout)
        except PlaywrightTimeout as exc:
            raise TimeoutError(
                f"the kernel of {self.path} was not idle within {timeout / 1000:.0f} s: {self.state()}"
            ) from exc

    def state(self) -> dict[str, Any]:
        """What the page shows about the kernel (for failure messages)."""
        return self.page.evaluate(
            """() => {
                const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
                const indicator = panel && panel.querySelector('.jp-Notebook-ExecutionIndicator');
                const bar = document.querySelector('#jp-main-statusbar');
                const dialog = document.querySelector('.jp-Dialog');
                return {
                    indicator: indicator ? indicator.getAttribute('data-status') : null,
                    status_bar: bar ? bar.textContent.replace(/\\s+/g, ' ').trim() : null,
                    dialog: dialog ? dialog.textContent.replace(/\\s+/g, ' ').trim().slice(0, 300) : null,
                };
            }"""
        )

    @property
    def cells(self):
        return self.page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell")

    def cell(self, index: int):
        return self.cells.nth(index)

    def output(self, index: int):
        """The output area of cell ``index`` (notebook cell index, markdown cells count)."""
        return self.cell(index).locator(".jp-OutputArea")

    # -- running ----------------------------------------------------------------
    def run_all(self, timeout: float = 120_000) -> bool:
        """Run every cell and wait until they ran and the kernel is idle.

        Returns False when a cell raised (JupyterLab then stops running cells).
        """
        ok = self.page.evaluate(
            """async (ms) => {
                const done = window.jupyterapp.commands.execute('notebook:run-all-cells');
                const late = new Promise((_, reject) => setTimeout(() => reject(new Error('run-all timed out')), ms));
                return await Promise.race([done, late]);
            }""",
            timeout,
        )
        self.wait_idle(timeout)
        return bool(ok)

    def prompt(self, index: int) -> str:
        return (self.cell(index).locator(".jp-InputArea-prompt").text_content() or "").strip()

    def run_cell(self, index: int, timeout: float = 120_000) -> None:
        """Select cell ``index``, press Ctrl+Enter, and wait until it has run and the kernel is idle."""
        before = self.prompt(index)
        self.cell(index).locator(".jp-InputArea-prompt").click()
        self.page.keyboard.press("Control+Enter")
        self.page.wait_for_function(
            """([i, before]) => {
                const cells = document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell');
                const prompt = cells[i] && cells[i].querySelector('.jp-InputArea-prompt');
                const text = prompt ? prompt.textContent.trim() : '';
                return /^\\[\\d+\\]:$/.test(text) && text !== before;
            }""",
            arg=[index, before],
            timeout=timeout,
        )
        self.wait_idle(timeout)

    def save(self, timeout: float = 30_000) -> None:
        self.page.evaluate(
            """async () => {
                const panel = window.jupyterapp.shell.currentWidget;
                await panel.context.save();
            }"""
        )
        self.page.wait_for_function(
            "() => window.jupyterapp.shell.currentWidget.context.model.dirty === false", timeout=timeout
        )

    def reload(self, timeout: float = 60_000) -> None:
        """Reload the page (the kernel keeps running) and wait until the kernel is idle again."""
        self.page.reload()
        self._wait_loaded(timeout)

    # -- evidence -------------------------------------------------------------
    def screenshot(self, name: str) -> Path:
        return self.lab.screenshot(name)

    def error_outputs(self) -> list[str]:
        """Texts of error outputs (tracebacks) in the notebook."""
        stderr = "[data-mime-type='application/vnd.jupyter.stderr']"
        return self.page.locator(
            f".jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output{stderr}"
        ).all_text_contents()

    def close(self) -> None:
        """Delete this notebook's kernel session (Lab would reuse a running kernel for the path)."""
        for sid in self.lab.server.session_ids(self.path):
            self.lab.server.api("DELETE", f"/api/sessions/{sid}")


class Lab:
    """What a test uses: one fresh browser page on the session's JupyterLab."""

    def __init__(self, server: LabServer, browser: Browser, **context_options: Any) -> None:
        """``context_options`` go to Playwright's ``new_context`` (e.g. ``device_scale_factor=2``)."""
        self.server = server
        self.root = server.root
        self.kernelflow_home = server.kernelflow_home
        self.context = browser.browser.new_context(**{"viewport": VIEWPORT, **context_options})
        self.page = self.context.new_page()
        self.console: list[str] = []
        self.page.on(
            "console",
            lambda msg: msg.type in ("error", "warning") and self.console.append(f"{msg.type}: {msg.text}"),
        )
        self.page.on("pageerror", lambda err: self.console.append(f"pageerror: {err}"))
        self.notebooks: list[NotebookPage] = []

    def _unique(self, name: str) -> str:
        stem = Path(name).stem if name.endswith(".ipynb") else name
        return f"{safe_name(stem)}-{uuid.uuid4().hex[:8]}.ipynb"

    def new_path(self, name: str) -> Path:
        """A fresh, unique notebook path in the server root (for files a test writes itself)."""
        return self.root / self._unique(name)

    def write_notebook(self, name: str, cells: list[str]) -> str:
        """Write a notebook of code cells into the root; returns its path relative to the root."""
        nb = nbformat.v4.new_notebook()
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
        nb.metadata["language_info"] = {"name": "python"}
        nb.cells = [nbformat.v4.new_code_cell(source) for source in cells]
        rel = self._unique(name)
        nbformat.write(nb, self.root / rel)
        return rel

    def notebook(self, name: str, cells: list[str], timeout: float = 60_000) -> NotebookPage:
        """A new notebook of code cells, open in Lab with its kernel idle."""
        return self._open(self.write_notebook(name, cells), timeout)

    def open(self, source: str | os.PathLike[str], trusted: bool = False, timeout: float = 60_000) -> NotebookPage:
        """Open an existing notebook file (copied into the root under a unique name unless it is there already).

        Untrusted by default: a file not signed by this server's notary (its
        secret lives in our private JUPYTER_DATA_DIR) is untrusted in Lab.
        ``trusted=True`` signs the copy with that notary first.
        """
        source = Path(source).resolve()
        if source.is_relative_to(self.root.resolve()):
            rel = source.relative_to(self.root.resolve()).as_posix()  # already in the root: open in place
        else:
            rel = self._unique(source.name)
            shutil.copyfile(source, self.root / rel)
        if trusted:
            subprocess.run(
                [sys.executable, "-m", "jupyter", "trust", str(self.root / rel)],
                env=self.server.env, check=True, capture_output=True,
            )  # fmt: skip
        return self._open(rel, timeout)

    def _open(self, rel: str, timeout: float) -> NotebookPage:
        nb = NotebookPage(self, rel)
        self.notebooks.append(nb)
        return nb.open(timeout)

    def store(self):
        """The kernels' kernelflow store (close it when done)."""
        from kernelflow.store import FolderStore

        return FolderStore(self.kernelflow_home)

    def screenshot(self, name: str, full_page: bool = False) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{safe_name(name)}.png"
        self.page.screenshot(path=str(path), full_page=full_page)
        return path

    def close(self) -> None:
        # Close the page first, so Lab does not start a new kernel for a session we delete.
        self.context.close()
        for nb in self.notebooks:
            with contextlib.suppress(httpx.HTTPError):
                nb.close()
