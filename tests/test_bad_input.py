"""User mistakes: each ends with exit status 2 and ONE stderr line starting with 'error:' that names
the file or flag, no traceback, and nothing overwritten.

Runs go through the launcher as a subprocess (the user's entry point); mistakes the launcher
itself refuses before starting anything are also checked in-process (launch.main), which is the
same code without the cost of a Python start. Broken datasets are copies of the tiny demo
dataset with one file broken."""
from __future__ import annotations

import importlib.util
import random
import re
import socket

import cv2
import pytest
import torch

from segzoo.datasets.classes import VOC_PALETTE
from segzoo.datasets.image_io import read_label, write_palette_png
from segzoo.runtime.checkpoint import FORMAT
from segzoo.runtime.errors import UserError, flag_message
from tests.helpers import (TINY_CLASSES, TINY_RUN, assert_one_line_error, ckpt_name, copy_dataset,
                           expect_user_exit, free_port, run_launcher, run_train, sha256, snapshot)

TIMEOUT = 180
TRAIN_ID, VAL_ID = "demo_train_0003", "demo_val_0001"


def launch(dataset, work_dir, *flags, timeout=TIMEOUT):
    return run_launcher(*TINY_RUN, "--dataset_path", dataset, "--work_dir", work_dir, "--epoch", "1", *flags,
                        timeout=timeout)


def no_checkpoints(work_dir) -> bool:
    return not any(name.endswith(".pth") for name in snapshot(work_dir))


@pytest.fixture
def data(tiny_dataset, tmp_path):
    """A private copy of the tiny dataset, to break."""
    return copy_dataset(tiny_dataset, tmp_path / "data")


def image(root, sample_id):
    return root / "JPEGImages" / f"{sample_id}.jpg"


def label(root, sample_id):
    return root / "SegmentationClass" / f"{sample_id}.png"


# ------------------------------------------------------------------------------------------
# datasets
# ------------------------------------------------------------------------------------------
def test_missing_dataset_path(tmp_path):
    missing = tmp_path / "no_such_dataset"
    result = launch(missing, tmp_path / "work")
    assert_one_line_error(result, "--dataset_path", missing)
    assert not (tmp_path / "work").exists()


def test_missing_list_file(data, tmp_path):
    (data / "ImageSets" / "Segmentation" / "val.txt").unlink()
    assert_one_line_error(launch(data, tmp_path / "work"), "val.txt")
    assert no_checkpoints(tmp_path / "work")


@pytest.mark.parametrize("what", ["image", "label"])
def test_list_id_without_its_file(data, tmp_path, what):
    missing = image(data, TRAIN_ID) if what == "image" else label(data, VAL_ID)
    missing.unlink()
    assert_one_line_error(launch(data, tmp_path / "work"), missing)
    assert no_checkpoints(tmp_path / "work")


def garbage(path, seed=0, size=2000):
    path.write_bytes(random.Random(seed).randbytes(size))  # seeded: the same bytes every run


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


@pytest.mark.slow
@pytest.mark.parametrize("breaker, workers, needle", [(garbage, "0", "not a readable image"),
                                                      (truncate, "1", "truncated")],
                         ids=["corrupt-in-process", "truncated-in-a-loader-worker"])
def test_unreadable_image(data, tmp_path, breaker, workers, needle):
    broken = image(data, TRAIN_ID)
    breaker(broken)
    result = launch(data, tmp_path / "work", "--workers", workers)
    assert_one_line_error(result, broken, needle)
    assert no_checkpoints(tmp_path / "work")


@pytest.mark.slow
def test_unreadable_image_under_ddp_is_reported_without_tracebacks(data, tmp_path):
    """The rank that reads the bad file names it; the other rank and torchrun add one line each
    (which rank failed, and why it stopped), never a traceback."""
    broken = image(data, TRAIN_ID)
    truncate(broken)
    result = launch(data, tmp_path / "work", "--batch_size", "2", "--distributed", "True",
                    "--nproc_per_node", "2", "--master_port", str(free_port()))
    assert result.rc == 2, result.describe()
    assert "Traceback" not in result.stderr, result.describe()
    lines = result.stderr_lines
    assert all(line.startswith("error:") for line in lines) and len(lines) <= 3, result.describe()
    assert str(broken) in lines[0], result.describe()
    assert no_checkpoints(tmp_path / "work")


