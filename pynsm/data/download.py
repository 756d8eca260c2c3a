"""Checksummed, atomic downloads with a progress bar, and safe archive extraction.

A download streams into a temporary file beside its destination, is hashed on the
way, and is renamed into place only when the transfer is complete and the
checksum matches; on any failure (a checksum mismatch, a connection cut short,
Ctrl-C) the temporary file is removed. So the destination either holds verified
bytes or does not exist: a killed download leaves nothing half-written that a
later run could mistake for data.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tarfile
import tempfile
import urllib.request
from collections.abc import Iterable
from typing import Any

# the text bar: tqdm.auto warns at import in a kernel without ipywidgets
from tqdm.std import tqdm

__all__ = ["download_file", "extract_members", "file_digest"]

_CHUNK = 1 << 20


def file_digest(path: str | os.PathLike[str], algorithm: str = "md5") -> str:
    """Hex digest of a file, read in chunks (``md5`` or ``sha256``)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_file(
    url: str,
    destination: str | os.PathLike[str],
    *,
    md5: str | None = None,
    sha256: str | None = None,
    progress: bool = True,
    timeout: float = 60.0,
) -> str:
    """Download ``url`` to ``destination`` atomically, checking its checksum.

    Args:
        url: ``http(s)://`` address.
        destination: File to create (its folder is created if needed).
        md5: Expected MD5 hex digest (as the datasets publish them), or ``None``.
        sha256: Expected SHA-256 hex digest, or ``None``. At least one is needed:
            unverified bytes are never kept.
        progress: Show a tqdm progress bar.
        timeout: Seconds without data before the transfer is abandoned.

    Returns:
        ``destination`` as a string.

    Raises:
        ValueError: no checksum was given, the transfer ended early or the
            checksum does not match (nothing is left at ``destination``).
        OSError: the network or the disk failed (nothing is left either).

    Example:
        >>> import os, tempfile
        >>> from pynsm.data.download import download_file
        >>> folder = tempfile.mkdtemp()
        >>> download_file("file:///dev/null", os.path.join(folder, "empty"),
        ...               md5="d41d8cd98f00b204e9800998ecf8427e", progress=False)
        ... # doctest: +ELLIPSIS
        '.../empty'
    """
    if md5 is None and sha256 is None:
        raise ValueError(
            "download_file needs md5 or sha256: unverified bytes are never kept"
        )
    destination = os.fspath(destination)
    folder = os.path.dirname(os.path.abspath(destination))
    os.makedirs(folder, exist_ok=True)
    digest = hashlib.new("md5" if md5 is not None else "sha256")
    expected = (md5 if md5 is not None else sha256 or "").lower()
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".pynsm-download-", suffix=".part")
    try:
        try:
            received, total = _stream(url, timeout, fd, digest, destination, progress)
        except http.client.HTTPException as exc:  # e.g. IncompleteRead: not OSError
            raise OSError(f"download of {url} failed: {exc!r}") from exc
        if total is not None and received != total:
            raise ValueError(
                f"download of {url} ended after {received} of {total} bytes"
            )
        if digest.hexdigest() != expected:
            raise ValueError(
                f"checksum mismatch for {url}: expected {digest.name} {expected}, "
                f"got {digest.hexdigest()} (nothing was kept)"
            )
        os.replace(tmp, destination)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return destination


def _stream(
    url: str, timeout: float, fd: int, digest: Any, destination: str, progress: bool
) -> tuple[int, int | None]:
    """Copy the response into ``fd`` and ``digest``; ``(received, announced)``."""
    with os.fdopen(fd, "wb") as out:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            received = 0
            with tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                desc=os.path.basename(destination),
                disable=not progress,
            ) as bar:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    return received, total


def extract_members(
    archive: str | os.PathLike[str], members: Iterable[str], folder: str
) -> None:
    """Extract the named regular files of a ``.tar(.gz)`` archive, atomically each.

    Only the listed members are read, and only if they are regular files: no
    links, no absolute paths or ``..`` that could write outside ``folder``.

    Raises:
        ValueError: a member is missing or is not a regular file.
    """
    with tarfile.open(archive, "r:*") as tar:
        for name in members:
            if os.path.isabs(name) or ".." in name.split("/"):
                raise ValueError(f"refusing archive member path {name!r}")
            try:
                info = tar.getmember(name)
            except KeyError:
                raise ValueError(f"{archive}: no member {name!r}") from None
            if not info.isfile():
                raise ValueError(f"{archive}: member {name!r} is not a regular file")
            target = os.path.join(folder, name)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            source = tar.extractfile(info)
            assert source is not None  # a regular file always has contents
            fd, tmp = tempfile.mkstemp(
                dir=os.path.dirname(target), prefix=".pynsm-extract-"
            )
            try:
                with os.fdopen(fd, "wb") as out, source:
                    shutil.copyfileobj(source, out, _CHUNK)
                os.replace(tmp, target)
            except BaseException:
                if os.path.exists(tmp):
                    os.remove(tmp)
                raise
