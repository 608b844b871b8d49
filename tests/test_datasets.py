"""VOCSegmentation, label/image reading, samplers, collate and demo data."""
import json
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from segzoo.datasets import (DEMO_CLASSES, VOC_CLASSES, VOC_PALETTE, SeededDistributedSampler,
                      UnpaddedDistributedSampler, VOCSegmentation, build_train_transform,
                      build_val_transform, ensure_demo_dataset, make_demo_dataset,
                      resolve_num_classes)
from segzoo.datasets import image_io
from segzoo.datasets.demo import STAMP_FILE
from segzoo.datasets.image_io import read_image, read_label, write_palette_png
from segzoo.runtime.errors import UserError, flag_message, one_line
from tools import make_demo_data

# ----------------------------------------------------------------------------- helpers


def write_jpeg(path: Path, image_rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR))


def make_voc(root: Path, labels: dict, split: str = "train", class_names=None,
             palette_labels: bool = True) -> Path:
    """A tiny VOC-layout dataset: {id: (H, W) uint8 label}; images are random."""
    rng = np.random.default_rng(0)
    label_dir = root / ("SegmentationClass" if palette_labels else "SegmentationClassGray")
    label_dir.mkdir(parents=True, exist_ok=True)
    for sample_id, label in labels.items():
        h, w = label.shape
        write_jpeg(root / "JPEGImages" / f"{sample_id}.jpg", rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        if palette_labels:
            write_palette_png(label_dir / f"{sample_id}.png", label, VOC_PALETTE)
        else:
            assert cv2.imwrite(str(label_dir / f"{sample_id}.png"), label)
    list_dir = root / "ImageSets" / "Segmentation"
    list_dir.mkdir(parents=True, exist_ok=True)
    (list_dir / f"{split}.txt").write_text("".join(f"{i}\n" for i in labels))
    if class_names is not None:
        (root / "class_names.txt").write_text("\n".join(class_names) + "\n")
    return root


def all_voc_values_label() -> np.ndarray:
    """(4, 22) label with every VOC class id 0..20 and 255 once per row."""
    return np.tile(np.array(list(range(21)) + [255], dtype=np.uint8), (4, 1))


def png_bytes(indices: np.ndarray, bit_depth: int, palette: np.ndarray, extra_chunks=()) -> bytes:
    """Independent palette-PNG encoder for the reader tests (packs 1/2/4/8-bit rows)."""
    def chunk(kind, payload):
        crc = zlib.crc32(kind + payload)
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    h, w = indices.shape
    per_byte = 8 // bit_depth
    padded = np.zeros((h, -(-w // per_byte) * per_byte), dtype=np.uint8)
    padded[:, :w] = indices
    groups = padded.reshape(h, -1, per_byte).astype(np.uint16)
    shifts = bit_depth * np.arange(per_byte - 1, -1, -1)
    packed = (groups << shifts).sum(axis=2).astype(np.uint8)
    raw = np.concatenate([np.zeros((h, 1), np.uint8), packed], axis=1).tobytes()
    ihdr = struct.pack(">IIBBBBB", w, h, bit_depth, 3, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"PLTE", palette.tobytes())
            + b"".join(chunk(k, p) for k, p in extra_chunks)
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def expect_user_error(match_parts, fn, *args, **kwargs) -> str:
    with pytest.raises(UserError) as info:
        fn(*args, **kwargs)
    message = flag_message(info.value)  # as the command line prints it
    assert "\n" not in message, message
    for part in match_parts:
        assert str(part) in message, f"{part!r} not in {message!r}"
    return message


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    make_demo_dataset(root, num_train=8, num_val=5, size=(40, 52), seed=3)
    return root


# ----------------------------------------------------------------------------- reading files


@pytest.mark.parametrize("bit_depth", [1, 2, 4, 8])
def test_palette_png_reads_indices_not_colours(tmp_path, bit_depth):
    rng = np.random.default_rng(bit_depth)
    num_colours = 2 ** bit_depth
    indices = rng.integers(0, num_colours, (13, 29), dtype=np.uint8)
    if bit_depth == 8:
        indices.flat[:256] = np.arange(256)  # every index once
    # Duplicate colours, a transparency chunk and a gamma chunk must not change indices.
    palette = rng.integers(0, 256, (num_colours, 3), dtype=np.uint8)
    palette[1] = palette[0]
    extras = [(b"tRNS", bytes([0] * num_colours)), (b"gAMA", struct.pack(">I", 45455))]
    path = tmp_path / "label.png"
    path.write_bytes(png_bytes(indices, bit_depth, palette, extras))
    label = read_label(path)
    assert label.dtype == np.uint8 and label.shape == indices.shape and label.flags.c_contiguous
    np.testing.assert_array_equal(label, indices)


def test_every_index_survives_our_palette_writer(tmp_path):
    indices = np.arange(256, dtype=np.uint8).reshape(16, 16)
    write_palette_png(tmp_path / "l.png", indices, VOC_PALETTE)
    np.testing.assert_array_equal(read_label(tmp_path / "l.png"), indices)
    # An independent decoder (OpenCV's colour expansion) sees the VOC colours.
    bgr = cv2.imread(str(tmp_path / "l.png"), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(bgr[..., ::-1], VOC_PALETTE[indices])


def test_voc_palette_matches_known_colours():
    assert VOC_PALETTE.shape == (256, 3) and len(np.unique(VOC_PALETTE, axis=0)) == 256
    assert VOC_PALETTE[1].tolist() == [128, 0, 0]        # aeroplane
    assert VOC_PALETTE[15].tolist() == [192, 128, 128]   # person
    assert VOC_PALETTE[20].tolist() == [0, 64, 128]      # tvmonitor
    assert VOC_PALETTE[255].tolist() == [224, 224, 192]  # void
    assert len(VOC_CLASSES) == 21 and VOC_CLASSES[0] == "background"


def test_read_image_is_rgb_with_and_without_opencv_rgb_flag(tmp_path, monkeypatch):
    image = np.zeros((8, 10, 3), np.uint8)
    image[..., 0] = 200  # pure red in RGB
    cv2.imwrite(str(tmp_path / "red.png"), image[..., ::-1].copy())
    np.testing.assert_array_equal(read_image(tmp_path / "red.png"), image)
    monkeypatch.setattr(image_io, "_IMREAD_RGB", None)  # OpenCV < 4.10 path
    np.testing.assert_array_equal(read_image(tmp_path / "red.png"), image)


def test_jpeg_truncation_check(tmp_path):
    ok, buf = cv2.imencode(".jpg", np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    data = buf.tobytes()
    assert not image_io._jpeg_is_truncated(data)
    assert not image_io._jpeg_is_truncated(data + b"trailing bytes")
    assert image_io._jpeg_is_truncated(data[:-2])
    assert image_io._jpeg_is_truncated(data[: len(data) // 2])


def test_corrupt_png_label_is_user_error(tmp_path):
    path = tmp_path / "label.png"
    write_palette_png(path, np.zeros((20, 20), np.uint8), VOC_PALETTE)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 20])  # cut inside the image data
    expect_user_error([path, "truncated"], read_label, path)
    path.write_bytes(b"not a png at all")
    expect_user_error([path, "not a PNG"], read_label, path)


# ----------------------------------------------------------------------------- dataset: demo + CamVid


def test_demo_dataset_samples(demo_root):
    ds = VOCSegmentation(demo_root, "train")
    assert len(ds) == 8 and ds.num_classes == 6 and ds.class_names == list(DEMO_CLASSES)
    image, label = ds[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 40, 52) and image.is_contiguous()
    assert label.dtype == torch.uint8 and label.shape == (40, 52) and label.is_contiguous()
    values = torch.cat([ds[i][1].flatten() for i in range(len(ds))]).unique().tolist()
    assert set(values) <= set(range(6)) | {255} and 0 in values and 255 in values
    assert len(VOCSegmentation(demo_root, "val")) == 5


def test_dataset_image_is_rgb_chw_of_the_file(demo_root):
    ds = VOCSegmentation(demo_root, "val")
    image, _ = ds[2]
    bgr = cv2.imread(ds.image_path(2), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(image.numpy(), bgr[..., ::-1].transpose(2, 0, 1))


def test_camvid(camvid_root):
    ds = VOCSegmentation(camvid_root, "val", transform=build_val_transform(None))
    assert ds.num_classes == 11 and len(ds) == 233 and ds.class_names[0] == "sky"
    image, label = ds[0]
    assert image.shape == (3, 360, 480) and image.dtype == torch.uint8
    assert label.shape == (360, 480) and label.dtype == torch.uint8
    assert set(label.unique().tolist()) <= set(range(11)) | {255}
    # Indices agree with OpenCV's colour expansion through the file's own palette.
    bgr = cv2.imread(ds.label_path(0), cv2.IMREAD_COLOR)
    palette = _plte(Path(ds.label_path(0)).read_bytes())
    np.testing.assert_array_equal(palette[label.numpy()], bgr[..., ::-1])
    train = VOCSegmentation(camvid_root, "train", transform=build_train_transform((97, 131)))
    image, label = train[(5, 123)]
    assert image.shape == (3, 97, 131) and label.shape == (97, 131)


def _plte(data: bytes) -> np.ndarray:
    start = data.index(b"PLTE")
    (length,) = struct.unpack(">I", data[start - 4:start])
    return np.frombuffer(data[start + 4:start + 4 + length], np.uint8).reshape(-1, 3)


# ----------------------------------------------------------------------------- protocols and layouts


def test_voc_21_and_20_class_protocols(tmp_path):
    raw = all_voc_values_label()
    root = make_voc(tmp_path, {"a": raw})
    standard = VOCSegmentation(root, "train")
    assert standard.num_classes == 21 and standard.class_names == list(VOC_CLASSES)
    np.testing.assert_array_equal(standard[0][1].numpy(), raw)

    no_background = VOCSegmentation(root, "train", num_classes=20)
    assert no_background.num_classes == 20 and no_background.class_names == list(VOC_CLASSES[1:])
    expected = np.array([255] + list(range(20)) + [255], dtype=np.uint8)
    np.testing.assert_array_equal(no_background[0][1].numpy(), np.tile(expected, (4, 1)))

    assert resolve_num_classes(root, None) == 21 and resolve_num_classes(root, 20) == 20
    expect_user_error(["--num_classes 5", "class_names.txt"], VOCSegmentation, root, "train", 5)


def test_gray_labels_are_preferred(tmp_path):
    raw = all_voc_values_label()
    make_voc(tmp_path, {"a": raw})
    gray = raw.copy()
    gray[0, 0] = 7
    (tmp_path / "SegmentationClassGray").mkdir()
    cv2.imwrite(str(tmp_path / "SegmentationClassGray" / "a.png"), gray)
    ds = VOCSegmentation(tmp_path, "train")
    assert ds.label_dir.name == "SegmentationClassGray"
    np.testing.assert_array_equal(ds[0][1].numpy(), gray)


@pytest.mark.parametrize("sub", [".", "VOC2012", "VOCdevkit/VOC2012", "VOC2007", "VOCdevkit/VOC2007"])
def test_layouts(tmp_path, sub):
    make_voc(tmp_path / sub, {"a": np.zeros((6, 7), np.uint8)})
    ds = VOCSegmentation(tmp_path, "train")
    assert ds.root == (tmp_path / sub if sub != "." else tmp_path)
    assert len(ds) == 1 and ds[0][1].shape == (6, 7)


def test_layout_prefers_2012_and_says_so(tmp_path):
    make_voc(tmp_path / "VOCdevkit" / "VOC2007", {"old": np.zeros((6, 7), np.uint8)})
    make_voc(tmp_path / "VOCdevkit" / "VOC2012", {"new": np.zeros((6, 7), np.uint8)})
    ds = VOCSegmentation(tmp_path, "train")
    assert ds.ids == ["new"] and "VOCdevkit/VOC2012" in repr(ds)


def test_class_names_file(tmp_path):
    names = ["road", "car", "tree"]
    root = make_voc(tmp_path, {"a": np.array([[0, 1, 2, 255]], np.uint8)}, class_names=names)
    ds = VOCSegmentation(root, "train")
    assert ds.class_names == names and ds.num_classes == 3
    assert resolve_num_classes(root) == 3 and resolve_num_classes(root, 3) == 3
    expect_user_error(["--num_classes 21", root / "class_names.txt", "3"], resolve_num_classes, root, 21)
    expect_user_error(["--num_classes 20", root / "class_names.txt"], VOCSegmentation, root, "train", 20)


# ----------------------------------------------------------------------------- bad inputs


def test_missing_root(tmp_path):
    expect_user_error([tmp_path / "nope"], VOCSegmentation, tmp_path / "nope", "train")
    expect_user_error([tmp_path, "ImageSets"], VOCSegmentation, tmp_path, "train")


def test_missing_list_file(tmp_path):
    root = make_voc(tmp_path, {"a": np.zeros((4, 4), np.uint8)})
    list_file = root / "ImageSets" / "Segmentation" / "val.txt"
    message = expect_user_error([list_file], VOCSegmentation, root, "val")
    assert "train" in message  # lists the splits that exist


def test_empty_list_file(tmp_path):
    root = make_voc(tmp_path, {"a": np.zeros((4, 4), np.uint8)})
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("\n\n")
    expect_user_error([root / "ImageSets" / "Segmentation" / "train.txt", "empty"],
                      VOCSegmentation, root, "train")


def test_id_without_image_or_label(tmp_path):
    root = make_voc(tmp_path, {"a": np.zeros((4, 4), np.uint8), "b": np.zeros((4, 4), np.uint8)})
    (root / "JPEGImages" / "b.jpg").unlink()
    list_file = root / "ImageSets" / "Segmentation" / "train.txt"
    expect_user_error([root / "JPEGImages" / "b.jpg", list_file, "1 of 2"], VOCSegmentation, root, "train")
    write_jpeg(root / "JPEGImages" / "b.jpg", np.zeros((4, 4, 3), np.uint8))
    (root / "SegmentationClass" / "a.png").unlink()
    expect_user_error([root / "SegmentationClass" / "a.png", list_file], VOCSegmentation, root, "train")


def test_truncated_jpeg(tmp_path):
    root = make_voc(tmp_path, {"a": np.zeros((64, 64), np.uint8)})
    path = root / "JPEGImages" / "a.jpg"
    write_jpeg(path, np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    ds = VOCSegmentation(root, "train")
    expect_user_error([path, "truncated"], ds.__getitem__, 0)


def test_rgb_label_points_to_converter(tmp_path):
    root = make_voc(tmp_path, {"a": np.zeros((5, 6), np.uint8)})
    path = root / "SegmentationClass" / "a.png"
    cv2.imwrite(str(path), np.full((5, 6, 3), 128, np.uint8))
    message = expect_user_error([path, "RGB", "tools/convert_voc_label.py", "--input_dir", "--output_dir"],
                                VOCSegmentation(root, "train").__getitem__, 0)
    assert "SegmentationClassGray" in message


def test_label_value_out_of_range(tmp_path):
    label = np.zeros((5, 6), np.uint8)
    label[0, 0], label[1, 1] = 30, 255
    root = make_voc(tmp_path, {"a": label})
    path = root / "SegmentationClass" / "a.png"
    expect_user_error([path, "30", "0..20"], VOCSegmentation(root, "train").__getitem__, 0)
    # The 20-class protocol checks raw ids before the remap: 20 is fine, 21 is not.
    label[0, 0] = 20
    write_palette_png(path, label, VOC_PALETTE)
    assert VOCSegmentation(root, "train", num_classes=20)[0][1][0, 0] == 19
    label[0, 0] = 21
    write_palette_png(path, label, VOC_PALETTE)
    expect_user_error([path, "21", "0..20"], VOCSegmentation(root, "train", num_classes=20).__getitem__, 0)


def test_label_value_out_of_range_with_class_names(tmp_path):
    root = make_voc(tmp_path, {"a": np.array([[0, 1, 3]], np.uint8)}, class_names=["x", "y", "z"])
    expect_user_error([root / "SegmentationClass" / "a.png", "3", "0..2"],
                      VOCSegmentation(root, "train").__getitem__, 0)


def test_size_mismatch(tmp_path):
    root = make_voc(tmp_path, {"a": np.zeros((5, 6), np.uint8)})
    write_jpeg(root / "JPEGImages" / "a.jpg", np.zeros((6, 6, 3), np.uint8))
    expect_user_error([root / "SegmentationClass" / "a.png", root / "JPEGImages" / "a.jpg"],
                      VOCSegmentation(root, "train").__getitem__, 0)


def test_user_error_survives_dataloader_worker(tmp_path):
    root = make_voc(tmp_path, {"a": np.zeros((5, 6), np.uint8)})
    cv2.imwrite(str(root / "SegmentationClass" / "a.png"), np.zeros((5, 6, 3), np.uint8))
    loader = DataLoader(VOCSegmentation(root, "train"), batch_size=1, num_workers=1)
    with pytest.raises(UserError) as info:
        next(iter(loader))
    assert str(root / "SegmentationClass" / "a.png") in one_line(info.value)


# ----------------------------------------------------------------------------- seeded augmentation


def test_seeded_items_are_reproducible(demo_root):
    ds = VOCSegmentation(demo_root, "train", transform=build_train_transform(32, rotate=10, blur=True))
    first, again, other = ds[(3, 42)], ds[(3, 42)], ds[(3, 43)]
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])


def test_augmentation_independent_of_worker_count(demo_root):
    ds = VOCSegmentation(demo_root, "train", transform=build_train_transform(24, rotate=10, blur=True))

    def two_epochs(num_workers):
        sampler = SeededDistributedSampler(len(ds), 1, 0, seed=7)
        loader = DataLoader(ds, batch_size=3, sampler=sampler, num_workers=num_workers,
                            persistent_workers=num_workers > 0)
        batches = []
        for epoch in (1, 2):  # persistent workers keep their state across these
            sampler.set_epoch(epoch)
            batches += [torch.cat([images.flatten(), labels.flatten()]) for images, labels in loader]
        return batches

    serial, parallel = two_epochs(0), two_epochs(2)
    assert len(serial) == len(parallel) == 6  # 8 samples in batches of 3, two epochs
    for a, b in zip(serial, parallel):
        assert torch.equal(a, b)
    assert not torch.equal(serial[0], serial[3])  # a new epoch augments differently


# ----------------------------------------------------------------------------- samplers


@pytest.mark.parametrize("length,replicas", [(10, 1), (10, 3), (7, 2), (2, 4)])
@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("drop_last", [True, False])
def test_seeded_sampler_partitions_like_torch(length, replicas, shuffle, drop_last):
    for rank in range(replicas):
        ours = SeededDistributedSampler(length, replicas, rank, shuffle=shuffle, seed=5, drop_last=drop_last)
        ref = DistributedSampler(range(length), replicas, rank, shuffle=shuffle, seed=5, drop_last=drop_last)
        for epoch in (0, 3):
            ours.set_epoch(epoch)
            ref.set_epoch(epoch)
            pairs = list(ours)
            assert [i for i, _ in pairs] == list(ref) and len(ours) == len(ref) == len(pairs)


def test_seeded_sampler_seeds_depend_on_seed_epoch_index():
    sampler = SeededDistributedSampler(50, 2, 1, seed=11)
    sampler.set_epoch(4)
    first, again = list(sampler), list(sampler)
    assert first == again
    assert list(SeededDistributedSampler(50, 2, 1, seed=11)) != first  # epoch 0
    seeds = [s for _, s in first]
    assert len(set(seeds)) == len(seeds) and all(isinstance(s, int) and s >= 0 for s in seeds)
    sampler.set_epoch(5)
    later = dict(sampler)
    assert all(later[i] != s for i, s in first if i in later)  # same index, new epoch, new seed
    other_seed = SeededDistributedSampler(50, 2, 1, seed=12)
    other_seed.set_epoch(4)
    assert [i for i, _ in other_seed] != [i for i, _ in first]


def test_seeded_sampler_rejects_bad_rank():
    with pytest.raises(ValueError):
        SeededDistributedSampler(10, 2, 2)
    with pytest.raises(ValueError):
        UnpaddedDistributedSampler(10, 0, 0)


@pytest.mark.parametrize("length,replicas", [(17, 2), (17, 4), (233, 3), (3, 5), (1, 1), (0, 2)])
def test_unpadded_sampler_gives_each_index_once(length, replicas):
    parts = [list(UnpaddedDistributedSampler(length, replicas, r)) for r in range(replicas)]
    assert sorted(i for part in parts for i in part) == list(range(length))
    for rank, part in enumerate(parts):
        assert part == list(range(rank, length, replicas))
        assert len(UnpaddedDistributedSampler(length, replicas, rank)) == len(part)


# ----------------------------------------------------------------------------- collate


# ----------------------------------------------------------------------------- demo data


def test_demo_defaults_and_idempotence(tmp_path):
    root = tmp_path / "demo"
    assert make_demo_dataset(root) is True
    ds = VOCSegmentation(root, "train")
    assert len(ds) == 48 and len(VOCSegmentation(root, "val")) == 17
    assert ds[0][0].shape == (3, 96, 128)
    classes_seen = set()
    for i in range(len(ds)):
        classes_seen |= set(ds[i][1].unique().tolist())
    assert classes_seen == set(range(6)) | {255}
    stamp = json.loads((root / STAMP_FILE).read_text())
    assert stamp["complete"] and stamp["num_val"] == 17 and stamp["size"] == [96, 128]
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*.jpg")}
    assert make_demo_dataset(root) is False
    assert ensure_demo_dataset(root) == root
    assert before == {p: p.stat().st_mtime_ns for p in root.rglob("*.jpg")}


def test_demo_is_deterministic_and_rewrites_on_new_parameters(tmp_path):
    make_demo_dataset(tmp_path / "a", num_train=3, num_val=1, size=(24, 32), seed=1)
    make_demo_dataset(tmp_path / "b", num_train=3, num_val=1, size=(24, 32), seed=1)
    for path in (tmp_path / "a").rglob("*.*"):
        if path.name != STAMP_FILE and path.is_file():
            assert path.read_bytes() == (tmp_path / "b" / path.relative_to(tmp_path / "a")).read_bytes()
    assert make_demo_dataset(tmp_path / "a", num_train=2, num_val=1, size=(24, 32), seed=1) is True
    assert sorted(p.name for p in (tmp_path / "a" / "JPEGImages").iterdir()) == \
        ["demo_train_0000.jpg", "demo_train_0001.jpg", "demo_val_0000.jpg"]


def test_dataset_demo_uses_an_existing_demo_dataset_of_other_parameters(tmp_path):
    """--dataset demo on a folder that holds a complete smaller demo dataset reads it as it is
    (the tests' tiny data was once replaced by the default 48/17 set this way)."""
    make_demo_dataset(tmp_path, num_train=3, num_val=1, size=(24, 32))
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.jpg")}
    assert ensure_demo_dataset(tmp_path) == tmp_path
    assert before == {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.jpg")}
    assert len(VOCSegmentation(tmp_path, "train")) == 3
    (tmp_path / "JPEGImages" / "demo_train_0001.jpg").unlink()  # incomplete: written anew (default size)
    ensure_demo_dataset(tmp_path)
    assert len(VOCSegmentation(tmp_path, "train")) == 48


def test_demo_rewrites_incomplete_data(tmp_path):
    make_demo_dataset(tmp_path, num_train=2, num_val=1, size=(24, 32))
    (tmp_path / "JPEGImages" / "demo_train_0001.jpg").unlink()
    assert make_demo_dataset(tmp_path, num_train=2, num_val=1, size=(24, 32)) is True
    assert len(VOCSegmentation(tmp_path, "train")) == 2


def test_demo_refuses_foreign_data(tmp_path):
    make_voc(tmp_path, {"a": np.zeros((4, 4), np.uint8)})
    expect_user_error([tmp_path, STAMP_FILE], make_demo_dataset, tmp_path)
    assert (tmp_path / "JPEGImages" / "a.jpg").is_file()


def test_make_demo_data_cli(tmp_path, capsys):
    args = ["--root", str(tmp_path / "d"), "--num_train", "2", "--num_val", "3", "--size", "20", "30"]
    assert make_demo_data.main(args) == 0
    assert "wrote 2 train + 3 val images" in capsys.readouterr().out
    assert make_demo_data.main(args) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert VOCSegmentation(tmp_path / "d", "val")[2][0].shape == (3, 20, 30)
    with pytest.raises(SystemExit) as info:
        make_demo_data.main(["--root", str(tmp_path / "e"), "--num_val", "0"])
    assert info.value.code == 2 and "num_val=0" in capsys.readouterr().err
