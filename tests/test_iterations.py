"""Iteration schedules (issue 8, item 1): --iters, --val_interval, --save_interval, the lr
schedule over iterations, the sampler position of a mid-epoch resume, and --iters + --epoch."""
from __future__ import annotations

import argparse

import pytest
import torch

from segzoo.datasets.sampler import SeededDistributedSampler
from segzoo.engine.config import parse_train_args
from segzoo.engine.schedule import Schedule
from segzoo.runtime.errors import UserError
from segzoo.runtime.optim import build_scheduler
from tests.helpers import (TINY_RUN, assert_one_line_error, ckpt_name, logged_values, run_train,
                           snapshot)


def parse(*flags) -> argparse.Namespace:
    return parse_train_args(["--device", "cpu", "--dataset", "demo", *flags])  # finalize_schedule runs inside


def test_iters_with_an_explicit_epoch_is_refused():
    with pytest.raises(UserError, match=r"--iters 100 and --epoch 3"):
        parse("--iters", "100", "--epoch", "3")


def test_iters_with_an_epoch_from_a_config_file_is_refused(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("epoch: 4\n")
    with pytest.raises(UserError, match=r"--iters 10 and --epoch 4"):
        parse("--config", str(config), "--iters", "10")


def test_the_epoch_default_does_not_count_as_given():
    args = parse("--iters", "100")
    assert args.iters == 100 and type(args.epoch) is int and type(args.step) is int
    assert args.step == 33  # --lr_policy step under --iters: a third of the iterations


def lrs(args, iters_per_epoch: int, steps: int) -> list:
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=args.lr)
    scheduler = build_scheduler(optimizer, args, iters_per_epoch)
    out = []
    for _ in range(steps):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def test_poly_schedule_spans_iters_not_epochs():
    args = parse("--iters", "10", "--lr", "1.0", "--poly_power", "1.0")
    # ipe 3 must not matter: the schedule ends at iteration 10 (1 - it/10).
    assert lrs(args, iters_per_epoch=3, steps=10) == pytest.approx([1 - i / 10 for i in range(10)])


def test_step_schedule_counts_iterations_under_iters():
    args = parse("--iters", "9", "--lr", "1.0", "--lr_policy", "step", "--step", "4")
    assert lrs(args, iters_per_epoch=100, steps=9) == pytest.approx([1.0] * 4 + [0.1] * 4 + [0.01])


def test_warmup_and_cosine_follow_iterations():
    args = parse("--iters", "8", "--lr", "1.0", "--lr_policy", "cosine", "--warmup_iters", "2")
    got = lrs(args, iters_per_epoch=1000, steps=8)
    assert got[:2] == pytest.approx([0.5, 1.0])
    assert got[-1] < 0.05  # the cosine reaches ~0 at iteration 8, not after 1000-iteration epochs


def test_epoch_mode_keeps_its_schedule():
    args = parse("--epoch", "3", "--val_epoch", "2")
    s = Schedule.from_args(args, iters_per_epoch=4)
    assert s.total == 12
    assert [i for i in range(1, 13) if s.validate_at(i)] == [8, 12]  # every 2 epochs and after the last
    assert [i for i in range(1, 13) if s.save_at(i)] == [4, 8, 12]  # every epoch end


def test_iters_mode_intervals():
    s = Schedule.from_args(parse("--iters", "10", "--val_interval", "4", "--save_interval", "3"), 7)
    assert [i for i in range(1, 11) if s.validate_at(i)] == [4, 8, 10]
    assert [i for i in range(1, 11) if s.save_at(i)] == [3, 6, 9, 10]
    assert s.position(9) == (2, 2)  # 9 done with 7 per epoch: epoch 2, 2 batches of it consumed


def test_sampler_skip_yields_exactly_the_rest_of_the_epoch():
    full = SeededDistributedSampler(23, num_replicas=2, rank=1, seed=5)
    full.set_epoch(3)
    rest = SeededDistributedSampler(23, num_replicas=2, rank=1, seed=5)
    rest.set_epoch(3, skip=4)
    assert list(rest) == list(full)[4:] and len(rest) == len(full) - 4
    with pytest.raises(ValueError):
        rest.set_epoch(3, skip=len(full) + 1)


@pytest.mark.slow
def test_iters_run_validates_and_saves_at_its_intervals(tiny_dataset, tmp_path):
    work = tmp_path / "iters"
    result = run_train(*TINY_RUN, "--dataset_path", tiny_dataset, "--work_dir", work, "--iters", "5",
                       "--val_interval", "2", "--save_interval", "2", "--print_interval", "1")
    assert result.rc == 0, result.describe()
    steps = [step for step, _ in logged_values(work / "train_log.json", "train.loss")]
    assert [s[1] for s in steps] == [1, 2, 3, 4, 5] and [s[0] for s in steps] == [1, 1, 2, 2, 3]
    assert [s[1] for s, _ in logged_values(work / "train_log.json", "val.mIoU")] == [2, 4, 5]
    assert sorted(p.name for p in (work / "metrics").iterdir()) == \
        ["iter_0000002.json", "iter_0000004.json", "iter_0000005.json"]
    latest = torch.load(work / ckpt_name("latest"), map_location="cpu", weights_only=True)
    assert latest["global_step"] == 5 and latest["scheduler"]["last_epoch"] == 5
    assert "iter 5/5 (epoch 3)" in result.stdout and "done: 5 iterations" in result.stdout


@pytest.mark.slow
def test_iters_and_epoch_on_the_command_line_is_one_line(tiny_dataset, tmp_path):
    work = tmp_path / "both"
    result = run_train(*TINY_RUN, "--dataset_path", tiny_dataset, "--work_dir", work, "--iters", "5",
                       "--epoch", "2", timeout=120)
    assert_one_line_error(result, "--iters 5", "--epoch 2")
    assert snapshot(work) == {}


def test_the_launcher_refuses_iters_with_epoch_before_starting_anything(tmp_path, capsys):
    from tests.helpers import expect_user_exit
    expect_user_exit(capsys, ["--device", "cpu", "--dataset", "demo", "--work_dir", str(tmp_path / "w"),
                              "--iters", "10", "--epoch", "2"], "--iters 10", "--epoch 2")
    assert not (tmp_path / "w").exists()
