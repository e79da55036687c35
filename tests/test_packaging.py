"""Packaging: the wheel, the editable install, Binder, and the helper scripts.

The top-level folders are the architecture, and installed they all live under
the one import name ``kernelflow`` (pyproject's ``package-dir`` mapping). A
sub-package missing from pyproject's ``packages`` list is silently left out of
the wheel while the editable install still imports it, so these tests build a
real wheel and compare its file list with the work tree.
"""

from __future__ import annotations

import configparser
import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# work-tree folder -> where its files live inside the wheel
PACKAGE_DIRS = {
    "kernelflow": "kernelflow",
    "kernel_ext": "kernelflow/kernel_ext",
    "widgets": "kernelflow/widgets",
    "plugins": "kernelflow/plugins",
    "store": "kernelflow/store",
}
GENERIC_NAMES = ("store", "plugins", "widgets", "kernel_ext")
QUICKSTART = "notebooks/01-quickstart.ipynb"
SCRIPTS = ("scripts/setup", "scripts/test", "scripts/quickstart", ".ci/run", "binder/postBuild")

# Never part of a copy of the repository, when git cannot tell what is ignored.
_IGNORED_DIRS = {
    ".git", "__pycache__", ".kernelflow", ".pytest_cache", ".hypothesis",
    "build", "dist", "node_modules", ".ipynb_checkpoints",
}


# --------------------------------------------------------------------------
# helpers


def worktree_files() -> list[str]:
    """Files of the work tree (relative, posix), as git sees them: tracked or
    untracked, minus what .gitignore ignores. Falls back to a filtered walk."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT, capture_output=True, check=True,
        ).stdout.decode()
        files = [f for f in out.split("\0") if f]
    except (OSError, subprocess.CalledProcessError):
        files = []
        for dirpath, dirnames, filenames in os.walk(ROOT):
            dirnames[:] = [
                d for d in dirnames
                if d not in _IGNORED_DIRS and not d.endswith(".egg-info")
            ]
            rel = Path(dirpath).relative_to(ROOT)
            files += [(rel / f).as_posix() for f in filenames if not f.endswith((".pyc", ".pyo"))]
    return sorted(
        f for f in files
        if "__pycache__" not in f.split("/") and (ROOT / f).is_file()
    )


def copy_repo(dest: Path) -> Path:
    """A clean copy of the work tree (no .git, build/, egg-info, caches)."""
    for rel in worktree_files():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)  # copy2 keeps the executable bits
    return dest


def base_env() -> dict[str, str]:
    """os.environ without anything that would leak the repo or a venv in."""
    env = dict(os.environ)
    for key in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV",
                "PYTEST_ADDOPTS", "IPYTHONDIR", "KERNELFLOW_HOME"):
        env.pop(key, None)
    for key in list(env):
        if key.startswith(("JUPYTER", "JUPYTERLAB")):
            del env[key]
    env["PYTHONNOUSERSITE"] = "1"
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PIP_ROOT_USER_ACTION"] = "ignore"
    return env


def sandbox_env(env: dict[str, str], tmp: Path) -> dict[str, str]:
    """Point HOME, Jupyter, IPython and kernelflow's own state at `tmp`."""
    env = dict(env)
    home = tmp / "home"
    dirs = {
        "HOME": home,
        "XDG_CONFIG_HOME": home / ".config",
        "XDG_DATA_HOME": home / ".local/share",
        "XDG_CACHE_HOME": home / ".cache",
        "JUPYTER_CONFIG_DIR": tmp / "jupyter/config",
        "JUPYTER_DATA_DIR": tmp / "jupyter/data",
        "JUPYTER_RUNTIME_DIR": tmp / "jupyter/runtime",
        "JUPYTERLAB_SETTINGS_DIR": tmp / "jupyter/lab-settings",
        "JUPYTERLAB_WORKSPACES_DIR": tmp / "jupyter/lab-workspaces",
        "IPYTHONDIR": tmp / "ipython",
        "KERNELFLOW_HOME": tmp / "kernelflow-home",
    }
    for key, path in dirs.items():
        path.mkdir(parents=True, exist_ok=True)
        env[key] = str(path)
    return env


def run(cmd, *, cwd, env=None, timeout=900) -> subprocess.CompletedProcess:
    """Run a command; on failure, fail the test showing its output."""
    proc = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, timeout=timeout,
        capture_output=True, text=True,
    )
    if proc.returncode != 0:
        pytest.fail(
            f"{' '.join(map(str, cmd))} exited {proc.returncode}\n"
            f"--- stdout ---\n{proc.stdout[-6000:]}\n--- stderr ---\n{proc.stderr[-6000:]}",
            pytrace=False,
        )
    return proc


# --------------------------------------------------------------------------
# the wheel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    """Build the wheel from a clean copy of the work tree (so a stale build/
    or egg-info in the work tree cannot add files the sources no longer have)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = copy_repo(tmp / "src")
    out = tmp / "dist"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", out, src],
        cwd=src, env=base_env())
    wheels = list(out.glob("kernelflow-*.whl"))
    assert len(wheels) == 1, f"expected one kernelflow wheel, got {wheels}"
    with zipfile.ZipFile(wheels[0]) as zf:
        yield zf


