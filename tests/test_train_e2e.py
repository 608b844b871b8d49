"""End-to-end runs of the runner through the launcher on cpu: tiny data (8 train / 5 val images of
48x64), resnet18, 32 px crops, 1-2 epochs. Each test checks values in the run's outputs (logs,
metrics JSON, checkpoints), not only the exit status."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import yaml

from tests.helpers import (TINY_CLASSES, TINY_RUN, TINY_TRAIN, TINY_VAL, ckpt_name, free_port, logged_values,
                           read_json, run_launcher, run_train, sha256)

pytestmark = pytest.mark.slow

RUN_TIMEOUT = 300  # seconds; the 2 cores are shared with the rest of the suite
# Bitwise-repeatable training with an lr that depends only on the iteration, not on --epoch,
# so a run stopped after epoch 1 and resumed follows the same schedule as an uninterrupted one.
REPEATABLE = ("--deterministic", "True", "--lr_policy", "step", "--step", "1", "--val_epoch", "1")
ITERS_PER_EPOCH = TINY_TRAIN // 4  # --batch_size 4 of TINY_RUN


def launch_run(dataset, work_dir, *flags, env=None):
    result = run_launcher(*TINY_RUN, "--dataset_path", dataset, "--work_dir", work_dir, "--print_interval", "1",
                          *flags, timeout=RUN_TIMEOUT, env=env)
    assert result.rc == 0, result.describe()
    return result


def load(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def parameters_only(state_dict: dict) -> dict:
    """Learned tensors: BatchNorm statistics move in any forward pass in train mode."""
    return {k: v for k, v in state_dict.items()
            if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))}


def losses(log_file) -> list:
    return [value for _, value in logged_values(log_file, "train.loss")]


@pytest.fixture(scope="module")
def val_pixels(tiny_dataset) -> int:
    """Labelled (non-void) pixels of the val split: what one full pass must count, once each."""
    from segzoo.datasets.image_io import read_label
    ids = (tiny_dataset / "ImageSets" / "Segmentation" / "val.txt").read_text().split()
    return int(sum((read_label(tiny_dataset / "SegmentationClass" / f"{i}.png") != 255).sum() for i in ids))


def check_metrics(path, val_pixels: int, class_names: list) -> dict:
    """The metrics JSON agrees with its own confusion matrix and counts every val image once."""
    metrics = read_json(path)
    cm = np.asarray(metrics["confusion_matrix"], dtype=np.int64)
    assert cm.shape == (TINY_CLASSES, TINY_CLASSES)
    assert metrics["images"] == TINY_VAL
    assert cm.sum() == val_pixels, "each labelled val pixel is counted exactly once"
    assert list(metrics["per_class_iou"]) == class_names
    tp, gt, pred = np.diag(cm), cm.sum(1), cm.sum(0)
    union = gt + pred - tp
    for c, name in enumerate(class_names):
        iou = metrics["per_class_iou"][name]
        if union[c] == 0:
            assert iou is None
        else:
            assert iou == pytest.approx(tp[c] / union[c], abs=1e-12)
        acc = metrics["per_class_acc"][name]
        assert (acc is None) if gt[c] == 0 else acc == pytest.approx(tp[c] / gt[c], abs=1e-12)
    present = [v for v in metrics["per_class_iou"].values() if v is not None]
    assert metrics["mean_iou"] == pytest.approx(float(np.mean(present)), abs=1e-12)
    assert metrics["overall_acc"] == pytest.approx(tp.sum() / cm.sum(), abs=1e-12)
    return metrics


@pytest.fixture(scope="module")
def class_names(tiny_dataset) -> list:
    return (tiny_dataset / "class_names.txt").read_text().split()


# ------------------------------------------------------------------------------------------
# 1 + 4: one process, 2 epochs, repeatable; also the reference of the resume test
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run_a(tiny_dataset, tmp_path_factory):
    work = tmp_path_factory.mktemp("run_a")
    result = launch_run(tiny_dataset, work, *REPEATABLE, "--epoch", "2")
    return work, result


def test_single_process_run_writes_every_output(run_a, val_pixels, class_names):
    work, result = run_a
    for name in ("args.yaml", ckpt_name("latest"), ckpt_name("best"), "train_log.json", "loss_curve.png",
                 "metrics/epoch_001.json", "metrics/epoch_002.json"):
        assert (work / name).is_file(), f"{name} missing; {result.describe()}"
    assert (work / "loss_curve.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")

    train_losses = logged_values(work / "train_log.json", "train.loss")
    assert [step for step, _ in train_losses] == [(1, 1), (1, 2), (2, 3), (2, 4)]
    assert all(math.isfinite(v) for _, v in train_losses)
    mious = logged_values(work / "train_log.json", "val.mIoU")
    assert [step[0] for step, _ in mious] == [1, 2]

    for epoch, (_, miou) in zip((1, 2), mious):
        metrics = check_metrics(work / "metrics" / f"epoch_{epoch:03d}.json", val_pixels, class_names)
        assert metrics["mean_iou"] == pytest.approx(miou, abs=1e-12)

    latest = load(work / ckpt_name("latest"))
    assert (latest["epoch"], latest["global_step"]) == (2, 2 * ITERS_PER_EPOCH)
    assert latest["best_miou"] == pytest.approx(max(v for _, v in mious), abs=1e-12)
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in latest["model"])
    # The dataset's names and colours travel with the weights (for predict and export).
    from segzoo.datasets.classes import VOC_PALETTE
    assert latest["class_names"] == class_names
    assert latest["palette"][:TINY_CLASSES] == VOC_PALETTE[:TINY_CLASSES].tolist()
    assert load(work / ckpt_name("best"))["best_miou"] == latest["best_miou"]
    args = yaml.safe_load((work / "args.yaml").read_text())
    assert (args["epoch"], args["crop_size"], args["backbone"], args["deterministic"]) == (2, 32, "resnet18", True)


def test_logged_lr_is_the_lr_of_the_step_under_the_step_policy(run_a):
    work, _ = run_a
    lrs = logged_values(work / "train_log.json", "train.lr")
    # --lr 0.01 (backbone group), x0.1 every --step 1 epochs.
    assert [(epoch, pytest.approx(lr, rel=1e-9)) for (epoch, _), lr in lrs] == \
        [(1, 0.01), (1, 0.01), (2, 0.001), (2, 0.001)]


def test_resume_matches_an_uninterrupted_run(run_a, tiny_dataset, tmp_path):
    work_a, _ = run_a
    work_b = tmp_path / "run_b"
    # Two data-loader workers here, none in run A: augmentation must not depend on them.
    launch_run(tiny_dataset, work_b, *REPEATABLE, "--epoch", "1", "--workers", "2")
    assert load(work_b / ckpt_name("latest"))["epoch"] == 1
    result = launch_run(tiny_dataset, work_b, *REPEATABLE, "--epoch", "2", "--continue_training", "True",
                        "--ckpt", work_b / ckpt_name("latest"))
    assert "2 iterations done (epoch 2, batch 1 of 2 next)" in result.stdout

    for key in ("train.loss", "val.mIoU"):
        assert logged_values(work_b / "train_log.json", key) == logged_values(work_a / "train_log.json", key), key
    a, b = load(work_a / ckpt_name("latest")), load(work_b / ckpt_name("latest"))
    assert (b["epoch"], b["global_step"]) == (a["epoch"], a["global_step"])
    assert a["model"].keys() == b["model"].keys()
    different = [k for k in a["model"] if not torch.equal(a["model"][k], b["model"][k])]
    assert not different, f"{len(different)} tensors differ after resuming, e.g. {different[:3]}"


def test_resuming_a_finished_run_does_nothing(run_a, tiny_dataset, tmp_path):
    work_a, _ = run_a
    latest = work_a / ckpt_name("latest")
    before = sha256(latest)
    result = launch_run(tiny_dataset, tmp_path / "again", *REPEATABLE, "--epoch", "2", "--continue_training", "True",
                        "--ckpt", latest)
    assert "nothing to do" in result.stdout, result.describe()
    assert logged_values(tmp_path / "again" / "train_log.json", "train.loss") == []
    assert sha256(latest) == before
    assert not list((tmp_path / "again").glob("*.pth"))


def test_ckpt_alone_loads_the_weights_and_fine_tunes_from_epoch_1(run_a, tiny_dataset, tmp_path):
    work_a, _ = run_a
    source = load(work_a / ckpt_name("latest"))  # finished epoch 2
    # Another seed, so a model that ignored --ckpt would start far from the checkpoint; an lr so
    # small that one epoch keeps the weights where they were loaded.
    result = launch_run(tiny_dataset, tmp_path / "tuned", "--ckpt", work_a / ckpt_name("latest"), "--epoch", "1",
                        "--lr", "1e-9", "--random_seed", "7")
    assert "epoch 1/1 iter 1/" in result.stdout and "resumed" not in result.stdout
    tuned = load(tmp_path / "tuned" / ckpt_name("latest"))
    assert (tuned["epoch"], tuned["global_step"]) == (1, ITERS_PER_EPOCH)  # fresh schedule and counters
    assert tuned["scheduler"]["last_epoch"] == ITERS_PER_EPOCH
    theirs, ours = parameters_only(source["model"]), parameters_only(tuned["model"])
    assert theirs.keys() == ours.keys()
    far = [k for k in theirs if not torch.allclose(theirs[k], ours[k], rtol=0, atol=1e-5)]
    assert not far, f"{len(far)} tensors are not the checkpoint's, e.g. {far[:3]}"


# ------------------------------------------------------------------------------------------
# 2: DDP, 2 processes (gloo on cpu)
# ------------------------------------------------------------------------------------------
def test_ddp_two_processes_train_and_count_each_val_image_once(tiny_dataset, tmp_path, val_pixels, class_names):
    work = tmp_path / "ddp"
    result = launch_run(tiny_dataset, work, "--distributed", "True", "--nproc_per_node", "2",
                        "--master_port", str(free_port()), "--batch_size", "2", "--epoch", "1")
    assert "x2" in result.stdout and f": {TINY_VAL} images," in result.stdout, result.describe()
    check_metrics(work / "metrics" / "epoch_001.json", val_pixels, class_names)
    train_losses = losses(work / "train_log.json")
    # 8 images over 2 ranks with batch 2: 2 iterations, each logged once (rank 0 only).
    assert len(train_losses) == 2 and all(math.isfinite(v) for v in train_losses)
    latest = load(work / ckpt_name("latest"))
    assert latest["epoch"] == 1
    assert not any(k.startswith("module.") for k in latest["model"])


# ------------------------------------------------------------------------------------------
# 3 + 6: one checkpoint evaluated by 1 and 2 processes, and with wrapper prefixes
# ------------------------------------------------------------------------------------------
# Same kernels in both runs, whatever the process count (run_process's default, made explicit).
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def random_init_ckpt(tmp_path_factory) -> dict:
    """A bare state dict of a randomly initialised model: unlike a model trained for a few
    iterations (all background) it predicts several classes, so the matrices below are not trivial."""
    from segzoo.models import build_model
    torch.manual_seed(0)
    model = build_model("pspnet", TINY_CLASSES, backbone="resnet18")
    state = model.state_dict()
    path = tmp_path_factory.mktemp("ckpt") / "random_init.pth"
    torch.save(state, path)
    return {"path": path, "state": state}


@pytest.fixture(scope="module")
def one_process_test_only(tiny_dataset, random_init_ckpt, tmp_path_factory, val_pixels, class_names) -> dict:
    work = tmp_path_factory.mktemp("test_only_1")
    launch_run(tiny_dataset, work, "--test_only", "True", "--ckpt", random_init_ckpt["path"], env=ONE_THREAD)
    metrics = check_metrics(work / "metrics" / "test.json", val_pixels, class_names)
    cm = np.asarray(metrics["confusion_matrix"])
    assert (cm.sum(0) > 0).sum() >= 2, "the model predicts one class only: the comparison would be trivial"
    return metrics


def test_one_and_two_processes_give_identical_confusion_matrices(one_process_test_only, tiny_dataset,
                                                                 random_init_ckpt, tmp_path, val_pixels,
                                                                 class_names):
    work = tmp_path / "test_only_2"
    launch_run(tiny_dataset, work, "--test_only", "True", "--ckpt", random_init_ckpt["path"], "--distributed", "True",
               "--nproc_per_node", "2", "--master_port", str(free_port()), env=ONE_THREAD)
    two = check_metrics(work / "metrics" / "test.json", val_pixels, class_names)
    assert two["confusion_matrix"] == one_process_test_only["confusion_matrix"]
    assert two["mean_iou"] == one_process_test_only["mean_iou"]


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod."])
def test_checkpoints_with_wrapper_prefixes_load_for_test_only(prefix, one_process_test_only, tiny_dataset,
                                                              random_init_ckpt, tmp_path, val_pixels, class_names):
    from segzoo.runtime.checkpoint import FORMAT
    prefixed = {prefix + k: v for k, v in random_init_ckpt["state"].items()}
    path = tmp_path / "prefixed.pth"
    # Once as this runner's checkpoint format, once as a bare state dict from elsewhere.
    wrapped = prefix == "module."
    torch.save({"format": FORMAT, "model": prefixed, "model_name": "pspnet", "num_classes": TINY_CLASSES,
                "backbone": "resnet18"} if wrapped else prefixed, path)
    result = run_train(*TINY_RUN, "--dataset_path", tiny_dataset, "--work_dir", tmp_path / "work", "--test_only",
                       "True", "--ckpt", path, timeout=RUN_TIMEOUT, env=ONE_THREAD)
    assert result.rc == 0, result.describe()
    metrics = check_metrics(tmp_path / "work" / "metrics" / "test.json", val_pixels, class_names)
    assert metrics["confusion_matrix"] == one_process_test_only["confusion_matrix"]


# ------------------------------------------------------------------------------------------
# 5: mixed precision on cpu
# ------------------------------------------------------------------------------------------
def test_autocast_bf16_on_cpu(tiny_dataset, tmp_path):
    work = tmp_path / "bf16"
    result = launch_run(tiny_dataset, work, "--autocast", "True", "--epoch", "1")
    assert "autocast torch.bfloat16" in result.stdout
    train_losses = losses(work / "train_log.json")
    assert len(train_losses) == ITERS_PER_EPOCH and all(math.isfinite(v) for v in train_losses)
    assert load(work / ckpt_name("latest"))["scaler"] == {}, "bf16 needs no GradScaler"


def test_autocast_fp16_on_cpu_uses_the_grad_scaler(tiny_dataset, tmp_path):
    work = tmp_path / "fp16"
    result = run_launcher(*TINY_RUN, "--dataset_path", tiny_dataset, "--work_dir", work, "--print_interval", "1",
                          "--autocast", "True", "--amp_dtype", "float16", "--epoch", "1", timeout=RUN_TIMEOUT)
    if result.rc != 0:  # a PyTorch build without fp16 on cpu must say so in one line
        assert result.rc == 2 and len(result.stderr_lines) == 1, result.describe()
        assert result.stderr_lines[0].startswith("error:") and "float16" in result.stderr_lines[0]
        return
    assert "autocast torch.float16" in result.stdout
    train_losses = losses(work / "train_log.json")
    assert len(train_losses) == ITERS_PER_EPOCH and all(math.isfinite(v) for v in train_losses)
    scaler = load(work / ckpt_name("latest"))["scaler"]
    assert scaler.get("scale", 0) > 0, f"no active GradScaler state in the checkpoint: {scaler}"


# ------------------------------------------------------------------------------------------
# 7: other models, losses, optimizers, lr policies and a config file
# ------------------------------------------------------------------------------------------
def test_deeplabv3_with_focal_loss_and_cosine_lr(tiny_dataset, tmp_path):
    work = tmp_path / "deeplabv3"
    launch_run(tiny_dataset, work, "--model_name", "deeplabv3", "--loss_type", "focal_loss", "--lr_policy", "cosine",
               "--epoch", "1")
    assert all(math.isfinite(v) for v in losses(work / "train_log.json"))
    lrs = [lr for _, lr in logged_values(work / "train_log.json", "train.lr")]
    total = ITERS_PER_EPOCH
    assert lrs == pytest.approx([0.01 * 0.5 * (1 + math.cos(math.pi * it / total)) for it in range(total)], rel=1e-9)
    ckpt = load(work / ckpt_name("latest", model="deeplabv3"))
    assert ckpt["model_name"] == "deeplabv3"
    assert ckpt["args"]["loss_type"] == "focal_loss"


def test_encnet_with_adam(tiny_dataset, tmp_path):
    work = tmp_path / "encnet"
    launch_run(tiny_dataset, work, "--model_name", "encnet", "--optimizer", "adam", "--epoch", "1")
    assert all(math.isfinite(v) for v in losses(work / "train_log.json"))
    args = yaml.safe_load((work / "args.yaml").read_text())
    assert (args["optimizer"], args["lr"], args["head_lr_mult"]) == ("adam", 1e-4, 1.0)
    assert logged_values(work / "train_log.json", "train.lr")[0][1] == pytest.approx(1e-4, rel=1e-9)
    ckpt = load(work / ckpt_name("latest", model="encnet"))
    assert ckpt["model_name"] == "encnet"
    assert all("exp_avg_sq" in s for s in ckpt["optimizer"]["state"].values())


def test_config_file_with_a_command_line_override(tiny_dataset, tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({"optimizer": "adamw", "lr": 0.0005, "epoch": 5, "aux_weight": 0.0,
                                      "lr_policy": "step", "step": 5}))
    work = tmp_path / "config_run"
    launch_run(tiny_dataset, work, "--config", config, "--epoch", "1")
    args = yaml.safe_load((work / "args.yaml").read_text())
    assert args["config"] == str(config)
    assert (args["epoch"], args["optimizer"], args["lr"], args["aux_weight"], args["lr_policy"], args["step"]) == \
        (1, "adamw", 0.0005, 0.0, "step", 5)
    # The values reached training, not just args.yaml:
    assert [lr for _, lr in logged_values(work / "train_log.json", "train.lr")] == \
        pytest.approx([0.0005] * ITERS_PER_EPOCH, rel=1e-9)
    ckpt = load(work / ckpt_name("latest"))
    assert ckpt["epoch"] == 1
    assert not any(k.startswith("aux_head.") for k in ckpt["model"]), "--aux_weight 0 must drop the aux head"
    assert all("exp_avg" in s for s in ckpt["optimizer"]["state"].values())
