"""User mistakes are reported as one line and a non-zero exit, never a traceback."""
import re
import sys
from typing import NoReturn

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A mistake the user can fix (bad path, bad flag, bad data). The message is one line
    that names the file or setting and says what to do."""


class OptionError(UserError):
    """A bad value of a named setting, raised by library code that knows settings by their key
    (``backbone``) and not by their command-line spelling. ``str()`` gives "backbone 'x' is ...";
    the entry point (``flag_message``) turns it into "--backbone 'x' is ..."."""

    def __init__(self, key: str, value, problem: str):
        self.key, self.value, self.problem = key, value, problem
        super().__init__(f"{key} {value!r} {problem}")


def flag_message(err: BaseException) -> str:
    """The line a command-line user sees: an OptionError's key spelled as its flag."""
    if isinstance(err, OptionError):
        return f"--{err.key} {err.value!r} {err.problem}"
    return one_line(err)


def one_line(err: BaseException) -> str:
    """The user-facing line of a UserError, also when a DataLoader worker re-raised it with
    the worker's traceback folded into the message."""
    text = str(err).strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        return type(err).__name__
    last = lines[-1]
    return re.sub(r"^[\w.]*(UserError|OptionError):\s*", "", last)


def exit_with(err: BaseException, prefix: str = "error") -> NoReturn:
    print(f"{prefix}: {flag_message(err)}", file=sys.stderr, flush=True)
    sys.exit(EXIT_USER_ERROR)
