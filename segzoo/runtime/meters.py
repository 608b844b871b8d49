"""Throughput and ETA bookkeeping for the training loop.

The loop synchronizes the device only at log points, so every figure here is an interval
average over whole iterations (data loading included), never a per-iteration host timing
that would miss queued device work.
"""
from __future__ import annotations

import datetime


class ThroughputMeter:
    """Images/s over logged intervals, with the first `warmup_intervals` left out of the summary
    (they hold cudnn autotuning, compilation and loader start-up)."""

    def __init__(self, warmup_intervals: int = 1):
        self.warmup_intervals = warmup_intervals
        self.intervals = 0
        self.images = 0
        self.seconds = 0.0
        self.all_images = 0
        self.all_seconds = 0.0

    def add(self, images: int, seconds: float) -> float:
        """Record one interval (images over all ranks); return its images/s."""
        self.intervals += 1
        self.all_images += images
        self.all_seconds += seconds
        if self.intervals > self.warmup_intervals:
            self.images += images
            self.seconds += seconds
        return images / max(seconds, 1e-9)

    def summary(self) -> tuple:
        """(images/s, whether warm-up could be excluded)."""
        if self.seconds > 0:
            return self.images / self.seconds, True
        return self.all_images / max(self.all_seconds, 1e-9), False


def format_eta(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(max(seconds, 0))))
