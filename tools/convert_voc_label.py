"""Convert VOC label PNGs (palette or RGB) to single-channel 8-bit class-id PNGs.

    python tools/convert_voc_label.py --input_dir VOC2012/SegmentationClass \\
        --output_dir VOC2012/SegmentationClassGray [--palette colours.txt] [--workers N]

Palette PNGs keep their indices. RGB(A) PNGs are mapped colour -> class id through the
VOC colour map (or ``--palette``: a text file with one "R G B" line per class id, first
line = class 0); colours not in the map become 255 (ignore) and are counted per file.
8-bit grey PNGs are already class ids and are copied as they are. Files that cannot be
converted are reported and counted; the others are still converted, and the exit
status is 1 if any failed. VOCSegmentation prefers SegmentationClassGray/ when present.
"""
import argparse
import os
import sys
from multiprocessing import Pool
from pathlib import Path
from typing import List, NamedTuple, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from segzoo.datasets.classes import IGNORE_INDEX, VOC_PALETTE  # noqa: E402
from segzoo.datasets.image_io import (PNG_GRAY, PNG_PALETTE, PNG_RGB, PNG_RGBA, decode_palette_indices,  # noqa: E402
                               decode_rgb, png_header, read_bytes, read_label, write_gray_png)
from segzoo.runtime.errors import UserError, exit_with  # noqa: E402

EXIT_SOME_FAILED = 1


class FileResult(NamedTuple):
    name: str
    kind: str = ""            # "palette", "rgb" or "gray"; "" when it failed
    unknown_pixels: int = 0   # RGB pixels whose colour is not in the colour map
    error: str = ""


class Summary(NamedTuple):
    results: List[FileResult]

    @property
    def failed(self) -> List[FileResult]:
        return [r for r in self.results if r.error]

    @property
    def converted(self) -> List[FileResult]:
        return [r for r in self.results if not r.error]


class ColourMap:
    """RGB colour -> class id for whole images at once: colours packed to 24-bit ints and
    looked up with a binary search in the sorted palette (no 16M-entry table)."""

    def __init__(self, palette: np.ndarray):
        palette = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
        if len(palette) > IGNORE_INDEX + 1:
            raise UserError(f"a palette has at most {IGNORE_INDEX + 1} colours, got {len(palette)}")
        codes = self._pack(palette)
        # np.unique keeps the first class id of a repeated colour.
        self.codes, first = np.unique(codes, return_index=True)
        self.class_ids = first.astype(np.uint8)

    @staticmethod
    def _pack(rgb: np.ndarray) -> np.ndarray:
        rgb = rgb.astype(np.uint32)
        return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]

    def __call__(self, image_rgb: np.ndarray):
        """(H, W, 3) uint8 RGB -> ((H, W) uint8 class ids, number of unknown pixels)."""
        codes = self._pack(image_rgb)
        slot = np.minimum(np.searchsorted(self.codes, codes), len(self.codes) - 1)
        known = self.codes[slot] == codes
        label = np.where(known, self.class_ids[slot], np.uint8(IGNORE_INDEX)).astype(np.uint8)
        return label, int(known.size - np.count_nonzero(known))


