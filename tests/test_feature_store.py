"""Features on disk beyond memory: the .npy + .npz format, block reads, the streamed training order."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from pipeline.core import files
from pipeline.core.errors import UserError
from pipeline.features import extraction, store
from pipeline.features.extraction import FeatureSet
from pipeline.training import head

CLASSES = ("a", "b", "c")


def _features(rows: int, width: int = 6, seed: int = 0) -> FeatureSet:
    rng = np.random.default_rng(seed)
    names = np.array([f"img/{i}.png" for i in range(rows)])
    return FeatureSet(
        rng.normal(size=(rows, width)).astype(np.float32), rng.integers(0, 3, rows), names, names, CLASSES
    )


def test_a_split_is_written_as_npy_features_and_npz_rows_and_read_back_memory_mapped(tmp_path):
    subset = _features(1000)
    extraction.write_feature_set(tmp_path / "train.npz", subset)
    expected = io.BytesIO()
    np.save(expected, subset.features)
    assert (tmp_path / "train.npy").read_bytes() == expected.getvalue()  # a plain NumPy file, numpy.save's bytes
    with np.load(tmp_path / "train.npz") as rows:
        assert sorted(rows.files) == ["classes", "labels", "paths", "sha256"]

    back = extraction.read_feature_set(tmp_path / "train.npz")
    assert isinstance(back.features, np.memmap) and not back.features.flags.writeable
    np.testing.assert_array_equal(back.features, subset.features)
    np.testing.assert_array_equal(back.labels, subset.labels)
    assert list(back.paths) == list(subset.paths) and back.classes == CLASSES


def test_features_cached_in_the_old_single_npz_format_ask_for_a_rerun(tmp_path):
    subset = _features(10)
    files.write_npz(tmp_path / "train.npz", features=subset.features, labels=subset.labels)
    with pytest.raises(UserError, match="older format"):
        extraction.read_feature_set(tmp_path / "train.npz")


def test_blocks_that_do_not_add_up_leave_no_file(tmp_path):
    with pytest.raises(ValueError, match="3 rows written, 4 expected"):
        files.write_npy_blocks(tmp_path / "x.npy", [np.zeros((3, 2))], 4, 2, "float32")
    assert list(tmp_path.iterdir()) == []


def test_extract_writes_the_features_batch_by_batch_with_the_same_bytes_every_time(tmp_path):
    images = np.random.default_rng(1).normal(size=(50, 4)).astype(np.float32)

    def forward(batch: tf.Tensor) -> tf.Tensor:
        return tf.concat([batch, tf.square(batch)], axis=1)

    def batches() -> tf.data.Dataset:
        return tf.data.Dataset.from_tensor_slices(images).batch(8)

    for name in ("a", "b"):
        extraction.write_features(forward, batches(), 50, "float16", "test", tmp_path / f"{name}.npy")
    assert (tmp_path / "a.npy").read_bytes() == (tmp_path / "b.npy").read_bytes()
    whole, _ = extraction.compute_features(forward, batches(), 50, "float16", "test")
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), whole)
    with pytest.raises(RuntimeError, match="expected 60 images"):
        extraction.write_features(forward, batches(), 60, "float16", "test", tmp_path / "c.npy")
    assert not (tmp_path / "c.npy").exists()


def test_reads_of_a_memory_mapped_set_are_fresh_arrays_equal_to_the_rows(tmp_path):
    subset = _features(3000)
    extraction.write_feature_set(tmp_path / "train.npz", subset)
    mapped = extraction.read_feature_set(tmp_path / "train.npz").features
    block = store.read_rows(mapped, 1000, 1600)
    assert type(block) is np.ndarray and not np.shares_memory(block, mapped)
    np.testing.assert_array_equal(block, subset.features[1000:1600])
    picked = np.array([2999, 0, 17, 18, 1500])
    np.testing.assert_array_equal(store.take_rows(mapped, picked), subset.features[picked])
    np.testing.assert_array_equal(np.concatenate(list(store.iter_blocks(mapped, 700))), subset.features)


# Run in a fresh process: in the suite's worker, memory that earlier tests freed (TensorFlow, ONNX
# Runtime) is handed back to this one in ways that have nothing to do with the store.
_STREAM = """
import sys
from pathlib import Path
import numpy as np
from pipeline.features import store

def rss():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

store.WINDOW_ROWS = 2048  # 10 MB windows: a few of them in memory at once, at most
mapped = store.open_features(Path(sys.argv[1]))
labels = np.zeros(len(mapped), dtype=np.int64)
before, peak, seen = rss(), 0.0, 0
for values, _ in store.iter_windows(mapped, labels, seed=0):
    seen += len(values)
    peak = max(peak, rss())