def _names(zf: zipfile.ZipFile) -> set[str]:
    return {n for n in zf.namelist() if not n.endswith("/")}


def _dist_info(zf: zipfile.ZipFile) -> str:
    tops = {n.split("/")[0] for n in _names(zf)}
    infos = [t for t in tops if t.endswith(".dist-info")]
    assert len(infos) == 1, infos
    return infos[0]


def _entry_points(zf: zipfile.ZipFile) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(delimiters=("=",), interpolation=None)
    cp.optionxform = str  # entry point names are case-sensitive
    cp.read_string(zf.read(f"{_dist_info(zf)}/entry_points.txt").decode())
    return cp


@pytest.mark.slow
def test_wheel_has_one_top_level_name(wheel):
    tops = {n.split("/")[0] for n in _names(wheel)}
    dist_info = _dist_info(wheel)
    assert dist_info.startswith("kernelflow-")
    assert tops == {"kernelflow", dist_info}, (
        f"the wheel must install only `kernelflow` (plus its .dist-info); "
        f"it has top-level names {sorted(tops)}"
    )
    for generic in GENERIC_NAMES:
        assert not any(n.startswith(f"{generic}/") for n in _names(wheel)), generic


@pytest.mark.slow
def test_wheel_has_every_module_of_the_work_tree(wheel):
    names = _names(wheel)
    expected = {}
    for rel in worktree_files():
        top, _, rest = rel.partition("/")
        if top in PACKAGE_DIRS and rest and rel.endswith(".py"):
            expected[rel] = f"{PACKAGE_DIRS[top]}/{rest}"
    assert "kernelflow/__init__.py" in expected.values()
    missing = sorted(f"{src} -> {dst}" for src, dst in expected.items() if dst not in names)
    assert not missing, (
        "these work-tree modules are not in the wheel (is the sub-package listed in "
        "[tool.setuptools] packages / package-dir in pyproject.toml?):\n  "
        + "\n  ".join(missing)
    )


@pytest.mark.slow
def test_wheel_has_package_data(wheel):
    names = _names(wheel)
    expected = {}
    for rel in worktree_files():
        parts = rel.split("/")
        if parts[0] == "store" and rel.endswith(".sql"):  # SQL anywhere under store/
            expected[rel] = "kernelflow/" + rel
        elif parts[0] == "widgets" and len(parts) == 2 and rel.endswith((".js", ".css")):
            expected[rel] = "kernelflow/" + rel
    missing = sorted(f"{src} -> {dst}" for src, dst in expected.items() if dst not in names)
    assert not missing, (
        "package-data files missing from the wheel (see [tool.setuptools.package-data]):\n  "
        + "\n  ".join(missing)
    )


@pytest.mark.slow
def test_wheel_entry_points(wheel):
    eps = _entry_points(wheel)
    assert eps.has_section("kernelflow"), eps.sections()
    plugins = dict(eps.items("kernelflow"))
    assert plugins.get("thread_executor") == "kernelflow.plugins.thread_executor"
    assert plugins.get("folder_store") == "kernelflow.plugins.folder_store"
    assert eps.has_section("console_scripts"), eps.sections()
    assert dict(eps.items("console_scripts")).get("kernelflow") == "kernelflow.cli:main"


@pytest.mark.slow
def test_wheel_entry_points_name_modules_it_ships(wheel):
    """An entry point naming a module the wheel lacks breaks plugin loading
    (or the `kernelflow` command) only once installed."""
    names = _names(wheel)
    eps = _entry_points(wheel)
    dangling = []
    for section in ("kernelflow", "console_scripts"):
        for name, target in eps.items(section):
            module = target.split(":")[0].strip()
            path = module.replace(".", "/")
            if f"{path}.py" not in names and f"{path}/__init__.py" not in names:
                dangling.append(f"[{section}] {name} = {target}")
    assert not dangling, "entry points naming modules not in the wheel:\n  " + "\n  ".join(dangling)


# --------------------------------------------------------------------------
# the editable install


@pytest.mark.slow
def test_editable_install_imports_under_kernelflow_only(tmp_path):
    env = base_env()
    run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "-e", ROOT], cwd=ROOT, env=env)
    probe = textwrap.dedent(
        """
        import importlib, json
        import kernelflow.store, kernelflow.plugins, kernelflow.widgets, kernelflow.kernel_ext
        import kernelflow
        report = {
            "kernelflow": kernelflow.__file__,
            "store_path": list(kernelflow.store.__path__),
            "generic": {},
        }
        for name in %r:
            try:
                mod = importlib.import_module(name)
            except ModuleNotFoundError as exc:
                report["generic"][name] = None if exc.name == name else repr(exc)
            else:
                report["generic"][name] = getattr(mod, "__file__", None) or repr(mod)
        print(json.dumps(report))
        """ % (GENERIC_NAMES,)
    )
    proc = run([sys.executable, "-c", probe], cwd=tmp_path, env=sandbox_env(env, tmp_path))
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    # editable: the package is the work tree itself
    assert Path(report["kernelflow"]).resolve() == ROOT / "kernelflow" / "__init__.py"
    assert str(ROOT / "store") in [str(Path(p).resolve()) for p in report["store_path"]]
    leaked = {k: v for k, v in report["generic"].items() if v is not None}
    assert not leaked, f"generic top-level names must not import: {leaked}"


