"""A single self-contained HTML report: images embedded as data URIs, inline CSS, no network.

Pure: values in, one string out (the analyze stage writes it with ``files.write_text``). The page is
Jinja2 templates (``templates/``, shipped in the package) filled with these values: autoescape
escapes every piece of user text, StrictUndefined makes a missing value an error rather than a blank,
and number formatting stays here as the templates' filters. The same inputs always give the same
bytes (no timestamps), so DVC sees a changed report only when its content changed. Unicode is kept
as UTF-8, not entities.
"""

from __future__ import annotations

import base64
import functools
import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html.parser import HTMLParser

import jinja2
import numpy as np
import pandas as pd

MISSING = "–"
NOTES_ID = "report_notes"  # The underscore keeps it out of the section-id alphabet: no clash possible.
_CONTENTS_ID = "report_contents"
_TEMPLATE = "report.html.j2"
_SECTION_ID = re.compile(r"[a-z0-9-]+")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_URL_ATTRIBUTES = frozenset({"src", "href", "srcset", "poster", "action", "formaction", "data", "background"})
_CSS_URL = re.compile(r"""url\(\s*(?:"([^"]*)"|'([^']*)'|([^)\s]*))\s*\)""", re.IGNORECASE)
# A srcset candidate (HTML spec): a URL (no whitespace; trailing commas end it), then descriptors up to a comma.
_SRCSET_CANDIDATE = re.compile(r"[\s,]*([^\s,]\S*)(?<!,)(?:,+|\s[^,]*,?|$)")
_CSS_IMPORT = re.compile(r"""@import\s+(?:"([^"]*)"|'([^']*)')""", re.IGNORECASE)


@dataclass(frozen=True)
class Image:
    """A figure: PNG bytes embedded as a data URI, with a caption (and alt text, the caption if empty)."""

    png: bytes
    caption: str
    alt: str = ""

    def __post_init__(self) -> None:
        if bytes(self.png[:8]) != _PNG_SIGNATURE:
            raise ValueError(f"image {self.caption!r}: the bytes are not a PNG file")


@dataclass(frozen=True)
class Table:
    """A data frame shown as an HTML table; only its first ``max_rows`` rows are shown."""

    frame: pd.DataFrame
    caption: str
    max_rows: int = 50

    def __post_init__(self) -> None:
        if self.max_rows < 1:
            raise ValueError(f"table {self.caption!r}: max_rows must be at least 1, not {self.max_rows}")


