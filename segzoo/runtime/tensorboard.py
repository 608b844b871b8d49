"""TensorBoard dashboard of a run (`--tensorboard True`, alias `--use_vdl`): rank 0 only.

Writes to WORK_DIR/tb/: every scalar the run logs (train/loss, train/lr, train/ips, val/mIoU,
...; tags are the log keys with '.' -> '/'), the per-class IoU of each evaluation
(val/IoU/<class>) and a few prediction overlays (val/prediction/<image>).

`tensorboard` is an optional dependency (torch.utils.tensorboard needs it); it is imported
only when the flag is on, and its absence is one clear line naming the flag.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from segzoo.runtime.errors import UserError


def _summary_writer_class(flag: str):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError(f"{flag} True needs the tensorboard package: pip install tensorboard "
                        f"(or pip install -e \".[tensorboard]\"), or drop {flag}") from None
    return SummaryWriter


class TensorBoardWriter:
    """A SummaryWriter on rank 0; every method does nothing where `enabled` is False (other
    ranks, flag off), so callers need no rank checks."""

    def __init__(self, log_dir: str | Path, enabled: bool = True, flag: str = "--tensorboard"):
        self.log_dir = Path(log_dir)
        self._writer = None
        if enabled:
            self._writer = _summary_writer_class(flag)(log_dir=str(self.log_dir))

    @property
    def enabled(self) -> bool:
        return self._writer is not None

    def scalars(self, global_step: int, data: dict) -> None:
        """Numeric, finite values of a log record; "train.loss" is written as tag "train/loss"."""
        if not self.enabled:
            return
        for key, value in data.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            self._writer.add_scalar(key.replace(".", "/"), float(value), global_step)

    def evaluation(self, global_step: int, results: dict, class_names: Sequence[str]) -> None:
        """mIoU and each class's IoU (classes absent from the data, IoU NaN, are left out)."""
        if not self.enabled:
            return
        self.scalars(global_step, {"val.mIoU": results["mean_iou"]})
        for name, iou in zip(class_names, results["per_class_iou"]):
            if math.isfinite(iou):
                self._writer.add_scalar(f"val/IoU/{name}", iou, global_step)

    def images(self, global_step: int, pictures: Sequence[tuple]) -> None:
        """[(name, (H, W, 3) uint8 RGB)] as images under val/prediction/NAME."""
        if not self.enabled:
            return
        for name, picture in pictures:
            self._writer.add_image(f"val/prediction/{name}", np.asarray(picture), global_step, dataformats="HWC")

    def tee(self, logger) -> "TeeLogger":
        """The run logger, with every record's scalars also sent here."""
        return TeeLogger(logger, self)

    def flush(self) -> None:
        if self.enabled:
            self._writer.flush()

    def close(self) -> None:
        if self.enabled:
            self._writer.close()
            self._writer = None


class TeeLogger:
    """Forwards to the run logger (segzoo.runtime.run_logger) and copies each record's scalars
    to TensorBoard at the record's global step (the last element of its (epoch, iteration) step)."""

    def __init__(self, logger, writer: TensorBoardWriter):
        self._logger, self._writer = logger, writer

    def log(self, step, data: dict, *args, **kwargs):
        result = self._logger.log(step, data, *args, **kwargs)
        if isinstance(step, (tuple, list)) and step and isinstance(step[-1], int):
            self._writer.scalars(step[-1], data)
        return result

    def flush(self, *args, **kwargs):
        self._writer.flush()
        return self._logger.flush(*args, **kwargs)

    def __getattr__(self, name):  # metadata(), close(), ... of the wrapped logger
        return getattr(self._logger, name)
