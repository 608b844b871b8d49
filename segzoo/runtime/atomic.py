"""Atomic file writes: a reader sees the old file or the whole new one, never half of one."""
from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import BinaryIO, Callable

# Temporary files are named ".NAME.PID.RANDOM.tmp" beside NAME.
TEMP_PREFIX, TEMP_SUFFIX = ".", ".tmp"


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """Call `write(file)` on a temporary file beside `path`, fsync it, then rename it over `path`.

    Same folder, so the rename stays within one file system; opened with "x" (not mkstemp) so
    the file gets the usual umask permissions instead of mkstemp's 0600. The temporary file is
    removed if anything fails, and `path` is then left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TEMP_PREFIX}{path.name}.{os.getpid()}.{secrets.token_hex(4)}{TEMP_SUFFIX}")
    try:
        with open(tmp, "xb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        # An interrupt inside `write` (KeyboardInterrupt, a second stop signal) can make the
        # writer's own clean-up fail too (torch.save's zip writer then raises RuntimeError
        # "unexpected pos"); report the interrupt, not that follow-up error.
        cause = exc.__context__
        while cause is not None and isinstance(exc, Exception):
            if not isinstance(cause, Exception):
                raise cause from None
            cause = cause.__context__
        raise


def remove_temp_files(folder: str | os.PathLike) -> list:
    """Delete the temporary files that atomic_write left in `folder` when its process was killed
    (kill -9 or power loss run no cleanup). Call only while no other writer uses the folder
    (the run holds the work-dir lock). Returns the names removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for tmp in folder.glob(f"{TEMP_PREFIX}*{TEMP_SUFFIX}"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed.append(tmp.name)
    return sorted(removed)
