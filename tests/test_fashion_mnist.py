"""Fashion-MNIST (pipeline/data/fashion_mnist.py) from tiny synthetic IDX files: local copies, verified downloads
from a real HTTP server on 127.0.0.1, damaged files, and the Debian package's files when installed."""

from __future__ import annotations

import gzip
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from file_server import LocalServer
from pipeline.core.errors import UserError
from pipeline.data import dataset, fashion_mnist, sources
from projects import data_params
from samples import make_empty, sha256, tree_files

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
UNREACHABLE = "http://127.0.0.1:9/"  # discard port: nothing listens, a request would fail at once


def idx_images(images: np.ndarray) -> bytes:
    """IDX bytes for uint8 images N×28×28 (magic 0x00000803)."""
    n, rows, cols = images.shape
    header = b"\x00\x00\x08\x03" + b"".join(x.to_bytes(4, "big") for x in (n, rows, cols))
    return header + images.astype(np.uint8).tobytes()


def idx_labels(labels: np.ndarray) -> bytes:
    """IDX bytes for uint8 labels (magic 0x00000801)."""
    return b"\x00\x00\x08\x01" + len(labels).to_bytes(4, "big") + labels.astype(np.uint8).tobytes()


@pytest.fixture
def tiny_mnist() -> dict[str, Any]:
    """12 train and 5 test images with their labels; ``raw`` holds the four IDX files' bytes, ``sha`` their digests."""
    rng = np.random.default_rng(7)
    train_x = rng.integers(0, 256, size=(12, 28, 28), dtype=np.uint8)
    test_x = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    train_y = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 9], dtype=np.uint8)
    test_y = np.array([9, 0, 3, 3, 1], dtype=np.uint8)
    raw = {
        "train-images-idx3-ubyte": idx_images(train_x),
        "train-labels-idx1-ubyte": idx_labels(train_y),
        "t10k-images-idx3-ubyte": idx_images(test_x),
        "t10k-labels-idx1-ubyte": idx_labels(test_y),
    }
    return {
        "raw": raw,
        "sha": {name: sha256(data) for name, data in raw.items()},
        "train": (train_x, train_y),
        "test": (test_x, test_y),
    }


@pytest.mark.parametrize("compressed", [True, False])
def test_fashion_mnist_local_files_become_named_class_folders(
    tmp_path: Path, tiny_mnist: dict[str, Any], compressed: bool
) -> None:
    """Local IDX files (gzip or plain) are read without network and written as split/class/split-NNNNN.png."""
    local = make_empty(tmp_path / "local")
    for name, data in tiny_mnist["raw"].items():
        if compressed:
            (local / f"{name}.gz").write_bytes(gzip.compress(data, mtime=0))
        else:
            (local / name).write_bytes(data)
    downloads = tmp_path / "dl"

    contents = fashion_mnist.read_idx_files(
        local, downloads, retries=0, timeout_s=1, sha256=tiny_mnist["sha"], base_url=UNREACHABLE
    )
    assert contents == tiny_mnist["raw"]
    assert not downloads.exists() or list(downloads.iterdir()) == []

    target = make_empty(tmp_path / "target")
    assert fashion_mnist.write_images(contents, target, None) == 17
    assert len(tree_files(target)) == 17
    # Human-readable class names: label 0 and label 9 of the official list.
    train_x, _ = tiny_mnist["train"]
    first = np.asarray(Image.open(target / "train" / "T-shirt or top" / "train-00000.png"))
    last = np.asarray(Image.open(target / "train" / "Ankle boot" / "train-00011.png"))
    np.testing.assert_array_equal(first, train_x[0])
    np.testing.assert_array_equal(last, train_x[11])
    for split in ("train", "test"):
        images, labels = tiny_mnist[split]
        for index, label in enumerate(labels):
            path = target / split / fashion_mnist.CLASSES[label] / f"{split}-{index:05d}.png"
            np.testing.assert_array_equal(np.asarray(Image.open(path)), images[index])
    scan = dataset.scan_dataset(target)
    assert scan.presplit is True
    assert len(scan.classes) == 10


def test_fashion_mnist_cap_applies_per_class_over_both_parts(tmp_path: Path, tiny_mnist: dict[str, Any]) -> None:
    """max_per_class=1 keeps exactly one image of each of the ten classes, counting train and test together."""
    target = make_empty(tmp_path / "target")
    assert fashion_mnist.write_images(tiny_mnist["raw"], target, 1) == 10
    written = tree_files(target)
    assert Counter(rel.split("/")[1] for rel in written) == {name: 1 for name in fashion_mnist.CLASSES}


def test_fashion_mnist_downloads_from_base_url_and_verifies_decompressed_content(
    tmp_path: Path, server: LocalServer, tiny_mnist: dict[str, Any]
) -> None:
    """Without a local copy the .gz files come from base_url; the decompressed bytes are what is checked."""
    for name, data in tiny_mnist["raw"].items():
        server.files[f"mnist/{name}.gz"] = gzip.compress(data, compresslevel=1, mtime=12345)
    downloads = tmp_path / "dl"

    contents = fashion_mnist.read_idx_files(
        tmp_path / "absent", downloads, retries=0, timeout_s=5, sha256=tiny_mnist["sha"], base_url=server.url("mnist/")
    )

    assert contents == tiny_mnist["raw"]
    assert {p.name for p in downloads.iterdir()} == {f"{name}.gz" for name in tiny_mnist["raw"]}
    assert all(server.hits[f"mnist/{name}.gz"] == 1 for name in tiny_mnist["raw"])

    again = fashion_mnist.read_idx_files(
        tmp_path / "absent", downloads, retries=0, timeout_s=5, sha256=tiny_mnist["sha"], base_url=server.url("mnist/")
    )
    assert again == tiny_mnist["raw"]
    assert all(server.hits[f"mnist/{name}.gz"] == 1 for name in tiny_mnist["raw"]), "verified downloads are reused"


