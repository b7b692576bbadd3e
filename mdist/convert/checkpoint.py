"""Open a `torch.save` zip archive safely and stream its tensors' bytes, without torch."""

from __future__ import annotations

import os
import re
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from mdist.convert.pickle_reader import (
    MAX_PICKLE_BYTES,
    StorageDType,
    StorageRef,
    TensorRef,
    interpret_state_dict,
)
from mdist.errors import CheckpointError, InputError

CHUNK_BYTES = 16 << 20
_MAX_DEFLATE_RATIO = 100
_NUMPY_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
_DATA_PKL = re.compile(r"^[^/]+/data\.pkl$")


@dataclass(frozen=True)
class _Entry:
    info: zipfile.ZipInfo
    data_start: int  # absolute file offset of a stored entry's bytes; -1 when deflated


class Checkpoint:
    """A PyTorch checkpoint opened for reading. Use as a context manager.

    `tensors` maps names to TensorRef; `iter_bytes(tensor)` yields its bytes in C order, in
    chunks, so memory does not grow with the checkpoint.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self._file = open(self.path, "rb")
        except OSError as exc:
            raise InputError(f"cannot open {self.path}: {exc.strerror}") from None
        try:
            self._zip = zipfile.ZipFile(self._file)
            self._open_archive()
        except CheckpointError:
            self.close()
            raise
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError, struct.error) as exc:
            self.close()
            raise CheckpointError(f"{self.path.name} is not a readable torch.save archive: {exc}") from None
        except Exception as exc:
            self.close()
            raise CheckpointError(f"{self.path.name}: malformed archive ({type(exc).__name__})") from None

    def __enter__(self) -> "Checkpoint":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if getattr(self, "_zip", None) is not None:
            self._zip.close()
        self._file.close()

    # -- opening -----------------------------------------------------------------------------
    def _open_archive(self) -> None:
        pickles = [n for n in self._zip.namelist() if _DATA_PKL.match(n)]
        if len(pickles) != 1:
            raise CheckpointError(f"expected exactly one */data.pkl in the archive, found {len(pickles)}")
        self.prefix = pickles[0][: -len("data.pkl")]
        byteorder = self.prefix + "byteorder"
        if byteorder in self._zip.namelist():
            if self._read_small(byteorder, 16).strip() not in (b"little", b""):
                raise CheckpointError("big-endian checkpoints are not supported")
        self._file_size = os.fstat(self._file.fileno()).st_size
        self._storages: dict[str, StorageRef] = {}
        self._entries: dict[str, _Entry] = {}
        self.tensors: dict[str, TensorRef] = interpret_state_dict(
            self._read_small(pickles[0], MAX_PICKLE_BYTES), self._lookup_storage
        )

    def _read_small(self, name: str, limit: int) -> bytes:
        info = self._zip.getinfo(name)
        if info.file_size > limit:
            raise CheckpointError(f"{name} is larger than allowed ({info.file_size} bytes)")
        self._check_ratio(info)
        with self._zip.open(info) as handle:
            data = handle.read(limit + 1)
        if len(data) > limit:
            raise CheckpointError(f"{name} is larger than allowed")
        return data

    @staticmethod
    def _check_ratio(info: zipfile.ZipInfo) -> None:
        if info.compress_type == zipfile.ZIP_STORED:
            if info.compress_size != info.file_size:
                raise CheckpointError(f"{info.filename}: stored entry sizes disagree")
        elif info.compress_type == zipfile.ZIP_DEFLATED:
            if info.file_size > _MAX_DEFLATE_RATIO * info.compress_size + (1 << 20):
                raise CheckpointError(f"{info.filename}: compression ratio suggests a zip bomb")
        else:
            raise CheckpointError(f"{info.filename}: unsupported compression method {info.compress_type}")

    def _lookup_storage(self, key: str, dtype: StorageDType, numel: int) -> StorageRef:
        """Called by the pickle interpreter for each persistent id: check it against the archive."""
        if key in self._storages:
            known = self._storages[key]
            if known.dtype != dtype or known.numel != numel:
                raise CheckpointError(f"storage {key!r} is referenced with different types or sizes")
            return known
        name = f"{self.prefix}data/{key}"
        try:
            info = self._zip.getinfo(name)
        except KeyError:
            raise CheckpointError(f"persistent id points to {name!r}, which is not in the archive") from None
        self._check_ratio(info)
        if info.file_size != numel * dtype.itemsize:
            raise CheckpointError(
                f"storage {key!r} declares {numel} x {dtype.itemsize} bytes but its entry holds {info.file_size}"
            )
        self._entries[key] = _Entry(info, self._stored_data_start(info))
        ref = StorageRef(key, dtype, numel)
        self._storages[key] = ref
        return ref

    def _stored_data_start(self, info: zipfile.ZipInfo) -> int:
        if info.compress_type != zipfile.ZIP_STORED:
            return -1
        header = os.pread(self._file.fileno(), 30, info.header_offset)
        if len(header) != 30 or header[:4] != b"PK\x03\x04":
            raise CheckpointError(f"{info.filename}: bad local file header")
        name_len, extra_len = struct.unpack("<HH", header[26:30])
        start = info.header_offset + 30 + name_len + extra_len
        if start + info.file_size > self._file_size:
            raise CheckpointError(f"{info.filename}: entry extends past the end of the file (truncated?)")
        return start

    # -- reading -----------------------------------------------------------------------------
    def file_range(self, tensor: TensorRef) -> tuple[int, int] | None:
        """(fd, offset) when the tensor's bytes lie verbatim in the archive (stored and contiguous)."""
        entry = self._entries[tensor.storage.key]
        if entry.data_start < 0 or not tensor.is_contiguous() or tensor.numel == 0:
            return None
        return self._file.fileno(), entry.data_start + tensor.offset * tensor.storage.dtype.itemsize

    def iter_bytes(self, tensor: TensorRef, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
        """Yield the tensor's bytes in C order, at most about `chunk_bytes` at a time."""
        if tensor.numel == 0:
            return
        itemsize = tensor.storage.dtype.itemsize
        entry = self._entries[tensor.storage.key]
        if tensor.is_contiguous():
            yield from self._iter_range(entry, tensor.offset * itemsize, tensor.nbytes, chunk_bytes)
            return
        view = self.array(tensor)
        rows = view.reshape(view.shape[0], -1) if view.ndim > 1 else view.reshape(-1, 1)
        step = max(1, chunk_bytes // max(1, rows.shape[1] * itemsize))
        for start in range(0, rows.shape[0], step):
            yield np.ascontiguousarray(rows[start : start + step]).tobytes()

    def _iter_range(self, entry: _Entry, start: int, length: int, chunk_bytes: int) -> Iterator[bytes]:
        if entry.data_start >= 0:
            fd = self._file.fileno()
            pos, end = entry.data_start + start, entry.data_start + start + length
            while pos < end:
                data = os.pread(fd, min(chunk_bytes, end - pos), pos)
                if not data:
                    raise CheckpointError(f"{entry.info.filename}: unexpected end of file")
                pos += len(data)
                yield data
            return
        try:
            with self._zip.open(entry.info) as handle:
                remaining = start + length
                while remaining:
                    data = handle.read(min(chunk_bytes, remaining))
                    if not data:
                        raise CheckpointError(f"{entry.info.filename}: unexpected end of data")
                    first = max(0, start - (start + length - remaining))
                    remaining -= len(data)
                    if first < len(data):
                        yield data[first:]
        except (zipfile.BadZipFile, OSError, EOFError) as exc:  # e.g. CRC mismatch, corrupt stream
            raise CheckpointError(f"{entry.info.filename}: {exc}") from None

    def array(self, tensor: TensorRef) -> np.ndarray:
        """The tensor as a numpy array of unsigned integers of its item size (raw bits).

        Stored entries are memory-mapped (read-only), so this does not copy the storage.
        """
        itemsize = tensor.storage.dtype.itemsize
        dtype = _NUMPY_UINT[itemsize]
        entry = self._entries[tensor.storage.key]
        numel = tensor.storage.numel
        if entry.data_start >= 0:
            storage = np.memmap(self._file, dtype=dtype, mode="r", offset=entry.data_start, shape=(numel,))
        else:
            storage = np.frombuffer(b"".join(self._iter_range(entry, 0, numel * itemsize, CHUNK_BYTES)), dtype=dtype)
        if tensor.numel == 0:
            return np.zeros(tensor.shape, dtype=dtype)
        return np.lib.stride_tricks.as_strided(
            storage[tensor.offset :],
            shape=tensor.shape,
            strides=tuple(s * itemsize for s in tensor.stride),
            writeable=False,
        )
