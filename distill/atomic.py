"""Writes that either happen whole or not at all, and strict JSON.

Every file distill writes goes to a temporary name in the same folder and is renamed into place
(the rename is the commit, as in git's object store); folders are built under ``.partial_NAME`` and
renamed when complete. A kill at any moment leaves the previous good file or folder, never half
of a new one. Write failures of the file system (disk full, read-only, not a folder) become one
:class:`DistillError` naming the path.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from distill.errors import DistillError

FULL_BYTES = 1 << 20  # less free space than this, and a write that failed without saying why ran out of it
PARTIAL = ".partial_"  # folders and files being written
OLD = ".old_"  # folders being replaced or removed

# What the file system says when the user's disk or path is the problem, not distill.
DISK_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EFBIG,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.ENAMETOOLONG,
}


def strict(value: Any) -> Any:
    """``value`` with every non-finite float replaced by ``None``: JSON has no NaN or Infinity."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v) for v in value]
    return value


def dumps(value: Any) -> str:
    """Strict JSON (``allow_nan=False``), indented, non-finite numbers written as null."""
    return json.dumps(strict(value), indent=2, allow_nan=False) + "\n"


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename; synced before the rename."""
    path = Path(path)
    tmp = path.with_name(f"{PARTIAL}{path.name}")
    with disk_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


def write_json(path: Path, value: Any) -> None:
    write_text(path, dumps(value))


def read_json(path: Path) -> Any | None:
    """The JSON in ``path``, or ``None`` if it is missing or damaged (a record that is not there)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def new_folder(path: Path) -> Iterator[Path]:
    """Build a folder under ``.partial_NAME``; on success it replaces ``path`` by renames.

    A kill while building leaves ``path`` as it was; a kill during the replacement leaves either
    the old folder (as ``.old_NAME``, cleaned up later) or the new one, never a mix.
    """
    path = Path(path)
    partial = path.with_name(f"{PARTIAL}{path.name}")
    with disk_errors(path):
        remove(partial)
        partial.mkdir(parents=True)
    yield partial
    with disk_errors(path):
        replace_folder(partial, path)


def replace_folder(src: Path, dst: Path) -> None:
    """Rename ``src`` onto ``dst``; an existing ``dst`` is moved aside first and then removed.

    Everything in ``src`` is synced to the disk before the rename, so a folder that has its name
    holds its files even after a crash of the machine or a disk that turns read-only (the kernel
    drops what it had not yet written)."""
    sync_tree(src)
    old = dst.with_name(f"{OLD}{dst.name}")
    remove(old)
    if dst.exists():
        os.replace(dst, old)
    os.replace(src, dst)
    remove(old)
    sync_dir(dst.parent)


def remove(path: Path) -> None:
    """Remove a file or folder if present; a folder is renamed aside first, so a kill never
    leaves a half-deleted folder under a name that means something."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        if path.name.startswith((PARTIAL, OLD)):
            shutil.rmtree(path, ignore_errors=True)
            return
        old = path.with_name(f"{OLD}{path.name}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
        shutil.rmtree(old, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def clean_leftovers(folder: Path, *, recursive: bool = False) -> None:
    """Remove what interrupted writes left in ``folder`` (and, if ``recursive``, in the folders
    under it): ``.partial_*`` and ``.old_*`` entries."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        if entry.name.startswith((PARTIAL, OLD)):
            remove(entry)
        elif recursive and entry.is_dir() and not entry.is_symlink():
            clean_leftovers(entry, recursive=True)


def sync_tree(folder: Path) -> None:
    """fsync every file and folder under ``folder`` (and ``folder`` itself), deepest first."""
    for entry in sorted(Path(folder).rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if entry.is_symlink():
            continue
        if entry.is_file():
            sync_file(entry)
        elif entry.is_dir():
            sync_dir(entry)
    sync_dir(folder)


def sync_file(path: Path) -> None:
    """fsync one file (errors propagate: a file that cannot reach the disk is not written)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def disk_problem(error: BaseException) -> str | None:
    """The file-system cause of ``error`` (or of an error it wraps), as a short phrase, else None.

    Libraries wrap ``OSError`` (safetensors reports "os error 28" in its own error type), so the
    chain and the message are both read.
    """
    seen = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in DISK_ERRNOS:
            return e.strerror or os.strerror(e.errno)
        text = str(e)
        for code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES):
            if f"os error {code})" in text or os.strerror(code) in text:
                return os.strerror(code)
        e = e.__cause__ or e.__context__
    return None


@contextlib.contextmanager
def disk_errors(path: Path) -> Iterator[None]:
    """Turn a file-system failure while writing ``path`` into one line naming it."""
    try:
        yield
    except DistillError:
        raise
    except Exception as e:
        # torch.save reports a failed write as a bare RuntimeError ("iostream error"), without
        # the errno: then the file system itself is asked whether it is full or read-only.
        cause = disk_problem(e) or file_system_problem(path)
        if cause is None:
            raise
        raise DistillError(f"cannot write {path}: {cause}") from None


def file_system_problem(path: Path) -> str | None:
    """``No space left on device`` or ``Read-only file system`` if that is the state of the file
    system ``path`` is on (or would be created on), else None."""
    folder = Path(path)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        stat = os.statvfs(folder)
    except OSError:
        return None
    if stat.f_flag & os.ST_RDONLY:
        return os.strerror(errno.EROFS)
    if stat.f_bavail * stat.f_frsize < FULL_BYTES:
        return os.strerror(errno.ENOSPC)
    return None