def read_palette_file(path: Path) -> np.ndarray:
    """A text palette, one "R G B" (or "R,G,B") line per class id -> (N, 3) uint8."""
    try:
        lines = [ln.split("#")[0].replace(",", " ").split() for ln in Path(path).read_text().splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read --palette {path}: {e}") from None
    rows = [ln for ln in lines if ln]
    try:
        palette = np.array([[int(v) for v in row] for row in rows])
    except ValueError:
        palette = None
    if palette is None or palette.ndim != 2 or palette.shape[1] != 3 or len(palette) == 0 \
            or palette.min() < 0 or palette.max() > 255:
        raise UserError(f"--palette {path} must hold one 'R G B' line (0..255 each) per class id")
    return palette.astype(np.uint8)


def convert_label_file(src: Path, dst: Path, colour_map: ColourMap) -> FileResult:
    """Convert one label PNG; errors become FileResult.error, never exceptions."""
    src, dst = Path(src), Path(dst)
    try:
        data = read_bytes(src)
        header = png_header(data, src)
        unknown = 0
        if header.color_type == PNG_PALETTE:
            kind, label = "palette", decode_palette_indices(data, src)
        elif header.color_type in (PNG_RGB, PNG_RGBA):
            kind = "rgb"
            label, unknown = colour_map(decode_rgb(data, src))
        elif header.color_type == PNG_GRAY:
            kind, label = "gray", read_label(src)  # validates the bit depth too
        else:
            raise UserError(f"{src} has PNG colour type {header.color_type}; expected palette, "
                            f"RGB or 8-bit grey")
        write_gray_png(dst, label)
        return FileResult(src.name, kind, unknown)
    except UserError as e:
        return FileResult(src.name, error=str(e))


def _convert_one(job):
    return convert_label_file(*job)


def convert_dir(input_dir: Path, output_dir: Path, palette: Optional[np.ndarray] = None,
                workers: Optional[int] = None) -> Summary:
    """Convert every *.png in ``input_dir`` into ``output_dir`` (same file names).

    Args:
        palette: (N, 3) uint8 RGB colour of each class id for RGB labels; VOC's by default.
        workers: processes to use (default: all cores); 1 converts in this process.
    """
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if not input_dir.is_dir():
        raise UserError(f"--input_dir {input_dir} does not exist or is not a folder")
    if output_dir.resolve() == input_dir.resolve():
        raise UserError(f"--output_dir {output_dir} is the input folder; converted labels would "
                        f"overwrite the originals, choose another folder (e.g. SegmentationClassGray)")
    sources = sorted(p for p in input_dir.iterdir() if p.suffix.lower() == ".png" and p.is_file())
    if not sources:
        raise UserError(f"--input_dir {input_dir} holds no .png files")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create --output_dir {output_dir}: {e.strerror or e}") from None
    colour_map = ColourMap(VOC_PALETTE if palette is None else palette)
    jobs = [(src, output_dir / src.name, colour_map) for src in sources]
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    if workers == 1:
        return Summary([_convert_one(job) for job in jobs])
    with Pool(workers) as pool:
        chunk = max(1, len(jobs) // (workers * 8))
        return Summary(pool.map(_convert_one, jobs, chunksize=chunk))


def format_summary(summary: Summary, output_dir: Path) -> str:
    lines = []
    for r in summary.results:
        if r.error:
            lines.append(f"FAILED {r.error}")
        elif r.unknown_pixels:
            lines.append(f"{r.name}: {r.unknown_pixels} pixels with colours not in the colour map "
                         f"set to {IGNORE_INDEX}")
    kinds = {k: sum(r.kind == k for r in summary.converted) for k in ("palette", "rgb", "gray")}
    with_unknown = [r for r in summary.converted if r.unknown_pixels]
    lines.append(
        f"converted {len(summary.converted)} of {len(summary.results)} files into {output_dir} "
        f"({kinds['palette']} palette, {kinds['rgb']} RGB, {kinds['gray']} grey); "
        f"{len(summary.failed)} failed; {sum(r.unknown_pixels for r in with_unknown)} unknown-colour "
        f"pixels in {len(with_unknown)} files")
    return "\n".join(lines)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input_dir", required=True, type=Path, help="folder of label PNGs")
    parser.add_argument("--output_dir", required=True, type=Path,
                        help="folder for the class-id PNGs (not the input folder)")
    parser.add_argument("--palette", type=Path, default=None,
                        help="text file, one 'R G B' line per class id (default: VOC colour map)")
    parser.add_argument("--workers", type=int, default=os.cpu_count(),
                        help="processes (default: all cores)")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        if args.workers is not None and args.workers < 1:
            raise UserError(f"--workers must be >= 1, got {args.workers}")
        palette = read_palette_file(args.palette) if args.palette else None
        summary = convert_dir(args.input_dir, args.output_dir, palette, args.workers)
    except UserError as e:
        exit_with(e)
    print(format_summary(summary, args.output_dir))
    return EXIT_SOME_FAILED if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
