"""Progress bars for long work: live on a terminal, a line every few seconds in logs."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def bar(iterable: Iterable[T] | None = None, **options: Any) -> tqdm:
    """A tqdm bar on stderr that stays readable when the output is a log file, not a terminal.

    Args:
        iterable: what to iterate over, or None for a manually updated bar.
        **options: passed to tqdm (``desc``, ``total``, ``unit``, ``unit_scale``, ...); ``file``
            replaces standard error.

    Returns:
        The progress bar.
    """
    stream = options.pop("file", sys.stderr)
    interactive = stream.isatty()
    options.setdefault("mininterval", 0.2 if interactive else 10.0)
    options.setdefault("dynamic_ncols", interactive)
    return tqdm(iterable, file=stream, **options)


def keras_verbosity() -> int:
    """Keras ``fit`` verbosity: a live progress bar on a terminal, one line per epoch in logs."""
    return 1 if sys.stdout.isatty() else 2
