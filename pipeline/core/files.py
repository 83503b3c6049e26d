"""Atomic file and folder writes, hashing and linking: the pipeline's small I/O edge.

Outputs are written beside their final place and renamed only when complete, so a stage that
fails or is killed never leaves a half-written output for DVC to cache. A write that fails for want
of space or permission is re-raised as ``OutputNotWritable`` naming the output, not the temporary
(``run_cli`` prints it as one line).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.core.errors import PERMISSION_ERRNOS, WRITE_ERRNOS, OutputNotWritable

_CHUNK = 1 << 20
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip member can carry: stamped on every member written here
_PARTIAL = ".partial-"  # temporaries are named ".<final name>.partial-<random>" (git- and dvc-ignored)


def _umask() -> int:
    """The process's umask (reading it means setting it; it is put back at once)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _publish(temporary: str | Path, path: Path) -> None:
    """Give a finished temporary file the permissions of a normally created file, then rename it into place.

    ``mkstemp`` creates files readable by their owner only; outputs are shared (DVC cache, a team's
    remote, a report opened by others), so they get the usual ``0o666 & ~umask``.
    """
    os.chmod(temporary, 0o666 & ~_umask())
    os.replace(temporary, path)


def _temporary_prefix(final: Path) -> str:
    """The name prefix of ``final``'s temporaries (``.gitignore`` and ``.dvcignore`` match it)."""
    return f".{final.name}{_PARTIAL}"


def _remove_leftovers(final: Path) -> None:
    """Remove temporaries of ``final`` that a killed run left behind (SIGKILL allows no clean-up).

    Only for stage outputs (``staged_dir``, ``save_model``): DVC runs one stage at a time per
    repository, so any temporary of a stage output that exists when the stage starts writing it is
    a leftover. Files that other processes may write at the same moment (caches shared between
    repositories) are left alone.
    """
    for leftover in final.parent.glob(f"{glob.escape(_temporary_prefix(final))}*"):
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


@contextlib.contextmanager
def _writing(path: Path, reading: Path | None = None) -> Iterator[None]:
    """Re-raise a write that fails for want of space or permission as ``OutputNotWritable`` naming ``path``.

    The ``OSError`` from deep inside a writer (zipfile, Keras, numpy) often names no file, or the
    temporary beside ``path``; the user needs the output it was for. An error naming ``reading``
    (the file being copied) is a failed read and stays as it is.
    """
    try:
        yield
    except OutputNotWritable:
        raise
    except OSError as error:
        if error.errno not in WRITE_ERRNOS | PERMISSION_ERRNOS or _names(error, reading):
            raise
        raise OutputNotWritable(error.errno, error.strerror, str(path)) from error


@contextlib.contextmanager
def _atomic_file(path: Path, suffix: str = "", stage_output: bool = False) -> Iterator[str]:
    """A temporary file beside ``path`` for the block to fill, renamed into place when the block ends and removed
    if it raises; a write fault names ``path`` (``_writing``).

    Args:
        path: the output.
        suffix: the temporary's suffix (some writers pick the format by it).
        stage_output: first remove the temporaries a killed run left (``_remove_leftovers``).
    """
    with _writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        if stage_output:
            _remove_leftovers(path)
        temporary = _new_file(_temporary_prefix(path), path.parent, suffix)
        try:
            yield temporary
            _publish(temporary, path)
        finally:
            Path(temporary).unlink(missing_ok=True)


def _names(error: BaseException, path: Path | None) -> bool:
    """Whether ``error`` is an ``OSError`` about ``path``."""
    filename = getattr(error, "filename", None)
    return path is not None and isinstance(filename, str | bytes) and Path(os.fsdecode(filename)) == Path(path)


def _in_staging(error: BaseException, staging: Path, final: Path) -> OutputNotWritable | None:
    """A write fault raised while a staged folder was filled, renamed for the final folder, or None.

    Faults that name a file inside ``staging`` get the file's final path; a full disk that names no
    file is ``final``'s. Any other error (a refused read of a source, say) is not a write fault here.
    """
    if not isinstance(error, OSError) or error.errno not in WRITE_ERRNOS | PERMISSION_ERRNOS:
        return None
    if not isinstance(error.filename, str | bytes):
        return OutputNotWritable(error.errno, error.strerror, str(final)) if error.errno in WRITE_ERRNOS else None
    name, root = (Path(os.path.abspath(os.fsdecode(p))) for p in (error.filename, staging))
    if not name.is_relative_to(root):
        return error if isinstance(error, OutputNotWritable) else None
    return OutputNotWritable(error.errno, error.strerror, str(final / name.relative_to(root)))


