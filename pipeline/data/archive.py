"""Safe extraction of .zip and .tar(.gz) archives.

Every member is checked before anything is written: absolute names, ``..`` components, links
that resolve outside the target (also through other links in the archive) and device files are
refused with an error naming the member, and then nothing at all is extracted.
"""

from __future__ import annotations

import posixpath
import re
import stat
import tarfile
import zipfile
from pathlib import Path

from pipeline.core.errors import UserError

_MAX_LINK_HOPS = 40


class UnsafeArchive(UserError):
    """An archive member would be written, or would point, outside the extraction folder."""


def extract_archive(archive: Path, target: Path) -> None:
    """Extract a zip or tar archive into ``target`` after checking every member.

    Args:
        archive: the archive file; its format is read from its content, not its name.
        target: an existing, empty folder.

    Raises:
        UnsafeArchive: a member is unsafe; nothing has been extracted.
        UserError: the file is neither a zip nor a tar archive, or is damaged.
    """
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as bundle:
                check_members(_zip_members(bundle))
                bundle.extractall(target)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as bundle:
                check_members(_tar_members(bundle))
                # The "data" filter repeats the safety checks at write time (defence in depth).
                bundle.extractall(target, filter="data")
        else:
            raise UserError(f"{archive} is neither a .zip nor a .tar/.tar.gz/.tgz archive")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as error:
        raise UserError(f"archive {archive} is damaged: {error}") from None


def check_members(members: list[tuple[str, str, str | None]]) -> None:
    """Refuse unsafe members.

    Args:
        members: ``(name, kind, link_target)`` per member; kind is ``file``, ``dir``, ``symlink``,
            ``hardlink`` or ``special``.

    Raises:
        UnsafeArchive: naming the first unsafe member.
    """
    links = {_normalise(name): target or "" for name, kind, target in members if kind == "symlink"}
    for name, kind, target in members:
        link_target = target or ""  # only links have a target
        if _is_absolute(name) or ".." in re.split(r"[/\\]", name):
            raise UnsafeArchive(
                f"archive member '{name}' would be written outside the target folder; nothing extracted"
            )
        if kind == "special":
            raise UnsafeArchive(f"archive member '{name}' is a device or pipe; nothing extracted")
        if kind == "symlink" and _escapes(posixpath.join(posixpath.dirname(_normalise(name)), link_target), links):
            raise UnsafeArchive(
                f"archive member '{name}' is a link pointing outside the target ({link_target}); nothing extracted"
            )
        if kind == "hardlink" and (_is_absolute(link_target) or _escapes(link_target, links)):
            raise UnsafeArchive(
                f"archive member '{name}' is a hard link to '{link_target}' outside the target; nothing extracted"
            )


def _zip_members(bundle: zipfile.ZipFile) -> list[tuple[str, str, str | None]]:
    members: list[tuple[str, str, str | None]] = []
    for info in bundle.infolist():
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            members.append((info.filename, "symlink", bundle.read(info).decode("utf-8", "replace")))
        else:
            members.append((info.filename, "dir" if info.is_dir() else "file", None))
    return members


def _tar_members(bundle: tarfile.TarFile) -> list[tuple[str, str, str | None]]:
    members: list[tuple[str, str, str | None]] = []
    for info in bundle.getmembers():
        if info.issym():
            members.append((info.name, "symlink", info.linkname))
        elif info.islnk():
            members.append((info.name, "hardlink", info.linkname))
        elif info.isdir() or info.isfile():
            members.append((info.name, "dir" if info.isdir() else "file", None))
        else:
            members.append((info.name, "special", None))
    return members


def _is_absolute(name: str) -> bool:
    return name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) is not None


def _normalise(name: str) -> str:
    return posixpath.normpath(name.replace("\\", "/"))


def _escapes(path: str, links: dict[str, str]) -> bool:
    """Resolve ``path`` (relative to the archive root) through the archive's own symlinks."""
    if _is_absolute(path):
        return True
    pending = [p for p in path.replace("\\", "/").split("/") if p not in ("", ".")]
    resolved: list[str] = []
    hops = 0
    while pending:
        part = pending.pop(0)
        if part == "..":
            if not resolved:
                return True
            resolved.pop()
            continue
        candidate = "/".join([*resolved, part])
        if candidate in links:
            hops += 1
            target = links[candidate]
            if hops > _MAX_LINK_HOPS or _is_absolute(target):
                return True
            pending = [p for p in target.replace("\\", "/").split("/") if p not in ("", ".")] + pending
            continue
        resolved.append(part)
    return False
