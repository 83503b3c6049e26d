"""The split stage's logic: verified images divided into stratified, seeded train/val/test splits.

Exact duplicates (same sha256) always land in the same split; copies filed under different
classes are excluded, since their label is unknowable. With ``split.use_existing`` the train/val/test
folders a source ships are kept, and any missing split is carved from train.
"""

from __future__ import annotations

import json
import zlib
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from pipeline.core.config import SplitParams
from pipeline.core.errors import UserError
from pipeline.data.dataset import SPLITS, Scan, reason_kind

_PRIORITY = {"test": 0, "val": 1, "train": 2}  # a duplicate across existing splits stays in the first
CLASSES_FILE = "classes.json"


@dataclass(frozen=True)
class Item:
    """A verified image."""

    path: str  # repository-relative POSIX path
    label: str
    sha256: str
    existing: str | None = None  # the split folder it came from, in a pre-split layout


@dataclass
class Splits:
    """The result: items per split, plus what was excluded and why."""

    items: dict[str, list[Item]]
    excluded: list[dict[str, str]] = field(default_factory=list)
    carved: list[str] = field(default_factory=list)
    duplicate_groups: int = 0
    duplicate_copies: int = 0

    def counts(self) -> dict[str, dict[str, int]]:
        """Images per class per split."""
        return {name: dict(sorted(Counter(i.label for i in members).items())) for name, members in self.items.items()}


def split_images(items: list[Item], params: SplitParams, seed: int, presplit: bool) -> Splits:
    """Divide verified images into train, val and test.

    Args:
        items: every usable image.
        params: the ``split`` params section.
        seed: the global seed.
        presplit: whether the source had train/val/test folders.

    Returns:
        The splits, sorted by (label, path) within each.

    Raises:
        UserError: fewer than two classes, ``use_existing`` without split folders, or a class with
            too few images for the requested splits (all such classes named at once).
    """
    result = Splits(items={name: [] for name in SPLITS})
    items = _drop_conflicting_duplicates(items, result)
    groups = _group_by_content(items)
    result.duplicate_groups = sum(len(g) > 1 for g in groups)
    result.duplicate_copies = sum(len(g) - 1 for g in groups)
    classes = sorted({i.label for i in items})
    if len(classes) < 2:
        found = f"only '{classes[0]}'" if classes else "none"
        raise UserError(f"a classifier needs at least two classes with usable images; found {found}")
    ratios = {"val": params.val, "test": params.test}
    if params.use_existing:
        if not presplit:
            raise UserError(
                "split.use_existing is true but the raw data has no train/ (val/, test/) folders; "
                "set split.use_existing: false to split it"
            )
        pools = _keep_existing(groups, result)
        result.carved = [name for name in ("val", "test") if not pools[name]]
        carve = {name: ratios[name] for name in result.carved}
        assigned = _stratify(pools["train"], carve, seed)
        assigned.update({name: pools[name] for name in ("val", "test") if pools[name]})
    else:
        assigned = _stratify(groups, ratios, seed)
    for name in SPLITS:
        result.items[name] = sorted((i for g in assigned.get(name, []) for i in g), key=lambda i: (i.label, i.path))
    _check_every_class_everywhere(result, classes)
    return result


def _drop_conflicting_duplicates(items: list[Item], result: Splits) -> list[Item]:
    labels_by_hash: dict[str, set[str]] = defaultdict(set)
    for item in items:
        labels_by_hash[item.sha256].add(item.label)
    kept = []
    for item in items:
        labels = labels_by_hash[item.sha256]
        if len(labels) > 1:
            others = ", ".join(sorted(labels - {item.label}))
            result.excluded.append({"path": item.path, "reason": f"same image is also filed under class {others}"})
        else:
            kept.append(item)
    return kept


