"""What every chart shares: fonts that can draw class names in any script, literal text, PNG rendering.

The charts themselves live with their users (``pipeline.data.charts``, ``pipeline.evaluation.charts``); they
are built with matplotlib's object API (no global pyplot state). Characters that no installed font can draw
are reported by ``to_png`` and ``missing_glyphs``, so a report can say so instead of showing empty boxes.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import re
import warnings
from collections.abc import Iterable, Iterator

import matplotlib
import matplotlib.font_manager
from matplotlib.figure import Figure
from matplotlib.ft2font import FT2Font

# Tried in order for each glyph; the first installed ones are used (CJK class names need a CJK font).
_FONT_CANDIDATES = (
    "DejaVu Sans",
    "Noto Sans CJK JP",
    "Noto Sans CJK SC",
    "Noto Sans CJK TC",
    "WenQuanYi Zen Hei",
    "Droid Sans Fallback",
    "Noto Sans",
)
# matplotlib >= 3.6: "Glyph 29483 (\N{CJK UNIFIED IDEOGRAPH-732B}) missing from font(s) DejaVu Sans."
# older releases: "Glyph 29483 missing from current font."
_GLYPH_WARNING = re.compile(r"Glyph (\d+)\b.*missing from")


def font_families() -> list[str]:
    """The installed candidate font families, in fallback order (``["sans-serif"]`` if none is)."""
    installed = {font.name for font in matplotlib.font_manager.fontManager.ttflist}
    return [name for name in _FONT_CANDIDATES if name in installed] or ["sans-serif"]


@contextlib.contextmanager
def unicode_fonts() -> Iterator[None]:
    """Use every installed candidate font as a fallback chain while figures are built or drawn."""
    # CJK fonts ship one weight; matplotlib logs a warning per lookup that it used the one there is.
    logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)
    with matplotlib.rc_context({"font.family": font_families()}):
        yield


def plain_text(text: str) -> str:
    """Escape ``$`` so that a class name or caption is drawn literally, never parsed as mathtext."""
    return text.replace("$", r"\$")


def missing_glyphs(texts: Iterable[str]) -> frozenset[str]:
    """The characters of ``texts`` that no installed candidate font can draw.

    Args:
        texts: strings to check (a single string is checked character by character).

    Returns:
        Printable, non-space characters missing from the charmap of every font ``unicode_fonts`` uses.
    """
    charmaps = [_charmap(path) for path in _font_files()]
    characters = {c for text in texts for c in text if c.isprintable() and not c.isspace()}
    return frozenset(c for c in characters if not any(ord(c) in charmap for charmap in charmaps))


def to_png(figure: Figure, dpi: int = 110) -> tuple[bytes, frozenset[str]]:
    """Render a figure to PNG and report the characters that were drawn as empty boxes.

    Args:
        figure: the figure to render.
        dpi: resolution of the image.

    Returns:
        The PNG bytes and the characters no installed font could draw, taken from matplotlib's
        "Glyph ... missing from font(s)" warnings while drawing (other warnings are passed on).
    """
    buffer = io.BytesIO()
    with unicode_fonts(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # the default filter would show a repeated glyph only once
        figure.savefig(buffer, format="png", dpi=dpi)
    missing = set()
    for warning in caught:
        match = _GLYPH_WARNING.search(str(warning.message))
        if match:
            missing.add(chr(int(match.group(1))))
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return buffer.getvalue(), frozenset(missing)


def _font_files() -> list[str]:
    """The font file matplotlib picks for each family of ``font_families()``."""
    manager = matplotlib.font_manager.fontManager
    return [manager.findfont(matplotlib.font_manager.FontProperties(family=name)) for name in font_families()]


@functools.lru_cache(maxsize=16)
def _charmap(path: str) -> frozenset[int]:
    """The code points a font file maps to glyphs."""
    return frozenset(FT2Font(path).get_charmap())
