"""tools/convert_voc_label.py: palette / RGB / grey label PNGs -> grey class-id PNGs."""
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from segzoo.datasets.classes import VOC_PALETTE
from segzoo.datasets.image_io import write_palette_png
from segzoo.runtime.errors import UserError
from tools.convert_voc_label import ColourMap, convert_dir, convert_label_file, main, read_palette_file

REPO = Path(__file__).resolve().parents[1]


def write_rgb_png(path: Path, rgb: np.ndarray) -> None:
    assert cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1]))


def read_gray(path: Path) -> np.ndarray:
    out = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert out is not None and out.ndim == 2 and out.dtype == np.uint8, path
    return out


def random_ids(seed: int, shape=(9, 11)) -> np.ndarray:
    ids = np.random.default_rng(seed).integers(0, 21, shape).astype(np.uint8)
    ids[0, :3] = 255
    return ids


def test_palette_file_keeps_indices(tmp_path):
    ids = random_ids(0)
    write_palette_png(tmp_path / "a.png", ids, VOC_PALETTE)
    result = convert_label_file(tmp_path / "a.png", tmp_path / "out.png", ColourMap(VOC_PALETTE))
    assert result.kind == "palette" and not result.error and result.unknown_pixels == 0
    np.testing.assert_array_equal(read_gray(tmp_path / "out.png"), ids)


def test_rgb_file_maps_known_colours_and_counts_unknown(tmp_path):
    ids = random_ids(1)  # includes 255 = void, whose VOC colour is cream
    rgb = VOC_PALETTE[ids].copy()
    rgb[2, 2] = (1, 2, 3)
    rgb[3, 3] = (250, 0, 1)
    write_rgb_png(tmp_path / "a.png", rgb)
    result = convert_label_file(tmp_path / "a.png", tmp_path / "out.png", ColourMap(VOC_PALETTE))
    assert result.kind == "rgb" and result.unknown_pixels == 2
    expected = ids.copy()
    expected[2, 2] = expected[3, 3] = 255
    np.testing.assert_array_equal(read_gray(tmp_path / "out.png"), expected)


def test_rgba_file_ignores_alpha(tmp_path):
    ids = random_ids(2)
    rgba = np.concatenate([VOC_PALETTE[ids][..., ::-1], np.full(ids.shape + (1,), 77, np.uint8)], axis=2)
    cv2.imwrite(str(tmp_path / "a.png"), rgba)
    result = convert_label_file(tmp_path / "a.png", tmp_path / "out.png", ColourMap(VOC_PALETTE))
    assert result.kind == "rgb" and result.unknown_pixels == 0
    np.testing.assert_array_equal(read_gray(tmp_path / "out.png"), ids)


def test_gray_file_is_copied(tmp_path):
    ids = random_ids(3)
    cv2.imwrite(str(tmp_path / "a.png"), ids)
    result = convert_label_file(tmp_path / "a.png", tmp_path / "out.png", ColourMap(VOC_PALETTE))
    assert result.kind == "gray"
    np.testing.assert_array_equal(read_gray(tmp_path / "out.png"), ids)


def test_custom_palette_file(tmp_path):
    (tmp_path / "palette.txt").write_text("# class colours\n0 0 0\n255, 0, 0\n0 255 0  # grass\n")
    palette = read_palette_file(tmp_path / "palette.txt")
    assert palette.tolist() == [[0, 0, 0], [255, 0, 0], [0, 255, 0]]
    rgb = np.array([[[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]]], np.uint8)
    write_rgb_png(tmp_path / "a.png", rgb)
    result = convert_label_file(tmp_path / "a.png", tmp_path / "out.png", ColourMap(palette))
    assert result.unknown_pixels == 1
    np.testing.assert_array_equal(read_gray(tmp_path / "out.png"), [[0, 1, 2, 255]])


def test_colour_map_first_class_wins_for_repeated_colour():
    palette = np.array([[5, 5, 5], [9, 9, 9], [5, 5, 5]], np.uint8)
    label, unknown = ColourMap(palette)(np.array([[[5, 5, 5], [9, 9, 9]]], np.uint8))
    assert label.tolist() == [[0, 1]] and unknown == 0


def test_bad_palette_file(tmp_path):
    (tmp_path / "p.txt").write_text("1 2\n")
    with pytest.raises(UserError, match="--palette"):
        read_palette_file(tmp_path / "p.txt")
    (tmp_path / "p.txt").write_text("1 2 300\n")
    with pytest.raises(UserError, match="--palette"):
        read_palette_file(tmp_path / "p.txt")


def make_batch(folder: Path, count: int = 6) -> dict:
    """Palette and RGB labels plus one corrupt file; returns the expected ids per name."""
    folder.mkdir()
    expected = {}
    for i in range(count):
        ids = random_ids(10 + i)
        if i % 2:
            write_palette_png(folder / f"{i}.png", ids, VOC_PALETTE)
        else:
            write_rgb_png(folder / f"{i}.png", VOC_PALETTE[ids])
        expected[f"{i}.png"] = ids
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (folder / "notes.txt").write_text("not a label")
    return expected


@pytest.mark.parametrize("workers", [1, 2])
def test_batch_with_a_corrupt_file(tmp_path, workers):
    expected = make_batch(tmp_path / "in")
    summary = convert_dir(tmp_path / "in", tmp_path / "out", workers=workers)
    assert [r.name for r in summary.failed] == ["broken.png"]
    assert "broken.png" in summary.failed[0].error
    assert len(summary.converted) == len(expected)
    for name, ids in expected.items():
        np.testing.assert_array_equal(read_gray(tmp_path / "out" / name), ids)
    assert not (tmp_path / "out" / "broken.png").exists()


def test_cli_exit_status_and_summary(tmp_path, capsys):
    make_batch(tmp_path / "in")
    assert main(["--input_dir", str(tmp_path / "in"), "--output_dir", str(tmp_path / "out"),
                 "--workers", "2"]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "broken.png" in out and "converted 6 of 7" in out and "1 failed" in out
    (tmp_path / "in" / "broken.png").unlink()
    assert main(["--input_dir", str(tmp_path / "in"), "--output_dir", str(tmp_path / "out")]) == 0


def test_cli_reports_unknown_colours(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    rgb = VOC_PALETTE[random_ids(4)].copy()
    rgb[1, 1] = rgb[1, 2] = (3, 3, 3)
    write_rgb_png(tmp_path / "in" / "x.png", rgb)
    assert main(["--input_dir", str(tmp_path / "in"), "--output_dir", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "x.png: 2 pixels" in out and "2 unknown-colour pixels in 1 files" in out


@pytest.mark.parametrize("make_args", [
    lambda t: ["--input_dir", str(t / "missing"), "--output_dir", str(t / "out")],
    lambda t: ["--input_dir", str(t / "in"), "--output_dir", str(t / "in")],
    lambda t: ["--input_dir", str(t / "in"), "--output_dir", str(t / "out"), "--workers", "0"],
    lambda t: ["--input_dir", str(t / "empty"), "--output_dir", str(t / "out")],
])
def test_cli_user_errors_exit_2_with_one_line(tmp_path, capsys, make_args):
    make_batch(tmp_path / "in")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as info:
        main(make_args(tmp_path))
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "--" in err


def test_runs_as_a_script(tmp_path):
    expected = make_batch(tmp_path / "in", count=2)
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "convert_voc_label.py"),
                           "--input_dir", str(tmp_path / "in"), "--output_dir", str(tmp_path / "out")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "converted 2 of 3" in proc.stdout
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(expected)
