"""Tiny data the tests make: images.

Plain files only, so ``conftest.py`` imports it without loading TensorFlow; the Keras-side samples (a feature set,
a model) are in ``keras_samples.py``.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def write_image(path: Path, seed: int | str, size: tuple[int, int] = (32, 32), fmt: str = "PNG") -> Path:
    """Write a small RGB image whose pixels are a deterministic function of ``seed``."""
    key = zlib.crc32(str(seed).encode("utf-8"))
    pixels = np.random.default_rng(key).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format=fmt)
    return path
