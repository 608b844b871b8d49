"""Evaluation of a model over a validation set (flags and logic)."""
from __future__ import annotations

import argparse


def add_eval_args(p: argparse.ArgumentParser) -> None:
    """Flags of the evaluation group (filled in by the evaluation-modes work)."""
