"""Reading a class-per-folder image tree: which files belong to which class (and split).

Two layouts are recognised:

* ``root/<class>/<image>``: classes only;
* ``root/<split>/<class>/<image>`` where every top-level folder is a split name (``train``,
  ``val``/``valid``/``validation``, ``test``), as many public datasets ship.

Images may sit in sub-folders of their class folder. Hidden files and folders, files outside any
class folder and empty class folders are listed, never silently dropped.
"""

from __future__ import annotations

import hashlib
import os
import unicodedata
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import UserError

SPLITS = ("train", "val", "test")
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}
JUNK_NAMES = ("__MACOSX",)


@dataclass(frozen=True)
class Entry:
    """One file in a class folder."""

    rel: str  # POSIX path relative to the scanned root
    label: str  # class name (Unicode NFC)
    split: str | None  # train, val or test in a pre-split layout


@dataclass(frozen=True)
class Scan:
    """What a folder holds."""

    root: Path
    entries: tuple[Entry, ...]
    ignored: tuple[tuple[str, str], ...]  # (relative path, reason)
    empty_classes: tuple[str, ...]
    presplit: bool

    @property
    def classes(self) -> list[str]:
        """Class names with at least one file, sorted."""
        return sorted({e.label for e in self.entries})


def scan_dataset(root: Path) -> Scan:
    """List the class folders and files under ``root``.

    Args:
        root: a class-per-folder tree, optionally split into train/val/test folders first.

    Returns:
        The files found, what was ignored and why, and whether the tree was pre-split.

    Raises:
        UserError: ``root`` is missing or holds no class folder with files.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"dataset folder {root} does not exist or is not a folder")
    ignored: list[tuple[str, str]] = []
    top = _visible_children(root, root, ignored)
    top_dirs = [p for p in top if p.is_dir()]
    presplit = bool(top_dirs) and all(p.name.lower() in SPLIT_ALIASES for p in top_dirs)
    presplit = presplit and any(SPLIT_ALIASES[p.name.lower()] == "train" for p in top_dirs)
    groups = [(SPLIT_ALIASES[d.name.lower()], d) for d in top_dirs] if presplit else [(None, root)]
    entries: list[Entry] = []
    empty: list[str] = []
    for split, folder in groups:
        children = top if folder == root else _visible_children(folder, root, ignored)
        for child in children:
            if not child.is_dir():
                ignored.append((child.relative_to(root).as_posix(), "not inside a class folder"))
                continue
            label = unicodedata.normalize("NFC", child.name)
            found = [Entry(f.relative_to(root).as_posix(), label, split) for f in _files_under(child, root, ignored)]
            entries.extend(found)
            if not found:
                empty.append(child.relative_to(root).as_posix())
    if not entries:
        raise UserError(
            f"no images found in {root}: expected class folders ({root}/<class>/<image>) "
            f"or split folders ({root}/train/<class>/<image>)"
        )
    return Scan(root, tuple(entries), tuple(ignored), tuple(empty), presplit)


def cap_per_class(entries: list[Entry] | tuple[Entry, ...], cap: int | None) -> list[Entry]:
    """Keep at most ``cap`` files per class, the same ones on every run and every machine.

    The choice orders each class by a hash of the file's relative path, a fixed pseudo-random
    order that does not depend on how the filesystem lists folders. In a pre-split layout the cap
    counts the class across all splits, so each split keeps about its share.

    Args:
        entries: the files to choose from.
        cap: the most files per class, or None to keep all.

    Returns:
        The kept entries, in the order given.
    """
    if cap is None:
        return list(entries)
    by_class: dict[str, list[Entry]] = defaultdict(list)
    for entry in entries:
        by_class[entry.label].append(entry)
    kept = set()
    for members in by_class.values():
        ranked = sorted(members, key=lambda e: hashlib.sha256(e.rel.encode("utf-8")).hexdigest())
        kept.update(e.rel for e in ranked[:cap])
    return [e for e in entries if e.rel in kept]


def _visible_children(folder: Path, root: Path, ignored: list[tuple[str, str]]) -> list[Path]:
    children = []
    for child in sorted(folder.iterdir()):
        if child.name.startswith(".") or child.name in JUNK_NAMES:
            ignored.append((child.relative_to(root).as_posix(), "hidden or system file"))
        else:
            children.append(child)
    return children


def _files_under(folder: Path, root: Path, ignored: list[tuple[str, str]]) -> list[Path]:
    found = []
    for current, dirs, names in os.walk(folder):
        here = Path(current)
        for name in sorted(dirs):
            if name.startswith(".") or name in JUNK_NAMES:
                ignored.append(((here / name).relative_to(root).as_posix(), "hidden or system folder"))
        dirs[:] = sorted(d for d in dirs if not (d.startswith(".") or d in JUNK_NAMES))
        for name in sorted(names):
            path = here / name
            if name.startswith("."):
                ignored.append((path.relative_to(root).as_posix(), "hidden or system file"))
            else:
                found.append(path)
    return found
