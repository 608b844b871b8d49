"""What a run writes besides checkpoints and logs: dashboards and saved predictions (flags and logic)."""
from __future__ import annotations

import argparse


def add_output_args(p: argparse.ArgumentParser) -> None:
    """Flags of the outputs group (filled in by the dashboards/predictions work)."""
