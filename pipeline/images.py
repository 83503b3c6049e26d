"""Opening and verifying image files before anything trains on them, and reading their headers.

``inspect_image`` decodes a whole file with Pillow (the split stage's check); ``read_header`` reads
only the few bytes that give the format, the size and the EXIF orientation, which the tf.data input
pipeline needs to plan each file's decoding before it starts.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from pipeline import progress

# The formats the tf.data input pipeline decodes (GIF: first frame).
SUPPORTED_FORMATS = ("JPEG", "PNG", "BMP", "GIF")
_EXIF_ORIENTATION = 0x0112
_HEADER_BYTES = 1 << 16  # JPEG metadata (EXIF) sits before the frame header; 64 KiB covers nearly every camera
# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic), which carry the size.
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


@dataclass(frozen=True)
class Header:
    """What an image file's header says: format, stored size and EXIF orientation (1 = upright)."""

    format: str
    width: int
    height: int
    orientation: int = 1


def inspect_image(path: Path, max_pixels: int) -> tuple[str, str | None]:
    """Hash a file and check that it is a complete, decodable image of a supported format.

    Args:
        path: the file.
        max_pixels: images with more pixels are refused (decompression-bomb guard).

    Returns:
        ``(sha256, reason)``, where reason is None for a good image and otherwise says why the
        file cannot be used.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        return "", f"unreadable file: {error.strerror or error}"
    digest = hashlib.sha256(data).hexdigest()
    if not data:
        return digest, "empty file (0 bytes)"
    return digest, _decode_problem(io.BytesIO(data), max_pixels)


def inspect_images(paths: list[Path], max_pixels: int) -> list[tuple[str, str | None]]:
    """``inspect_image`` for many files, in parallel threads (decoding releases the GIL)."""
    # Our own size check reports large images; Pillow's warning would only repeat it, and its
    # hard limit (twice MAX_IMAGE_PIXELS) must not be lower than ours.
    Image.MAX_IMAGE_PIXELS = max(max_pixels, Image.MAX_IMAGE_PIXELS or 0)
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(lambda p: inspect_image(p, max_pixels), paths)
        return list(progress.bar(results, total=len(paths), desc="verify images", unit="img"))


def _decode_problem(content: io.BytesIO, max_pixels: int) -> str | None:
    """Decode the bytes already read for hashing, so every file is read from disk once."""
    try:
        with Image.open(content) as image:
            if image.format not in SUPPORTED_FORMATS:
                return f"unsupported format {image.format} (supported: {', '.join(SUPPORTED_FORMATS)})"
            width, height = image.size
            if width * height > max_pixels:
                return f"too large: {width}x{height} pixels exceeds split.max_image_pixels ({max_pixels})"
            image.load()
    except Image.DecompressionBombError as error:
        return f"too large (decompression-bomb guard): {error}"
    except UnidentifiedImageError:
        return "not an image (content not recognised)"
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        return f"corrupt or truncated image: {error}"
    return None


def read_header(path: Path) -> Header:
    """Format, size and EXIF orientation from the first bytes of a file, without decoding pixels.

    JPEG, PNG, GIF and BMP headers are parsed directly (tens of microseconds a file); anything
    unusual falls back to Pillow, which reads the header lazily too. Orientation is read from JPEG
    EXIF only, the format cameras write it into.

    Args:
        path: an image file.

    Returns:
        The header.

    Raises:
        OSError: the file cannot be read or is not an image Pillow recognises.
    """
    with open(path, "rb") as handle:
        head = handle.read(_HEADER_BYTES)
    parsed = _parse_header(head)
    if parsed is not None:
        return parsed
    with Image.open(path) as image:
        orientation = image.getexif().get(_EXIF_ORIENTATION, 1) if image.format == "JPEG" else 1
        return Header(image.format or "", image.width, image.height, _valid_orientation(orientation))


def _parse_header(head: bytes) -> Header | None:
    """The header of a JPEG, PNG, GIF or BMP file from its first bytes; None when not sure."""
    try:
        if head[:2] == b"\xff\xd8":
            return _parse_jpeg(head)
        if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
            width, height = struct.unpack(">II", head[16:24])
            return Header("PNG", width, height)
        if head[:6] in (b"GIF87a", b"GIF89a"):
            width, height = struct.unpack("<HH", head[6:10])
            return Header("GIF", width, height)
        if head[:2] == b"BM" and struct.unpack("<I", head[14:18])[0] >= 40:
            width, height = struct.unpack("<ii", head[18:26])
            return Header("BMP", abs(width), abs(height))  # a negative height means rows stored top-down
    except struct.error:
        return None
    return None


def _parse_jpeg(head: bytes) -> Header | None:
    """Walk the JPEG segments up to the frame header: size from SOFn, orientation from APP1 EXIF."""
    orientation, at = 1, 2
    while at + 4 <= len(head):
        if head[at] != 0xFF:
            return None
        marker = head[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        length = struct.unpack(">H", head[at + 2 : at + 4])[0]
        segment = head[at + 4 : at + 2 + length]
        if marker == 0xE1 and segment[:6] == b"Exif\x00\x00":
            orientation = _exif_orientation(segment[6:])
        elif marker in _JPEG_SOF:
            if len(segment) < 5:
                return None
            height, width = struct.unpack(">HH", segment[1:5])
            return Header("JPEG", width, height, orientation) if width and height else None
        elif marker == 0xDA:  # start of scan before any frame header: not a valid file
            return None
        at += 2 + length
    return None  # the frame header lies beyond the bytes read: let Pillow look


def _exif_orientation(tiff: bytes) -> int:
    """The orientation tag of a TIFF-structured EXIF block's first IFD (1 when absent or malformed)."""
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None or len(tiff) < 8:
        return 1
    ifd = struct.unpack(order + "I", tiff[4:8])[0]
    if ifd + 2 > len(tiff):
        return 1
    (count,) = struct.unpack(order + "H", tiff[ifd : ifd + 2])
    for entry in range(ifd + 2, min(ifd + 2 + 12 * count, len(tiff) - 11), 12):
        tag, kind = struct.unpack(order + "HH", tiff[entry : entry + 4])
        if tag == _EXIF_ORIENTATION and kind == 3:  # SHORT
            return _valid_orientation(struct.unpack(order + "H", tiff[entry + 8 : entry + 10])[0])
    return 1


def _valid_orientation(value: object) -> int:
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def load_thumbnail(path: Path, size: int) -> "np.ndarray":
    """An image upright (EXIF orientation applied), as RGB, shrunk to fit ``size`` x ``size`` (for galleries)."""
    import numpy as np
    from PIL import ImageOps

    with Image.open(path) as image:
        upright = ImageOps.exif_transpose(image).convert("RGB")
        upright.thumbnail((size, size), Image.Resampling.LANCZOS)
        return np.asarray(upright)