streamed = peak - before
before = rss()  # what the same pass through the map itself costs: every page stays resident
total = float(np.asarray(mapped).sum(dtype=np.float64))
print(seen, streamed, rss() - before, total)
"""


def test_streaming_every_row_of_a_200_mb_file_keeps_memory_well_below_its_size(tmp_path):
    rows, width = 40_000, 1280  # 205 MB of float32
    blocks = (np.full((4000, width), i, dtype=np.float32) for i in range(rows // 4000))
    files.write_npy_blocks(tmp_path / "big.npy", blocks, rows, width, "float32")

    done = subprocess.run(
        [sys.executable, "-c", _STREAM, str(tmp_path / "big.npy")], capture_output=True, text=True, check=True
    )
    seen, streamed, through_map, total = (float(v) for v in done.stdout.split())
    assert seen == rows
    assert streamed < 60  # a window being read, its shuffled copy, the one handed out: never the file
    assert total == sum(4000 * width * i for i in range(10))
    assert through_map > 150  # the check can fail: reading through the map keeps the file resident


def test_each_epoch_sees_every_row_once_in_a_seeded_order_that_differs_between_epochs():
    subset = _features(5000)
    labels = np.arange(5000)  # the labels name the rows

    def order(seed: int, epoch: int) -> np.ndarray:
        parts = [y for _, y in store.iter_windows(subset.features, labels, seed, epoch)]
        return np.concatenate(parts)

    first = order(7, 0)
    assert sorted(first) == list(range(5000))
    np.testing.assert_array_equal(first, order(7, 0))
    assert not np.array_equal(first, order(7, 1)) and sorted(order(7, 1)) == list(range(5000))
    assert not np.array_equal(first, order(8, 0))
    assert not np.array_equal(first, labels)  # shuffled
    for values, rows in store.iter_windows(subset.features, labels, 7, 0):
        np.testing.assert_array_equal(values, subset.features[rows])  # features stay with their rows
    in_order = np.concatenate([y for _, y in store.iter_windows(subset.features, labels)])
    np.testing.assert_array_equal(in_order, labels)


def test_rows_stored_class_by_class_still_give_every_window_the_set_s_class_mix(tmp_path):
    # Extract writes rows in the split's order, which is class by class; a window must not be a few classes.
    classes, per_class, width = 10, 4000, 8
    labels = np.repeat(np.arange(classes), per_class)
    rows = len(labels) + 3  # a short last block
    labels = np.concatenate([labels, [9, 9, 9]])
    values = np.random.default_rng(0).normal(size=(rows, width)).astype(np.float32)
    values[:, 0] = np.arange(rows)  # the first feature names the row
    files.write_npy_blocks(tmp_path / "train.npy", iter([values]), rows, width, "float32")
    mapped = store.open_features(tmp_path / "train.npy")
    seen = []
    for window, window_labels in store.iter_windows(mapped, labels, seed=5, epoch=0):
        seen.append(window_labels)
        window_rows = window[:, 0].astype(np.int64)
        np.testing.assert_array_equal(window, values[window_rows])  # whole rows, read from the file
        np.testing.assert_array_equal(window_labels, labels[window_rows])  # each with its label
        if len(window_labels) == store.WINDOW_ROWS:
            shares = np.bincount(window_labels, minlength=classes) / len(window_labels)
            assert np.abs(shares - 0.1).max() < 0.03, shares
    assert sorted(np.concatenate(seen)) == sorted(labels) and len(seen) >= 2


def test_the_training_stream_gives_full_batches_and_a_new_order_each_pass():
    subset = _features(store.WINDOW_ROWS + 1000)
    labels = np.arange(len(subset.labels))
    dataset = head.stream_batches(subset.features, labels, 128, seed=3)
    assert int(dataset.cardinality()) == -(-len(labels) // 128)
    passes = []
    for _ in range(2):
        batches = [(x.numpy(), y.numpy()) for x, y in dataset]
        assert [len(y) for _, y in batches[:-1]] == [128] * (len(batches) - 1)  # across window ends too
        assert batches[0][0].dtype == np.float32
        passes.append(np.concatenate([y for _, y in batches]))
        np.testing.assert_array_equal(np.concatenate([x for x, _ in batches]), subset.features[passes[-1]])
    assert sorted(passes[0]) == sorted(passes[1]) == list(labels)
    assert not np.array_equal(passes[0], passes[1])


def test_the_standardisation_statistics_from_blocks_equal_numpys_over_the_whole_array(tmp_path):
    subset = _features(150_000, width=3, seed=4)
    extraction.write_feature_set(tmp_path / "train.npz", subset)
    scale = head.feature_scale(extraction.read_feature_set(tmp_path / "train.npz").features)
    whole = subset.features.astype(np.float64)
    np.testing.assert_allclose(scale.mean, whole.mean(axis=0), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(scale.variance, whole.var(axis=0), rtol=1e-12)