def sha256_file(path: Path) -> str:
    """The sha256 hex digest of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def staged_dir(final: Path) -> Iterator[Path]:
    """Yield an empty temporary folder that replaces ``final`` only if the block succeeds.

    Args:
        final: the folder to create or replace.

    Yields:
        A fresh folder on the same filesystem as ``final``; removed if the block raises.
    """
    final = Path(final)
    with _writing(final):
        final.parent.mkdir(parents=True, exist_ok=True)
        _remove_leftovers(final)
        staging = Path(tempfile.mkdtemp(prefix=_temporary_prefix(final), dir=final.parent))
    try:
        yield staging
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        fault = _in_staging(error, staging, final)
        if fault is None or fault is error:
            raise
        raise fault from error
    with _writing(final):
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes it private; the output is not
        replace_dir(staging, final)


def replace_dir(source: Path, final: Path) -> None:
    """Move folder ``source`` to ``final``, replacing whatever was there, by renames only."""
    previous = None
    if final.exists() or final.is_symlink():
        previous = Path(tempfile.mkdtemp(prefix=f".{final.name}{_PARTIAL}old-", dir=final.parent))
        os.replace(final, previous / final.name)
    os.replace(source, final)
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)


def write_bytes(path: Path, data: bytes) -> None:
    """Write a binary file atomically (temporary file, then rename)."""
    with _atomic_file(Path(path)) as temporary, open(temporary, "wb") as stream:
        stream.write(data)


def write_text(path: Path, text: str) -> None:
    """Write a UTF-8 text file atomically, line endings as given."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically: sorted keys, Unicode kept readable, trailing newline."""
    write_text(path, json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def read_json(path: Path) -> Any:
    """Read a JSON file written by ``write_json``."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def read_csv(path: Path, text_columns: tuple[str, ...] = ()) -> pd.DataFrame:
    """Read a CSV; ``text_columns`` stay strings exactly as written (a class named "NA" or "1" too).

    No value is read as missing: the files this reads hold no gaps.
    """
    return pd.read_csv(path, dtype={name: str for name in text_columns}, keep_default_na=False)


def write_csv(path: Path, frame: pd.DataFrame) -> None:
    """Write a data frame as CSV atomically, without the index."""
    write_text(path, frame.to_csv(index=False, lineterminator="\n"))


def write_npz(path: Path, **arrays: np.ndarray) -> None:
    """Write arrays as an uncompressed ``.npz`` atomically and byte-reproducibly.

    ``numpy.savez`` stamps each member with the current time; here every member gets a fixed
    timestamp, so equal arrays give equal files (and equal DVC hashes). Arrays are streamed in
    chunks, never copied whole. Object arrays are refused, so reading never needs pickle.
    """
    with (
        _atomic_file(Path(path)) as temporary,
        zipfile.ZipFile(temporary, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive,
    ):
        for name, array in arrays.items():
            member = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_EPOCH)
            with archive.open(member, "w", force_zip64=True) as stream:
                np.lib.format.write_array(stream, np.asanyarray(array), allow_pickle=False)


def write_npy_blocks(path: Path, blocks: Iterable[np.ndarray], rows: int, width: int, dtype: str) -> None:
    """Write a ``rows`` x ``width`` array as a ``.npy`` file atomically, block of rows by block of rows.

    The header goes first, then each block's bytes as it comes, so memory holds one block at a
    time, never the array; the bytes equal ``numpy.save``'s of the whole array.

    Raises:
        ValueError: the blocks do not add up to ``rows`` rows of ``width`` values.
    """
    path = Path(path)
    with _atomic_file(path) as temporary:
        with open(temporary, "wb") as stream:
            header = {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": (rows, width)}
            np.lib.format.write_array_header_1_0(stream, header)
            written = 0
            for block in blocks:
                values = np.ascontiguousarray(block, dtype=dtype)
                if values.ndim != 2 or values.shape[1] != width:
                    raise ValueError(f"{path.name}: a block of shape {values.shape}, expected (n, {width})")
                stream.write(values.data)
                written += len(values)
        if written != rows:
            raise ValueError(f"{path.name}: {written} rows written, {rows} expected")


def write_yaml(path: Path, data: Any) -> None:
    """Write YAML atomically, keys in the order given, Unicode kept readable."""
    import yaml

    write_text(path, yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def read_yaml(path: Path) -> Any:
    """Read a YAML file (safe loader)."""
    import yaml

    return yaml.safe_load(Path(path).read_text(encoding="utf-8"))


def save_model(model: Any, path: Path) -> None:
    """Save a Keras model (``.keras``) atomically and byte-reproducibly.

    Keras writes the time of saving (``date_saved`` in ``metadata.json``, the weights member's zip
    date) and memory addresses (the ids of shared objects in ``config.json``) into the archive; it is
    rewritten without them, so the same model gives the same bytes, and DVC the same hash, on every
    run. Written beside its place, then renamed.
    """
    path = Path(path)
    with _atomic_file(path, path.suffix, stage_output=True) as temporary:
        saved = _new_file(_temporary_prefix(path), path.parent, path.suffix)  # Keras's own archive, with dates
        try:
            model.save(saved)
            _copy_keras_archive_without_dates(Path(saved), Path(temporary))
        finally:
            Path(saved).unlink(missing_ok=True)


def _new_file(prefix: str, folder: Path, suffix: str) -> str:
    """Create an empty temporary file and return its name."""
    handle, name = tempfile.mkstemp(prefix=prefix, dir=folder, suffix=suffix)
    os.close(handle)
    return name


def _copy_keras_archive_without_dates(source: Path, target: Path) -> None:
    """Copy a ``.keras`` zip member by member, leaving out what differs between equal models.

    Every member is dated ``_ZIP_EPOCH``; ``date_saved`` is dropped from ``metadata.json`` (Keras
    does not read it back); in ``config.json`` the ids of shared objects, which Keras takes from
    memory addresses, are renumbered in order of appearance. Weights are copied unchanged.
    """
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w", allowZip64=True) as new:
        for info in old.infolist():
            member = zipfile.ZipInfo(info.filename, date_time=_ZIP_EPOCH)
            member.compress_type, member.external_attr = info.compress_type, info.external_attr
            if info.filename == "metadata.json":
                metadata = {k: v for k, v in json.loads(old.read(info)).items() if k != "date_saved"}
                new.writestr(member, json.dumps(metadata))
            elif info.filename == "config.json":
                new.writestr(member, json.dumps(_renumber_shared_objects(json.loads(old.read(info)), {})))
            else:
                member.file_size = info.file_size  # tells ``open`` whether the member needs ZIP64
                with old.open(info) as reader, new.open(member, "w") as writer:
                    shutil.copyfileobj(reader, writer, _CHUNK)


def _renumber_shared_objects(value: Any, numbers: dict[int, int]) -> Any:
    """``value`` with every ``shared_object_id`` replaced by 1, 2, ... in order of first appearance
    (the same object keeps the same number, which is all Keras needs to share it again on loading)."""
    if isinstance(value, dict):
        return {
            key: numbers.setdefault(item, len(numbers) + 1)
            if key == "shared_object_id" and isinstance(item, int)
            else _renumber_shared_objects(item, numbers)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_renumber_shared_objects(item, numbers) for item in value]
    return value


def link_or_copy(source: Path, target: Path) -> None:
    """Hard-link ``source`` to ``target``; copy when a link is impossible (other device, no permission).

    A copy that fails while writing (a full disk) is removed, not left behind as a truncated file.
    """
    with _writing(target, reading=source):
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, target)
            return
        except OSError:
            pass
        try:
            shutil.copy2(source, target)
        except BaseException as error:
            if not _names(error, source):
                target.unlink(missing_ok=True)
            raise


def save_figure(figure: Any, path: Path, dpi: int = 120) -> None:
    """Save a matplotlib figure as PNG atomically."""
    with _atomic_file(Path(path), ".png") as temporary:
        figure.savefig(temporary, dpi=dpi, format="png")
