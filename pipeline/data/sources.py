"""The download stage's logic: bring images from the configured source into a class-per-folder tree.

Sources (``data.source``): ``fashion_mnist`` (Debian package or official URLs), ``url`` (a verified
archive) and ``folder`` (a local tree, hard-linked where possible).
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from pipeline.core import files, progress
from pipeline.core.config import DataParams
from pipeline.core.errors import UserError
from pipeline.data import archive, dataset, fashion_mnist, fetch, images


@dataclass(frozen=True)
class Acquired:
    """What the download stage produced."""

    images: int
    classes: int
    presplit: bool
    ignored: tuple[tuple[str, str], ...]  # files of the source left out, with the reason
    # Class folders of the source with no files (``[<split>/]<class>``): not classes, so not copied
    # (DVC would not keep an empty folder anyway), but never dropped without a word.
    empty_classes: tuple[str, ...] = ()


def acquire(data: DataParams, target: Path, downloads: Path) -> Acquired:
    """Fill the empty folder ``target`` with the images of the configured source.

    Args:
        data: the ``data`` params section.
        target: an empty folder (the stage swaps it into ``paths.raw`` when complete).
        downloads: cache folder for verified downloads.

    Returns:
        Counts of what was written, the source files that were left out and the empty class folders.
    """
    source: dataset.Scan | None = None
    if data.source == "fashion_mnist":
        contents = fashion_mnist.read_idx_files(
            Path(data.fashion_mnist_dir), downloads, retries=data.retries, timeout_s=data.timeout_s
        )
        fashion_mnist.write_images(contents, target, data.max_per_class)
    elif data.source == "url":
        assert data.url is not None and data.sha256 is not None  # guaranteed by DataParams.check
        bundle = fetch.download(
            data.url,
            downloads / f"{data.sha256.lower()}.archive",
            sha256=data.sha256,
            retries=data.retries,
            timeout_s=data.timeout_s,
        )
        with tempfile.TemporaryDirectory(prefix="extract-", dir=downloads) as unpacked:
            archive.extract_archive(bundle, Path(unpacked))
            source = copy_classes(select_root(Path(unpacked), data.subdir), target, data.max_per_class)
    else:
        assert data.folder is not None  # guaranteed by DataParams.check
        root = select_root(Path(data.folder), data.subdir)
        source = copy_classes(root, target, data.max_per_class, data.follow_links)
    written = dataset.scan_dataset(target)
    ignored, empty = (source.ignored, source.empty_classes) if source is not None else ((), ())
    return Acquired(len(written.entries), len(written.classes), written.presplit, ignored, empty)


def select_root(root: Path, subdir: str | None) -> Path:
    """The folder that holds the classes (or split folders).

    With ``subdir`` that folder inside ``root``; without it, ``root``, descending through single
    wrapper folders that hold class folders (``flower_photos/`` in ``flower_photos.tgz``, beside
    its LICENSE.txt, which is then reported as a file outside any class folder).

    Raises:
        UserError: ``root`` or ``subdir`` does not exist, or ``subdir`` leaves ``root``.
    """
    if not root.is_dir():
        raise UserError(f"source folder {root} does not exist or is not a folder")
    if subdir is not None:
        chosen = (root / subdir).resolve()
        if not chosen.is_relative_to(root.resolve()):
            raise UserError(f"data.subdir '{subdir}' points outside the source")
        if not chosen.is_dir():
            available = ", ".join(sorted(p.name for p in root.iterdir() if p.is_dir())) or "none"
            raise UserError(f"data.subdir '{subdir}' not found in the source; top-level folders: {available}")
        return chosen
    while True:
        visible = [p for p in root.iterdir() if not p.name.startswith(".") and p.name not in dataset.JUNK_NAMES]
        if len(visible) != 1 or not visible[0].is_dir() or visible[0].name.lower() in dataset.SPLIT_ALIASES:
            return root
        # A lone folder holding folders is a wrapper (a lone folder of images is a single class).
        if not any(c.is_dir() and not c.name.startswith(".") for c in visible[0].iterdir()):
            return root
        root = visible[0]


def copy_classes(source: Path, target: Path, max_per_class: int | None, follow_links: bool = False) -> dataset.Scan:
    """Link or copy the images in the class folders of ``source`` into ``target``, keeping the layout.

    Only files whose content is an image are copied (``images.content_problem``: a text file named
    ``.jpg`` is not); links out of ``source`` only with ``follow_links``. The split stage checks the
    copied images in full.

    Returns:
        The scan of ``source``: the files copied, the ones left out with the reason, and the class
        folders left with nothing to copy (not created in ``target``).
    """
    found = dataset.scan_dataset(source, follow_links)
    checks = progress.bar(found.entries, desc="check files", unit="file")
    problems = [(entry, images.content_problem(source / entry.rel)) for entry in checks]
    kept = [entry for entry, problem in problems if problem is None]
    left_out = [(entry.rel, problem) for entry, problem in problems if problem is not None]
    if not kept:
        reasons = "; ".join(f"{n} {kind}" for kind, n in count_reasons(left_out).items())
        raise UserError(
            f"no images in {source}: all {len(left_out)} file(s) in its class folders are left out ({reasons})"
        )
    for entry in progress.bar(dataset.cap_per_class(kept, max_per_class), desc="copy images", unit="file"):
        files.link_or_copy(source / entry.rel, target / entry.rel)
    classes = {(e.split, e.label) for e in kept}
    emptied = {_class_folder(e) for e in found.entries if (e.split, e.label) not in classes}
    return dataclasses.replace(
        found,
        entries=tuple(kept),
        ignored=found.ignored + tuple(left_out),
        empty_classes=tuple(sorted(set(found.empty_classes) | emptied)),
    )


def count_reasons(left_out: tuple[tuple[str, str], ...] | list[tuple[str, str]]) -> dict[str, int]:
    """How many files were left out for each kind of reason (the reason up to its first detail), most first."""
    kinds = Counter(dataset.reason_kind(reason) for _, reason in left_out)
    return dict(sorted(kinds.items(), key=lambda item: (-item[1], item[0])))


def _class_folder(entry: dataset.Entry) -> str:
    """``[<split folder>/]<class>`` of an entry, as the source names it."""
    parts = entry.rel.split("/")
    return "/".join(parts[:2] if entry.split is not None else parts[:1])


def describe_left_out(left_out: tuple[tuple[str, str], ...], shown: int = 10) -> list[str]:
    """Console lines for the files a source had that were not copied: a count per reason, then the
    first ``shown`` files with their reasons (all of them are in MLflow's ``ignored_files.json``)."""
    counts = ", ".join(f"{n} {kind}" for kind, n in count_reasons(left_out).items())
    lines = [f"left out {len(left_out)} file(s): {counts}"]
    lines += [f"  left out {path}: {reason}" for path, reason in left_out[:shown]]
    if len(left_out) > shown:
        lines.append(f"  ... and {len(left_out) - shown} more (MLflow artifact ignored_files.json lists every one)")
    return lines
