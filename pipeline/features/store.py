"""Features larger than memory: one ``.npy`` file per split, read back in fresh blocks of rows.

A split's features are a plain NumPy array file (``<split>.npy``: format 1.0, C order, rows x
width), written block by block (``files.write_npy_blocks``) and opened memory-mapped
(``open_features``): opening reads nothing. Reading rows *through* the map would leave every page
touched counted in the process's resident memory (file-backed pages count in VmRSS, and the kernel
maps up to 64 KiB around each faulting page), so 1,000,000 x 1,280 float32 features (5 GB) streamed
through it would end with 5 GB resident. The readers here instead ``pread`` the rows they need into
fresh arrays (``read_rows``, ``take_rows``, ``iter_blocks``): the file's pages stay in the page
cache, which the kernel reclaims as it needs, and the process holds one block at a time.

``iter_windows`` is what a head trains from: every row once per epoch, in a seeded shuffled order that
differs between epochs. Arrays already in memory (a tuner's sample, the tests' sets) go through the same
functions.
"""

from __future__ import annotations

import math
import mmap
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

# Contiguous rows read at once (80 KiB at 1,280 float32 features). Small, because the rows are stored in
# the split's order, which is class by class: a window of 512-row blocks held 32 single-class blocks, so
# its class mix wandered from window to window, and the default head on Fashion-MNIST ended its epochs
# biased to whatever came last (val accuracy 0.84 against 0.89 from a full shuffle). 1,024 blocks per
# window give each window close to the set's class mix.
BLOCK_ROWS = 16
WINDOW_ROWS = 16_384  # rows shuffled together (80 MiB at 1,280 float32 features)


def open_features(path: Path) -> np.ndarray:
    """A split's features file, memory-mapped read-only (nothing is read yet)."""
    return np.load(path, mmap_mode="r", allow_pickle=False)


def _backing(features: np.ndarray) -> tuple[str, int] | None:
    """The file and byte offset behind a whole memory-mapped features array, or None for one in memory.

    Only the map ``open_features`` returns qualifies (its base is the ``mmap``); slices and copies
    of it are read as ordinary arrays.
    """
    if isinstance(features, np.memmap) and isinstance(features.base, mmap.mmap) and features.filename:
        return str(features.filename), int(features.offset)
    return None


def read_rows(features: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` as a fresh array (read from the file for a memory-mapped set)."""
    backing = _backing(features)
    if backing is None:
        return np.array(features[start:stop])
    filename, offset = backing
    stop = min(stop, len(features))
    width = features.shape[1]
    count = max(stop - start, 0)
    values = np.fromfile(
        filename, dtype=features.dtype, count=count * width, offset=offset + start * width * features.dtype.itemsize
    )
    return values.reshape(count, width)


def read_blocks(features: np.ndarray, starts: np.ndarray, rows: int) -> np.ndarray:
    """The blocks of ``rows`` rows beginning at ``starts`` (the last may be short), one after another, as a
    fresh array: one ``pread`` per block for a memory-mapped set."""
    backing = _backing(features)
    if backing is None:
        return np.concatenate([features[start : start + rows] for start in starts])
    filename, offset = backing
    row_bytes = features.shape[1] * features.dtype.itemsize
    lengths = [min(int(start) + rows, len(features)) - int(start) for start in starts]
    out = np.empty((sum(lengths), features.shape[1]), dtype=features.dtype)
    handle = os.open(filename, os.O_RDONLY)
    try:
        at = 0
        for start, length in zip(starts, lengths, strict=True):
            data = os.pread(handle, length * row_bytes, offset + int(start) * row_bytes)
            out[at : at + length] = np.frombuffer(data, dtype=features.dtype).reshape(length, -1)
            at += length
    finally:
        os.close(handle)
    return out


def take_rows(features: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The given rows (any order) as a fresh array: one ``pread`` per row for a memory-mapped set."""
    backing = _backing(features)
    if backing is None:
        return np.asarray(features[rows])
    filename, offset = backing
    out = np.empty((len(rows), features.shape[1]), dtype=features.dtype)
    size = features.shape[1] * features.dtype.itemsize
    handle = os.open(filename, os.O_RDONLY)
    try:
        for index, row in enumerate(rows):
            out[index] = np.frombuffer(os.pread(handle, size, offset + int(row) * size), dtype=features.dtype)
    finally:
        os.close(handle)
    return out


def iter_blocks(features: np.ndarray, rows: int = 8192) -> Iterator[np.ndarray]:
    """Consecutive blocks of ``rows`` rows, in order, each a fresh array (40 MiB at 1,280 float32 features:
    a caller's float64 temporaries of a block stay a few hundred MiB)."""
    for start in range(0, len(features), rows):
        yield read_rows(features, start, start + rows)


def epoch_windows(count: int, seed: int, epoch: int) -> list[np.ndarray]:
    """One epoch's row order, window by window: blocks in a random order, rows shuffled in each window.

    Args:
        count: the number of rows.
        seed: the run's seed.
        epoch: the epoch (0-based): each epoch gets its own order.

    Returns:
        For each window, the first rows of its blocks, sorted so that they read front to back
        (``iter_windows`` shuffles the rows within each window).
    """
    rng = np.random.default_rng([seed, epoch])
    blocks = rng.permutation(math.ceil(count / BLOCK_ROWS)) * BLOCK_ROWS
    per_window = max(WINDOW_ROWS // BLOCK_ROWS, 1)
    return [np.sort(blocks[i : i + per_window]) for i in range(0, len(blocks), per_window)]


def iter_windows(
    features: np.ndarray, labels: np.ndarray, seed: int | None = None, epoch: int = 0
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Every row once, in windows of about ``WINDOW_ROWS`` rows, as fresh arrays.

    Each epoch visits ``BLOCK_ROWS``-row blocks of contiguous rows in a seeded random order, reads
    ``WINDOW_ROWS`` rows' worth of blocks at a time and shuffles the rows within that window (the trainer
    cuts the windows into batches), so every row comes once per epoch, in an order that is the same for a
    seed and epoch and differs between epochs.

    Args:
        features: ``(n, width)`` features, memory-mapped or in memory.
        labels: their ``n`` labels.
        seed: shuffle with this seed: the blocks in ``epoch_windows``'s order, the rows within each
            window; None keeps the rows in order (validation).
        epoch: which epoch's order.

    Yields:
        ``(features, labels)`` windows, for a consumer to cut into batches.
    """
    if seed is None:
        for start in range(0, len(features), WINDOW_ROWS):
            yield read_rows(features, start, start + WINDOW_ROWS), np.asarray(labels[start : start + WINDOW_ROWS])
        return
    rng = np.random.default_rng([seed, epoch, 1])
    for starts in epoch_windows(len(features), seed, epoch):
        rows = np.concatenate([np.arange(s, min(s + BLOCK_ROWS, len(features))) for s in starts])
        values = read_blocks(features, starts, BLOCK_ROWS)
        order = rng.permutation(len(rows))
        # np.take rather than values[order]: docs/benchmarks.md, "Measurements behind single lines of code".
        yield np.take(values, order, axis=0), np.asarray(labels[rows[order]])
