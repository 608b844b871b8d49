"""Evaluation modes (whole, slide, multi-scale + flip) and evaluation that depends neither on
batching nor on the number of processes (issue 8 item 2, issue 9 item 5).

In-process tests use tiny random models on CPU; the multi-process ones go through the launcher
with --test_only on the tiny demo data and are marked slow."""
from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from segzoo.datasets.collate import size_group_collate
from segzoo.engine.evaluate import (EvalSettings, Progress, eval_settings, evaluate, infer_logits, positive_float_list,
                                    window_starts)
from segzoo.runtime.device import Device
from segzoo.runtime.errors import OptionError
from segzoo.runtime.losses import SegmentationCriterion
from tests.helpers import (TINY_CLASSES, TINY_RUN, assert_one_line_error, free_port, read_json, run_launcher,
                           run_train, snapshot)

NUM_CLASSES = 5
RUN_TIMEOUT = 300


def eval_args(**flags) -> argparse.Namespace:
    values = dict(eval_mode="whole", eval_crop=None, eval_stride=None, eval_scales=(1.0,), eval_flip=False,
                  crop_val=False, crop_size=513, channels_last=False)
    values.update(flags)
    return argparse.Namespace(**values)


def pspnet(num_classes: int = NUM_CLASSES) -> nn.Module:
    """A random PSPNet-ResNet18: its pyramid pooling (1x1 bin) sees every pixel of its input."""
    from segzoo.models import build_model
    torch.manual_seed(0)
    return build_model("pspnet", num_classes, backbone="resnet18").eval()


class Pointwise(nn.Module):
    """A per-pixel model (1x1 convolutions): a pixel's logits do not depend on its neighbours,
    so every way of tiling the image into windows must give the whole-image logits."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, num_classes, 1))

    def forward(self, x):
        return {"out": self.net(x)}


class FlipSymmetric(nn.Module):
    """f(x) = g(x) + flip(g(flip(x))): flip(f(flip(x))) == f(x) by construction (the same two terms)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return {"out": self.inner(x)["out"] + self.inner(x.flip(-1))["out"].flip(-1)}


def random_images(*shape) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(1))


# ------------------------------------------------------------------------------------------
# slide windows
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("length,window,stride", [(10, 4, 3), (10, 4, 4), (9, 4, 2), (100, 33, 22), (7, 7, 5)])
def test_windows_cover_every_pixel_and_the_last_ends_at_the_border(length, window, stride):
    starts = window_starts(length, window, stride)
    covered = np.zeros(length, dtype=int)
    for s in starts:
        assert 0 <= s and s + window <= length
        covered[s:s + window] += 1
    assert covered.min() >= 1
    assert starts[0] == 0 and starts[-1] + window == length
    assert all(0 < b - a <= stride for a, b in zip(starts, starts[1:]))


def test_slide_equals_whole_when_the_window_covers_the_image():
    model, images = pspnet(), random_images(2, 3, 40, 56)
    whole = infer_logits(model, images)
    for crop in [(40, 56), (64, 64)]:
        slide = infer_logits(model, images, mode="slide", crop=crop, stride=crop)
        assert torch.equal(slide, whole), crop


def test_slide_windows_are_averaged_per_pixel():
    """Overlapping windows of a per-pixel model: sum / count must give back the whole-image logits
    (a wrong count or a missed pixel would not)."""
    model, images = Pointwise(), random_images(2, 3, 37, 50)
    whole = infer_logits(model, images)
    slide = infer_logits(model, images, mode="slide", crop=(16, 24), stride=(10, 7))
    torch.testing.assert_close(slide, whole, rtol=1e-5, atol=1e-5)


def test_slide_differs_from_whole_for_a_model_with_global_context():
    """The windows really are evaluated separately (PSPNet's pooling sees only the window)."""
    model, images = pspnet(), random_images(1, 3, 48, 64)
    slide = infer_logits(model, images, mode="slide", crop=(32, 32), stride=(16, 16))
    assert slide.shape == (1, NUM_CLASSES, 48, 64)
    assert not torch.allclose(slide, infer_logits(model, images))


# ------------------------------------------------------------------------------------------
# test-time augmentation
# ------------------------------------------------------------------------------------------
def test_flip_of_a_flip_symmetric_model_changes_nothing():
    model, images = FlipSymmetric(pspnet()), random_images(2, 3, 40, 48)
    plain = infer_logits(model, images)
    flipped = infer_logits(model, images, flip=True)
    torch.testing.assert_close(flipped, F.log_softmax(plain, 1), rtol=1e-5, atol=1e-5)
    assert torch.equal(flipped.argmax(1), plain.argmax(1))


def test_flip_of_an_asymmetric_model_averages_both_views():
    model, images = pspnet(), random_images(1, 3, 40, 48)
    expected = (model(images)["out"].softmax(1) + model(images.flip(-1))["out"].flip(-1).softmax(1)) / 2
    torch.testing.assert_close(infer_logits(model, images, flip=True), expected.log(), rtol=1e-4, atol=1e-5)


