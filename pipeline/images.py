"""Opening and verifying image files before anything trains on them."""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from pipeline import progress

# The formats the tf.data input pipeline decodes (GIF: first frame).
SUPPORTED_FORMATS = ("JPEG", "PNG", "BMP", "GIF")


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
