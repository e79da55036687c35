"""The engines compared by run.py and the virtual environments they run in.

Each peer gets its own virtual environment under a cache folder outside the
repository (``$KERNELFLOW_PEERS_DIR``, default ``~/.cache/kernelflow-peers``),
created once and reused while its pinned requirements are unchanged. Nothing
here touches kernelflow's own dependencies: the peers are installed only into
their venvs.

kernelflow itself runs in the interpreter that runs run.py (the one where this
checkout is installed, editable), unless ``--kernelflow-python`` names another.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
RUNNERS = HERE / "runners"
REPO = HERE.parent.parent


@dataclass(frozen=True)
class Engine:
    key: str  # short name used on the command line and in the runner's file name
    label: str  # as shown in the tables
    requirements: tuple[str, ...] = ()  # pinned; empty: a bare venv
    runner: str = ""  # file in runners/
    distributions: tuple[str, ...] = ()  # whose installed versions the report records
    env: dict[str, str] = field(default_factory=dict)  # extra environment for the runner
    venv: bool = True  # False: the interpreter given on the command line (kernelflow)
    prepare: tuple[str, ...] = ()  # a command of the venv's bin/ run once per invocation, before priming


# Pins. Prefect 3.8.8 imports its server with FastAPI 0.154.0; newer FastAPI
# releases break that import (shared/notes/peers-facts.md), so it is pinned too.
ENGINES: dict[str, Engine] = {
    "plain": Engine("plain", "plain Python", (), "run_plain.py", ()),
    "kernelflow": Engine(
        "kernelflow", "kernelflow", (), "run_kernelflow.py", ("kernelflow", "duckdb", "polars", "orjson"), venv=False
    ),
    "kernelflow-fsync": Engine(
        "kernelflow-fsync",
        "kernelflow, fsync on",
        (),
        "run_kernelflow.py",
        ("kernelflow",),
        {"KERNELFLOW_FSYNC": "1"},
        venv=False,
    ),
    "hamilton": Engine("hamilton", "Hamilton", ("apache-hamilton==1.90.0",), "run_hamilton.py", ("apache-hamilton",)),
    "dbos": Engine("dbos", "DBOS Transact", ("dbos==3.4.0",), "run_dbos.py", ("dbos", "sqlalchemy")),
    "prefect": Engine(
        "prefect",
        "Prefect",
        ("prefect==3.8.8", "fastapi==0.154.0"),
        "run_prefect.py",
        ("prefect", "fastapi"),
        # Its first server start migrates the database, which can outlast the ephemeral
        # server's start-up timeout on a busy machine: migrate first, as `prefect` does.
        prepare=("prefect", "server", "database", "upgrade", "-y"),
    ),
}


def cache_dir() -> Path:
    return Path(os.environ.get("KERNELFLOW_PEERS_DIR") or Path.home() / ".cache" / "kernelflow-peers")


def _venv_dir(engine: Engine) -> Path:
    pins = "\n".join(engine.requirements) + f"\npython {sys.version_info[0]}.{sys.version_info[1]}"
    digest = hashlib.sha256(pins.encode()).hexdigest()[:10]
    return cache_dir() / f"{engine.key}-{digest}"


def python_for(engine: Engine, kernelflow_python: str) -> Path:
    if not engine.venv:
        return Path(kernelflow_python)
    return _venv_dir(engine) / "bin" / "python"


def ensure_venv(engine: Engine, log=print) -> Path:
    """Create the engine's venv and install its pinned requirements, unless already done."""
    if not engine.venv:
        raise ValueError(f"{engine.key} runs in a given interpreter, not a venv")
    folder = _venv_dir(engine)
    marker = folder / "kf-peers.json"
    python = folder / "bin" / "python"
    if marker.exists() and python.exists():
        return python
    folder.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    log(f"  creating {folder} ({', '.join(engine.requirements) or 'no packages'})")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(folder)], check=True)
    if engine.requirements:
        done = subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *engine.requirements],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            log(done.stdout[-2000:] + done.stderr[-4000:])
            done.check_returncode()
    marker.write_text(
        json.dumps({"requirements": list(engine.requirements), "installed_s": round(time.perf_counter() - started, 1)})
    )
    log(f"  installed in {time.perf_counter() - started:.0f} s")
    return python


def versions(engine: Engine, python: Path) -> dict[str, str]:
    """Installed versions of the engine's distributions, and the interpreter's, asked of its python."""
    code = (
        "import json, sys\n"
        "from importlib import metadata\n"
        "out = {'python': sys.version.split()[0]}\n"
        f"for d in {list(engine.distributions)!r}:\n"
        "    try:\n"
        "        out[d] = metadata.version(d)\n"
        "    except metadata.PackageNotFoundError:\n"
        "        out[d] = 'not installed'\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)
