#!/usr/bin/env python
"""Plot the training loss (per iteration) and validation mIoU (per epoch) of one run, or
overlay two runs and measure how far apart their loss curves are.

    python tools/plot_curve.py run/train.log                  # writes run/train.png
    python tools/plot_curve.py cuda.log sdaa.log --out cmp.png --labels cuda sdaa --smooth 20
    python tools/plot_curve.py reference.log port.log --max_rel_diff 0.02   # a CI port check

With two logs (reference first, then the port) it also prints the ModelZoo's own verdict,
computed as the ModelZoo's loss-comparison script does: over the iterations both logs have,
mean((port - ref) / ref) <= 0.05 or mean(port - ref) <= 0.0002 passes. Both figures are signed,
so a port whose loss is far lower, or whose errors of opposite sign cancel, passes. Beside it
come two-sided figures that cannot be fooled that way: mean |port - ref| / |ref| over the same
iterations, and the same on the smoothed curves. --max_rel_diff X exits 1 when the first of
them (raw, per iteration) exceeds X.

Reads these log lines (anything else is skipped and counted):
  * ours (segzoo.runtime.dllogger): TCAPPDLL {"type": "LOG", "step": [1, 20], "data": {"train.loss": 0.2}}
  * tcap_dllogger:           TCAPPDLL {..., "step": [1, 20], "data": "{'train.loss': '0.2'}"}
                             ("data" is a Python repr string)
  * NVIDIA DLLogger:         DLLL {..., "step": [1, 20], "data": {"train.loss": 0.2}}
  * tcap_dllogger's stdout:  TCAPPDLL 2024-05-01 12:00:00 - Epoch: 1 Iteration: 20  train.loss : 0.2
The step is (epoch, iteration). Our logs count both from 1, iterations globally; logs whose
iteration restarts every epoch get a global index rebuilt from (epoch, iteration), and counts
from 0 are shifted to start at 1.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import ast  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any, Sequence  # noqa: E402

import numpy as np  # noqa: E402

from segzoo.runtime.errors import UserError, exit_with  # noqa: E402

LOSS_KEY = "train.loss"
MIOU_KEY = "val.mIoU"
DEFAULT_SMOOTH = 20

_JSON_MARKERS = ("TCAPPDLL {", "DLLL {")
# tcap_dllogger's stdout line: "... - Epoch: 1 Iteration: 20  rank : 0  train.loss : 0.25 ..."
_TEXT_STEP = re.compile(r"\bEpoch:\s*(\d+)(?:\s+Iteration:\s*(\d+))?")
_TEXT_METRIC = re.compile(r"([A-Za-z_][\w.]*) : (\S+)")
# tcap_dllogger stores str(value); for a tensor that is "tensor(0.2500, device='sdaa:0')".
_TENSOR_REPR = re.compile(r"^tensor\(\s*([^,)\s]+)")


@dataclass(frozen=True)
class Curve:
    """y against x, x ascending."""
    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.x)


@dataclass(frozen=True)
class Records:
    """What a log holds for plotting.

    Attributes:
        path: the log file.
        train_loss: x = global iteration (1-based), y = train.loss. Non-finite losses are left
            out (counted in num_nonfinite_loss).
        val_miou: x = epoch (1-based: logs counting from 0 are shifted), y = val.mIoU as
            logged.
        num_log_records: LOG records read.
        num_unparsable: non-empty lines that are no record of any known format.
        num_nonfinite_loss: NaN/inf train.loss values left out of train_loss.
        num_superseded: train.loss records replaced by a later record of the same iteration
            (a resumed run appended to the log).
        iterations_rebuilt: the log counted iterations within each epoch; x was rebuilt.
    """
    path: str
    train_loss: Curve
    val_miou: Curve
    num_log_records: int
    num_unparsable: int
    num_nonfinite_loss: int
    num_superseded: int
    iterations_rebuilt: bool


# ---------------------------------------------------------------------------------------------
# Parsing


def _to_float(value: Any) -> float | None:
    """A logged value as a float; None when it is not a number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        match = _TENSOR_REPR.match(text)
        if match:
            text = match.group(1)
        try:
            return float(text)
        except ValueError:
            return None
    return None


