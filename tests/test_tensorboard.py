"""TensorBoard dashboards (`--tensorboard True` / `--use_vdl`): the files hold what was logged,
and a missing `tensorboard` package is one clear line."""
from __future__ import annotations

import sys

import numpy as np
import pytest

from segzoo.engine.config import parse_train_args
from segzoo.runtime.tensorboard import TensorBoardWriter
from tests.helpers import REPO, TINY_RUN, assert_one_line_error, run_process, run_train


def event_accumulator(log_dir):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install -e .[tensorboard])")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def scalar_series(acc, tag):
    return [(e.step, e.value) for e in acc.Scalars(tag)]


class ListLogger:
    """Stands in for the run logger: remembers what it was given."""

    def __init__(self):
        self.records, self.flushed = [], 0

    def log(self, step, data, verbosity=None):
        self.records.append((step, dict(data)))

    def flush(self):
        self.flushed += 1


def test_scalars_evaluation_and_images_are_read_back(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install -e .[tensorboard])")
    writer = TensorBoardWriter(tmp_path / "tb")
    logger = writer.tee(ListLogger())
    rng = np.random.default_rng(0)
    losses = rng.uniform(0.1, 2.0, size=3).tolist()
    for it, loss in enumerate(losses, start=1):
        logger.log(step=(1, it), data={"train.loss": loss, "train.lr": 0.01 / it, "train.ips": 10.0 * it,
                                       "train.nonfinite_step": "1-2"}, verbosity=None)
    results = {"mean_iou": 0.25, "per_class_iou": [0.5, float("nan"), 0.0]}
    writer.evaluation(3, results, ["background", "cat", "dog"])
    picture = rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
    writer.images(3, [("img0", picture)])
    logger.flush()
    writer.close()

    assert len(logger._logger.records) == 3 and logger._logger.flushed == 1  # the run log still gets everything
    acc = event_accumulator(tmp_path / "tb")
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/ips", "val/mIoU", "val/IoU/background", "val/IoU/dog"} <= tags
    assert "val/IoU/cat" not in tags and "train/nonfinite_step" not in tags  # NaN and text are not scalars
    assert [s for s, _ in scalar_series(acc, "train/loss")] == [1, 2, 3]
    assert np.allclose([v for _, v in scalar_series(acc, "train/loss")], losses)
    assert np.allclose([v for _, v in scalar_series(acc, "train/lr")], [0.01, 0.005, 0.01 / 3])
    assert scalar_series(acc, "val/mIoU") == [(3, 0.25)]
    images = acc.Images("val/prediction/img0")
    assert len(images) == 1 and (images[0].width, images[0].height) == (16, 12)


def test_disabled_writer_writes_nothing(tmp_path):
    writer = TensorBoardWriter(tmp_path / "tb", enabled=False)
    writer.scalars(1, {"train.loss": 1.0})
    writer.evaluation(1, {"mean_iou": 0.5, "per_class_iou": [0.5]}, ["a"])
    writer.close()
    assert not (tmp_path / "tb").exists()


@pytest.mark.parametrize("words, expected", [([], False), (["--tensorboard", "True"], True), (["--tensorboard"], True),
                                             (["--use_vdl"], True), (["--use_vdl", "True"], True),
                                             (["--use_vdl", "False"], False)])
def test_use_vdl_is_an_alias_of_tensorboard(words, expected):
    args = parse_train_args(["--device", "cpu", "--dataset", "demo", *words])
    assert args.tensorboard is expected


BLOCK_TENSORBOARD = """
import runpy, sys
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name == "tensorboard" or name.startswith("tensorboard.") or name == "torch.utils.tensorboard":
            raise ImportError(f"No module named {name!r} (blocked by the test)")
        return None
sys.meta_path.insert(0, Blocker())
sys.argv = sys.argv[1:]
sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.abspath(sys.argv[0])))  # as `python SCRIPT` does
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_missing_tensorboard_is_one_clear_line(tmp_path):
    block, probe = tmp_path / "block.py", tmp_path / "probe.py"
    block.write_text(BLOCK_TENSORBOARD)
    probe.write_text("from segzoo.runtime.tensorboard import TensorBoardWriter\n"
                     "from segzoo.runtime.errors import UserError, exit_with\n"
                     "try:\n"
                     f"    TensorBoardWriter({str(tmp_path / 'tb')!r}, flag='--use_vdl')\n"
                     "except UserError as err:\n"
                     "    exit_with(err)\n")
    result = run_process([sys.executable, block, probe], 120, env={"PYTHONPATH": str(REPO)})
    assert_one_line_error(result, "--use_vdl", "pip install tensorboard")
    assert not (tmp_path / "tb").exists()


@pytest.mark.slow
def test_train_without_tensorboard_installed_stops_with_one_line(tmp_path, tiny_dataset):
    script = tmp_path / "block.py"
    script.write_text(BLOCK_TENSORBOARD)
    work = tmp_path / "run"
    result = run_process([sys.executable, script, REPO / "train.py", *TINY_RUN, "--dataset_path", tiny_dataset,
                          "--epoch", "1", "--work_dir", work, "--tensorboard", "True"], 180)
    assert_one_line_error(result, "--tensorboard", "pip install tensorboard")
    assert not (work / "tb").exists()


@pytest.mark.slow
def test_training_run_writes_the_dashboard(tmp_path, tiny_dataset):
    work = tmp_path / "run"
    result = run_train(*TINY_RUN, "--dataset_path", tiny_dataset, "--epoch", "1", "--val_epoch", "1",
                       "--print_interval", "1", "--work_dir", work, "--use_vdl", "--tb_images", "2")
    assert result.rc == 0, result.describe()
    acc = event_accumulator(work / "tb")
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/ips", "val/mIoU"} <= tags, tags
    assert any(t.startswith("val/IoU/") for t in tags), tags
    assert len(acc.Tags()["images"]) == 2, acc.Tags()["images"]