def rewrite_label(path, change):
    values = read_label(path)
    write_palette_png(path, change(values.copy()), VOC_PALETTE)


@pytest.mark.slow
def test_label_value_beyond_the_classes(data, tmp_path):
    broken = label(data, TRAIN_ID)

    def add_class_7(values):
        values[:4, :4] = 7  # 6 classes: ids 0..5 and 255
        return values
    rewrite_label(broken, add_class_7)
    assert_one_line_error(launch(data, tmp_path / "work"), broken, "label value 7")
    assert no_checkpoints(tmp_path / "work")


@pytest.mark.slow
def test_rgb_label_points_to_the_converter(data, tmp_path):
    broken = label(data, TRAIN_ID)
    colours = VOC_PALETTE[read_label(broken)]  # (H, W, 3) RGB, as VOC's colour labels look
    assert cv2.imwrite(str(broken), cv2.cvtColor(colours, cv2.COLOR_RGB2BGR))
    assert_one_line_error(launch(data, tmp_path / "work"), broken, "convert_voc_label.py")


@pytest.mark.slow
def test_image_and_label_sizes_differ(data, tmp_path):
    broken = label(data, TRAIN_ID)
    rewrite_label(broken, lambda values: values[:-8])
    assert_one_line_error(launch(data, tmp_path / "work"), broken, "must match")


# ------------------------------------------------------------------------------------------
# checkpoints
# ------------------------------------------------------------------------------------------
def model_checkpoint(path, model_name="pspnet", num_classes=TINY_CLASSES):
    """A resumable checkpoint of a (randomly initialised) model, as train.py writes one."""
    from segzoo.models import build_model
    model = build_model(model_name, num_classes, backbone="resnet18")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    torch.save({"format": FORMAT, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": {}, "scaler": {}, "epoch": 1, "global_step": 2, "best_miou": 0.0,
                "iters_per_epoch": 2, "model_name": model_name, "num_classes": num_classes,
                "backbone": "resnet18", "args": {}}, path)
    return path


def test_ckpt_that_does_not_exist(tiny_dataset, tmp_path):
    missing = tmp_path / "nope.pth"
    result = launch(tiny_dataset, tmp_path / "work", "--test_only", "True", "--ckpt", missing)
    assert_one_line_error(result, "--ckpt", missing)


def test_ckpt_that_is_not_a_checkpoint(tiny_dataset, tmp_path):
    bogus = tmp_path / "random.pth"
    garbage(bogus)
    before = sha256(bogus)
    result = launch(tiny_dataset, tmp_path / "work", "--test_only", "True", "--ckpt", bogus)
    assert_one_line_error(result, "--ckpt", bogus, "PyTorch checkpoint")
    assert "weights_only" not in result.stderr  # PyTorch's advice to load unsafely is not passed on
    assert sha256(bogus) == before


@pytest.mark.parametrize("size", [0, 1, 100, 2000, 100_000])
def test_any_junk_as_ckpt_is_one_user_error(tmp_path, size):
    """The unpickler raises many exception types on arbitrary bytes; all must become one UserError."""
    from segzoo.runtime.checkpoint import load_checkpoint
    junk = tmp_path / "junk.pth"
    for seed in range(40 if size else 1):
        garbage(junk, seed, size)
        with pytest.raises(UserError) as exc:
            load_checkpoint(str(junk))
        assert re.match("^--ckpt .*junk.pth is not a", flag_message(exc.value)) and "\n" not in str(exc.value)


def test_truncated_checkpoint_is_one_user_error(tmp_path):
    from segzoo.runtime.checkpoint import load_checkpoint
    whole = tmp_path / "whole.pth"
    torch.save({"w": torch.zeros(1000)}, whole)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(whole.read_bytes()[:2000])
    with pytest.raises(UserError) as exc:
        load_checkpoint(str(cut))
    assert re.match("^--ckpt .*cut.pth is not a", flag_message(exc.value))


@pytest.mark.slow
@pytest.mark.parametrize("model_name, num_classes, needle", [("deeplabv3", TINY_CLASSES, "deeplabv3"),
                                                             ("pspnet", 3, "has 3")],
                         ids=["another-model", "another-class-count"])