def test_fashion_mnist_wrong_digest_removes_the_downloaded_file(
    tmp_path: Path, server: LocalServer, tiny_mnist: dict[str, Any]
) -> None:
    """A downloaded file whose content does not match is a UserError and is deleted from downloads."""
    for name, data in tiny_mnist["raw"].items():
        server.files[f"{name}.gz"] = gzip.compress(data)
    wrong = {**tiny_mnist["sha"], "train-images-idx3-ubyte": "0" * 64}
    downloads = tmp_path / "dl"

    with pytest.raises(UserError, match="expected 0{64}"):
        fashion_mnist.read_idx_files(
            tmp_path / "absent", downloads, retries=0, timeout_s=5, sha256=wrong, base_url=server.base_url
        )

    assert server.hits["train-images-idx3-ubyte.gz"] == 1
    assert list(downloads.iterdir()) == []


def test_fashion_mnist_wrong_digest_of_a_local_file_keeps_the_file(tmp_path: Path, tiny_mnist: dict[str, Any]) -> None:
    """A mismatching local copy is refused but never deleted (it is not the pipeline's to remove)."""
    local = make_empty(tmp_path / "local")
    for name, data in tiny_mnist["raw"].items():
        (local / f"{name}.gz").write_bytes(gzip.compress(data))
    wrong = {**tiny_mnist["sha"], "t10k-labels-idx1-ubyte": "f" * 64}
    with pytest.raises(UserError, match="t10k-labels-idx1-ubyte"):
        fashion_mnist.read_idx_files(local, tmp_path / "dl", retries=0, timeout_s=1, sha256=wrong, base_url=UNREACHABLE)
    assert len(list(local.iterdir())) == 4


def test_fashion_mnist_damaged_gzip_is_a_user_error(tmp_path: Path, tiny_mnist: dict[str, Any]) -> None:
    """A local .gz that does not decompress is reported as damaged."""
    local = make_empty(tmp_path / "local")
    (local / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(UserError, match="damaged"):
        fashion_mnist.read_idx_files(
            local, tmp_path / "dl", retries=0, timeout_s=1, sha256=tiny_mnist["sha"], base_url=UNREACHABLE
        )


def test_parse_idx_decodes_shape_and_values(tiny_mnist: dict[str, Any]) -> None:
    """A well-formed IDX file decodes to the array it was written from."""
    images, labels = tiny_mnist["train"]
    np.testing.assert_array_equal(fashion_mnist.parse_idx(tiny_mnist["raw"]["train-images-idx3-ubyte"]), images)
    np.testing.assert_array_equal(fashion_mnist.parse_idx(tiny_mnist["raw"]["train-labels-idx1-ubyte"]), labels)


def test_parse_idx_rejects_header_promising_more_data_than_present() -> None:
    """A header for 3 images over a body of 2 (or with extra bytes) is a UserError, not a silent reshape."""
    body = np.zeros((2, 28, 28), dtype=np.uint8).tobytes()
    short = b"\x00\x00\x08\x03" + (3).to_bytes(4, "big") + (28).to_bytes(4, "big") + (28).to_bytes(4, "big") + body
    with pytest.raises(UserError, match="promises"):
        fashion_mnist.parse_idx(short)
    long = idx_labels(np.arange(5)) + b"\x00"
    with pytest.raises(UserError, match="promises"):
        fashion_mnist.parse_idx(long)
    with pytest.raises(UserError, match="not an IDX file"):
        fashion_mnist.parse_idx(b"\x1f\x8b\x08\x00" + bytes(16))


def test_parse_idx_rejects_truncated_header_as_user_error() -> None:
    """An IDX file whose dimension header is cut off is a UserError like any other damaged file."""
    with pytest.raises(UserError):
        fashion_mnist.parse_idx(b"\x00\x00\x08\x03" + (5).to_bytes(4, "big"))


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.exists(), reason="Debian package dataset-fashion-mnist is not installed")
def test_debian_fashion_mnist_files_match_pinned_digests(tmp_path: Path, base_params: dict[str, Any]) -> None:
    """The packaged files decompress to the pinned upstream content, and acquire uses them without any download."""
    downloads = tmp_path / "dl"
    contents = fashion_mnist.read_idx_files(
        DEBIAN_FASHION_MNIST, downloads, retries=0, timeout_s=1, base_url=UNREACHABLE
    )
    assert {name: sha256(data) for name, data in contents.items()} == fashion_mnist.IDX_SHA256
    assert fashion_mnist.parse_idx(contents["train-images-idx3-ubyte"]).shape == (60000, 28, 28)
    assert fashion_mnist.parse_idx(contents["t10k-labels-idx1-ubyte"]).shape == (10000,)

    target = make_empty(tmp_path / "target")
    params = data_params(
        base_params, source="fashion_mnist", fashion_mnist_dir=str(DEBIAN_FASHION_MNIST), max_per_class=2
    )
    result = sources.acquire(params, target, downloads)
    assert (result.images, result.classes, result.presplit) == (20, 10, True)
    assert not downloads.exists() or list(downloads.iterdir()) == []
