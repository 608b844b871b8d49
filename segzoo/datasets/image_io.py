"""Reading images and label PNGs, with every failure turned into a one-line UserError that
names the file.

Images: OpenCV (its JPEG decoder is the faster one), with the EXIF orientation tag ignored:
labels carry no such tag, so honouring it would rotate an image away from its label.
Labels: Pillow, which reads palette ('P') PNGs as their indices - the class ids - and 8- or
16-bit grey PNGs as their values (OpenCV expands palettes to colours, losing the ids).
"""
import io
import struct
from pathlib import Path
from typing import NamedTuple, Union

import cv2
import numpy as np
from PIL import Image

from segzoo.runtime.errors import UserError

PathLike = Union[str, Path]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SOI = b"\xff\xd8"
JPEG_SOS = b"\xff\xda"
JPEG_EOI = b"\xff\xd9"

# PNG colour types (PNG spec, IHDR).
PNG_GRAY, PNG_RGB, PNG_PALETTE, PNG_GRAY_ALPHA, PNG_RGBA = 0, 2, 3, 4, 6

# Decode straight to RGB where OpenCV can (>= 4.10); older versions decode BGR and swap.
_IMREAD_RGB = getattr(cv2, "IMREAD_COLOR_RGB", None)


class PngHeader(NamedTuple):
    width: int
    height: int
    bit_depth: int
    color_type: int


def read_bytes(path: PathLike) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None


def png_header(data: bytes, path: PathLike) -> PngHeader:
    """The IHDR fields of a PNG file's bytes; UserError if it is not a PNG."""
    # The signature is followed by the IHDR chunk: length (4), b"IHDR", then the fields.
    if len(data) < 33 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        raise UserError(f"{path} is not a PNG file (or is truncated); labels must be PNGs")
    width, height, bit_depth, color_type = struct.unpack_from(">IIBB", data, 16)
    return PngHeader(width, height, bit_depth, color_type)


def _open_png(data: bytes, path: PathLike) -> np.ndarray:
    """PNG bytes -> the array Pillow decodes (indices for palette PNGs); UserError if corrupt."""
    if data.rfind(b"IEND") < 0:  # Pillow decodes a file cut inside its last chunk without complaint
        raise UserError(f"{path} is truncated or corrupt (no IEND chunk); re-create or re-download this file")
    try:
        with Image.open(io.BytesIO(data)) as png:
            png.load()
            if png.mode in ("I;16", "I;16B", "I;16L", "I"):
                return np.array(png, dtype=np.int64)
            if png.mode == "1":
                return np.array(png.convert("L"))
            return np.array(png)  # a writable copy: torch.from_numpy warns on read-only arrays
    except (OSError, SyntaxError, ValueError) as e:
        what = "truncated or corrupt" if "truncated" in str(e).lower() or "broken" in str(e).lower() else "unreadable"
        raise UserError(f"{path} is a {what} PNG ({str(e).splitlines()[0][:80]}); "
                        "re-create or re-download this file") from None


def decode_palette_indices(data: bytes, path: PathLike) -> np.ndarray:
    """Palette PNG bytes -> (H, W) uint8 array of palette indices."""
    return np.ascontiguousarray(_open_png(data, path), dtype=np.uint8)


def _decode(data: bytes, flags: int, path: PathLike, what: str) -> np.ndarray:
    array = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    if array is None:
        raise UserError(f"{path} is not a readable {what} (corrupt, truncated or unsupported "
                        "format); re-create or re-download this file")
    return array


def decode_rgb(data: bytes, path: PathLike) -> np.ndarray:
    """Image bytes (any format OpenCV reads) -> (H, W, 3) uint8 RGB; alpha is dropped,
    grey images are replicated to three channels."""
    if _IMREAD_RGB is not None:
        return _decode(data, _IMREAD_RGB | cv2.IMREAD_IGNORE_ORIENTATION, path, "image")
    image = _decode(data, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION, path, "image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB, dst=image)


def _jpeg_is_truncated(data: bytes) -> bool:
    # Older OpenCV builds decode a cut-off JPEG with a warning and grey fill instead of
    # failing. In entropy-coded data every 0xFF byte is stuffed, so the last start-of-scan
    # marker is real and a complete file has the end-of-image marker after it.
    return data.startswith(JPEG_SOI) and data.rfind(JPEG_EOI) < data.rfind(JPEG_SOS)


def read_image(path: PathLike) -> np.ndarray:
    """An image file -> (H, W, 3) uint8 RGB, C-contiguous."""
    data = read_bytes(path)
    if not data:
        raise UserError(f"{path} is an empty file (0 bytes); re-create or re-download this image")
    if _jpeg_is_truncated(data):
        raise UserError(f"{path} is a truncated JPEG (no end-of-image marker); "
                        "re-create or re-download this file")
    return decode_rgb(data, path)


def read_label(path: PathLike) -> np.ndarray:
    """A class-id label PNG -> (H, W) uint8, C-contiguous. Palette PNGs give their indices,
    8-bit grey PNGs their values, 16-bit grey PNGs their values if all are below 256. RGB
    labels are refused: their colours must be mapped to class ids first with
    tools/convert_voc_label.py."""
    data = read_bytes(path)
    if not data:
        raise UserError(f"{path} is an empty file (0 bytes); re-create or re-download this label")
    header = png_header(data, path)
    if header.color_type in (PNG_RGB, PNG_RGBA):
        label_dir = Path(path).parent
        raise UserError(
            f"{path} is an RGB label, but class ids are expected (palette or grey PNG); "
            f"run `python tools/convert_voc_label.py --input_dir {label_dir} "
            f"--output_dir {label_dir.parent / 'SegmentationClassGray'}`")
    if header.color_type not in (PNG_PALETTE, PNG_GRAY):
        raise UserError(f"{path} is a PNG with colour type {header.color_type} and bit depth "
                        f"{header.bit_depth}; labels must be palette or grey PNGs of class ids")
    label = _open_png(data, path)
    if label.dtype != np.uint8:
        if label.size and label.max() > 255:
            raise UserError(f"{path} holds label value {int(label.max())} (a 16-bit PNG); class ids must be "
                            f"0..254 with 255 = ignore")
        label = label.astype(np.uint8)
    return np.ascontiguousarray(label)


def write_palette_png(path: PathLike, label: np.ndarray, palette: np.ndarray) -> None:
    """Write an (H, W) uint8 class-id array as an 8-bit palette PNG (what VOC ships);
    palette is (N <= 256, 3) uint8 RGB."""
    label = np.ascontiguousarray(label, dtype=np.uint8)
    if label.ndim != 2:
        raise ValueError(f"label must be (H, W), got shape {label.shape}")
    png = Image.frombytes("P", (label.shape[1], label.shape[0]), label.tobytes())  # raw indices, no quantising
    png.putpalette(np.asarray(palette, dtype=np.uint8).reshape(-1).tolist())
    try:
        png.save(path, format="PNG")
    except OSError as e:
        raise UserError(f"cannot write {path}: {e}") from None


def write_gray_png(path: PathLike, label: np.ndarray) -> None:
    """Write an (H, W) uint8 array as a single-channel 8-bit PNG."""
    if label.ndim != 2 or label.dtype != np.uint8:
        raise ValueError(f"label must be (H, W) uint8, got {label.dtype} {label.shape}")
    if not cv2.imwrite(str(path), label):
        raise UserError(f"cannot write {path}; check that its folder exists and is writable")
