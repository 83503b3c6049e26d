"""The review file: a person's decisions about single images, which the split stage obeys.

``data/review.yaml`` (``paths.review``, versioned with git) is a YAML list; each entry names one image
by its path as the split CSVs write it and says what to do with it::

    - path: data/raw/train/Shirt/01234.png
      relabel: T-shirt/top          # file it under this class instead
      note: a T-shirt, not a shirt  # optional, kept in the split report
    - path: data/raw/test/Bag/00042.png
      exclude: true                 # leave it out of every split

The audit stage writes ``reports/review_suggestions.yaml`` in the same format, every line commented
out (``format_entries(..., commented=True)``): accepting a suggestion is copying its lines here and
removing the leading ``# ``. A bad entry stops the split stage before anything is written
(``read_review``, ``check_entries``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.core.errors import UserError

EXCLUDE, RELABEL = "exclude", "relabel"
_KEYS = ("path", EXCLUDE, RELABEL, "note")


@dataclass(frozen=True)
class Entry:
    """One decision: ``action`` is ``exclude`` or ``relabel`` (to ``label``)."""

    path: str
    action: str
    label: str | None = None
    note: str | None = None

    def describe(self, number: int) -> str:
        """How messages name it: 'data/review.yaml entry 3 (data/raw/...)'."""
        return f"entry {number} ({self.path})"


def read_review(path: Path) -> list[Entry]:
    """Read and check the review file's structure; a missing or empty file is no decisions.

    An entry that is neither ``exclude`` nor ``relabel`` and a path listed twice stop the split stage with
    one message naming the entry (exit status 2), before anything is written; so does a path that is not an
    image of the raw data or a class that is not one (``check_entries``).

    Raises:
        UserError: the file is not YAML, not a list, or an entry is malformed (the entry is named).
    """
    if not path.is_file():
        return []
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise UserError(f"{path}: not valid YAML: {error}") from None
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise UserError(f"{path}: must be a list of entries ('- path: ...'), found {type(raw).__name__}")
    entries = [_parse_entry(item, number, path) for number, item in enumerate(raw, start=1)]
    seen: dict[str, int] = {}
    for number, entry in enumerate(entries, start=1):
        if entry.path in seen:
            raise UserError(f"{path}: {entry.describe(number)} repeats entry {seen[entry.path]}; keep one of the two")
        seen[entry.path] = number
    return entries


def _parse_entry(item: Any, number: int, source: Path) -> Entry:
    where = f"{source}: entry {number}"
    if not isinstance(item, dict):
        raise UserError(f"{where}: must be a mapping with 'path' and 'exclude: true' or 'relabel: <class>'")
    if not isinstance(item.get("path"), str) or not item["path"].strip():
        raise UserError(f"{where}: needs 'path', the image's path as in data/splits/*.csv")
    where = f"{where} ({item['path']})"
    unknown = sorted(set(item) - set(_KEYS))
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(map(str, unknown))}; allowed: {', '.join(_KEYS)}")
    note = item.get("note")
    if note is not None and not isinstance(note, str | int | float):
        raise UserError(f"{where}: 'note' must be text")
    excluded, relabel = item.get(EXCLUDE), item.get(RELABEL)
    if excluded not in (None, True):
        raise UserError(f"{where}: 'exclude' takes only true (delete the entry to keep the image)")
    if relabel is not None and not (isinstance(relabel, str) and relabel):
        raise UserError(f"{where}: 'relabel' must be a class name")
    if (excluded is None) == (relabel is None):
        raise UserError(f"{where}: give exactly one of 'exclude: true' and 'relabel: <class>'")
    action = EXCLUDE if excluded else RELABEL
    return Entry(item["path"], action, relabel, None if note is None else str(note))


def check_entries(entries: Sequence[Entry], paths: Iterable[str], classes: Iterable[str], source: str | Path) -> None:
    """Every entry must name an image of the raw data and, to relabel, one of its classes.

    Raises:
        UserError: the first entry that does not (with close matches for a mistyped class).
    """
    known, names = set(paths), sorted(set(classes))
    for number, entry in enumerate(entries, start=1):
        if entry.path not in known:
            raise UserError(
                f"{source}: {entry.describe(number)}: no such image in the raw data; paths are as in "
                "data/splits/*.csv (e.g. data/raw/<class>/<file>)"
            )
        if entry.action == RELABEL and entry.label not in names:
            raise UserError(
                f"{source}: {entry.describe(number)}: 'relabel: {entry.label}' is not a class; "
                f"the classes are {', '.join(names)}"
            )


def apply_entries(items: Sequence[Any], entries: Sequence[Entry]) -> tuple[list[Any], list[dict[str, Any]]]:
    """The images with the decisions applied, and what was applied (for the split report).

    Args:
        items: verified images with ``path`` and ``label`` (``split.Item``); relabelled ones are copied.
        entries: checked with ``check_entries``.

    Returns:
        The images left, relabelled where asked, in the order given; one record per entry that
        applied (an entry for an image the split stage had excluded already applies to nothing).
    """
    by_path = {e.path: e for e in entries}
    kept: list[Any] = []
    applied: list[dict[str, Any]] = []
    for item in items:
        entry = by_path.get(item.path)
        if entry is None:
            kept.append(item)
            continue
        record = {"path": item.path, "action": entry.action, "label": item.label}
        if entry.action == RELABEL:
            record["relabelled_to"] = entry.label
            kept.append(dataclasses.replace(item, label=entry.label))
        if entry.note:
            record["note"] = entry.note
        applied.append(record)
    return kept, applied


def format_entries(entries: Sequence[Entry], commented: bool = False) -> str:
    """Entries as the review file writes them; ``commented`` puts ``# `` before every line."""
    blocks = []
    for entry in entries:
        item: dict[str, Any] = {"path": entry.path}
        item[entry.action] = True if entry.action == EXCLUDE else entry.label
        if entry.note:
            item["note"] = entry.note
        text = yaml.safe_dump([item], sort_keys=False, allow_unicode=True, width=1000)
        blocks.append("".join(f"# {line}" if commented else line for line in text.splitlines(keepends=True)))
    return "".join(blocks)
