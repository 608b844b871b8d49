"""User mistakes are reported as one line and a non-zero exit, never a traceback."""
import re
import sys
from typing import NoReturn

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A mistake the user can fix (bad path, bad flag, bad data). The message is one line
    that names the file or setting and says what to do."""


def setting(key: str) -> str:
    """How library code names a setting in a message: ``‹key›``. Library code knows settings by
    their key, not by how a front end spells them; the command-line entry points print ``‹key›``
    as ``--key`` (``flag_message``), a Python caller sees ``‹key›``."""
    return f"\u2039{key}\u203a"


_SETTING = re.compile("\u2039(\\w+)\u203a")


class OptionError(UserError):
    """A bad value of a named setting: ``OptionError("backbone", "resnet7", "is not known; ...")``
    reads "‹backbone› 'resnet7' is not known; ..." (``--backbone ...`` on the command line)."""

    def __init__(self, key: str, value, problem: str):
        self.key, self.value, self.problem = key, value, problem
        super().__init__(f"{setting(key)} {value!r} {problem}")


def flag_message(err: BaseException) -> str:
    """The line a command-line user sees: the error's one line with every setting spelled as its flag."""
    return _SETTING.sub(r"--\1", one_line(err))


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
