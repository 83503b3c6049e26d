"""Reading a class-per-folder image tree: which files belong to which class (and split).

Two layouts are recognised:

* ``root/<class>/<image>``: classes only;
* ``root/<split>/<class>/<image>`` where every top-level folder is a split name (``train``,
  ``val``/``valid``/``validation``, ``test``), as many public datasets ship.

Images may sit in sub-folders of their class folder. Hidden files and folders, files outside any
class folder and empty class folders are listed, never silently dropped.

Symbolic links are followed only while they stay inside the scanned folder: a link whose target
resolves outside it (a file or a folder) is listed as left out, so nothing from elsewhere on the
machine (``/etc/passwd`` behind ``photo.jpg``) is copied into the DVC-tracked data and pushed to a
team's remote. ``follow_links`` lifts that for image folders that are trees of links to a store.
"""

from __future__ import annotations

import hashlib
import os
import unicodedata
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.errors import UserError

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
JUNK_NAMES = ("__MACOSX", "Thumbs.db", "desktop.ini")  # system files that are not hidden by their name
FOLLOW_LINKS_HINT = "set data.follow_links: true to follow it"


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


def scan_dataset(root: Path, follow_links: bool = False) -> Scan:
    """List the class folders and files under ``root``.

    Args:
        root: a class-per-folder tree, optionally split into train/val/test folders first.
        follow_links: follow symbolic links whose target is outside ``root`` too (links that stay
            inside are always followed; a folder reached twice within a class is listed once).

    Returns:
        The files found, what was ignored and why, and whether the tree was pre-split.

    Raises:
        UserError: ``root`` is missing or holds no class folder with files.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"dataset folder {root} does not exist or is not a folder")
    walk = _Walk(root, follow_links)
    top = walk.children(root)
    top_dirs = [p for p in top if p.is_dir()]
    presplit = bool(top_dirs) and all(p.name.lower() in SPLIT_ALIASES for p in top_dirs)
    presplit = presplit and any(SPLIT_ALIASES[p.name.lower()] == "train" for p in top_dirs)
    groups = [(SPLIT_ALIASES[d.name.lower()], d) for d in top_dirs] if presplit else [(None, root)]
    entries: list[Entry] = []
    empty: list[str] = []
    for split, folder in groups:
        children = top if folder == root else walk.children(folder)
        for child in children:
            if not child.is_dir():
                walk.ignore(child, "not inside a class folder")
                continue
            label = unicodedata.normalize("NFC", child.name)
            found = [Entry(f.relative_to(root).as_posix(), label, split) for f in walk.files_under(child)]
            entries.extend(found)
            if not found:
                empty.append(child.relative_to(root).as_posix())
    if not entries:
        raise UserError(
            f"no images found in {root}: expected class folders ({root}/<class>/<image>) "
            f"or split folders ({root}/train/<class>/<image>)"
        )
    return Scan(root, tuple(entries), tuple(walk.ignored), tuple(empty), presplit)


def reason_kind(reason: str) -> str:
    """The kind of a reason a file is left out or excluded: its words before the first detail
    (``too large: 96x96 ...`` → ``too large``; ``broken link (its target ...)`` → ``broken link``)."""
    return reason.split(":")[0].split(" (")[0]


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
    kept: set[str] = set()
    for members in by_class.values():
        ranked = sorted(members, key=lambda e: hashlib.sha256(e.rel.encode("utf-8")).hexdigest())
        kept.update(e.rel for e in ranked[:cap])
    return [e for e in entries if e.rel in kept]


class _Walk:
    """One scan's walk: where links may lead, and what it left out and why."""

    def __init__(self, root: Path, follow_links: bool) -> None:
        self.root, self.follow_links = root, follow_links
        self.real_root = root.resolve()
        self.ignored: list[tuple[str, str]] = []

    def ignore(self, path: Path, reason: str) -> None:
        self.ignored.append((path.relative_to(self.root).as_posix(), reason))

    def link_problem(self, path: Path) -> str | None:
        """Why a symbolic link is not followed (None for a link that may be, or no link)."""
        if not path.is_symlink():
            return None
        try:
            target = path.resolve(strict=True)
        except (OSError, RuntimeError):  # missing target, or a loop of links
            return "broken link (its target does not exist)"
        if self.follow_links or target.is_relative_to(self.real_root):
            return None
        kind = "folder" if target.is_dir() else "file"
        return f"link to a {kind} outside the source folder ({target}); {FOLLOW_LINKS_HINT}"

    def admit(self, path: Path, hidden: str, problem: str | None = None) -> bool:
        """Whether the walk takes ``path``; if not, it is listed with the reason: ``hidden`` for a hidden
        or system name, else why a link is not followed, else ``problem``."""
        reason = hidden if path.name.startswith(".") or path.name in JUNK_NAMES else self.link_problem(path) or problem
        if reason:
            self.ignore(path, reason)
        return reason is None

    def children(self, folder: Path) -> list[Path]:
        """The entries of ``folder`` the walk takes, sorted (the others are listed)."""
        return [child for child in sorted(folder.iterdir()) if self.admit(child, "hidden or system file")]

    def files_under(self, folder: Path) -> list[Path]:
        """Every file under the class folder ``folder``, through links that may be followed, each real
        folder once; a link back up to a folder that holds it (a loop) is not followed."""
        found: list[Path] = []
        visited: set[Path] = set()
        for current, dirs, names in os.walk(folder, followlinks=True):
            here = Path(current)
            real = here.resolve()
            if real in visited:  # reached a second time through a link
                self.ignore(here, "folder already listed (reached again through a link)")
                dirs[:] = []
                continue
            visited.add(real)
            dirs[:] = [
                name
                for name in sorted(dirs)
                if self.admit(here / name, "hidden or system folder", _loop_problem(here / name, real))
            ]
            found.extend(here / name for name in sorted(names) if self.admit(here / name, "hidden or system file"))
        return found


def _loop_problem(folder: Path, parent_real: Path) -> str | None:
    """Why a link to a folder is not followed because it leads back up to a folder holding it."""
    if folder.is_symlink() and parent_real.is_relative_to(folder.resolve()):
        return "link to a folder that holds it (a loop)"
    return None