def _parse_json_line(line: str) -> tuple[bool, tuple | None]:
    """(recognised, (step, data) for a LOG record else None) for a TCAPPDLL/DLLL JSON line."""
    for marker in _JSON_MARKERS:
        start = line.find(marker)
        if start < 0:
            continue
        try:
            record = json.loads(line[start + len(marker) - 1:])
        except json.JSONDecodeError:
            return False, None
        if not isinstance(record, dict):
            return False, None
        if record.get("type") != "LOG":
            return True, None  # METADATA and the like: known, nothing to plot
        data = record.get("data")
        if isinstance(data, str):  # tcap_dllogger writes the dict's Python repr
            try:
                data = ast.literal_eval(data)
            except (ValueError, SyntaxError):
                return False, None
        if not isinstance(data, dict):
            return False, None
        return True, (record.get("step"), data)
    return False, None


def _parse_text_line(line: str) -> tuple | None:
    """(step, data) of a tcap_dllogger stdout line, else None."""
    if "TCAPPDLL" not in line:
        return None
    step_match = _TEXT_STEP.search(line)
    if step_match is None:
        return None
    epoch, iteration = step_match.groups()
    step = (int(epoch),) if iteration is None else (int(epoch), int(iteration))
    data = dict(_TEXT_METRIC.findall(line[step_match.end():]))
    return (step, data) if data else None


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def global_iterations(epochs: np.ndarray, iterations: np.ndarray) -> tuple[np.ndarray, bool]:
    """The 1-based global iteration of each train.loss record (in file order).

    Logs whose iteration falls back when the epoch advances count iterations within each
    epoch: their global index is rebuilt as (epoch - first epoch) * iterations_per_epoch +
    iteration, with iterations_per_epoch the largest iteration seen (exact when the last
    iteration of an epoch is logged, else short by less than the logging interval). Other logs
    count globally, as ours do; an iteration that falls back within an epoch, or together with
    the epoch, is a resumed run appended to the log and keeps its logged value. Counts from 0
    are shifted to start at 1.

    Returns:
        (x, rebuilt): x as float64, and whether it was rebuilt from per-epoch counts.
    """
    if len(iterations) == 0:
        return iterations.astype(np.float64), False
    first = 0 if iterations.min() == 0 else 1
    falls_back = np.diff(iterations) < 0
    per_epoch_counts = bool(np.any(falls_back & (np.diff(epochs) > 0)))
    if not per_epoch_counts:
        return (iterations - first + 1).astype(np.float64), False
    per_epoch = iterations.max() - first + 1
    x = (epochs - epochs.min()) * per_epoch + (iterations - first) + 1
    return x.astype(np.float64), True


def _curve_keeping_last(x: np.ndarray, y: np.ndarray) -> tuple[Curve, int]:
    """The curve sorted by x, keeping the last record of each x: a resumed run re-logs the
    iterations (or epochs) after its checkpoint, and those are the ones that count.

    Returns:
        (curve, number of earlier records replaced).
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    # np.unique gives the first occurrence of each value; in the reversed array that is the last.
    unique_x, first_in_reversed = np.unique(x[::-1], return_index=True)
    keep = len(x) - 1 - first_in_reversed
    return Curve(unique_x, y[keep]), len(x) - len(keep)


def _records_from(path: Path, entries: list[tuple], num_unparsable: int) -> Records:
    loss_epoch, loss_iteration, loss_value, miou_epoch, miou_value = [], [], [], [], []
    for step, data in entries:
        if not isinstance(step, (list, tuple)) or not step:
            continue  # "PARAMETER" or a whole-run summary: no place on a curve
        epoch = _int_or_none(step[0])
        if epoch is None:
            continue
        if len(step) >= 2 and LOSS_KEY in data:
            iteration, loss = _int_or_none(step[1]), _to_float(data[LOSS_KEY])
            if iteration is not None and loss is not None:
                loss_epoch.append(epoch)
                loss_iteration.append(iteration)
                loss_value.append(loss)
        if MIOU_KEY in data:
            miou = _to_float(data[MIOU_KEY])
            if miou is not None:
                miou_epoch.append(epoch)
                miou_value.append(miou)

    x, rebuilt = global_iterations(np.asarray(loss_epoch, np.int64),
                                   np.asarray(loss_iteration, np.int64))
    train_loss, superseded = _curve_keeping_last(x, loss_value)
    finite = np.isfinite(train_loss.y)
    # Epochs counted from 0 (tcap-style logs) are shifted so that both runs' epoch 1 line up.
    epoch_shift = 1 if min(loss_epoch + miou_epoch, default=1) == 0 else 0
    val_miou, _ = _curve_keeping_last(np.add(miou_epoch, epoch_shift), miou_value)
    return Records(
        path=str(path),
        train_loss=Curve(train_loss.x[finite], train_loss.y[finite]),
        val_miou=val_miou,
        num_log_records=len(entries),
        num_unparsable=num_unparsable,
        num_nonfinite_loss=int((~finite).sum()),
        num_superseded=superseded,
        iterations_rebuilt=rebuilt,
    )


def read_log(path: str | Path) -> Records:
    """Parse a training log in any of the formats in this module's docstring."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"log file not found: {path}; pass the path of a training log")
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        raise UserError(f"cannot read log file {path}: {err.strerror or err}") from err
    entries, num_unparsable = [], 0
    for line in text.splitlines():
        if not line.strip():
            continue
        recognised, entry = _parse_json_line(line)
        if not recognised:
            entry = _parse_text_line(line)
            recognised = entry is not None
        if entry is not None:
            entries.append(entry)
        elif not recognised:
            num_unparsable += 1
    return _records_from(path, entries, num_unparsable)


