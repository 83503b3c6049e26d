"""Fashion-MNIST: the four IDX files, verified by content hash and written as PNG class folders.

The files come from the Debian package ``dataset-fashion-mnist`` when it is installed (its .gz
files are re-compressed, so their hashes differ from upstream's; the decompressed bytes are the
same), otherwise from the official URLs. Either way the decompressed content must match the
pinned sha256 below.
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.core import progress
from pipeline.core.errors import UserError
from pipeline.data import dataset, fetch

BASE_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
CLASSES = ("T-shirt or top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
# sha256 of the decompressed IDX files (identical for the upstream and the Debian copies).
IDX_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
PARTS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx_files(
    local_dir: Path,
    downloads: Path,
    *,
    retries: int,
    timeout_s: float,
    sha256: dict[str, str] = IDX_SHA256,
    base_url: str = BASE_URL,
) -> dict[str, bytes]:
    """The decompressed, verified content of each IDX file.

    Args:
        local_dir: where a local copy may be (``name.gz`` or ``name``); used first.
        downloads: cache folder for files fetched from ``base_url``.
        retries: extra download attempts.
        timeout_s: network timeout.
        sha256: expected digest of each decompressed file, by name.
        base_url: where ``name.gz`` is downloaded from when no local copy exists.

    Returns:
        Content by file name.

    Raises:
        UserError: a file is corrupt, or cannot be found locally nor downloaded.
    """
    contents = {}
    for name, expected in sha256.items():
        local = [p for p in (Path(local_dir) / f"{name}.gz", Path(local_dir) / name) if p.is_file()]
        if local:
            contents[name] = _verified(local[0], expected)
            continue
        cached = Path(downloads) / f"{name}.gz"
        try:
            contents[name] = _verified(cached, expected)  # a verified earlier download is reused
            continue
        except UserError:
            cached.unlink(missing_ok=True)
        fetch.download(base_url + name + ".gz", cached, sha256=None, retries=retries, timeout_s=timeout_s)
        try:
            contents[name] = _verified(cached, expected)
        except UserError:
            cached.unlink(missing_ok=True)
            raise
    return contents


def _verified(path: Path, expected: str) -> bytes:
    """The (decompressed) content of ``path`` if its sha256 is ``expected``."""
    try:
        data = path.read_bytes()
        data = gzip.decompress(data) if path.suffix == ".gz" else data
    except (OSError, EOFError, zlib.error) as error:
        raise UserError(f"Fashion-MNIST file {path} is missing or damaged: {error}") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected:
        raise UserError(f"Fashion-MNIST file {path} has content sha256 {digest}, expected {expected}; it was not used")
    return data


def parse_idx(data: bytes) -> np.ndarray:
    """Decode an IDX file of unsigned bytes (magic 0x0000 0x08 <ndim>) into an array."""
    if len(data) < 4 or data[0:3] != b"\x00\x00\x08":
        raise UserError("not an IDX file of unsigned bytes")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise UserError(f"IDX header cut short: {len(data)} bytes, the header alone needs {4 + 4 * ndim}")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise UserError(f"IDX file holds {body.size} values, its header promises {shape}")
    return body.reshape(shape)


def write_images(contents: dict[str, bytes], target: Path, max_per_class: int | None) -> int:
    """Write ``target/<split>/<class>/<split>-NNNNN.png`` for the official train and test parts.

    Args:
        contents: decompressed IDX files by name (from ``read_idx_files``).
        target: the folder to fill.
        max_per_class: cap per class over both parts (see ``dataset.cap_per_class``), or None.

    Returns:
        The number of images written.
    """
    arrays = {}
    entries = []
    for split, (images_name, labels_name) in PARTS.items():
        images, labels = parse_idx(contents[images_name]), parse_idx(contents[labels_name])
        if len(images) != len(labels):
            raise UserError(f"Fashion-MNIST {split}: {len(images)} images but {len(labels)} labels")
        arrays[split] = images
        entries += [
            dataset.Entry(f"{split}/{CLASSES[y]}/{split}-{i:05d}.png", CLASSES[y], split) for i, y in enumerate(labels)
        ]
    chosen = dataset.cap_per_class(entries, max_per_class)
    for folder in {str(Path(e.rel).parent) for e in chosen}:
        (target / folder).mkdir(parents=True, exist_ok=True)
    for entry in progress.bar(chosen, desc="write Fashion-MNIST PNGs", unit="img"):
        index = int(Path(entry.rel).stem.rsplit("-", 1)[1])
        Image.fromarray(arrays[entry.split][index]).save(target / entry.rel, format="PNG")
    return len(chosen)
