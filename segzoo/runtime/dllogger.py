"""A small built-in stand-in for tcap_dllogger / NVIDIA DLLogger, with the same API, used when
neither is installed.

    logger = Logger([StdOutBackend(Verbosity.DEFAULT), JSONStreamBackend(Verbosity.VERBOSE, path)])
    logger.metadata("train.loss", {"format": ":.4f", "GOAL": "MINIMIZE", "STAGE": "TRAIN"})
    logger.log(step=(epoch, iteration), data={"train.loss": 0.25}, verbosity=Verbosity.DEFAULT)

A record reaches the backends whose verbosity is >= the record's verbosity. The step is a tuple
of ints ((epoch, iteration), (epoch,) or ()) or a string such as "PARAMETER".

The JSON backend writes one line per record, in tcap_dllogger's envelope:
    TCAPPDLL {"timestamp": 1700000000.5, "datetime": "2023-11-14T22:13:20.500000+00:00",
              "elapsedtime": 12.3, "type": "LOG", "step": [1, 20], "data": {"train.loss": 0.25}}
    TCAPPDLL {..., "type": "METADATA", "metric": "train.loss", "metadata": {...}}
tcap_dllogger writes "data" as a Python repr string of stringified values; this writes a real
JSON object. tools/plot_curve.py reads both.
"""
from __future__ import annotations

import atexit
import json
import os
import time
import weakref
from abc import ABC, abstractmethod
from collections import defaultdict
from datetime import datetime, timezone
from typing import Any, Callable, Mapping, Sequence, Union

JSON_LINE_PREFIX = "TCAPPDLL"

Step = Union[tuple, list, str]  # (epoch, iteration), (epoch,), () or e.g. "PARAMETER"


class Verbosity:
    OFF = -1
    DEFAULT = 0
    VERBOSE = 1


class Backend(ABC):
    """Receives every record the Logger passes it. `timestamp` is an aware datetime,
    `elapsedtime` seconds since the Logger was created."""

    def __init__(self, verbosity: int) -> None:
        self._verbosity = verbosity

    @property
    def verbosity(self) -> int:
        return self._verbosity

    @abstractmethod
    def log(self, timestamp: datetime, elapsedtime: float, step: Step, data: Mapping) -> None: ...

    @abstractmethod
    def metadata(self, timestamp: datetime, elapsedtime: float, metric: str,
                 metadata: Mapping) -> None: ...

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.flush()


# ---------------------------------------------------------------------------------------------
# Readable stdout lines


def format_step(step: Step) -> str:
    """Formats (1, 20) as "Epoch: 1 Iteration: 20", as tcap_dllogger prints it; a string step
    ("PARAMETER") as it is."""
    if isinstance(step, str):
        return step
    names = ("Epoch", "Iteration", "Validation Iteration")
    if isinstance(step, (tuple, list)) and len(step) <= len(names):
        return " ".join(f"{name}: {value}" for name, value in zip(names, step))
    return str(step)


def format_metric(metric: str, metadata: Mapping, value: Any) -> str:
    """Formats a value as "train.loss : 0.2500" using the metric's metadata "format" (e.g. ":.4f")
    and "unit"."""
    text = str(value)
    spec = metadata.get("format")
    if spec and value is not None:
        try:
            text = ("{" + spec + "}").format(value)
        except (ValueError, TypeError):
            pass  # e.g. a string value under a float format: print it as it is
    unit = metadata.get("unit")
    return f"{metric} : {text} {unit}" if unit else f"{metric} : {text}"


def format_prefix(timestamp: datetime) -> str:
    return f"{JSON_LINE_PREFIX} {timestamp.strftime('%Y-%m-%d %H:%M:%S.%f')} - "


class StdOutBackend(Backend):
    """One readable line per LOG record on stdout, e.g.
    "TCAPPDLL 2024-05-01 12:00:00.000000 - Epoch: 1 Iteration: 20  train.loss : 0.2500  ..."

    Args:
        verbosity: records with a verbosity above this are not printed.
        step_format(step) -> str, metric_format(metric, metadata, value) -> str,
        prefix_format(timestamp) -> str: replace the defaults above.
    """

    def __init__(self, verbosity: int, step_format: Callable | None = None,
                 metric_format: Callable | None = None, prefix_format: Callable | None = None):
        super().__init__(verbosity)
        self._metadata: dict[str, dict] = defaultdict(dict)
        self.step_format = step_format or format_step
        self.metric_format = metric_format or format_metric
        self.prefix_format = prefix_format or format_prefix

    def metadata(self, timestamp, elapsedtime, metric, metadata):
        self._metadata[metric].update(metadata)

    def log(self, timestamp, elapsedtime, step, data):
        metrics = "  ".join(self.metric_format(m, self._metadata[m], v) for m, v in data.items())
        print(f"{self.prefix_format(timestamp)}{self.step_format(step)}  {metrics}".rstrip(),
              flush=True)