def require_train_loss(records: Records) -> None:
    if len(records.train_loss) == 0:
        raise UserError(
            f"{records.path}: no {LOSS_KEY} records with an (epoch, iteration) step "
            f"({records.num_log_records} log records, {records.num_unparsable} unparsable lines); "
            "pass a DLLogger / TCAPPDLL training log")


# ---------------------------------------------------------------------------------------------
# Curve arithmetic


def moving_average(y: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average over `window` points. The first window-1 points average the
    points so far, so the smoothed curve starts at the first raw value."""
    y = np.asarray(y, np.float64)
    if window <= 1 or len(y) == 0:
        return y.copy()
    cumulative = np.concatenate([[0.0], np.cumsum(y)])
    end = np.arange(1, len(y) + 1)
    start = np.maximum(0, end - window)
    return (cumulative[end] - cumulative[start]) / (end - start)


@dataclass(frozen=True)
class Comparison:
    """How far the smoothed train loss of a run is from a reference run's.

    mean_relative_difference = mean over x of |other(x) - reference(x)| / |reference(x)|, a
    fraction, with both smoothed curves linearly interpolated at every logged iteration of
    either run inside the common range [first_iteration, last_iteration].
    """
    mean_relative_difference: float
    first_iteration: float
    last_iteration: float
    num_points: int


def compare_loss(reference: Records, other: Records,
                 smooth_window: int = DEFAULT_SMOOTH) -> Comparison | None:
    """Compare the smoothed train-loss curves; None when their iterations do not overlap."""
    ref, oth = reference.train_loss, other.train_loss
    if len(ref) == 0 or len(oth) == 0:
        return None
    first, last = max(ref.x[0], oth.x[0]), min(ref.x[-1], oth.x[-1])
    if first > last:
        return None
    grid = np.union1d(ref.x, oth.x)
    grid = grid[(grid >= first) & (grid <= last)]
    ref_y = np.interp(grid, ref.x, moving_average(ref.y, smooth_window))
    oth_y = np.interp(grid, oth.x, moving_average(oth.y, smooth_window))
    # A loss of exactly 0 would divide by zero; the smallest normal float keeps it finite.
    relative = np.abs(oth_y - ref_y) / np.maximum(np.abs(ref_y), np.finfo(np.float64).tiny)
    return Comparison(float(relative.mean()), float(first), float(last), len(grid))


def describe(comparison: Comparison | None, labels: Sequence[str], smooth_window: int) -> str:
    if comparison is None:
        return f"{labels[1]} and {labels[0]} have no iterations in common: nothing to compare"
    return (f"mean relative difference of smoothed train loss: "
            f"{100.0 * comparison.mean_relative_difference:.2f}% over iterations "
            f"{comparison.first_iteration:g}..{comparison.last_iteration:g} "
            f"({labels[1]} vs {labels[0]}, moving average of {smooth_window} points)")


# The ModelZoo's acceptance rule (SEEDS.md, "How the ModelZoo checks a port").
MODELZOO_MAX_MEAN_RELATIVE = 0.05
MODELZOO_MAX_MEAN_ABSOLUTE = 0.0002


@dataclass(frozen=True)
class Verdict:
    """The ModelZoo's signed figures and our two-sided one, over the iterations both logs have.

    signed_relative = mean((port - ref) / ref), signed_absolute = mean(port - ref): the
    ModelZoo's; passes_modelzoo = signed_relative <= 0.05 or signed_absolute <= 0.0002.
    two_sided_relative = mean(|port - ref| / |ref|) on the same iterations.
    """
    signed_relative: float
    signed_absolute: float
    two_sided_relative: float
    num_common: int

    @property
    def passes_modelzoo(self) -> bool:
        return (self.signed_relative <= MODELZOO_MAX_MEAN_RELATIVE
                or self.signed_absolute <= MODELZOO_MAX_MEAN_ABSOLUTE)


def modelzoo_verdict(reference: Records, port: Records) -> Verdict | None:
    """Verdict over the common iterations (the exact x values both logs hold); None if none."""
    common, ref_i, port_i = np.intersect1d(reference.train_loss.x, port.train_loss.x, return_indices=True)
    if len(common) == 0:
        return None
    ref, oth = reference.train_loss.y[ref_i], port.train_loss.y[port_i]
    with np.errstate(divide="ignore", invalid="ignore"):
        signed = float(np.mean((oth - ref) / ref))
    # As in compare_loss: a reference loss of exactly 0 would divide by zero.
    two_sided = float(np.mean(np.abs(oth - ref) / np.maximum(np.abs(ref), np.finfo(np.float64).tiny)))
    return Verdict(signed, float(np.mean(oth - ref)), two_sided, len(common))


def describe_verdict(verdict: Verdict | None, comparison: Comparison | None, labels: Sequence[str]) -> str:
    if verdict is None:
        return f"ModelZoo verdict: {labels[1]} and {labels[0]} share no logged iteration"
    smoothed = "n/a" if comparison is None else f"{100.0 * comparison.mean_relative_difference:.2f}%"
    return (f"ModelZoo verdict ({labels[1]} vs {labels[0]}, {verdict.num_common} common iterations): "
            f"{'PASS' if verdict.passes_modelzoo else 'FAIL'}: signed mean relative error "
            f"{100.0 * verdict.signed_relative:+.2f}%, signed mean absolute error {verdict.signed_absolute:+.6f} "
            f"(passes when <= {100 * MODELZOO_MAX_MEAN_RELATIVE:g}% or <= {MODELZOO_MAX_MEAN_ABSOLUTE:g})\n"
            f"two-sided: mean |port - ref| / ref {100.0 * verdict.two_sided_relative:.2f}% per iteration, "
            f"{smoothed} smoothed")


# ---------------------------------------------------------------------------------------------
# Plotting


def _default_labels(records: Sequence[Records]) -> list[str]:
    stems = [Path(r.path).stem for r in records]
    if len(set(stems)) == len(stems):
        return stems
    return [r.path for r in records]  # e.g. two runs' train.log: the folders tell them apart


def plot(logs: Sequence[Records | str | Path], out_png: str | Path,
         labels: Sequence[str] | None = None, smooth: int = DEFAULT_SMOOTH) -> float | None:
    """Draw train loss per iteration (raw thin, smoothed thick) and, when logged, val mIoU per
    epoch into `out_png`. With two logs, both are overlaid and their smoothed losses compared:
    the result is printed and returned.

    Args:
        logs: one or two logs (paths or read_log results); the first is the reference.
        out_png: the PNG to write (its folder is created).
        labels: legend names, one per log; default the file names.
        smooth: largest moving-average window in logged points (1 = no smoothing); logs of
            fewer than 10 * smooth points get a window of a tenth of their length.
    Returns:
        the mean relative difference of the smoothed train losses as a fraction (0.0231 for
        2.31%), None for one log or logs without common iterations.
    """
    # Figure + Agg canvas instead of pyplot: no global backend switch and no figure registry,
    # so a library caller's matplotlib state is untouched and nothing stays open after saving.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    records = [log if isinstance(log, Records) else read_log(log) for log in logs]
    if not 1 <= len(records) <= 2:
        raise ValueError(f"plot takes one or two logs, got {len(records)}")
    labels = list(labels) if labels is not None else _default_labels(records)
    if len(labels) != len(records):
        raise ValueError(f"{len(labels)} labels for {len(records)} logs")
    if smooth < 1:
        raise ValueError(f"smooth must be >= 1, got {smooth}")
    for r in records:
        require_train_loss(r)

    # Short logs (a quick run) get a shorter window, so the smoothed lines do not lag; the same
    # window serves the drawing and the comparison.
    window = min(smooth, max(1, min(len(r.train_loss.y) for r in records) // 10))
    difference = None
    if len(records) == 2:
        comparison = compare_loss(records[0], records[1], window)
        print(describe(comparison, labels, window))
        difference = None if comparison is None else comparison.mean_relative_difference

    with_val = any(len(r.val_miou) for r in records)
    fig = Figure(figsize=(13 if with_val else 7, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2 if with_val else 1, squeeze=False)[0]

    loss_ax = axes[0]
    for i, (r, label) in enumerate(zip(records, labels)):
        color = f"C{i}"
        if window > 1:
            loss_ax.plot(r.train_loss.x, r.train_loss.y, color=color, linewidth=0.6, alpha=0.35)
            loss_ax.plot(r.train_loss.x, moving_average(r.train_loss.y, window),
                         color=color, linewidth=2.0, label=f"{label} (moving avg {window})")
        else:
            loss_ax.plot(r.train_loss.x, r.train_loss.y, color=color, linewidth=1.2, label=label)
    title = "train loss"
    if difference is not None:
        title += f"\nmean relative difference (smoothed): {100.0 * difference:.2f}%"
    loss_ax.set(title=title, xlabel="iteration", ylabel=LOSS_KEY)
    loss_ax.grid(alpha=0.3)
    loss_ax.legend()

    if with_val:
        miou_ax = axes[1]
        for i, (r, label) in enumerate(zip(records, labels)):
            if len(r.val_miou):
                miou_ax.plot(r.val_miou.x, r.val_miou.y, color=f"C{i}", marker="o", label=label)
        miou_ax.set(title="validation mIoU", xlabel="epoch", ylabel=MIOU_KEY)
        miou_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        miou_ax.grid(alpha=0.3)
        miou_ax.legend()

    out_png = Path(out_png)
    try:
        out_png.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out_png, dpi=110)
    except OSError as err:
        raise UserError(
            f"cannot write {out_png}: {err.strerror or err}; pass a writable --out") from err
    return difference


# ---------------------------------------------------------------------------------------------
# CLI


def _summary(r: Records) -> str:
    parts = [f"{len(r.train_loss)} {LOSS_KEY} points", f"{len(r.val_miou)} {MIOU_KEY} points"]
    if r.iterations_rebuilt:
        parts.append("per-epoch iterations rebuilt as global")
    if r.num_superseded:
        parts.append(f"{r.num_superseded} re-logged iterations (resumed run): last record kept")
    if r.num_nonfinite_loss:
        parts.append(f"{r.num_nonfinite_loss} non-finite losses left out")
    if r.num_unparsable:
        parts.append(f"{r.num_unparsable} unparsable lines skipped")
    return f"{r.path}: " + ", ".join(parts)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("logs", nargs="+", metavar="LOG",
                        help="a training log; give a second one to overlay and compare")
    parser.add_argument("--out", metavar="PNG",
                        help="the figure to write (default: the first LOG's name with .png, beside it)")
    parser.add_argument("--labels", nargs="+", help="legend names, one per log")
    parser.add_argument("--smooth", type=int, default=DEFAULT_SMOOTH, metavar="N",
                        help=f"moving-average window in logged points (default {DEFAULT_SMOOTH})")
    parser.add_argument("--max_rel_diff", type=float, default=None, metavar="X",
                        help="with two logs: exit 1 when mean |port - ref| / |ref| per iteration exceeds X "
                             "(a fraction: 0.02 for 2%%)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if len(args.logs) > 2:
        parser.error(f"give one or two logs, not {len(args.logs)}")
    if args.labels is not None and len(args.labels) != len(args.logs):
        parser.error(f"--labels: {len(args.labels)} names for {len(args.logs)} logs")
    if args.smooth < 1:
        parser.error(f"--smooth must be >= 1, got {args.smooth}")
    if args.max_rel_diff is not None and (len(args.logs) != 2 or not args.max_rel_diff >= 0):
        parser.error("--max_rel_diff takes a fraction >= 0 and needs two logs (reference, port)")
    out = args.out or str(Path(args.logs[0]).with_suffix(".png"))
    try:
        records = [read_log(path) for path in args.logs]
        for r in records:
            print(_summary(r))
        plot(records, out, labels=args.labels, smooth=args.smooth)
        verdict = None
        if len(records) == 2:
            labels = args.labels or _default_labels(records)
            window = min(args.smooth, max(1, min(len(r.train_loss.y) for r in records) // 10))
            verdict = modelzoo_verdict(records[0], records[1])
            print(describe_verdict(verdict, compare_loss(records[0], records[1], window), labels))
    except UserError as err:
        exit_with(err)
    print(f"wrote {out}")
    if args.max_rel_diff is not None:
        if verdict is None or verdict.two_sided_relative > args.max_rel_diff:
            figure = "no common iterations" if verdict is None else f"{100.0 * verdict.two_sided_relative:.2f}%"
            print(f"FAIL: two-sided mean relative difference {figure} exceeds --max_rel_diff "
                  f"{100.0 * args.max_rel_diff:g}%")
            return 1
        print(f"PASS: two-sided mean relative difference {100.0 * verdict.two_sided_relative:.2f}% <= "
              f"--max_rel_diff {100.0 * args.max_rel_diff:g}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
