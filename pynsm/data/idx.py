"""Reader and writer of the IDX format of MNIST, Fashion-MNIST and KMNIST.

An IDX file (LeCun et al.'s format) is a big-endian header followed by the raw
array in C order::

    bytes 0-1   0x00 0x00
    byte  2     element type: 0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
                0x0D float32, 0x0E float64
    byte  3     number of dimensions d
    4 * d bytes the size of every dimension (big-endian uint32)
    then        prod(sizes) elements (big-endian)

The files may be gzip-compressed (``.gz``, as published). Nothing is trusted: a
header that counts more elements than the file holds, a wrong magic number or
trailing bytes are refused, so a truncated download cannot become a dataset.
"""

from __future__ import annotations

import gzip
import os

import numpy as np

__all__ = ["read_idx", "write_idx"]

# element type code -> big-endian NumPy dtype
_TYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {dtype.newbyteorder("="): code for code, dtype in _TYPES.items()}


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (``.gz`` or uncompressed) into a native-endian array.

    Args:
        path: The file; a name ending in ``.gz`` is decompressed.

    Returns:
        The array, of the shape and element type its header declares (MNIST:
        ``uint8 [60000, 28, 28]`` images, ``uint8 [60000]`` labels).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not IDX (magic number), is truncated (the header
            counts more elements than the file holds) or has trailing bytes.

    Example:
        >>> import numpy as np, os, tempfile
        >>> from pynsm.data.idx import read_idx, write_idx
        >>> path = os.path.join(tempfile.mkdtemp(), "toy-idx3-ubyte")
        >>> write_idx(path, np.arange(24, dtype=np.uint8).reshape(2, 3, 4))
        >>> read_idx(path).shape
        (2, 3, 4)
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"IDX file {path!r} does not exist")
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as handle:
                raw = handle.read()
        else:
            with open(path, "rb") as handle:
                raw = handle.read()
    except (OSError, EOFError) as exc:  # a corrupt or cut .gz stream
        raise ValueError(f"{path!r}: cannot be read as IDX ({exc})") from exc
    return _parse(raw, path)


def _parse(raw: bytes, path: str) -> np.ndarray:
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _TYPES:
        raise ValueError(
            f"{path!r} is not an IDX file (wrong magic number "
            f"{raw[:4].hex() or 'none'}; expected 0000 then a type code and "
            "the number of dimensions, e.g. 00000803 for MNIST images)"
        )
    dtype, ndim = _TYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path!r}: IDX header cut short ({len(raw)} bytes)")
    shape = tuple(int(size) for size in np.frombuffer(raw, ">u4", ndim, offset=4))
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "longer than its header says"
        raise ValueError(
            f"{path!r}: IDX file {what}: the header declares shape {shape} "
            f"({expected} bytes) but the file holds {len(raw)} bytes"
        )
    array = np.frombuffer(raw, dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Write ``array`` as an IDX file (gzip-compressed if ``path`` ends in ``.gz``).

    Args:
        path: Destination file.
        array: ``uint8``, ``int8``, ``int16``, ``int32``, ``float32`` or
            ``float64`` array of 1 to 255 dimensions.

    Raises:
        ValueError: the element type or the number of dimensions has no IDX code.
    """
    array = np.ascontiguousarray(array)
    code = _CODES.get(array.dtype.newbyteorder("="))
    if code is None or not 1 <= array.ndim <= 255:
        raise ValueError(
            f"array: IDX stores uint8/int8/int16/int32/float32/float64 arrays of "
            f"1-255 dimensions, got {array.dtype} with {array.ndim}"
        )
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    body = array.astype(_TYPES[code], copy=False).tobytes()
    opener = gzip.open if os.fspath(path).endswith(".gz") else open
    with opener(path, "wb") as handle:
        handle.write(header + body)