def _group_by_content(items: list[Item]) -> list[list[Item]]:
    """Identical files form one group, so they can never straddle two splits."""
    groups: dict[str, list[Item]] = defaultdict(list)
    for item in sorted(items, key=lambda i: i.path):
        groups[item.sha256].append(item)
    return [groups[h] for h in sorted(groups)]


def _keep_existing(groups: list[list[Item]], result: Splits) -> dict[str, list[list[Item]]]:
    """Groups by their existing split folder; a duplicate across folders stays in the most held-out one."""
    pools: dict[str, list[list[Item]]] = {name: [] for name in SPLITS}
    for group in groups:
        home = min((i.existing or "train" for i in group), key=_PRIORITY.__getitem__)
        for item in group:
            if (item.existing or "train") != home:
                result.excluded.append({"path": item.path, "reason": f"duplicate of an image in {home}"})
        pools[home].append([i for i in group if (i.existing or "train") == home])
    return pools


def _stratify(groups: list[list[Item]], ratios: dict[str, float], seed: int) -> dict[str, list[list[Item]]]:
    """Per class, shuffle the duplicate groups (seeded) and fill the held-out splits to their share."""
    by_class: dict[str, list[list[Item]]] = defaultdict(list)
    for group in groups:
        by_class[group[0].label].append(group)
    assigned: dict[str, list[list[Item]]] = defaultdict(list)
    too_few = []
    for label in sorted(by_class):
        members = by_class[label]
        # A per-class generator: adding or removing one class leaves the other classes' splits unchanged.
        rng = np.random.default_rng([seed, zlib.crc32(label.encode("utf-8"))])
        order = [members[i] for i in rng.permutation(len(members))]
        total = sum(len(g) for g in order)
        if len(order) < len(ratios) + 1:
            too_few.append(f"'{label}' ({total} image(s), {len(order)} distinct)")
            continue
        names = sorted(ratios, key=lambda n: n != "test")  # test first, then val, then train
        for position, name in enumerate(names):
            reserve = len(names) - position  # keep one group for each later split, train included
            want, taken = max(1, round(total * ratios[name])), 0
            while taken < want and len(order) > reserve:
                group = order.pop(0)
                assigned[name].append(group)
                taken += len(group)
        assigned["train"].extend(order)
    if too_few:
        needed = " and ".join(["train", *sorted(ratios)])
        raise UserError(
            f"too few images to split class(es) {', '.join(too_few)}: each needs at least "
            f"{len(ratios) + 1} distinct images, one each for {needed}; add images or remove the class"
        )
    return assigned


def _check_every_class_everywhere(result: Splits, classes: list[str]) -> None:
    counts = result.counts()
    missing = [f"'{c}' has no images in {name}" for name in SPLITS for c in classes if not counts[name].get(c)]
    if missing:
        raise UserError("every class must appear in every split: " + "; ".join(missing))


def collect_items(
    scan: Scan, checks: list[tuple[str, str | None]], prefix: str
) -> tuple[list[Item], list[dict[str, str]]]:
    """Pair scanned files with their verification results.

    Args:
        scan: the raw folder's files.
        checks: ``(sha256, problem)`` per entry of ``scan``, in order (``images.inspect_images``).
        prefix: the raw folder relative to the repository root, prepended to each path.

    Returns:
        The usable images, and the excluded files with their reason.
    """
    items, excluded = [], []
    for entry, (digest, problem) in zip(scan.entries, checks, strict=True):
        path = str(PurePosixPath(prefix) / entry.rel)
        if problem:
            excluded.append({"path": path, "reason": problem})
        else:
            items.append(Item(path, entry.label, digest, entry.split))
    return items, excluded


def raw_paths(scan: Scan, prefix: str) -> list[str]:
    """Every scanned file's path as the split CSVs write it (``prefix`` is the raw folder)."""
    return [str(PurePosixPath(prefix) / entry.rel) for entry in scan.entries]


