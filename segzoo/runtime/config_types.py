"""Value types of settings, shared by the command line, YAML configs and component options.

Each converts a command-line word (or a YAML value) and raises ``argparse.ArgumentTypeError``
with a short reason on anything else, so argparse reports it in one line.
"""
from __future__ import annotations

import argparse

TRUE_WORDS = {"true", "1", "yes", "y", "on"}
FALSE_WORDS = {"false", "0", "no", "n", "off"}


def str2bool(text) -> bool:
    if isinstance(text, bool):
        return text
    word = str(text).strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {text!r}")


def positive_int(text) -> int:
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def crop_size(text):
    """513 (square) or "512,1024" / "512x1024" (height, width): an int or a [h, w] list."""
    if isinstance(text, (list, tuple)):
        parts = [str(t) for t in text]
    else:
        parts = str(text).replace("x", ",").split(",")
    try:
        sizes = [positive_int(p.strip()) for p in parts]
    except argparse.ArgumentTypeError:
        sizes = []
    if len(sizes) not in (1, 2):
        raise argparse.ArgumentTypeError(f"expected a positive integer or HEIGHT,WIDTH, got {text!r}")
    return sizes[0] if len(sizes) == 1 else sizes


def non_negative_int(text) -> int:
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def int_list(text) -> tuple:
    """"1,2,3,6" (or a YAML list) -> (1, 2, 3, 6); every entry a positive integer."""
    parts = text if isinstance(text, (list, tuple)) else str(text).replace(" ", "").split(",")
    try:
        return tuple(positive_int(p) for p in parts if str(p) != "")
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}") from None


def non_negative_float(text) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value
