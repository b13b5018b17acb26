"""One run per output folder: an OS lock on ``OUTPUT/.distill.lock`` for as long as the run lives.

The lock is ``flock``'s: the kernel drops it when its process ends, however it ends (kill -9
included), so a killed run never leaves a stale lock behind and the file itself means nothing
without a live holder. The holder writes who it is into the file, so a second run (or a
``--resume``) started into the same folder is refused in one line naming it. ``flock`` locks are
local to one machine: on a network file system two machines may not see each other's.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from distill.errors import DistillError

LOCK_FILE = ".distill.lock"
# Someone checking whether a folder is held takes the lock for an instant; the real claim waits
# this long before it concludes that a run holds it.
CLAIM_SECONDS = 2.0


class FolderLock:
    """The lock of one output folder; :meth:`claim` it, :meth:`release` it (or let the process end)."""

    def __init__(self, folder: Path, remedy: str = "choose another output.dir"):
        self.folder = Path(folder)
        self.remedy = remedy
        self.fd: int | None = None

    def claim(self) -> None:
        """Take the lock (creating the folder) or raise a :class:`DistillError` naming the holder."""
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
        deadline = time.monotonic() + CLAIM_SECONDS
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                    os.close(fd)
                    raise DistillError(in_use_message(self.folder, _read(self.folder), self.remedy)) from None
                time.sleep(0.05)
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join(["distill", *sys.argv[1:]])[:300],
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def holder(folder: Path) -> dict | None:
    """Who holds ``folder``'s lock now (a dict, possibly empty if it has not said yet), or None."""
    path = Path(folder) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None  # no lock file: nobody ever held it
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return _read(folder) or {}
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def refuse_if_held(folder: Path, remedy: str = "choose another output.dir") -> None:
    """A :class:`DistillError` if a live run holds ``folder``."""
    held = holder(folder)
    if held is not None:
        raise DistillError(in_use_message(folder, held, remedy))


def in_use_message(folder: Path, held: dict, remedy: str = "choose another output.dir") -> str:
    who = (
        f"pid {held['pid']} on {held.get('host', '?')}, started {held.get('started', '?')}: "
        f"`{held.get('command', 'distill')}`"
        if "pid" in held
        else "a process that is starting"
    )
    return (
        f"{folder} is in use by another run ({who}); wait for it to end or stop it "
        f"(a stopped run continues with --resume), or {remedy}"
    )


def _read(folder: Path) -> dict:
    try:
        value = json.loads((Path(folder) / LOCK_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}
