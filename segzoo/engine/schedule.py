"""Training length and checkpoint cadence (flags and logic): epochs or iterations."""
from __future__ import annotations

import argparse


def add_schedule_args(p: argparse.ArgumentParser) -> None:
    """Flags of the schedule group (filled in by the iteration-schedule work)."""
