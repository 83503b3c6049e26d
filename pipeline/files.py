"""Atomic file and folder writes, hashing and linking: the pipeline's small I/O edge.

Outputs are written beside their final place and renamed only when complete, so a stage that
fails or is killed never leaves a half-written output for DVC to cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

_CHUNK = 1 << 20


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
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes it private; the output is not
    replace_dir(staging, final)


def replace_dir(source: Path, final: Path) -> None:
    """Move folder ``source`` to ``final``, replacing whatever was there, by renames only."""
    previous = None
    if final.exists() or final.is_symlink():
        previous = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
        os.replace(final, previous / final.name)
    os.replace(source, final)
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)


def write_bytes(path: Path, data: bytes) -> None:
    """Write a binary file atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.partial-", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        _publish(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.partial-", dir=path.parent)
    os.close(handle)
    try:
        with zipfile.ZipFile(temporary, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
            for name, array in arrays.items():
                member = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                with archive.open(member, "w", force_zip64=True) as stream:
                    np.lib.format.write_array(stream, np.asanyarray(array), allow_pickle=False)
        _publish(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_yaml(path: Path, data: Any) -> None:
    """Write YAML atomically, keys in the order given, Unicode kept readable."""
    import yaml

    write_text(path, yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def read_yaml(path: Path) -> Any:
    """Read a YAML file (safe loader)."""
    import yaml

    return yaml.safe_load(Path(path).read_text(encoding="utf-8"))


def save_model(model: Any, path: Path) -> None:
    """Save a Keras model (``.keras``) atomically: written beside its place, then renamed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.stem}.partial-", dir=path.parent, suffix=path.suffix)
    os.close(handle)
    try:
        model.save(temporary)
        _publish(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)


def link_or_copy(source: Path, target: Path) -> None:
    """Hard-link ``source`` to ``target``; copy when a link is impossible (other device, no permission)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def save_figure(figure: Any, path: Path, dpi: int = 120) -> None:
    """Save a matplotlib figure as PNG atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.partial-", dir=path.parent, suffix=".png")
    os.close(handle)
    try:
        figure.savefig(temporary, dpi=dpi, format="png")
        _publish(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)
