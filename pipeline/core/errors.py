"""User-facing errors and the exit policy of every command-line entry point.

A ``UserError`` is a problem the user can fix (a params typo, a bad archive, a class with too few
images). Entry points print it as one message and exit with status 2, without a traceback; any
other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

USER_ERROR_EXIT = 2


class UserError(Exception):
    """A problem in the user's input, reported as a message rather than a traceback."""


def run_cli(main: Callable[[], object]) -> None:
    """Run ``main`` and turn user errors into one message and exit status 2.

    Args:
        main: the entry point's body.
    """
    try:
        main()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(USER_ERROR_EXIT)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
