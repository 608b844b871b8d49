"""Reading images and label PNGs with OpenCV, with every failure turned into a one-line
UserError that names the file.

Palette ('P' mode) PNGs: OpenCV always expands the palette to colours (``IMREAD_UNCHANGED``
returns an (H, W, 3) BGR array; checked with opencv 4.x and 5.0), so the class index would
be lost. Instead of a second imaging dependency or a pure-Python PNG decoder (unfiltering
is sequential per row, far too slow for a data loader), we hand OpenCV the same PNG with
its PLTE chunk swapped for the identity grey ramp (entry i = (i, i, i)) and decode it as
grey: every pixel then decodes to its palette index. The compressed image data is passed
through untouched (original CRCs included, so libpng still detects corruption). The
tests check this for all 256 indices and for 1/2/4/8-bit palettes.
"""
import struct
import zlib
from pathlib import Path
from typing import NamedTuple, Union

import cv2
import numpy as np

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


def _png_chunks(data: bytes, path: PathLike):
    """Yield (type, start, end) of each chunk, where data[start:end] is the whole chunk
    (length, type, payload, CRC). UserError if the chunk structure is cut short."""
    pos = len(PNG_SIGNATURE)
    while pos < len(data):
        if pos + 12 > len(data):
            break
        (length,) = struct.unpack_from(">I", data, pos)
        end = pos + 12 + length
        if end > len(data):
            break
        chunk_type = data[pos + 4:pos + 8]
        yield chunk_type, pos, end
        if chunk_type == b"IEND":
            return
        pos = end
    raise UserError(f"{path} is truncated or corrupt (PNG chunks end before IEND); "
                    "re-create or re-download this file")


def _chunk(chunk_type: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(chunk_type + payload)
    return struct.pack(">I", len(payload)) + chunk_type + payload + struct.pack(">I", crc)


def _decode(data: bytes, flags: int, path: PathLike, what: str) -> np.ndarray:
    array = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    if array is None:
        raise UserError(f"{path} is not a readable {what} (corrupt, truncated or unsupported "
                        "format); re-create or re-download this file")
    return array


def decode_palette_indices(data: bytes, path: PathLike) -> np.ndarray:
    """Palette PNG bytes -> (H, W) uint8 array of palette indices (see module docstring)."""
    parts = [PNG_SIGNATURE]
    for chunk_type, start, end in _png_chunks(data, path):
        if chunk_type == b"PLTE":
            num_entries = (end - start - 12) // 3
            grey_ramp = np.repeat(np.arange(num_entries, dtype=np.uint8), 3).tobytes()
            parts.append(_chunk(b"PLTE", grey_ramp))
        elif chunk_type in (b"IHDR", b"IDAT", b"IEND"):
            parts.append(data[start:end])
        # Ancillary chunks are dropped: tRNS would add an alpha channel and gAMA/iCCP
        # could make the decoder colour-correct the grey ramp.
    return _decode(b"".join(parts), cv2.IMREAD_GRAYSCALE, path, "palette PNG")


def decode_rgb(data: bytes, path: PathLike) -> np.ndarray:
    """Image bytes (any format OpenCV reads) -> (H, W, 3) uint8 RGB; alpha is dropped,
    grey images are replicated to three channels."""
    if _IMREAD_RGB is not None:
        return _decode(data, _IMREAD_RGB, path, "image")
    image = _decode(data, cv2.IMREAD_COLOR, path, "image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB, dst=image)


def _jpeg_is_truncated(data: bytes) -> bool:
    # Older OpenCV builds decode a cut-off JPEG with a warning and grey fill instead of
    # failing. In entropy-coded data every 0xFF byte is stuffed, so the last start-of-scan
    # marker is real and a complete file has the end-of-image marker after it.
    return data.startswith(JPEG_SOI) and data.rfind(JPEG_EOI) < data.rfind(JPEG_SOS)


def read_image(path: PathLike) -> np.ndarray:
    """An image file -> (H, W, 3) uint8 RGB, C-contiguous."""
    data = read_bytes(path)
    if _jpeg_is_truncated(data):
        raise UserError(f"{path} is a truncated JPEG (no end-of-image marker); "
                        "re-create or re-download this file")
    return decode_rgb(data, path)


def read_label(path: PathLike) -> np.ndarray:
    """A class-id label PNG -> (H, W) uint8, C-contiguous. Palette PNGs give their
    indices, 8-bit grey PNGs their values. RGB labels are refused: their colours must be
    mapped to class ids first with tools/convert_voc_label.py."""
    data = read_bytes(path)
    header = png_header(data, path)
    if header.color_type == PNG_PALETTE:
        return decode_palette_indices(data, path)
    if header.color_type == PNG_GRAY and header.bit_depth == 8:
        return _decode(data, cv2.IMREAD_UNCHANGED, path, "grey PNG")
    if header.color_type in (PNG_RGB, PNG_RGBA):
        label_dir = Path(path).parent
        raise UserError(
            f"{path} is an RGB label, but class ids are expected (palette or 8-bit grey PNG); "
            f"run `python tools/convert_voc_label.py --input_dir {label_dir} "
            f"--output_dir {label_dir.parent / 'SegmentationClassGray'}`")
    raise UserError(f"{path} is a PNG with colour type {header.color_type} and bit depth "
                    f"{header.bit_depth}; labels must be palette or 8-bit grey PNGs of class ids")


def write_palette_png(path: PathLike, label: np.ndarray, palette: np.ndarray) -> None:
    """Write an (H, W) uint8 class-id array as an 8-bit palette PNG (what VOC ships);
    palette is (N <= 256, 3) uint8 RGB. OpenCV cannot write palette PNGs, hence this
    minimal encoder: IHDR, PLTE, one IDAT with filter type 0 on every row, IEND."""
    label = np.ascontiguousarray(label, dtype=np.uint8)
    if label.ndim != 2:
        raise ValueError(f"label must be (H, W), got shape {label.shape}")
    palette = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    height, width = label.shape
    rows = np.zeros((height, width + 1), dtype=np.uint8)  # leading 0 = no filter
    rows[:, 1:] = label
    ihdr = struct.pack(">IIBBBBB", width, height, 8, PNG_PALETTE, 0, 0, 0)
    png = b"".join((PNG_SIGNATURE, _chunk(b"IHDR", ihdr), _chunk(b"PLTE", palette.tobytes()),
                    _chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)), _chunk(b"IEND", b"")))
    Path(path).write_bytes(png)


def write_gray_png(path: PathLike, label: np.ndarray) -> None:
    """Write an (H, W) uint8 array as a single-channel 8-bit PNG."""
    if label.ndim != 2 or label.dtype != np.uint8:
        raise ValueError(f"label must be (H, W) uint8, got {label.dtype} {label.shape}")
    if not cv2.imwrite(str(path), label):
        raise UserError(f"cannot write {path}; check that its folder exists and is writable")
