"""The README is the front door: every flag is documented and its commands parse as written."""
import argparse
import re
import shlex
from pathlib import Path

import pytest

from segzoo.engine.config import add_launch_args, add_train_args, parse_train_args
from segzoo.engine.launch import build_command, split_argv

README = Path(__file__).resolve().parents[1] / "README.md"


def all_actions() -> list:
    parser = add_train_args(add_launch_args(argparse.ArgumentParser()))
    return [a for a in parser._actions if a.option_strings and a.dest != "help"]


def test_every_flag_has_a_help_line():
    missing = [a.option_strings[0] for a in all_actions() if not (a.help or "").strip()]
    assert not missing, f"flags without a help line: {missing}"


def test_readme_flag_tables_are_the_generated_ones():
    """README's flag section is exactly what tools/flag_table.py prints from the parser (run
    `python tools/flag_table.py --write` after adding a flag or an option)."""
    from tools.flag_table import flag_tables, readme_block
    assert readme_block(README.read_text()) == flag_tables()


def launcher_commands() -> list:
    """Every `python run_scripts/run_*.py ...` line in the README's shell blocks."""
    text = README.read_text()
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = block.replace("\\\n", " ")
        lines += [ln.strip() for ln in joined.splitlines() if ln.strip().startswith("python run_scripts/run_")]
    return lines


@pytest.mark.parametrize("line", launcher_commands())
def test_readme_launcher_commands_parse(line):
    """Each command's flags are accepted (devices and paths aside, which the runs check)."""
    argv = shlex.split(line.replace("NODE", "1"))[2:]  # the README's placeholder for --node_rank
    launch, train_argv = split_argv(argv)
    args = parse_train_args(train_argv)
    assert args.model_name and args.device in ("cpu", "cuda", "sdaa")
    assert build_command(launch, train_argv)[-len(train_argv):] == train_argv
