"""Paired transforms and on-device normalisation."""
import numpy as np
import pytest
import torch

from segzoo.datasets.transforms import (MEAN, MEAN_RGB_UINT8, STD, CenterCrop, Compose, RandomCrop,
                                 RandomGaussianBlur, RandomHorizontalFlip, RandomRotate, RandomScale,
                                 build_train_transform, build_val_transform, normalize)


def sample(h=30, w=40, seed=0):
    """Random image plus a label of a few class ids; the image's red channel encodes the
    label, so transforms that move pixels (flip, crop) must keep the two in sync."""
    rng = np.random.default_rng(seed)
    label = rng.choice(np.array([0, 3, 7, 255], np.uint8), size=(h, w))
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    image[..., 0] = (label % 50) * 5
    return image, label


def rng(seed=0):
    return np.random.default_rng(seed)


# ----------------------------------------------------------------------------- crops


@pytest.mark.parametrize("size", [16, (9, 25), (30, 40), (1, 1)])
def test_random_crop_is_a_window_of_the_input(size):
    image, label = sample()
    out_image, out_label = RandomCrop(size)(image, label, rng(3))
    h, w = (size, size) if isinstance(size, int) else size
    assert out_image.shape == (h, w, 3) and out_label.shape == (h, w)
    # Locate the window by its label and check the image came from the same place.
    matches = [(y, x) for y in range(31 - h) for x in range(41 - w)
               if np.array_equal(label[y:y + h, x:x + w], out_label)
               and np.array_equal(image[y:y + h, x:x + w], out_image)]
    assert matches


def test_random_crop_pads_small_images_with_mean_and_ignore():
    image, label = sample(10, 12)
    out_image, out_label = RandomCrop((15, 20))(image, label, rng())
    assert out_image.shape == (15, 20, 3) and out_label.shape == (15, 20)
    # Even padding: 5 rows -> 2 top / 3 bottom, 8 columns -> 4 left / 4 right.
    np.testing.assert_array_equal(out_label[2:12, 4:16], label)
    np.testing.assert_array_equal(out_image[2:12, 4:16], image)
    pad = np.ones((15, 20), bool)
    pad[2:12, 4:16] = False
    assert (out_label[pad] == 255).all()
    assert (out_image[pad] == np.array(MEAN_RGB_UINT8, np.uint8)).all()
    assert MEAN_RGB_UINT8 == (124, 116, 104)


def test_random_crop_pads_one_side_and_crops_the_other():
    image, label = sample(10, 50)
    out_image, out_label = RandomCrop((14, 20))(image, label, rng(1))
    assert out_label.shape == (14, 20)
    assert (out_label[:2] == 255).all() and (out_label[12:] == 255).all()
    assert not (out_label[2:12] == 255).all()


def test_random_crop_positions_vary_with_seed():
    image, label = sample(40, 40)
    windows = {RandomCrop(8)(image, label, rng(s))[1].tobytes() for s in range(20)}
    assert len(windows) > 10


def test_center_crop_takes_the_middle_and_pads_evenly():
    image, label = sample(31, 40)
    out_image, out_label = CenterCrop((11, 20))(image, label, rng())
    np.testing.assert_array_equal(out_label, label[10:21, 10:30])
    np.testing.assert_array_equal(out_image, image[10:21, 10:30])
    out_image, out_label = CenterCrop(44)(image, label, rng())
    np.testing.assert_array_equal(out_label[6:37, 2:42], label)
    assert (out_label[:6] == 255).all() and (out_label[37:] == 255).all()
    assert (out_image[:6] == np.array(MEAN_RGB_UINT8, np.uint8)).all()


# ----------------------------------------------------------------------------- flips, scale, rotate, blur


def test_flip_moves_image_and_label_together():
    image, label = sample()
    flipped_image, flipped_label = RandomHorizontalFlip(p=1.0)(image, label, rng())
    np.testing.assert_array_equal(flipped_label, label[:, ::-1])
    np.testing.assert_array_equal(flipped_image, image[:, ::-1])
    same_image, same_label = RandomHorizontalFlip(p=0.0)(image, label, rng())
    assert same_image is image and same_label is label


def test_flip_then_crop_keeps_pairs_consistent():
    image, label = sample(50, 60)
    pipeline = Compose([RandomHorizontalFlip(), RandomCrop(21)])
    for seed in range(10):
        out_image, out_label = pipeline(image, label, rng(seed))
        np.testing.assert_array_equal(out_image[..., 0], (out_label % 50) * 5)


def test_scale_resizes_label_with_nearest():
    image, label = sample(40, 60)
    out_image, out_label = RandomScale(1.5, 1.5)(image, label, rng())
    assert out_image.shape == (60, 90, 3) and out_label.shape == (60, 90)
    assert set(np.unique(out_label)) <= set(np.unique(label))
    out_image, out_label = RandomScale(0.5, 2.0)(image, label, rng(4))
    factor = out_label.shape[0] / 40
    assert 0.5 <= factor <= 2.0 and abs(out_label.shape[1] / 60 - factor) < 0.05


