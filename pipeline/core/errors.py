"""User-facing errors and the exit policy of every command-line entry point.

A ``UserError`` is a problem the user can fix (a params typo, a bad archive, a class with too few
images). Entry points print it as one message and exit with status 2, without a traceback; any
other exception is a bug and keeps its traceback. A full disk or an output folder the stage may
not write is the user's to fix too: ``run_cli`` reports it as one line naming the path, the free
space left there and what to do.
"""

from __future__ import annotations

import errno
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

USER_ERROR_EXIT = 2

#: Errors that only writing raises: the disk (or the quota, or the file-size limit) is full, or the filesystem is
#: mounted read-only.
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})
#: Refused by permissions: a write fault when a writer of ours raised it, or when the error names its file.
PERMISSION_ERRNOS = frozenset({errno.EACCES, errno.EPERM})

_WHY = {
    errno.ENOSPC: ("no space left on the device", "Free some space or point params.yaml's paths at another disk"),
    errno.EDQUOT: ("disk quota exceeded", "Free some of your quota or point params.yaml's paths at another disk"),
    errno.EFBIG: (
        "file too large for the filesystem or for the file-size limit (ulimit -f)",
        "Raise the limit or point params.yaml's paths at another filesystem",
    ),
    errno.EROFS: ("read-only filesystem", "Pick a writable folder in params.yaml's paths"),
    errno.EACCES: ("permission denied", "Make the folder writable or pick another one in params.yaml's paths"),
    errno.EPERM: ("operation not permitted", "Make the folder writable or pick another one in params.yaml's paths"),
}


class UserError(Exception):
    """A problem in the user's input, reported as a message rather than a traceback."""


class OutputNotWritable(OSError):
    """Writing an output failed (full disk, read-only or forbidden folder); ``filename`` is the output's path.

    The ``OSError`` raised deep inside a writer (zipfile, Keras, numpy) often names no file, or names
    a temporary one; the writers of ``pipeline.core.files`` know the output they were writing and
    re-raise the error as this, so the user reads which output failed. Still an ``OSError`` with the
    original ``errno``, so handlers of ``OSError`` keep working.
    """


def run_cli(main: Callable[[], object]) -> None:
    """Run ``main`` and turn user errors and write faults into one message and exit status 2.

    Args:
        main: the entry point's body.
    """
    try:
        main()
    except UserError as error:
        _exit_with(f"error: {error}")
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as error:
        fault = find_write_fault(error)
        if fault is None:
            raise
        _exit_with(describe_write_fault(fault))


def _exit_with(message: str) -> None:
    """Print ``message`` on stderr and exit with the user-error status."""
    print(message, file=sys.stderr)
    sys.exit(USER_ERROR_EXIT)


def find_write_fault(error: BaseException) -> OSError | None:
    """The ``OSError`` behind ``error`` that says an output could not be written, or None.

    The chain of causes is followed: an error raised while a stage cleans up after a full disk (its
    MLflow run marked FAILED, say) still has the full disk behind it, and that is what to report.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and _is_write_fault(current):
            return current
        current = current.__cause__ or current.__context__
    return None


def _is_write_fault(error: OSError) -> bool:
    """Whether ``error`` is a full disk or a refused write (a refusal only when a file is named: one with no
    file may come from anything, a socket or a process, and stays a bug with its traceback)."""
    if isinstance(error, OutputNotWritable) or error.errno in WRITE_ERRNOS:
        return True
    return error.errno in PERMISSION_ERRNOS and error.filename is not None


def describe_write_fault(error: OSError) -> str:
    """One line for a write fault: the path, the free space on its filesystem, what to do.

    Example: ``error: cannot write models/head.keras: no space left on the device (12 MB free on
    /data). Free some space or point params.yaml's paths at another disk, then run `dvc repro`
    again: finished stages are kept.``
    """
    why, advice = _WHY.get(error.errno or 0, (error.strerror or "write failed", "Check the folder"))
    if isinstance(error.filename, str | bytes | os.PathLike):
        path = Path(os.fsdecode(error.filename))
        # a refusal that no writer of ours reported may have been a read
        verb = "write" if isinstance(error, OutputNotWritable) or error.errno in WRITE_ERRNOS else "access"
        where, free = f"cannot {verb} {_shown(path)}", free_space(path)
    else:  # nothing named the file: the errno, and the filesystem the stage runs in
        name = errno.errorcode.get(error.errno or 0, str(error.errno))
        where = f"a write failed ({name}, no file named)"
        free = f"{free_space(Path.cwd())}, which holds the current folder"
    return f"error: {where}: {why} ({free}). {advice}, then run `dvc repro` again: finished stages are kept."


def _shown(path: Path) -> str:
    """``path`` relative to the current folder when it lies inside it (as params.yaml names it), else absolute."""
    absolute = os.path.abspath(path)
    relative = os.path.relpath(absolute)
    return absolute if relative == os.pardir or relative.startswith(os.pardir + os.sep) else relative


def free_space(path: Path) -> str:
    """Free space on the filesystem holding ``path`` (or where it would be created), e.g. ``"12 MB free on /data"``.

    Args:
        path: a file or folder, existing or not: its nearest existing ancestor is measured.
    """
    existing = Path(os.path.abspath(path))
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        free = shutil.disk_usage(existing).free
    except OSError:
        return "free space unknown"
    mount = existing
    while not os.path.ismount(mount) and mount != mount.parent:
        mount = mount.parent
    return f"{human_size(free)} free on {mount}"


def human_size(size: int) -> str:
    """A byte count the way ``df -H`` shows it: ``"0 B"``, ``"512 kB"``, ``"1.5 GB"`` (powers of 1000)."""
    value = float(size)
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if value < 1000 or unit == "PB":
            break
        value /= 1000
    return f"{value:.0f} {unit}" if unit == "B" or value >= 10 else f"{value:.1f} {unit}"
