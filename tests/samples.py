"""Tiny data the tests make, and the small readers that check it: images, archives, folder trees.

Plain files only, so ``conftest.py`` imports it without loading TensorFlow; the Keras-side samples (a feature set,
a model) are in ``keras_samples.py``.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import uuid
import zipfile
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


def png_bytes(seed: str, tmp: Path) -> bytes:
    """The bytes of a small distinct PNG."""
    path = write_image(tmp / f"{uuid.uuid4().hex}.png", seed, size=(8, 8))
    data = path.read_bytes()
    path.unlink()
    return data


def make_zip(path: Path, members: dict[str, bytes]) -> Path:
    """A zip holding ``members`` under exactly the given names (absolute and ``..`` names kept)."""
    with zipfile.ZipFile(path, "w") as bundle:
        for name, data in members.items():
            bundle.writestr(zipfile.ZipInfo(name), data)
    return path


def make_tar(path: Path, members: list[tuple[str, bytes | str]], mode: str = "w:gz") -> Path:
    """A tar: ``(name, bytes)`` is a file, ``(name, "->target")`` a symlink, ``(name, "=>target")`` a hard link."""
    with tarfile.open(path, mode) as bundle:
        for name, content in members:
            info = tarfile.TarInfo(name)
            if isinstance(content, str) and content.startswith("->"):
                info.type, info.linkname = tarfile.SYMTYPE, content[2:]
                bundle.addfile(info)
            elif isinstance(content, str) and content.startswith("=>"):
                info.type, info.linkname = tarfile.LNKTYPE, content[2:]
                bundle.addfile(info)
            else:
                assert isinstance(content, bytes)
                info.size = len(content)
                bundle.addfile(info, io.BytesIO(content))
    return path


def make_empty(path: Path) -> Path:
    """An empty folder at ``path`` (its parents made)."""
    path.mkdir(parents=True)
    return path


def tree_files(root: Path) -> set[str]:
    """Relative POSIX paths of every file (and symlink) under ``root``."""
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() or p.is_symlink()}


def sha256(data: bytes) -> str:
    """The hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()