class MaxDraws:
    """Stand-in rng whose every draw is the top of its range (random() -> 0 so p fires)."""

    def random(self):
        return 0.0

    def uniform(self, low, high):
        return high


@pytest.mark.parametrize("fill,colour", [("mean", MEAN_RGB_UINT8), ("zero", (0, 0, 0))])
def test_rotate_fills_corners(fill, colour):
    image, label = sample(41, 41)
    out_image, out_label = RandomRotate(45, p=1.0, fill=fill)(image, label, MaxDraws())
    assert out_image.shape == image.shape and out_label.shape == label.shape
    # 45 degrees about the centre uncovers all four corners and keeps the centre.
    for y, x in ((0, 0), (0, -1), (-1, 0), (-1, -1)):
        assert out_label[y, x] == 255 and tuple(out_image[y, x]) == colour
    assert out_label[20, 20] == label[20, 20]
    assert set(np.unique(out_label)) <= set(np.unique(label))


def test_rotate_with_p0_and_blur_with_p0_are_identity():
    image, label = sample()
    for t in (RandomRotate(30, p=0.0), RandomGaussianBlur(p=0.0)):
        out_image, out_label = t(image, label, rng())
        assert out_image is image and out_label is label


def test_blur_changes_image_only():
    image, label = sample()
    out_image, out_label = RandomGaussianBlur(p=1.0)(image, label, rng())
    assert out_label is label and out_image.shape == image.shape and not np.array_equal(out_image, image)
    assert out_image.astype(float).std() < image.astype(float).std()


# ----------------------------------------------------------------------------- pipelines


def test_train_pipeline_is_a_function_of_the_seed():
    image, label = sample(60, 80)
    pipeline = build_train_transform((33, 47), rotate=15, blur=True)
    a, b, c = (pipeline(image, label, rng(s)) for s in (9, 9, 10))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_train_pipeline_label_values_come_from_input_or_ignore():
    image, label = sample(60, 80)
    allowed = set(np.unique(label).tolist()) | {255}
    pipeline = build_train_transform(50, scale=(0.5, 2.0), rotate=30, blur=True)
    for seed in range(30):
        out_image, out_label = pipeline(image, label, rng(seed))
        assert out_image.shape == (50, 50, 3) and out_image.dtype == np.uint8
        assert out_label.shape == (50, 50) and out_label.dtype == np.uint8
        assert set(np.unique(out_label).tolist()) <= allowed


def test_build_train_transform_options():
    assert [type(t).__name__ for t in build_train_transform(8).transforms] == \
        ["RandomScale", "RandomHorizontalFlip", "RandomCrop"]
    assert [type(t).__name__ for t in build_train_transform(8, scale=None, rotate=10, blur=True,
                                                            flip=False).transforms] == \
        ["RandomRotate", "RandomGaussianBlur", "RandomCrop"]
    assert [type(t).__name__ for t in build_train_transform(8, scale=(1, 1)).transforms] == \
        ["RandomHorizontalFlip", "RandomCrop"]


def test_val_transform():
    image, label = sample(30, 40)
    out_image, out_label = build_val_transform(None)(image, label, rng())
    assert out_image is image and out_label is label
    out_image, out_label = build_val_transform(20)(image, label, rng())
    np.testing.assert_array_equal(out_label, label[5:25, 10:30])


def test_bad_arguments():
    with pytest.raises(ValueError):
        RandomCrop(0)
    with pytest.raises(ValueError):
        RandomScale(2.0, 1.0)
    with pytest.raises(ValueError):
        RandomRotate(10, fill="red")


# ----------------------------------------------------------------------------- normalize


def test_normalize_matches_formula():
    images = torch.randint(0, 256, (2, 3, 5, 7), dtype=torch.uint8)
    expected = (images.double() - torch.tensor(MEAN, dtype=torch.double).view(1, 3, 1, 1)) \
        / torch.tensor(STD, dtype=torch.double).view(1, 3, 1, 1)
    out = normalize(images)
    assert out.dtype == torch.float32 and out.shape == images.shape
    assert (out.double() - expected).abs().max() < 1e-5
    half = normalize(images, torch.bfloat16)
    assert half.dtype == torch.bfloat16
    assert ((half.double() - expected).abs() <= 1e-2 * expected.abs() + 1e-3).all()  # bf16: 8-bit mantissa


def test_normalize_on_device_keeps_memory_format(device_name):
    images = torch.randint(0, 256, (2, 3, 6, 6), dtype=torch.uint8, device=device_name)
    channels_last = images.contiguous(memory_format=torch.channels_last)
    out = normalize(channels_last)
    assert out.device == images.device
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out, normalize(images))
    with pytest.raises(ValueError):
        normalize(images[:, :2])
