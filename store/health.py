"""The folder store's health check (``FolderStore.health()``, ``kernelflow doctor``).

It reads what is at the path without opening a store, so it also explains
the folders a store refuses to open (a newer schema, a file in the way), and
it proves the folder writable by really creating and removing a file there:
permission bits do not tell (root ignores them; a read-only mount, an
immutable folder or a full quota do not show in them).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from kernelflow.exceptions import KernelflowError, StoreVersionError
from kernelflow.health import Health

from .layout import HOME_ENV, SCHEMA_VERSION, Layout, read_marker, tmp_name
from .problems import NOTE_SUFFIX, QUARANTINE

_ELSEWHERE = f"or point --store / ${HOME_ENV} at a folder you can write"


def check_folder(path: str | os.PathLike[str]) -> Health:
    """The health of the store folder at ``path``; creates nothing, never raises."""
    root = Path(os.path.abspath(os.path.expanduser(os.fspath(path))))
    info: dict[str, Any] = {
        "path": str(root),
        "exists": False,
        "schema_version": None,
        "supported_schema_version": SCHEMA_VERSION,
        "bytes": 0,
        "files": 0,
        "writable": None,  # unknown until probed
    }

    def error(detail: str, fix: str) -> Health:
        return Health("store", "error", detail, fix, info)

    try:
        marker = read_marker(Layout(root))
    except StoreVersionError as exc:
        info["exists"] = True
        info["schema_version"] = _version_on_disk(root)
        return error(_one_line(exc), f"Upgrade kernelflow (`pip install -U kernelflow`), {_ELSEWHERE}.")
    except KernelflowError as exc:
        blocker = _file_in_the_way(root)
        if blocker == root:
            return error(f"{root} is a file, not a store folder",
                         f"Move the file away, {_ELSEWHERE.replace('you can write', '(new or an existing store)')}.")
        if blocker is not None:
            return error(
                f"{blocker} is a file, so the store folder {root} cannot be created under it",
                f"Move the file {blocker} away, {_ELSEWHERE}.",
            )
        return error(_one_line(exc), f"Fix the folder as the message says, {_ELSEWHERE}.")

    if marker is None:
        # Not created yet: the first write creates it, so the nearest existing
        # folder above it must take a new entry.
        target = _nearest_existing(root)
        info["exists"] = False
        info["schema_version"] = SCHEMA_VERSION
    else:
        target = root
        info["exists"] = True
        info["schema_version"] = int(marker["schema_version"])
        info["bytes"], info["files"] = _size(root)

    problem = _write_probe(target)
    if problem is None and marker is not None and (root / "segments").is_dir():
        problem = _write_probe(root / "segments")  # where every event is appended
    info["writable"] = problem is None
    if problem is not None:
        where, why = problem
        return error(
            f"{root} is not writable: creating a file in {where} failed ({why})",
            f"Make {where} writable for this user (chmod/chown; `chattr -i` if it is immutable; "
            f"remount it read-write), {_ELSEWHERE}.",
        )

    if marker is None:
        return Health("store", "ok", f"{root} (not created yet; it will be, with schema {SCHEMA_VERSION}, "
                                     f"on the first run; {target} is writable)", None, info)  # fmt: skip
    damaged = _quarantined(root)
    detail = (f"{root} (schema {info['schema_version']}, {_human(info['bytes'])} in {info['files']} files, "
              "writable)")  # fmt: skip
    if damaged:
        info["quarantined"] = damaged
        return Health("store", "warning", detail + f"; {damaged} damaged file(s) in {QUARANTINE}/",
                      f"See docs/store.md, \"Damaged files\": each has a {NOTE_SUFFIX} note beside it saying "
                      "what was kept; remove them once you have looked.", info)  # fmt: skip
    return Health("store", "ok", detail, None, info)


def _one_line(exc: BaseException) -> str:
    return "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())


def _version_on_disk(root: Path) -> Any:
    try:
        import orjson

        return orjson.loads((root / "store.json").read_bytes()).get("schema_version")
    except Exception:  # noqa: BLE001 - only for the report
        return None


def _nearest_existing(root: Path) -> Path:
    for folder in (root, *root.parents):
        if folder.exists():
            return folder
    return Path(root.anchor)


def _file_in_the_way(root: Path) -> Path | None:
    for folder in (root, *root.parents):
        try:
            if folder.exists():
                return None if folder.is_dir() else folder
        except OSError:
            continue
    return None


def _write_probe(folder: Path) -> tuple[Path, str] | None:
    """Create and remove a file in ``folder``; None if that worked, else (folder, why)."""
    probe = tmp_name(folder / ".kernelflow-doctor")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        return folder, f"{type(exc).__name__}: {exc.strerror or exc}"
    try:
        os.write(fd, b"ok\n")
    except OSError as exc:  # a full disk takes the name but not the bytes
        return folder, f"{type(exc).__name__}: {exc.strerror or exc}"
    finally:
        os.close(fd)
        try:
            os.unlink(probe)
        except OSError:
            pass
    return None


def _size(root: Path) -> tuple[int, int]:
    total = files = 0
    stack = [root]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
                    files += 1
            except OSError:  # removed meanwhile (compaction, gc)
                continue
    return total, files


def _quarantined(root: Path) -> int:
    try:
        return sum(1 for n in os.listdir(root / QUARANTINE) if not n.endswith(NOTE_SUFFIX))
    except OSError:
        return 0


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"
