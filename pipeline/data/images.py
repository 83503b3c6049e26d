"""Opening and verifying image files before anything trains on them, and reading their headers.

``inspect_image`` (the split stage's check) reads a file's header with Pillow and decodes the whole
file with the decoder the tf.data input pipeline uses for it; ``read_header`` reads only the few
bytes that give the format, the size and the EXIF orientation, which the input pipeline needs to plan
each file's decoding before it starts; ``content_problem`` tells from a file's first bytes whether it
is an image at all (the download stage copies nothing else).

JPEG, PNG, BMP and GIF are decoded by TensorFlow's own ops; WebP, TIFF and AVIF by Pillow, through
``decode_with_pillow`` alone, wherever pixels are needed (extract, finetune, evaluate, predict,
serving, the split's check), so a served model sees what training saw.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import struct
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from pipeline.core import console, progress

# The formats the tf.data input pipeline decodes: with TensorFlow's ops (GIF: the first frame), and
# with Pillow (``decode_with_pillow``: the first page or frame).
TF_FORMATS = ("JPEG", "PNG", "BMP", "GIF")
PILLOW_FORMATS = ("WEBP", "TIFF", "AVIF")
SUPPORTED_FORMATS = TF_FORMATS + PILLOW_FORMATS
# File name endings of the supported formats (what a folder given to ``pipeline.serving.predict`` is searched for).
SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".avif")
# Pillow's name for a JPEG that carries a second picture (phone cameras write them): a JPEG to every
# decoder, which reads the first picture.
_FORMAT_ALIASES = {"MPO": "JPEG"}
# Where an EXIF orientation is read and applied. TIFF carries one too, but Pillow's TIFF decoder turns
# the image upright itself (and gives the upright size), so TIFF files count as upright here.
_ORIENTED_FORMATS = ("JPEG", "WEBP")
# ISO base media brands of HEIF/HEIC photos (iPhones write them), which no decoder here reads.
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"}
_SNIFF_BYTES = 4096
_ABORTED = re.compile(r"^W\d{4} .*Local rendezvous is aborting")  # TensorFlow's line for a refused file
# The turn that makes an image with an EXIF orientation upright (Pillow's ImageOps.exif_transpose).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_EXIF_ORIENTATION = 0x0112
_HEADER_BYTES = 1 << 16  # JPEG metadata (EXIF) sits before the frame header; 64 KiB covers nearly every camera
_DECODE_BATCH = 256  # files per tf.data element in the split's decoding check
_CORRUPT = "corrupt or truncated image: "
# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic), which carry the size.
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


@dataclass(frozen=True)
class Header:
    """What an image file's header says: format, stored size and EXIF orientation (1 = upright)."""

    format: str
    width: int
    height: int
    orientation: int = 1


class UnsupportedPixels(ValueError):
    """An image of a supported format whose samples are of a type no decoder here turns into 8-bit RGB."""


def decode_with_pillow(path: str | Path) -> np.ndarray:
    """The pixels of a WebP, TIFF or AVIF file (its first page or frame) as stored, before any EXIF turn.

    Returns:
        ``uint8`` RGB, ``[height, width, 3]`` (see ``to_rgb8``).

    Raises:
        UnsupportedPixels: 32-bit or floating-point samples.
        OSError, SyntaxError, ValueError, EOFError: the file is damaged (Pillow's own errors).
    """
    with Image.open(path) as image:
        return to_rgb8(image)


def to_rgb8(image: Image.Image) -> np.ndarray:
    """Any Pillow image as 8-bit RGB, the way TensorFlow's decoders treat PNG and JPEG.

    Alpha is dropped (the colour under it is kept, not blended); 16-bit samples keep their high byte,
    as libpng does in TensorFlow's PNG decoder and Pillow does for 16-bit RGB TIFF, so a picture gives
    the same pixels as a 16-bit PNG, a 16-bit TIFF or an 8-bit file; grayscale is repeated into three
    channels; palette, CMYK and bilevel images are converted by Pillow.

    Raises:
        UnsupportedPixels: 32-bit integer or floating-point samples (a measurement, not a picture:
            which range is black and which white is not in the file).
    """
    if image.mode.startswith("I;16"):
        gray = (np.asarray(image).astype(np.uint16) >> 8).astype(np.uint8)
        return np.repeat(gray[..., np.newaxis], 3, axis=2)
    if image.mode in ("I", "F"):
        kind = "32-bit integer" if image.mode == "I" else "floating-point"
        raise UnsupportedPixels(f"unsupported pixel type: {kind} samples (supported: 8- and 16-bit images)")
    return np.asarray(image.convert("RGB"))