# --------------------------------------------------------------------------
# Binder


def test_binder_files():
    reqs = [
        line.split("#")[0].strip()
        for line in (ROOT / "binder/requirements.txt").read_text().splitlines()
    ]
    # kernelflow's own dependencies come from pyproject.toml (postBuild)
    assert [r for r in reqs if r] == ["jupyterlab>=4"]
    assert "graphviz" in (ROOT / "binder/apt.txt").read_text().split()
    post_build = (ROOT / "binder/postBuild").read_text()
    assert "pip install" in post_build
    assert "jupyter lab build" not in post_build


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_binder_install_runs_quickstart(tmp_path):
    if not (ROOT / QUICKSTART).is_file():
        pytest.fail(f"{QUICKSTART} does not exist", pytrace=False)
    repo = copy_repo(tmp_path / "repo")
    venv = tmp_path / "venv"
    env = base_env()
    run([sys.executable, "-m", "venv", venv], cwd=tmp_path, env=env)
    bindir = venv / "bin"
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(venv)

    # The way repo2docker does it: requirements.txt, then postBuild from the
    # repository root. (apt.txt: graphviz is on this machine already.)
    run([bindir / "python", "-m", "pip", "install", "-q", "-r", repo / "binder/requirements.txt"],
        cwd=repo, env=env)
    run([repo / "binder/postBuild"], cwd=repo, env=env)

    # It is a real install, not the work tree.
    probe = run([bindir / "python", "-c", "import kernelflow; print(kernelflow.__file__)"],
                cwd=tmp_path, env=env)
    assert str(venv) in probe.stdout, probe.stdout

    out = tmp_path / "out" / "out.ipynb"
    out.parent.mkdir()
    run([bindir / "jupyter", "execute", "--timeout=600", f"--output={out}", repo / QUICKSTART],
        cwd=tmp_path, env=sandbox_env(env, tmp_path / "sandbox"), timeout=1200)

    nb = json.loads(out.read_text())
    code_cells = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code_cells, "the quickstart notebook has no code cells"
    outputs = [o for c in code_cells for o in c.get("outputs", [])]
    assert outputs, "the executed quickstart notebook has no outputs"
    errors = [o for o in outputs if o.get("output_type") == "error"]
    assert not errors, f"error outputs: {[(e.get('ename'), e.get('evalue')) for e in errors]}"


# --------------------------------------------------------------------------
# the scripts


@pytest.mark.parametrize("rel", SCRIPTS)
def test_script_is_executable_bash(rel):
    path = ROOT / rel
    assert path.is_file(), rel
    assert os.access(path, os.X_OK), f"{rel} is not executable (chmod +x)"
    # If git tracks it, git must record it as executable too (a clean clone
    # gets its modes from git, not from this work tree).
    try:
        staged = subprocess.run(["git", "ls-files", "-s", "--", rel], cwd=ROOT,
                                capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        staged = ""
    if staged:
        assert staged.split()[0] == "100755", f"git records {rel} as {staged.split()[0]}"
    syntax = subprocess.run(["bash", "-n", path], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr


def _scripts_test(args, tmp_path):
    env = base_env()
    env["KERNELFLOW_SKIP_PIP"] = "1"
    env["PYTHON"] = sys.executable
    return subprocess.run(
        ["bash", ROOT / "scripts/test", *args, "-p", "no:cacheprovider"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )


@pytest.mark.slow
def test_scripts_test_exit_codes(tmp_path):
    assert shutil.which("dot"), "graphviz (`dot`) is not installed: run scripts/setup"
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "test_dummy.py").write_text("def test_ok():\n    pass\n")
    failing = tmp_path / "failing"
    failing.mkdir()
    (failing / "test_dummy_fails.py").write_text("def test_fails():\n    assert False\n")

    ok = _scripts_test([str(suite)], tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "skipping apt-get" in ok.stdout, ok.stdout  # dot exists: no apt
    assert "skipping pip install" in ok.stdout, ok.stdout

    nothing = _scripts_test([str(suite), "-k", "nothing_matches_this"], tmp_path)
    assert nothing.returncode == 5, (nothing.returncode, nothing.stdout, nothing.stderr)
    assert "no tests" in nothing.stderr

    failed = _scripts_test([str(failing)], tmp_path)
    assert failed.returncode == 1, (failed.returncode, failed.stdout, failed.stderr)
