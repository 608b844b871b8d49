"""User mistakes are reported as one line and a non-zero exit, never a traceback."""
import re
import sys
from typing import NoReturn

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A mistake the user can fix (bad path, bad flag, bad data). The message is one line
    that names the file or flag and says what to do."""


def one_line(err: BaseException) -> str:
    """The user-facing line of a UserError, also when a DataLoader worker re-raised it with
    the worker's traceback folded into the message."""
    text = str(err).strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        return type(err).__name__
    last = lines[-1]
    return re.sub(r"^[\w.]*UserError:\s*", "", last)


def exit_with(err: BaseException, prefix: str = "error") -> NoReturn:
    print(f"{prefix}: {one_line(err)}", file=sys.stderr, flush=True)
    sys.exit(EXIT_USER_ERROR)