def content_problem(path: Path) -> str | None:
    """Why a file is not an image at all, judged by its content, not its name; None for an image.

    An image is anything Pillow recognises, or a HEIF/HEIC photo: formats the split stage then refuses
    with a message that names them, rather than files dropped as junk. Nothing is decoded.
    """
    try:
        with open(path, "rb") as handle:
            head = handle.read(_SNIFF_BYTES)
    except OSError as error:
        return f"unreadable file: {error.strerror or error}"
    if not head:
        return "empty file (0 bytes)"
    if _heif_brand(head):
        return None
    try:
        with Image.open(path):
            return None
    except Image.DecompressionBombError:
        return None  # an image, too large: the split stage says so
    except UnidentifiedImageError:
        return "not an image (content not recognised)"
    except (OSError, SyntaxError, ValueError, EOFError):
        return None  # recognised as an image but damaged: the split stage says how


def _heif_brand(head: bytes) -> bool:
    return head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS


def format_name(image: Image.Image) -> str:
    """The format of an opened image as the decoders see it (an MPO file is a JPEG)."""
    return _FORMAT_ALIASES.get(image.format or "", image.format or "")


def inspect_image(path: Path, max_pixels: int) -> tuple[str, str | None]:
    """Hash a file and check that it is a complete image of a supported format that extract can decode.

    Args:
        path: the file.
        max_pixels: images with more pixels are refused (decompression-bomb guard).

    Returns:
        ``(sha256, reason)``, where reason is None for a good image and otherwise says why the
        file cannot be used.
    """
    digest, image_format, problem = _check_header(path, max_pixels)
    return digest, problem or _decode_problem(path, image_format)


def inspect_images(paths: list[Path], max_pixels: int) -> list[tuple[str, str | None]]:
    """``inspect_image`` for many files: headers in parallel threads, then every file decoded in one
    parallel tf.data pass (an eager TensorFlow op per file would cost more than the whole check of a
    small image)."""
    # Our own size check reports large images; Pillow's warning would only repeat it, and its
    # hard limit (twice MAX_IMAGE_PIXELS) must not be lower than ours.
    Image.MAX_IMAGE_PIXELS = max(max_pixels, Image.MAX_IMAGE_PIXELS or 0)
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(lambda p: _check_header(p, max_pixels), paths)
        checked = list(progress.bar(results, total=len(paths), desc="verify images", unit="img"))
    good = [i for i, (_, _, problem) in enumerate(checked) if problem is None]
    candidates = [i for i in good if checked[i][1] in TF_FORMATS]
    refused = _refused_by_tf([paths[i] for i in candidates], [checked[i][1] == "JPEG" for i in candidates])
    with console.quiet_lines(_ABORTED):
        problems = {candidates[i]: _decode_problem(paths[candidates[i]], checked[candidates[i]][1]) for i in refused}
    by_pillow = [i for i in good if checked[i][1] in PILLOW_FORMATS]
    with ThreadPoolExecutor(max_workers=workers) as pool:  # Pillow's decoders let go of the GIL
        problems.update(zip(by_pillow, pool.map(lambda i: _pillow_problem(paths[i]), by_pillow), strict=True))
    return [(digest, problem or problems.get(i)) for i, (digest, _, problem) in enumerate(checked)]


def _check_header(path: Path, max_pixels: int) -> tuple[str, str | None, str | None]:
    """Hash a file and open it with Pillow, which reads the header: the format and the size, checked
    before any pixel is decoded.

    Returns:
        ``(sha256, format, reason)``: the format Pillow recognised (None when none), and why the
        file cannot be used (None when its header is good).
    """
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        return "", None, f"unreadable file: {error.strerror or error}"
    digest = hashlib.sha256(data).hexdigest()
    if not data:
        return digest, None, "empty file (0 bytes)"
    image_format = None
    supported = ", ".join(SUPPORTED_FORMATS)
    try:
        with Image.open(io.BytesIO(data)) as image:  # the bytes already read for hashing: one disk read
            image_format = format_name(image)
            if image_format not in SUPPORTED_FORMATS:
                return digest, image_format, f"unsupported format {image_format} (supported: {supported})"
            width, height = image.size
            if width * height > max_pixels:
                too_large = f"{width}x{height} pixels exceeds split.max_image_pixels ({max_pixels})"
                return digest, image_format, f"too large: {too_large}"
    except Image.DecompressionBombError as error:
        return digest, image_format, f"too large (decompression-bomb guard): {error}"
    except UnidentifiedImageError:
        if _heif_brand(data[:12]):
            heif = f"unsupported format HEIF/HEIC (supported: {supported}); convert it to JPEG, e.g. with heif-convert"
            return digest, "HEIF", heif
        return digest, image_format, "not an image (content not recognised)"
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        return digest, image_format, _CORRUPT + str(error)
    return digest, image_format, None


def _pillow_problem(path: Path) -> str | None:
    """Why ``decode_with_pillow`` cannot decode a file whose header is good, or None when it can."""
    try:
        decode_with_pillow(path)
    except UnsupportedPixels as error:
        return str(error)
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        return _CORRUPT + str(error)
    return None


