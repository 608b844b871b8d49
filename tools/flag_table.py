"""Write the README's table of every flag from the parser itself, so the two cannot disagree.

    python tools/flag_table.py            # print the Markdown tables
    python tools/flag_table.py --write    # replace the block between the flag markers in README.md

tests/test_readme.py checks that README.md holds exactly what this prints.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segzoo.engine.config import add_launch_args, add_train_args  # noqa: E402

README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- flags:start (tools/flag_table.py --write) -->", "<!-- flags:end -->"


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _default(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return "`" + ",".join(str(v) for v in value) + "`"
    return f"`{value}`"


def flag_tables() -> str:
    """One Markdown table per argument group: flag, default, meaning (with the choices)."""
    parser = add_train_args(add_launch_args(argparse.ArgumentParser(add_help=False)))
    blocks = []
    for group in parser._action_groups:
        actions = [a for a in group._group_actions if a.option_strings]
        if not actions:
            continue
        rows = [f"**{group.title}**", "", "| flag | default | meaning |", "|---|---|---|"]
        for action in actions:
            meaning = action.help or ""
            if action.choices:
                meaning += " (" + " | ".join(str(c) for c in action.choices) + ")"
            names = " ".join(f"`{name}`" for name in action.option_strings)
            rows.append(f"| {names} | {_default(action.default)} | {_cell(meaning)} |")
        blocks.append("\n".join(rows))
    return "\n\n".join(blocks)


def readme_block(text: str) -> str:
    """The generated part of README.md's text (between the markers)."""
    if START not in text or END not in text:
        raise SystemExit(f"error: {README} has no flag markers {START} ... {END}")
    return text.split(START, 1)[1].split(END, 1)[0].strip()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="update README.md in place")
    args = parser.parse_args(argv)
    tables = flag_tables()
    if not args.write:
        print(tables)
        return 0
    text = README.read_text()
    readme_block(text)
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    README.write_text(f"{head}{START}\n\n{tables}\n\n{END}{tail}")
    print(f"updated the flag tables in {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