def test_ckpt_of_another_model_is_refused_and_left_alone(tiny_dataset, tmp_path, model_name, num_classes, needle):
    # Resuming into the checkpoint's own folder: a refused run must not touch it.
    work = tmp_path / "work"
    work.mkdir()
    ckpt = model_checkpoint(work / ckpt_name("latest"), model_name, num_classes)
    before = snapshot(work)
    result = launch(tiny_dataset, work, "--continue_training", "True", "--ckpt", ckpt, "--epoch", "2")
    assert_one_line_error(result, "--ckpt", ckpt, "does not fit", needle)
    assert snapshot(work) == before


def test_weights_only_ckpt_cannot_be_resumed(tiny_dataset, tmp_path):
    from segzoo.models import build_model
    weights = tmp_path / "weights.pth"
    torch.save(build_model("pspnet", TINY_CLASSES, backbone="resnet18").state_dict(), weights)
    result = launch(tiny_dataset, tmp_path / "work", "--continue_training", "True", "--ckpt", weights)
    assert_one_line_error(result, "--ckpt", weights, "--continue_training")


# ------------------------------------------------------------------------------------------
# flags (the launcher refuses them before anything starts)
# ------------------------------------------------------------------------------------------
def test_continue_training_without_ckpt(tiny_dataset, tmp_path, capsys):
    expect_user_exit(capsys, [*TINY_RUN, "--dataset_path", str(tiny_dataset), "--work_dir", str(tmp_path),
                              "--continue_training", "True"], "--continue_training", "--ckpt")


@pytest.mark.parametrize("flag, value", [("--crop_size", "0"), ("--crop_size", "abc"), ("--device", "tpu"),
                                         ("--model_name", "unet"), ("--optimizer", "rmsprop")])
def test_bad_flag_values(tiny_dataset, tmp_path, capsys, flag, value):
    argv = [*TINY_RUN, "--dataset_path", str(tiny_dataset), "--work_dir", str(tmp_path / "work"), flag, value]
    expect_user_exit(capsys, argv, flag, value)
    assert not (tmp_path / "work").exists()


def test_bad_flag_value_from_the_script(tiny_dataset, tmp_path):
    """The same through a real process: one line, no traceback, no usage block."""
    assert_one_line_error(launch(tiny_dataset, tmp_path / "work", "--crop_size", "abc"), "--crop_size", "abc")


def test_master_port_in_use(tiny_dataset, tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = launch(tiny_dataset, tmp_path / "work", "--distributed", "True", "--nproc_per_node", "2",
                        "--master_port", str(port))
    assert_one_line_error(result, f"--master_port {port}")
    assert not (tmp_path / "work").exists()


def test_sdaa_without_its_plugin(tiny_dataset, tmp_path, capsys):
    if importlib.util.find_spec("torch_sdaa") is not None:
        pytest.skip("torch_sdaa is installed here, so --device sdaa is not a mistake")
    expect_user_exit(capsys, [*TINY_RUN, "--dataset_path", str(tiny_dataset), "--work_dir", str(tmp_path),
                              "--device", "sdaa"], "--device sdaa", "torch_sdaa")


def test_cuda_without_a_gpu(tiny_dataset, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a cuda device is present, so --device cuda is not a mistake")
    expect_user_exit(capsys, [*TINY_RUN, "--dataset_path", str(tiny_dataset), "--work_dir", str(tmp_path),
                              "--device", "cuda"], "--device cuda")


# ------------------------------------------------------------------------------------------
# another run's work dir
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("entry", [run_launcher, run_train], ids=["launcher", "train.py"])
def test_work_dir_of_another_run_is_not_overwritten(tiny_dataset, tmp_path, entry):
    work = tmp_path / "work"
    work.mkdir()
    (work / ckpt_name("latest")).write_bytes(b"another run's checkpoint")
    before = snapshot(work)
    result = entry(*TINY_RUN, "--dataset_path", tiny_dataset, "--work_dir", work, "--epoch", "1", timeout=TIMEOUT)
    assert_one_line_error(result, "--work_dir", "--overwrite True")
    assert snapshot(work) == before


@pytest.mark.slow
def test_overwrite_true_proceeds(tiny_dataset, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    old = work / ckpt_name("latest")
    old.write_bytes(b"another run's checkpoint")
    result = launch(tiny_dataset, work, "--overwrite", "True")
    assert result.rc == 0, result.describe()
    assert torch.load(old, map_location="cpu", weights_only=True)["epoch"] == 1
