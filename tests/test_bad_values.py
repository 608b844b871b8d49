"""Bad files and config values that once went wrong silently (issue 9, item 7): each is now read
correctly or refused in one line."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from segzoo.datasets.base import read_list_file
from segzoo.datasets.image_io import read_image
from segzoo.datasets.voc import VOCSegmentation
from segzoo.engine.config import parse_train_args
from segzoo.runtime.errors import UserError, flag_message
from tests.test_datasets import make_voc


def test_exif_orientation_is_ignored_so_images_stay_aligned_with_labels(tmp_path):
    """A JPEG whose EXIF tag says 'rotate 90' is read as stored (as its label is)."""
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :10] = 255  # a white band on the left of a 40x20 (w x h) image
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    path = tmp_path / "rotated.jpg"
    Image.fromarray(pixels).save(path, quality=95, exif=exif.tobytes())
    assert Image.open(path).getexif()[0x0112] == 6
    image = read_image(path)
    assert image.shape == (20, 40, 3), "the orientation tag must not rotate the image"
    assert image[:, :10].mean() > 200 and image[:, 20:].mean() < 50


def test_zero_byte_image_is_named(tmp_path):
    root = make_voc(tmp_path, {"a": np.zeros((8, 8), np.uint8)})
    (root / "JPEGImages" / "a.jpg").write_bytes(b"")
    with pytest.raises(UserError) as info:
        VOCSegmentation(root, "train")[0]
    assert str(root / "JPEGImages" / "a.jpg") in str(info.value) and "empty" in str(info.value)


def test_list_file_with_bom_crlf_and_trailing_spaces(tmp_path):
    root = make_voc(tmp_path, {"a": np.zeros((8, 8), np.uint8), "b": np.zeros((8, 8), np.uint8)})
    list_file = root / "ImageSets" / "Segmentation" / "train.txt"
    list_file.write_bytes("\ufeffa  \r\nb\t\r\n\r\n".encode("utf-8"))
    assert read_list_file(list_file) == ["a", "b"]
    assert VOCSegmentation(root, "train").ids == ["a", "b"]


def parse_yaml(tmp_path, text: str):
    config = tmp_path / "run.yaml"
    config.write_text(text)
    return parse_train_args(["--config", str(config), "--device", "cpu", "--dataset", "demo"])


@pytest.mark.parametrize("text, needles", [
    ("epoch: 2.9\n", ["--epoch", "2.9"]),                        # no truncation into an integer flag
    ("batch_size: true\n", ["--batch_size", "True"]),            # a boolean is not an integer
    ("loss_type: focal\n", ["--loss_type", "focal", "cross_entropy"]),
    ("dataset: coco\n", ["--dataset", "coco", "cityscapes"]),
    ("lr: null\n", ["lr", "null"]),
    ("aux_weight: -0.4\n", ["--aux_weight", "-0.4"]),
    ("momentum: -0.9\n", ["--momentum", "-0.9"]),
    ("crop_size: [512, 1024, 3]\n", ["--crop_size"]),
    ("eval_scales: {a: 1}\n", ["eval_scales"]),
])
def test_yaml_values_are_checked_like_their_flags(tmp_path, text, needles):
    with pytest.raises(UserError) as info:
        parse_yaml(tmp_path, text)
    message = flag_message(info.value)
    assert message.startswith("--config ") and "\n" not in message
    for needle in needles:
        assert needle in message, message


def test_yaml_values_of_the_right_type_pass(tmp_path):
    args = parse_yaml(tmp_path, "epoch: 3\nbatch_size: 4\nautocast: true\ncrop_size: [512, 1024]\nlr: 0.02\n")
    assert (args.epoch, args.batch_size, args.autocast, args.crop_size, args.lr) == (3, 4, True, [512, 1024], 0.02)


@pytest.mark.parametrize("flags, needle", [
    (["--aux_weight", "-1"], "--aux_weight"),
    (["--momentum", "-0.5"], "--momentum"),
    (["--weight_decay", "-1e-4"], "--weight_decay"),
])
def test_negative_values_are_refused_on_the_command_line(flags, needle):
    with pytest.raises(UserError) as info:
        parse_train_args(["--device", "cpu", "--dataset", "demo", *flags])
    assert needle in flag_message(info.value)
