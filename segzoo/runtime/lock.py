"""One run per work dir: an advisory lock file held for the whole run.

``work_dir/.run.lock`` holds the owner's PID and host (JSON) and is ``flock``-ed while the run
lives. The kernel drops an flock when its process dies, however it dies (kill -9 included), so a
lock file left by a killed run is stale by construction and taken over at once.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from segzoo.runtime.errors import UserError

LOCK_NAME = ".run.lock"


class WorkDirLock:
    """``with WorkDirLock(work_dir):`` or acquire()/release(); a second holder gets a UserError
    naming the first one's PID and host."""

    def __init__(self, work_dir):
        self.path = Path(work_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> "WorkDirLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = self._lock_once()
            # A releasing owner unlinks the file before closing it: if we locked that unlinked
            # inode, the path now names a new file that a third run may lock; try again on it.
            try:
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        self._fd = fd
        return self

    def _lock_once(self) -> int:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            owner = self._owner(fd)
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            who = (f"PID {owner['pid']} on {owner.get('host', '?')}, started {owner.get('started', '?')}"
                   if owner.get("pid") else "a run that is just starting")
            raise UserError(f"‹work_dir› {self.path.parent} is in use by another run ({who}); wait for it, "
                            f"stop it, or pick another ‹work_dir›") from None
        return fd

    @staticmethod
    def _owner(fd: int) -> dict:
        try:
            return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        except (ValueError, OSError):
            return {}

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # unlink first: a waiting run then makes a fresh file
        finally:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