def build_report(
    result: Splits,
    scan: Scan,
    excluded: list[dict[str, str]],
    params: SplitParams,
    reviewed: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Everything a person needs to trust the split: counts, exclusions with reasons, duplicates, and what
    the review file changed (``review.apply_entries``' records)."""
    reviewed = reviewed or []
    counts = result.counts()
    all_excluded = sorted(excluded + result.excluded, key=lambda e: e["path"])
    return {
        "layout": "train/val/test folders" if scan.presplit else "class folders",
        "use_existing": params.use_existing,
        "carved_from_train": result.carved,
        "classes": len({c for per_class in counts.values() for c in per_class}),
        "images": {name: sum(per_class.values()) for name, per_class in counts.items()},
        "counts": counts,
        "duplicates": {"groups": result.duplicate_groups, "extra_copies": result.duplicate_copies},
        "excluded": all_excluded,
        "excluded_by_reason": dict(Counter(reason_kind(e["reason"]) for e in all_excluded)),
        "ignored": [{"path": p, "reason": r} for p, r in scan.ignored],
        "empty_class_folders": list(scan.empty_classes),
        "review": {
            "excluded": sum(r["action"] == "exclude" for r in reviewed),
            "relabelled": sum(r["action"] == "relabel" for r in reviewed),
            "applied": reviewed,
        },
    }


def split_frame(items: list[Item]) -> pd.DataFrame:
    """The CSV form of one split: path, label, sha256."""
    return pd.DataFrame([(i.path, i.label, i.sha256) for i in items], columns=["path", "label", "sha256"])


def counts_frame(result: Splits) -> pd.DataFrame:
    """Images per class as a table with one column per split."""
    frame = pd.DataFrame(result.counts()).fillna(0).astype(int).rename_axis("class").reset_index()
    return frame.sort_values("class", kind="stable").reset_index(drop=True)


@dataclass(frozen=True)
class SplitFiles:
    """One split as the later stages read it: files, label indices and the class names."""

    rel_paths: np.ndarray  # as written in the CSV: repository-relative POSIX paths
    paths: list[Path]  # the same, resolved against the repository root
    labels: np.ndarray  # int32 indices into ``classes``
    sha256: np.ndarray
    classes: tuple[str, ...]


def read_split_files(splits: Path, name: str, root: Path) -> SplitFiles:
    """Read ``<splits>/<name>.csv`` and ``classes.json`` written by the split stage.

    Args:
        splits: the split stage's output folder.
        name: ``train``, ``val`` or ``test``.
        root: the repository root the CSV's paths are relative to.

    Raises:
        UserError: a label is missing from classes.json (the two files come from different runs).
    """
    classes = json.loads((splits / CLASSES_FILE).read_text(encoding="utf-8"))
    frame = pd.read_csv(splits / f"{name}.csv", dtype=str, keep_default_na=False)
    index = {label: i for i, label in enumerate(classes)}
    unknown = sorted(set(frame["label"]) - set(index))
    if unknown:
        raise UserError(f"{splits / name}.csv has labels missing from {CLASSES_FILE}: {', '.join(unknown)}")
    return SplitFiles(
        rel_paths=frame["path"].to_numpy(),
        paths=[root / p for p in frame["path"]],
        labels=frame["label"].map(index).to_numpy(dtype=np.int32),
        sha256=frame["sha256"].to_numpy(),
        classes=tuple(classes),
    )


def describe(report: dict[str, Any], reviewed: Sequence[dict[str, Any]], review_file: str) -> list[str]:
    """The console's lines: each excluded file, each change the review file made, then the split's sizes."""
    lines = [f"excluded {entry['path']}: {entry['reason']}" for entry in report["excluded"]]
    for entry in reviewed:
        change = f"relabelled {entry['label']} → {entry['relabelled_to']}" if "relabelled_to" in entry else "excluded"
        lines.append(f"{review_file}: {change}: {entry['path']}")
    return [*lines, f"{report['images']} images in {report['classes']} classes"]