# ---------------------------------------------------------------------------------------------
# JSON lines


def _to_json_value(value: Any) -> Any:
    """json.dumps fallback for numpy scalars and one-element tensors (their .item()), anything
    else as its str(), so that a stray object never kills a training run from the logger."""
    item = getattr(value, "item", None)
    if callable(item):
        try:
            return item()
        except (ValueError, RuntimeError):
            pass
    return str(value)


def _json_step(step: Step) -> Any:
    return list(step) if isinstance(step, tuple) else step


class JSONStreamBackend(Backend):
    """Appends one `TCAPPDLL {json}` line per record to `filename`.

    Args:
        verbosity: records with a verbosity above this are not written.
        filename: the log file; its folder must exist.
        append: keep the existing content (resumed runs) instead of truncating it.
    """

    def __init__(self, verbosity: int, filename: str | os.PathLike, append: bool = False):
        super().__init__(verbosity)
        self.filename = os.fspath(filename)
        # Line-buffered: every record reaches the file when it is logged, so the log of a
        # crashed or killed run is complete up to the crash.
        self.file = open(self.filename, "a" if append else "w", buffering=1, encoding="utf-8")

    def _write(self, record: dict) -> None:
        # Non-finite floats are written as NaN / Infinity (Python's json reads them back):
        # a diverged loss is worth seeing in the log.
        line = json.dumps(record, default=_to_json_value)
        self.file.write(f"{JSON_LINE_PREFIX} {line}\n")

    @staticmethod
    def _envelope(timestamp: datetime, elapsedtime: float, record_type: str) -> dict:
        return {"timestamp": timestamp.timestamp(), "datetime": timestamp.isoformat(),
                "elapsedtime": elapsedtime, "type": record_type}

    def log(self, timestamp, elapsedtime, step, data):
        self._write({**self._envelope(timestamp, elapsedtime, "LOG"),
                     "step": _json_step(step), "data": dict(data)})

    def metadata(self, timestamp, elapsedtime, metric, metadata):
        self._write({**self._envelope(timestamp, elapsedtime, "METADATA"),
                     "metric": metric, "metadata": dict(metadata)})

    def flush(self):
        if not self.file.closed:
            self.file.flush()

    def close(self):
        if not self.file.closed:
            self.file.close()


# ---------------------------------------------------------------------------------------------


class Logger:
    """Sends each record, stamped with the time, to its backends.

    Args:
        backends: Backend instances; an empty list gives a logger that does nothing (the one
            non-zero ranks get).
    """

    def __init__(self, backends: Sequence[Backend]) -> None:
        self.backends = list(backends)
        self.starttime = datetime.now(timezone.utc).astimezone()
        # Elapsed time from the monotonic clock: a wall-clock adjustment (NTP) during a long
        # run must not make it jump or go negative.
        self._start_monotonic = time.monotonic()
        # Flush and close at interpreter exit, as DLLogger does, without keeping the logger
        # alive until then.
        atexit.register(_close_if_alive, weakref.ref(self))

    def _now(self) -> tuple[datetime, float]:
        return datetime.now(timezone.utc).astimezone(), time.monotonic() - self._start_monotonic

    def metadata(self, metric: str, metadata: Mapping) -> None:
        timestamp, elapsed = self._now()
        for backend in self.backends:
            backend.metadata(timestamp, elapsed, metric, metadata)

    def log(self, step: Step, data: Mapping, verbosity: int = Verbosity.DEFAULT) -> None:
        timestamp, elapsed = self._now()
        for backend in self.backends:
            if backend.verbosity >= verbosity:
                backend.log(timestamp, elapsed, step, data)

    def flush(self) -> None:
        for backend in self.backends:
            backend.flush()

    def close(self) -> None:
        for backend in self.backends:
            backend.close()


def _close_if_alive(logger_ref: "weakref.ref[Logger]") -> None:
    logger = logger_ref()
    if logger is not None:
        logger.close()