def test_single_scale_one_is_plain_evaluation():
    model, images = pspnet(), random_images(2, 3, 40, 48)
    plain = model(images)["out"]
    assert torch.equal(infer_logits(model, images, scales=(1.0,)), plain)
    # Two identical views average to the same distribution.
    torch.testing.assert_close(infer_logits(model, images, scales=(1.0, 1.0)), F.log_softmax(plain, 1),
                               rtol=1e-5, atol=1e-5)


def test_multi_scale_averages_the_probabilities_at_the_image_size():
    model, images = pspnet(), random_images(1, 3, 40, 48)
    views = []
    for size in [(20, 24), (40, 48), (60, 72)]:  # scales 0.5, 1.0, 1.5
        x = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        out = F.interpolate(model(x)["out"], size=(40, 48), mode="bilinear", align_corners=False)
        views.append(out.softmax(1))
    expected = torch.stack(views).mean(0).log()
    got = infer_logits(model, images, scales=(0.5, 1.0, 1.5))
    assert got.shape == (1, NUM_CLASSES, 40, 48)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_slide_combines_with_scales_and_flip():
    model, images = Pointwise(), random_images(1, 3, 40, 48)
    got = infer_logits(model, images, mode="slide", crop=(16, 16), stride=(12, 12), scales=(0.75, 1.25), flip=True)
    whole = infer_logits(model, images, scales=(0.75, 1.25), flip=True)
    torch.testing.assert_close(got, whole, rtol=1e-4, atol=1e-5)  # a per-pixel model: tiling changes nothing


# ------------------------------------------------------------------------------------------
# flags
# ------------------------------------------------------------------------------------------
def test_settings_from_flags():
    s = eval_settings(eval_args(eval_mode="slide", eval_crop=[512, 1024], eval_scales=(0.5, 1.0), eval_flip=True))
    assert (s.mode, s.crop, s.stride, s.views) == ("slide", (512, 1024), (342, 683), 4)
    assert eval_settings(eval_args()) == EvalSettings()
    assert positive_float_list("0.5,0.75,1.0") == (0.5, 0.75, 1.0)


@pytest.mark.parametrize("flags,key", [
    (dict(eval_mode="slide"), "eval_mode"),                                             # no window size
    (dict(eval_crop=64), "eval_crop"),                                                  # crop without slide
    (dict(eval_stride=32), "eval_stride"),                                              # stride without slide
    (dict(eval_mode="slide", eval_crop=[64, 64], eval_stride=[32, 96]), "eval_stride"),  # gaps
    (dict(eval_mode="slide", eval_crop=64, crop_val=True, crop_size=64), "eval_crop"),   # window = every image
])
def test_bad_evaluation_settings_name_the_flag(flags, key):
    with pytest.raises(OptionError) as exc:
        eval_settings(eval_args(**flags))
    assert exc.value.key == key


@pytest.mark.parametrize("text", ["0", "1.0,-0.5", "a,b", "nan", ""])
def test_bad_scales_are_refused(text):
    with pytest.raises(argparse.ArgumentTypeError):
        positive_float_list(text)


def test_progress_line_has_an_eta(capsys):
    progress = Progress(total=10, enabled=True, every=0.0)
    progress.update(4)
    progress.update(6)  # the last images: no line, the summary follows
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("val: 4/10 images") and "ETA" in lines[0]


# ------------------------------------------------------------------------------------------
# batching never changes a prediction
# ------------------------------------------------------------------------------------------
SIZES = [(40, 48), (32, 40), (40, 48), (48, 32), (40, 48), (32, 40), (40, 48)]


@pytest.fixture(scope="module")
def mixed_sizes() -> list:
    """(uint8 image (3, H, W), uint8 label (H, W)) of several sizes, with some ignored pixels."""
    g = torch.Generator().manual_seed(2)
    samples = []
    for h, w in SIZES:
        image = torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)
        label = torch.randint(0, NUM_CLASSES, (h, w), generator=g, dtype=torch.uint8)
        label[:4] = 255
        samples.append((image, label))
    return samples


def run_evaluate(model, samples, batch_size, collate=size_group_collate, **flags) -> dict:
    loader = DataLoader(samples, batch_size=batch_size, collate_fn=collate)
    amp = {"enabled": False, "dtype": torch.bfloat16}
    return evaluate(model, loader, Device("cpu"), amp, SegmentationCriterion(NUM_CLASSES), eval_args(**flags))


def test_size_group_collate_keeps_same_size_images_batched(mixed_sizes):
    groups = size_group_collate(mixed_sizes[:4])
    assert [tuple(images.shape) for images, _ in groups] == [(2, 3, 40, 48), (1, 3, 32, 40), (1, 3, 48, 32)]
    assert torch.equal(groups[0][0][1], mixed_sizes[2][0])
    assert torch.equal(groups[0][1][1], mixed_sizes[2][1])


