"""Every command a user runs answers --help with at least one example command line."""
from __future__ import annotations

import re
import sys

import pytest

from tests.helpers import REPO, run_process

COMMANDS = sorted(p.relative_to(REPO) for p in (REPO / "tools").glob("*.py") if p.name != "__init__.py")
COMMANDS += [REPO.joinpath("train.py").relative_to(REPO), REPO.joinpath("run_scripts/run_pspnet.py").relative_to(REPO)]


@pytest.mark.slow
@pytest.mark.parametrize("script", COMMANDS, ids=str)
def test_help_has_an_example(script):
    result = run_process([sys.executable, REPO / script, "--help"], timeout=120)
    assert result.rc == 0, result.describe()
    assert re.search(r"^\s*(python|torchrun|bash)\s+\S+", result.stdout, flags=re.M), result.stdout[-2000:]
