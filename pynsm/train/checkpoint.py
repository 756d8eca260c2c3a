"""Atomic, checksummed checkpoints, read back with ``weights_only=True``."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import socket
import tempfile
import time
from typing import Any

import torch

from pynsm.train.errors import CheckpointError

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "payload_digest",
]

#: Marker stored in every checkpoint so that files from elsewhere are recognised.
CHECKPOINT_FORMAT = "pynsm.train.checkpoint/1"
# temporary files of another host are only removed once this old (seconds): their
# writer cannot be asked whether it is alive
_FOREIGN_TEMP_AGE = 3600.0
# how torch's zip writer (caffe2 ``PyTorchStreamWriter``) names itself in errors
_TORCH_WRITER = "inline_container"


def payload_digest(obj: Any) -> str:
    """SHA-256 of a checkpoint payload's content (not of its file encoding).

    Covers the structure (dict keys in order, list/tuple lengths, the type of
    every leaf), every tensor's dtype, shape and bytes, and every number and
    string, so any flipped bit in the stored data changes it, while re-saving
    the same content in another ``torch.save`` encoding does not.

    Example:
        >>> import torch
        >>> a = payload_digest({"w": torch.zeros(3), "epoch": 1})
        >>> a == payload_digest({"w": torch.zeros(3), "epoch": 1})
        True
        >>> a == payload_digest({"w": torch.tensor([0.0, 0.0, 1e-45]), "epoch": 1})
        False
    """
    digest = hashlib.sha256()
    _update(digest, obj)
    return digest.hexdigest()


def _update(digest: Any, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        data = obj.detach().cpu()
        if data.layout != torch.strided:  # sparse: hash what it stands for
            data = data.to_dense()
        data = data.contiguous()
        digest.update(f"T{data.dtype}{tuple(data.shape)}|".encode())
        if data.numel():
            digest.update(data.reshape(-1).view(torch.uint8).numpy().data)
    elif isinstance(obj, dict):
        digest.update(f"D{len(obj)}|".encode())
        for key, value in obj.items():
            _update(digest, key)
            _update(digest, value)
    elif isinstance(obj, (list, tuple)):
        digest.update(f"{type(obj).__name__}{len(obj)}|".encode())
        for item in obj:
            _update(digest, item)
    elif isinstance(obj, (bytes, bytearray)):
        digest.update(b"B%d|" % len(obj) + bytes(obj))
    elif isinstance(obj, float):
        digest.update(f"F{obj.hex()}|".encode())
    else:  # str, int, bool, None, dtypes, devices: their repr is exact
        text = repr(obj)
        digest.update(f"{type(obj).__name__}{len(text)}|{text}".encode())


def _temp_prefix(base: str) -> str:
    return f".{base}."


def _remove_stale_temps(folder: str, base: str) -> None:
    """Delete temporary files left by saves that were killed (kill -9, power cut).

    A temporary file is named ``.<base>.<host>-<pid>-<random>.tmp``; it is stale
    when its writer on this host is no longer running (or is this process), or
    when it comes from another host and is over an hour old.
    """
    prefix, host, now = _temp_prefix(base), socket.gethostname(), time.time()
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        if not (name.startswith(prefix) and name.endswith(".tmp")):
            continue
        full = os.path.join(folder, name)
        owner = name[len(prefix) : -len(".tmp")].rsplit("-", 2)
        stale = True
        if len(owner) == 3 and owner[1].isdigit():
            writer_host, pid = owner[0], int(owner[1])
            if writer_host == host:
                stale = pid == os.getpid() or not _alive(pid)
            else:
                try:
                    stale = now - os.path.getmtime(full) > _FOREIGN_TEMP_AGE
                except OSError:
                    stale = False
        if stale:
            try:
                os.remove(full)
            except OSError:
                pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Write ``state`` to ``path`` atomically, with a checksum of its content.

    The state is saved to a temporary file in the same folder, flushed to disk, and
    then moved over ``path`` with :func:`os.replace` (atomic on POSIX and Windows).
    A process killed at any moment therefore leaves either the previous checkpoint
    or the new one, never a truncated file; the temporary file of a killed save is
    removed by the next save into the same folder.

    Args:
        state: A dict of tensors, numbers, strings, lists, tuples and dicts (what
            ``torch.load(weights_only=True)`` accepts). The format marker
            ``"format"`` and the ``"checksum"`` (:func:`payload_digest` of
            everything else) are added.
        path: Destination file; its folder is created if needed.

    The file gets the permissions of a newly created file: ``0o666`` less the
    umask (0644 under umask 022).

    Raises:
        OSError: the file cannot be written (read-only folder, disk full: errno
            ``ENOSPC``, "No space left on device in '<folder>'"); the message is
            one line, no temporary file is left, and the previous checkpoint at
            ``path`` is left as it was.

    Example:
        >>> import tempfile, os, torch
        >>> from pynsm.train import save_checkpoint, load_checkpoint
        >>> path = os.path.join(tempfile.mkdtemp(), "last.pt")
        >>> save_checkpoint({"model": {"w": torch.ones(2)}}, path)
        >>> load_checkpoint(path)["model"]["w"]
        tensor([1., 1.])
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    payload = {k: v for k, v in state.items() if k != "checksum"}
    payload["format"] = CHECKPOINT_FORMAT
    payload["checksum"] = payload_digest(payload)
    try:
        os.makedirs(folder, exist_ok=True)
        _remove_stale_temps(folder, base)
        mode = 0o666 & ~_umask()
        fd, tmp_path = tempfile.mkstemp(
            dir=folder,
            prefix=f"{_temp_prefix(base)}{socket.gethostname()}-{os.getpid()}-",
            suffix=".tmp",
        )
    except OSError as exc:
        raise _write_error(exc, path, folder) from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            if hasattr(os, "fchmod"):  # mkstemp makes it 0600
                os.fchmod(handle.fileno(), mode)
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_path, path)
    except BaseException as exc:
        # never leave stray temporary files behind, whatever interrupted the save
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        # (a vanished temporary file or folder is raised as it is)
        error = (
            None
            if isinstance(exc, FileNotFoundError)
            else _write_error(exc, path, folder)
        )
        if error is not None:
            raise error from exc
        raise
    _fsync_folder(folder)


def _umask() -> int:
    """The process's umask: a checkpoint gets ``0o666`` less it (0644 under 022),
    as a file ``torch.save`` creates would, so that a group on a shared cluster
    can read it when the umask says so."""
    # Linux shows it without changing it; os.umask can only read it by setting
    # it, which briefly affects files other threads create
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _write_error(exc: BaseException, path: str, folder: str) -> OSError | None:
    """A one-line :class:`OSError` for a failed write, or ``None`` if ``exc`` is
    not one (an interruption, a bug: raised as it is).

    torch's zip writer reports a full disk as ``RuntimeError: [enforce fail at
    inline_container.cc:...] unexpected pos ...`` (a short write; the errno is
    lost), so that message counts as ``ENOSPC`` too.
    """
    if isinstance(exc, OSError):
        code = exc.errno or errno.EIO
        reason = exc.strerror or _first_line(exc)
    elif isinstance(exc, RuntimeError) and "unexpected pos" in str(exc):
        code, reason = errno.ENOSPC, os.strerror(errno.ENOSPC)
    elif isinstance(exc, RuntimeError) and _TORCH_WRITER in str(exc):
        detail = re.sub(r"^\[enforce fail at [^\]]*\][ .]*", "", _first_line(exc))
        code, reason = errno.EIO, f"the write failed ({detail})"
    else:
        return None
    if code in (errno.ENOSPC, errno.EDQUOT):
        reason = f"{os.strerror(code)} in {folder!r}"
    return OSError(code, f"cannot write checkpoint {path!r}: {reason}")


def _fsync_folder(folder: str) -> None:
    # make the rename itself durable (POSIX); not possible everywhere
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(
    path: str | os.PathLike[str], map_location: str | torch.device | None = "cpu"
) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, executing no code.

    Args:
        path: The checkpoint file.
        map_location: Where to put the tensors (default: CPU).

    Returns:
        The saved dict; ``"metadata"`` is always present (``{}`` when the
        checkpoint has none).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointError: the file cannot be read (a folder, no permission,
            truncated), is corrupt (its checksum does not match its content),
            needs code execution to load (``weights_only=True`` refuses it), or is
            not a pynsm checkpoint. The message is one line.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path!r}")
    if os.path.isdir(path):
        raise CheckpointError(f"{path!r} is a folder, not a checkpoint file")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except OSError as exc:
        raise CheckpointError(
            f"{path!r} cannot be read: {exc.strerror or _first_line(exc)}"
        ) from exc
    except Exception as exc:  # torch.load raises many types on damaged files
        raise CheckpointError(
            f"{path!r} is not a readable checkpoint (corrupt or truncated, or it "
            f"would need code execution to load): {type(exc).__name__}: "
            f"{_first_line(exc)}"
        ) from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path!r} is not a pynsm training checkpoint "
            f"(expected format {CHECKPOINT_FORMAT!r})"
        )
    stored = state.pop("checksum", None)
    if stored is not None and stored != payload_digest(state):
        raise CheckpointError(
            f"{path!r} is corrupt: its content does not match the checksum written "
            "with it (the file changed after it was saved)"
        )
    state.setdefault("metadata", {})
    return state


def _first_line(exc: BaseException) -> str:
    # torch's messages carry terminal escape codes (bold): keep plain text only
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    return text.splitlines()[0] if text else ""
