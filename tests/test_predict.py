"""tools/predict.py on a folder of images, one image and a short video written here; bad inputs;
and train.py --test_only --save_predictions writing the same files."""
from __future__ import annotations

import sys

import cv2
import numpy as np
import pytest
from PIL import Image

from tests.helpers import REPO, Result, TINY_RUN, assert_one_line_error, run_main, run_train
from tests.test_export import NUM_CLASSES, make_checkpoint
from tools import predict


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "best.pth"
    make_checkpoint(path, "pspnet")
    return path


def run_predict(capsys, *argv) -> Result:
    return run_main(predict.main, capsys, *argv)


def write_images(folder, sizes):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(sizes):
        cv2.imwrite(str(folder / f"img{i}.jpg"), rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))
    (folder / "notes.txt").write_text("not an image: skipped")


def check_mask(path, height, width):
    mask = Image.open(path)
    assert mask.mode == "P" and mask.size == (width, height)
    values = np.asarray(mask)
    assert values.max() < NUM_CLASSES
    return values


@pytest.mark.parametrize("eval_mode", ["whole", "slide"])
def test_folder_of_images(tmp_path, capsys, checkpoint, eval_mode):
    sizes = [(40, 56), (33, 47)]
    write_images(tmp_path / "in", sizes)
    out = tmp_path / "out"
    result = run_predict(capsys, "--ckpt", checkpoint, "--input", tmp_path / "in", "--out", out,
                         "--eval_mode", eval_mode, "--eval_crop", 24)
    assert result.rc == 0, result.describe()
    assert "images: 2/2" in result.stdout, result.stdout
    for i, (h, w) in enumerate(sizes):
        check_mask(out / "masks" / f"img{i}.png", h, w)
        assert cv2.imread(str(out / "overlays" / f"img{i}.jpg")).shape == (h, w, 3)
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["img0.png", "img1.png"]


def test_one_image_uses_the_voc_palette(tmp_path, capsys, checkpoint):
    write_images(tmp_path / "in", [(30, 20)])
    result = run_predict(capsys, "--ckpt", checkpoint, "--input", tmp_path / "in" / "img0.jpg", "--out", tmp_path / "o")
    assert result.rc == 0, result.describe()
    mask = Image.open(tmp_path / "o" / "masks" / "img0.png")
    from segzoo.datasets.classes import VOC_PALETTE
    assert np.array_equal(np.asarray(mask.getpalette()[:3 * NUM_CLASSES]), VOC_PALETTE[:NUM_CLASSES].ravel())


def test_video_frames(tmp_path, capsys, checkpoint):
    video, frames, (h, w) = tmp_path / "clip.avi", 3, (32, 48)
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (w, h))
    if not writer.isOpened():
        pytest.skip("this OpenCV build cannot write MJPG/avi videos")
    rng = np.random.default_rng(1)
    for _ in range(frames):
        writer.write(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))
    writer.release()
    out = tmp_path / "out"
    result = run_predict(capsys, "--ckpt", checkpoint, "--input", video, "--out", out)
    assert result.rc == 0, result.describe()
    masks = sorted((out / "masks").iterdir())
    assert [m.name for m in masks] == [f"clip_{i:06d}.png" for i in range(frames)]
    for m in masks:
        check_mask(m, h, w)
    overlay = cv2.VideoCapture(str(out / "clip_overlay.avi"))
    assert int(overlay.get(cv2.CAP_PROP_FRAME_COUNT)) == frames
    overlay.release()


@pytest.mark.parametrize("make_input, needle", [
    (lambda d: d / "missing.jpg", "no such file"),
    (lambda d: (d / "clip.mp4").write_bytes(b"not a video at all") and d / "clip.mp4", "neither an image"),
    (lambda d: (d / "empty").mkdir() or d / "empty", "no images"),
])
def test_bad_input_is_one_clear_line(tmp_path, capsys, checkpoint, make_input, needle):
    bad = make_input(tmp_path)
    result = run_predict(capsys, "--ckpt", checkpoint, "--input", bad, "--out", tmp_path / "out")
    assert_one_line_error(result, "--input", needle)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_test_only_saves_the_validation_predictions(tmp_path, tiny_dataset, checkpoint):
    """A one-epoch run, then --test_only --save_predictions with its checkpoint."""
    from tests.helpers import TINY_VAL, TINY_SIZE, ckpt_name
    work = tmp_path / "run"
    trained = run_train(*TINY_RUN, "--dataset_path", tiny_dataset, "--epoch", "1", "--work_dir", work)
    assert trained.rc == 0, trained.describe()
    saved = tmp_path / "saved"
    result = run_train(*TINY_RUN, "--dataset_path", tiny_dataset, "--work_dir", tmp_path / "eval", "--test_only", "True",
                       "--ckpt", work / ckpt_name("best"), "--save_predictions", saved)
    assert result.rc == 0, result.describe()
    masks = sorted((saved / "masks").glob("*.png"))
    assert len(masks) == TINY_VAL and len(list((saved / "overlays").glob("*.jpg"))) == TINY_VAL
    for m in masks:
        mask = Image.open(m)
        assert mask.mode == "P" and mask.size == (TINY_SIZE[1], TINY_SIZE[0])


def test_help_shows_an_example():
    import subprocess
    out = subprocess.run([sys.executable, REPO / "tools" / "predict.py", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "python tools/predict.py --ckpt" in out.stdout


def test_save_predictions_without_test_only_is_refused(tmp_path):
    from types import SimpleNamespace
    from segzoo.engine.config import parse_train_args
    from segzoo.engine.outputs import RunOutputs
    from segzoo.runtime.errors import UserError
    args = parse_train_args(["--device", "cpu", "--dataset", "demo", "--save_predictions", str(tmp_path / "p")])
    with pytest.raises(UserError, match="--save_predictions .* --test_only True"):
        RunOutputs(args, tmp_path / "run", SimpleNamespace(is_main=True))
    assert not (tmp_path / "p").exists() and not (tmp_path / "run").exists()
