"""Training length and checkpoint cadence (flags and logic): epochs or iterations.

Both modes run one loop over global iterations (``step`` = finished optimizer steps, 1-based in
the log): ``--epoch E`` is ``E * iters_per_epoch`` iterations with validation every
``--val_epoch`` epochs and ``latest`` written at every epoch end (as the original runner did);
``--iters N`` (the mmseg / PaddleSeg recipes: "80k iterations") is N iterations with validation
every ``--val_interval`` and ``latest`` every ``--save_interval`` iterations. The data position
is a function of the step (epoch = step // iters_per_epoch + 1, the rest is the batch inside it),
which is what makes a mid-epoch checkpoint resumable exactly.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

import yaml

from segzoo.runtime.config_types import non_negative_int, positive_int, str2bool
from segzoo.runtime.errors import UserError


class _Given(int):
    """An int the user typed (command line or YAML), told apart from the flag's default."""


yaml.SafeDumper.add_representer(_Given, yaml.representer.SafeRepresenter.represent_int)


def _given(convert):
    def check(text):
        return _Given(convert(text))
    check.__name__ = convert.__name__  # argparse names the type in its messages
    check.marks_given = True
    return check


def add_schedule_args(p: argparse.ArgumentParser) -> None:
    """Flags of the schedule group. --epoch and --step (defined in the optimisation group) are
    marked so that finalize_schedule can tell a typed value from a default."""
    for flag in ("--epoch", "--step"):
        action = p._option_string_actions.get(flag)
        if action is not None and not getattr(action.type, "marks_given", False):
            action.type = _given(action.type)
    g = p.add_argument_group("schedule and fault tolerance")
    g.add_argument("--iters", type=positive_int, default=None,
                   help="train for N iterations instead of --epoch epochs (lr schedule, warm-up and --step then "
                        "count iterations)")
    g.add_argument("--val_interval", type=positive_int, default=None,
                   help="evaluate every N iterations (default: every --val_epoch epochs; with --iters: at the end)")
    g.add_argument("--save_interval", type=positive_int, default=None,
                   help="write the latest checkpoint every N iterations, mid-epoch too (default: every epoch end; "
                        "with --iters: every --val_interval); a kill loses at most N iterations")
    g.add_argument("--auto_resume", type=str2bool, default=False,
                   help="resume from the newest valid latest checkpoint in --work_dir if there is one "
                        "(what a restarted worker of torchrun --max_restarts needs)")
    g.add_argument("--skip_nonfinite", type=non_negative_int, default=0,
                   help="skip up to N steps whose loss is NaN/inf (no update) instead of stopping at the first")


def finalize_schedule(args: argparse.Namespace) -> argparse.Namespace:
    """Reject --iters with an explicit --epoch, make --step count iterations under --iters, and
    turn the marked ints back into plain ones. Called once, by segzoo.engine.config.finalize (a
    second call would no longer see which values were given)."""
    epoch_given = isinstance(args.epoch, _Given)
    step_given = isinstance(args.step, _Given)
    if args.iters is not None and epoch_given:
        raise UserError(f"--iters {args.iters} and --epoch {args.epoch} both set the training length; give one")
    if args.iters is not None and not step_given:
        args.step = max(1, args.iters // 3)  # --lr_policy step: counts iterations under --iters
    args.epoch, args.step = int(args.epoch), int(args.step)
    return args


@dataclass(frozen=True)
class Schedule:
    """When to validate and save, over ``total`` iterations of ``iters_per_epoch`` each epoch."""
    total: int
    iters_per_epoch: int
    val_every: int
    save_every: int | None  # None: at epoch ends only
    by_iters: bool

    @classmethod
    def from_args(cls, args, iters_per_epoch: int) -> "Schedule":
        if args.iters is not None:
            total = args.iters
            val_every = args.val_interval or total
            save_every = args.save_interval or val_every
        else:
            total = args.epoch * iters_per_epoch
            val_every = args.val_interval or args.val_epoch * iters_per_epoch
            save_every = args.save_interval
        return cls(total, iters_per_epoch, val_every, save_every, args.iters is not None)

    def epoch_of(self, step: int) -> int:
        """1-based epoch that the iteration after `step` finished iterations belongs to."""
        return step // self.iters_per_epoch + 1

    def position(self, step: int) -> tuple:
        """(epoch, batches of it already consumed) after `step` finished iterations."""
        return step // self.iters_per_epoch + 1, step % self.iters_per_epoch

    def epoch_end(self, step: int) -> bool:
        return step % self.iters_per_epoch == 0

    def validate_at(self, step: int) -> bool:
        return step % self.val_every == 0 or step == self.total

    def save_at(self, step: int) -> bool:
        if step == self.total:
            return True
        if self.save_every is not None and step % self.save_every == 0:
            return True
        return not self.by_iters and self.epoch_end(step)

    def describe(self) -> str:
        unit = f"{self.total} iterations" if self.by_iters else \
            f"{self.total // self.iters_per_epoch} epochs of {self.iters_per_epoch} iterations"
        save = f"every {self.save_every} iterations" if self.save_every else "every epoch"
        return f"{unit}, validation every {self.val_every} iterations, latest checkpoint {save}"