def _decode_problem(path: Path, image_format: str | None) -> str | None:
    """Why the file's decoder refuses a file whose header is good, or None when it decodes it.

    The pixels are decoded by the ops extract decodes with (libpng, libjpeg), with the settings of
    ``inputs`` (JPEG at full scale): a file the split keeps must never stop extract. They are
    stricter than Pillow (a bad chunk checksum, a marker inside JPEG data), so Pillow, which
    decodes the analysis report's thumbnails, is not asked to decode every file too. The reason is
    Pillow's when Pillow fails too: it names the usual problems (truncated data, broken tables) best.
    WebP, TIFF and AVIF are decoded by Pillow in the input pipeline too (``decode_with_pillow``).
    """
    if image_format in PILLOW_FORMATS:
        return _pillow_problem(path)
    tf = _tensorflow()
    try:
        data = tf.io.read_file(str(path))
        if image_format == "JPEG":
            tf.io.decode_jpeg(data, channels=3)
        else:
            tf.io.decode_image(data, channels=3, expand_animations=False)
    except tf.errors.OpError as error:
        try:
            with Image.open(path) as image:
                image.load()
        except (OSError, SyntaxError, ValueError, EOFError) as pillow_error:
            return _CORRUPT + str(pillow_error)
        message = re.sub(r"\{\{.*?\}\}", "", error.message).split("[Op:")[0].strip()  # the op's own words
        return f"corrupt image (TensorFlow's decoder refuses it): {message}"
    return None


def _refused_by_tf(paths: list[Path], jpeg: list[bool]) -> set[int]:
    """Indices of the files the tf.io decoders refuse, decoded in parallel in a tf.data pipeline.

    Files go through in batches of ``_DECODE_BATCH`` (a tf.data element per file costs more than
    decoding a small image); a batch with a refused file fails whole, so its files go through again
    one by one.
    """
    if not paths:
        return set()
    failed = sorted(_undecoded(paths, jpeg, _DECODE_BATCH, "decode check"))
    if not failed:
        return set()
    again = _undecoded([paths[i] for i in failed], [jpeg[i] for i in failed], 1, "decode check, one by one")
    return {failed[i] for i in again}


def _undecoded(paths: list[Path], jpeg: list[bool], batch_size: int, desc: str) -> set[int]:
    """Indices of the files in batches that could not all be decoded."""
    tf = _tensorflow()

    def decode(file: tuple[Any, Any]) -> Any:
        path, is_jpeg = file
        data = tf.io.read_file(path)
        image = tf.cond(
            is_jpeg,
            lambda: tf.io.decode_jpeg(data, channels=3),
            lambda: tf.io.decode_image(data, channels=3, expand_animations=False),
        )
        return tf.shape(image)[0]  # an output that depends on the decoding, so it is not pruned

    def decode_batch(indices: Any, batch_paths: Any, batch_jpeg: Any) -> tuple[Any, Any]:
        return indices, tf.map_fn(decode, (batch_paths, batch_jpeg), fn_output_signature=tf.int32)

    dataset = tf.data.Dataset.from_tensor_slices((list(range(len(paths))), [str(p) for p in paths], jpeg))
    dataset = dataset.batch(batch_size).map(decode_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    decoded: set[int] = set()
    # Each refused file makes TensorFlow warn that its pipeline aborted; the refusal is the point here.
    with (
        console.quiet_lines(_ABORTED) as stream,
        progress.bar(total=len(paths), desc=desc, unit="img", file=stream) as bar,
    ):
        for indices, _ in dataset.ignore_errors().as_numpy_iterator():
            decoded.update(indices.tolist())
            bar.update(len(indices))
        bar.update(len(paths) - len(decoded))  # the files of failed batches
    return set(range(len(paths))) - decoded


def _tensorflow() -> Any:
    """TensorFlow, imported on first use: the rest of this module must stay quick to import."""
    import tensorflow as tf

    return tf


def read_header(path: Path) -> Header:
    """Format, size and EXIF orientation from the first bytes of a file, without decoding pixels.

    JPEG, PNG, GIF and BMP headers are parsed directly (tens of microseconds a file); anything
    else falls back to Pillow, which reads the header lazily too. The EXIF orientation is read from
    JPEG and WebP files (a TIFF's is applied by Pillow's decoder, which reports the upright size).

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
        image_format = format_name(image)
        orientation = image.getexif().get(_EXIF_ORIENTATION, 1) if image_format in _ORIENTED_FORMATS else 1
        return Header(image_format, image.width, image.height, _valid_orientation(orientation))


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


def load_thumbnail(path: Path, size: int) -> np.ndarray:
    """An image as the models see it, upright and in 8-bit RGB, shrunk to fit ``size`` x ``size`` (for galleries).

    The EXIF turn is applied where ``read_header`` finds one, as the input pipeline applies it.
    """
    orientation = read_header(path).orientation
    with Image.open(path) as image:
        pixels = Image.fromarray(to_rgb8(image))
    if orientation != 1:
        pixels = pixels.transpose(_UPRIGHT[orientation])
    pixels.thumbnail((size, size), Image.Resampling.LANCZOS)
    return np.asarray(pixels)
