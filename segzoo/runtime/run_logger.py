"""The run's metric logger: tcap_dllogger when it is installed (the vendor's ModelZoo tooling
reads its logs), else the API-compatible segzoo.runtime.dllogger. Both write `TCAPPDLL {json}` lines.

    logger = create_logger(run_dir / "train.log", enabled=rank == 0)
    logger.log((epoch, global_iteration), {"train.loss": loss, "train.lr": lr},
               verbosity=Verbosity.DEFAULT)

Pass `verbosity` explicitly: Logger.log defaults to DEFAULT here but to VERBOSE in DLLogger and
tcap_dllogger. DEFAULT records are printed and written to the file, VERBOSE ones only written.
Steps are (epoch, global_iteration), both 1-based, which tools/plot_curve.py expects.
"""
from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType

from segzoo.runtime import dllogger
from segzoo.runtime.dllogger import Verbosity
from segzoo.runtime.errors import UserError

__all__ = ["METRIC_METADATA", "Verbosity", "create_logger", "logger_module"]


def _metric(goal: str | None, stage: str, fmt: str, unit: str | None = None) -> dict:
    meta = {"STAGE": stage, "format": fmt}
    if goal:
        meta["GOAL"] = goal
    if unit:
        meta["unit"] = unit
    return meta


# DLLogger metadata (GOAL, STAGE, format, unit) of every metric the runner logs. mIoU and the
# accuracies are fractions in 0..1, as segzoo.runtime.metrics.ConfusionMatrix.compute returns them.
METRIC_METADATA: dict[str, dict] = {
    "train.loss": _metric("MINIMIZE", "TRAIN", ":.4f"),
    "train.lr": _metric(None, "TRAIN", ":.6g"),  # a setting, not something to optimise
    "train.ips": _metric("MAXIMIZE", "TRAIN", ":.2f", "imgs/s"),
    "train.data_time": _metric("MINIMIZE", "TRAIN", ":.4f", "s"),
    "train.compute_time": _metric("MINIMIZE", "TRAIN", ":.4f", "s"),
    "val.loss": _metric("MINIMIZE", "VALID", ":.4f"),
    "val.ips": _metric("MAXIMIZE", "VALID", ":.2f", "imgs/s"),
    "val.mIoU": _metric("MAXIMIZE", "VALID", ":.4f"),
    "val.overall_acc": _metric("MAXIMIZE", "VALID", ":.4f"),
    "val.mean_acc": _metric("MAXIMIZE", "VALID", ":.4f"),
    "val.freqw_acc": _metric("MAXIMIZE", "VALID", ":.4f"),
}


def logger_module() -> ModuleType:
    """tcap_dllogger if it can be imported, else segzoo.runtime.dllogger. Imported here, not at
    module import, so that merely importing the runtime never loads a vendor package."""
    try:
        import tcap_dllogger
    except ImportError:
        return dllogger
    return tcap_dllogger


def create_logger(path: str | os.PathLike | None, enabled: bool = True, append: bool = False):
    """A DLLogger-style Logger that prints DEFAULT records and writes every record to `path`.

    Args:
        path: the JSON-lines log file (its folder is created); None logs to stdout only.
        enabled: False (non-zero ranks) gives a logger without backends: every call is a no-op
            and no file is created.
        append: keep an existing log (a resumed run) instead of truncating it.
    Returns:
        a `Logger` of tcap_dllogger or segzoo.runtime.dllogger with METRIC_METADATA declared.
    """
    backend_module = logger_module()
    if append and backend_module is not dllogger:
        # tcap_dllogger's JSONStreamBackend truncates the file whatever `append` says; a resumed
        # run keeps its earlier records with the built-in logger, which writes the same lines.
        backend_module = dllogger
    if not enabled:
        return backend_module.Logger([])
    backends = [backend_module.StdOutBackend(Verbosity.DEFAULT)]
    if path is not None:
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            backends.append(backend_module.JSONStreamBackend(Verbosity.VERBOSE, str(path),
                                                             append=append))
        except OSError as err:
            raise UserError(f"cannot write the log file {path}: {err.strerror or err}; "
                            "pass a writable output folder") from err
    logger = backend_module.Logger(backends)
    for name, metadata in METRIC_METADATA.items():
        logger.metadata(name, metadata)
    return logger
