"""The download stage's logic: bring images from the configured source into a class-per-folder tree.

Sources (``data.source``): ``fashion_mnist`` (Debian package or official URLs), ``url`` (a verified
archive) and ``folder`` (a local tree, hard-linked where possible).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from pipeline import archive, dataset, fashion_mnist, fetch, files, progress
from pipeline.config import DataParams
from pipeline.errors import UserError


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
            data.url, downloads / f"{data.sha256.lower()}.archive", sha256=data.sha256,
            retries=data.retries, timeout_s=data.timeout_s,
        )
        with tempfile.TemporaryDirectory(prefix="extract-", dir=downloads) as unpacked:
            archive.extract_archive(bundle, Path(unpacked))
            source = copy_classes(select_root(Path(unpacked), data.subdir), target, data.max_per_class)
    else:
        assert data.folder is not None  # guaranteed by DataParams.check
        source = copy_classes(select_root(Path(data.folder), data.subdir), target, data.max_per_class)
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


def copy_classes(source: Path, target: Path, max_per_class: int | None) -> dataset.Scan:
    """Link or copy the files of the class folders of ``source`` into ``target``, keeping the layout.

    Returns:
        The scan of ``source``: its files, the ones left out with the reason, and the empty class
        folders (not created in ``target``).
    """
    found = dataset.scan_dataset(source)
    chosen = dataset.cap_per_class(found.entries, max_per_class)
    for entry in progress.bar(chosen, desc="copy images", unit="file"):
        files.link_or_copy(source / entry.rel, target / entry.rel)
    return found
