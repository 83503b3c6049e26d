"""Class-per-folder trees (pipeline/data/dataset.py): the deterministic per-class cap, ``data.max_per_class``,
through the folder source and on its own."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.data import dataset, sources
from projects import data_params
from samples import make_empty, tree_files, write_image


def _tree_in_order(root: Path, counts: dict[str, int], reverse: bool) -> Path:
    """The same files as ``image_tree`` would write, created in forward or reverse order."""
    labels = sorted(counts, reverse=reverse)
    for label in labels:
        indices = sorted(range(counts[label]), reverse=reverse)
        for index in indices:
            write_image(root / label / f"img{index:03d}.png", f"{label}/{index}", size=(4, 4))
    return root


def test_max_per_class_choice_is_deterministic_and_independent_of_creation_order(
    tmp_path: Path, base_params: dict[str, Any]
) -> None:
    """The cap keeps the same files on every run, whatever order the files were created in; small classes keep all."""
    counts = {"cat": 9, "dog": 7, "owl": 2}
    forward = _tree_in_order(tmp_path / "forward", counts, reverse=False)
    backward = _tree_in_order(tmp_path / "backward", counts, reverse=True)
    chosen = []
    for index, source in enumerate((forward, backward, forward)):
        target = make_empty(tmp_path / f"target{index}")
        result = sources.acquire(
            data_params(base_params, source="folder", folder=str(source), max_per_class=3), target, tmp_path / "dl"
        )
        assert result.images == 3 + 3 + 2
        chosen.append(tree_files(target))
    per_class = Counter(rel.split("/")[0] for rel in chosen[0])
    assert per_class == {"cat": 3, "dog": 3, "owl": 2}
    assert chosen[0] == chosen[1] == chosen[2]
    # The pure function agrees, whatever order the entries come in.
    entries = dataset.scan_dataset(forward).entries
    kept = {e.rel for e in dataset.cap_per_class(entries, 3)}
    assert kept == chosen[0]
    assert {e.rel for e in dataset.cap_per_class(tuple(reversed(entries)), 3)} == kept
    assert dataset.cap_per_class(entries, None) == list(entries)


def test_max_per_class_counts_a_class_across_train_and_test_folders(
    tmp_path: Path, image_tree: Callable[..., Path], base_params: dict[str, Any]
) -> None:
    """In a pre-split layout the cap is per class over all splits, and the split folders are kept."""
    source = tmp_path / "source"
    image_tree(source / "train", {"cat": 6, "dog": 3}, prefix="tr")
    image_tree(source / "test", {"cat": 4, "dog": 1}, prefix="te")
    target = make_empty(tmp_path / "target")

    result = sources.acquire(
        data_params(base_params, source="folder", folder=str(source), max_per_class=4), target, tmp_path / "dl"
    )

    assert result.presplit is True
    kept = tree_files(target)
    assert Counter(rel.split("/")[1] for rel in kept) == {"cat": 4, "dog": 4}
    assert {rel.split("/")[0] for rel in kept} <= {"train", "test"}
    assert {rel for rel in kept if rel.split("/")[1] == "dog"} == {
        "train/dog/trimg000.png",
        "train/dog/trimg001.png",
        "train/dog/trimg002.png",
        "test/dog/teimg000.png",
    }
    assert result.images == 8
