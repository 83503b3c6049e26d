"""HTTP(S) downloads that are streamed, verified and retried.

A download streams to a temporary file beside its target with a progress bar and is renamed into
place only after it is complete and its sha256 matches, so an interrupted or corrupted transfer
never looks like a finished one.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from pipeline.core import files, progress
from pipeline.core.errors import UserError

_CHUNK = 1 << 16
_TRANSIENT = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, OSError)


class ChecksumMismatch(UserError):
    """The downloaded bytes are not the ones the params promise."""


def download(url: str, target: Path, *, sha256: str | None, retries: int, timeout_s: float) -> Path:
    """Download ``url`` to ``target`` unless a verified copy is already there.

    Args:
        url: an http(s) address.
        target: where the verified file ends up.
        sha256: the expected digest; None when the caller verifies the content itself.
        retries: further attempts after a transfer that breaks off or times out.
        timeout_s: socket timeout for connecting and for each read.

    Returns:
        ``target``.

    Raises:
        ChecksumMismatch: the content's digest differs from ``sha256`` (not retried).
        UserError: every attempt failed; the message names the URL and the last error.
    """
    target = Path(target)
    if sha256 and target.exists() and files.sha256_file(target) == sha256.lower():
        return target
    last_error: Exception | None = None
    for attempt in range(retries + 1):
        if attempt:
            wait = min(2.0**attempt, 30.0)
            print(f"download of {url} broke off ({last_error}); retry {attempt}/{retries} in {wait:.0f}s", flush=True)
            time.sleep(wait)
        try:
            return _download_once(url, target, sha256, timeout_s)
        except urllib.error.HTTPError as error:
            if error.code < 500:
                raise UserError(f"download of {url} failed: HTTP {error.code} {error.reason}") from None
            last_error = error
        except ChecksumMismatch:
            raise
        except _TRANSIENT as error:
            last_error = error
    raise UserError(f"download of {url} failed after {retries + 1} attempt(s): {last_error}")


def _download_once(url: str, target: Path, sha256: str | None, timeout_s: float) -> Path:
    """One attempt: stream to a temporary file, check length and digest, rename."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.partial-", dir=target.parent)
    digest = hashlib.sha256()
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "headstart"})
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(request, timeout=timeout_s) as response:
            expected = int(response.headers.get("Content-Length") or 0) or None
            received = 0
            with progress.bar(total=expected, unit="B", unit_scale=True, desc=f"download {target.name}") as bar:
                for chunk in iter(lambda: response.read(_CHUNK), b""):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
        if expected is not None and received != expected:
            raise http.client.IncompleteRead(b"", expected - received)
        if sha256 and digest.hexdigest() != sha256.lower():
            raise ChecksumMismatch(
                f"checksum mismatch for {url}: expected sha256 {sha256.lower()}, got {digest.hexdigest()} "
                f"({received} bytes); nothing was kept. Check data.sha256 or the URL."
            )
        os.replace(temporary, target)
        return target
    finally:
        Path(temporary).unlink(missing_ok=True)