@dataclass(frozen=True)
class Section:
    """One titled part of the report; ``id`` is its anchor (lowercase letters, digits and hyphens)."""

    id: str
    title: str
    text: str = ""
    images: tuple[Image, ...] = ()
    tables: tuple[Table, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not _SECTION_ID.fullmatch(self.id):
            raise ValueError(f"section id {self.id!r} must match [a-z0-9-]+")


def build_report(
    title: str,
    subtitle: str,
    summary: Mapping[str, str | float | int],
    sections: Sequence[Section],
    notes: Sequence[str] = (),
) -> str:
    """Render a complete, self-contained HTML5 document.

    Args:
        title: the document title (``<title>`` and the page heading).
        subtitle: one line under the title (e.g. the dataset and model).
        summary: headline figures, shown as cards in the given order.
        sections: the report's parts, in order; their ids must be unique.
        notes: remarks listed in a closing "Notes" section (omitted when empty).

    Returns:
        The HTML document as a string.

    Raises:
        ValueError: two sections share an id.
        TypeError: ``notes`` is a single string rather than a sequence of strings.
    """
    if isinstance(notes, str):
        raise TypeError("notes must be a sequence of strings, not one string")
    sections, notes = tuple(sections), tuple(notes)
    _check_unique_ids(sections)
    contents = [(section.id, section.title) for section in sections] + ([(NOTES_ID, "Notes")] if notes else [])
    return (
        _environment()
        .get_template(_TEMPLATE)
        .render(
            title=title,
            subtitle=subtitle,
            summary=summary,
            contents=contents,
            contents_id=_CONTENTS_ID,
            sections=sections,
            notes=notes,
            notes_id=NOTES_ID,
        )
    )


def find_external_references(html: str) -> list[str]:
    """Every URL an HTML document would load or link to outside itself.

    Looks at URL-valued attributes (``src``, ``href``, ``srcset`` ...), ``style`` attributes and
    ``<style>`` blocks (``url(...)``, ``@import``). Text content is not scanned, so a caption that
    merely mentions ``src=http://...`` is not flagged.

    Args:
        html: the document.

    Returns:
        The values, in document order, that are neither ``data:`` URIs nor in-page ``#anchors``.
    """
    collector = _ReferenceCollector()
    collector.feed(html)
    collector.close()
    return [value for value in collector.values if not _is_internal(value)]


@dataclass(frozen=True)
class _Shown:
    """What a table's template shows: column names, the first rows, whether each row starts with its index."""

    header: list[str]
    rows: list[tuple[object, ...]]
    row_headers: bool
    hidden: int
    total: int


@functools.cache
def _environment() -> jinja2.Environment:
    """The templates next to this module, built on first use: autoescape on, a missing value an error."""
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("pipeline.evaluation", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    environment.filters.update(formatted=_format_value, paragraphs=_paragraphs, data_uri=_data_uri, shown=_shown)
    environment.tests["numeric"] = _is_number
    return environment


def _check_unique_ids(sections: Sequence[Section]) -> None:
    """Raise ``ValueError`` naming every section id used more than once."""
    counts = Counter(section.id for section in sections)
    repeated = sorted(section_id for section_id, count in counts.items() if count > 1)
    if repeated:
        raise ValueError(f"duplicate section ids: {', '.join(repeated)}")


def _paragraphs(text: str) -> list[str]:
    """Plain text to paragraphs; blank lines separate them."""
    blocks = re.split(r"\n\s*\n", text.replace("\r\n", "\n").strip())
    return [block.strip() for block in blocks if block.strip()]


def _data_uri(png: bytes) -> str:
    """PNG bytes as a base64 ``data:`` URI."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _shown(table: Table) -> _Shown:
    """The table's header and first ``max_rows`` rows; the index leads each row when it carries information."""
    frame = table.frame
    show_index = _shows_index(frame)
    names = ([_label(list(frame.index.names))] if show_index else []) + [_label(name) for name in frame.columns]
    rows = list(frame.head(table.max_rows).itertuples(index=show_index, name=None))
    return _Shown(names, rows, show_index, len(frame) - table.max_rows, len(frame))


def _shows_index(frame: pd.DataFrame) -> bool:
    """Show the index when it carries information: named, or not plain row numbers."""
    return any(name is not None for name in frame.index.names) or not pd.api.types.is_integer_dtype(frame.index)


def _label(value: object) -> str:
    """A column, index name or multi-level key as text (levels joined by " / ")."""
    if isinstance(value, (tuple, list)):
        return " / ".join("" if part is None else str(part) for part in value)
    return "" if value is None else str(value)


def _is_number(value: object) -> bool:
    """True for ints and floats (numpy's too), not for booleans."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _format_value(value: object) -> str:
    """Readable text for one value: 0.8123 -> "0.812", 12000 -> "12,000", NaN/None -> "–", a key "a / b"."""
    if isinstance(value, tuple):
        return _label(value)
    if pd.api.types.is_scalar(value) and pd.isna(value):
        return MISSING
    if not _is_number(value):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    number = float(value)  # type: ignore[arg-type]  # _is_number said it is one
    if math.isinf(number):
        return "∞" if number > 0 else "-∞"
    if abs(number) >= 1000:
        return f"{number:,.0f}"
    if 0 < abs(number) < 0.001:
        return f"{number:.2e}"
    return f"{number:.3f}"


def _is_internal(value: str) -> bool:
    """A ``data:`` URI or an in-page ``#anchor``: nothing outside the document is needed."""
    stripped = value.strip().lower()
    return stripped.startswith("data:") or stripped.startswith("#")


def _css_references(css: str) -> list[str]:
    """The ``url(...)`` and ``@import "..."`` targets in a piece of CSS, in order."""
    matches = sorted([*_CSS_URL.finditer(css), *_CSS_IMPORT.finditer(css)], key=lambda match: match.start())
    return [next(group for group in match.groups() if group is not None) for match in matches]


class _ReferenceCollector(HTMLParser):
    """Collects URL-valued attributes and CSS references, in document order."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.values: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._in_style = tag == "style"
        for name, value in attrs:
            if value is None:
                continue
            if name == "style":
                self.values.extend(_css_references(value))
            elif name == "srcset":
                self.values.extend(_SRCSET_CANDIDATE.findall(value))
            elif name in _URL_ATTRIBUTES:
                self.values.append(value)

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.values.extend(_css_references(data))