def test_val_batch_size_does_not_change_the_result_on_mixed_sizes(mixed_sizes):
    model = pspnet()
    one, four = run_evaluate(model, mixed_sizes, 1), run_evaluate(model, mixed_sizes, 4)
    assert one["images"] == four["images"] == len(SIZES)
    assert int(one["confusion_matrix"].sum()) == sum(int((label != 255).sum()) for _, label in mixed_sizes)
    assert (one["confusion_matrix"].sum(0) > 0).sum() >= 2, "one predicted class only: a trivial comparison"
    assert torch.equal(one["confusion_matrix"], four["confusion_matrix"])
    assert one["loss"] == pytest.approx(four["loss"], rel=1e-6)


def zero_pad_collate(batch):
    """The old loader's batching: images zero-padded (labels with 255) to the batch's largest size."""
    height = max(label.shape[0] for _, label in batch)
    width = max(label.shape[1] for _, label in batch)
    images = torch.zeros((len(batch), 3, height, width), dtype=torch.uint8)
    labels = torch.full((len(batch), height, width), 255, dtype=torch.uint8)
    for i, (image, label) in enumerate(batch):
        images[i, :, :label.shape[0], :label.shape[1]] = image
        labels[i, :label.shape[0], :label.shape[1]] = label
    return images, labels


def test_zero_padding_would_change_the_prediction(mixed_sizes):
    """Why images are grouped by size: the padded batch of the old loader changed what PSPNet saw,
    so the batch-size test above can tell the two apart."""
    model = pspnet()
    assert run_evaluate(model, mixed_sizes, 4, collate=zero_pad_collate)["loss"] != pytest.approx(
        run_evaluate(model, mixed_sizes, 1)["loss"], rel=1e-6)


def test_flip_evaluation_of_a_symmetric_model_gives_the_same_matrix(mixed_sizes):
    model = FlipSymmetric(pspnet())
    plain, flipped = run_evaluate(model, mixed_sizes, 4), run_evaluate(model, mixed_sizes, 4, eval_flip=True)
    assert torch.equal(plain["confusion_matrix"], flipped["confusion_matrix"])
    assert "flip" in flipped["eval_mode"]


def test_an_image_without_labelled_pixels_leaves_the_loss_finite(mixed_sizes):
    samples = list(mixed_sizes)
    samples[1] = (samples[1][0], torch.full_like(samples[1][1], 255))
    assert np.isfinite(run_evaluate(pspnet(), samples, 4)["loss"])


# ------------------------------------------------------------------------------------------
# through train.py and the launcher (subprocesses)
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def random_ckpt(tmp_path_factory):
    """A randomly initialised PSPNet-ResNet18 (predicts several classes, unlike a briefly trained one)."""
    path = tmp_path_factory.mktemp("eval_ckpt") / "random.pth"
    torch.save(pspnet(TINY_CLASSES).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def one_image_dataset(tmp_path_factory):
    from segzoo.datasets.demo import make_demo_dataset
    root = tmp_path_factory.mktemp("one_val_image")
    make_demo_dataset(root, num_train=2, num_val=1, size=(48, 64))
    return root


TTA = ("--eval_mode", "slide", "--eval_crop", "32,32", "--eval_stride", "16,24", "--eval_scales", "0.75,1.0",
       "--eval_flip", "True")


def run_test_only(dataset, work, ckpt, *flags) -> dict:
    result = run_launcher(*TINY_RUN, "--dataset_path", dataset, "--work_dir", work, "--test_only", "True",
                          "--ckpt", ckpt, *flags, timeout=RUN_TIMEOUT)
    assert result.rc == 0, result.describe()
    return read_json(work / "metrics" / "test.json")


def two_processes():
    return ("--distributed", "True", "--nproc_per_node", "2", "--master_port", str(free_port()))


@pytest.mark.slow
def test_one_and_two_processes_agree_on_slide_multi_scale_flip(tiny_dataset, random_ckpt, tmp_path):
    one = run_test_only(tiny_dataset, tmp_path / "one", random_ckpt, *TTA)
    two = run_test_only(tiny_dataset, tmp_path / "two", random_ckpt, *TTA, *two_processes())
    assert one["eval_mode"] == "slide 32,32 stride 16,24, scales 0.75,1 + flip"
    assert np.asarray(one["confusion_matrix"]).sum() > 0
    assert two["confusion_matrix"] == one["confusion_matrix"]
    assert two["images"] == one["images"]


@pytest.mark.slow
def test_two_ranks_over_one_image_finish_with_the_one_process_result(one_image_dataset, random_ckpt, tmp_path):
    one = run_test_only(one_image_dataset, tmp_path / "one", random_ckpt)
    two = run_test_only(one_image_dataset, tmp_path / "two", random_ckpt, *two_processes())  # hung before
    assert one["images"] == two["images"] == 1
    assert two["confusion_matrix"] == one["confusion_matrix"]


@pytest.mark.slow
def test_a_stride_larger_than_the_crop_is_one_line_and_writes_nothing(tiny_dataset, tmp_path):
    work = tmp_path / "work"
    result = run_train(*TINY_RUN, "--dataset_path", tiny_dataset, "--work_dir", work, "--eval_mode", "slide",
                       "--eval_crop", "32", "--eval_stride", "48", timeout=RUN_TIMEOUT)
    assert_one_line_error(result, "--eval_stride", "--eval_crop")
    assert snapshot(work) == {}
