"""Open a `torch.save` zip archive safely and stream its tensors' bytes, without torch.

The zip is parsed here, strictly, not by Python's zipfile. An ambiguous archive is read
differently by different readers: torch (miniz) finds a name by binary search over the sorted,
case-insensitive central directory, zipfile takes the last entry of that name, a streaming reader
trusts local headers. `mdist digest` could then vouch for weights `torch.load` never sees. So an
archive is accepted only when every reader must see the same entries and bytes: names unique
(ignoring ASCII case), local headers agreeing with the central directory, and the file made of
exactly the entries from byte 0, each followed by its data descriptor if flagged, then the central
directory, then the end records, with nothing before, between or after.

Errors: a file that is not a zip archive at all (legacy torch format, plain pickle, empty or
truncated file, device, FIFO) raises InputError (exit 2). Anything refused inside an archive
(ambiguity, bombs, forbidden pickle content, out-of-bounds tensors) raises CheckpointError (exit 1).
"""

from __future__ import annotations

import re
import struct
import zlib
from dataclasses import dataclass, replace
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
from mdist.errors import CheckpointError, InputError, MdistError
from mdist.convert.joined import JoinedFile

CHUNK_BYTES = 16 << 20  # bytes read or inflated at once: memory per read stays constant
MAX_ZIP_ENTRIES = 1 << 16  # a 123B checkpoint has ~800 entries
MAX_CENTRAL_DIRECTORY_BYTES = 16 << 20  # read into memory whole; 65536 entries of ~250 bytes
MAX_DEFLATE_RATIO = 100  # weights barely compress: a higher ratio is a zip bomb...
DEFLATE_SLACK_BYTES = 1 << 20  # ...except for small constant tensors (norms of ones)
MAX_INFLATE_FACTOR = 4  # views re-inflate their storage from its start: total inflated bytes cap...
INFLATE_SLACK_BYTES = 256 << 20  # ...times the deflated storages' size, plus this
MAX_INFLATED_VIEW_BYTES = 1 << 30  # a strided view of a deflated storage holds that storage in memory

_LOCAL = struct.Struct("<4s5H3L2H")  # local file header
_CENTRAL = struct.Struct("<4s6H3L5H2L")  # central directory record
_END = struct.Struct("<4s4H2LH")  # end of central directory record
_END64_LOCATOR = struct.Struct("<4sLQL")
_END64 = struct.Struct("<4sQ2H2L4Q")
_DESCRIPTORS = {12: "<3L", 16: "<4x3L", 20: "<LQQ", 24: "<4xLQQ"}  # data descriptor length -> layout
_ALLOWED_FLAGS = 0x0800 | 0x0008 | 0x0006  # UTF-8 names, data descriptor, deflate level; no encryption
_STORED, _DEFLATED = 0, 8
_U16, _U32 = 0xFFFF, 0xFFFFFFFF
_NUMPY_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
_DATA_PKL = re.compile(r"[^/]+/data\.pkl")  # fullmatch: `$` would accept a final newline


@dataclass(frozen=True)
class ZipMember:
    """One archive entry, as the central directory and its (checked) local header agree."""

    name: str
    raw_name: bytes
    flags: int
    method: int
    crc: int
    compress_size: int
    file_size: int
    header_offset: int
    data_start: int = -1
    folder: bool = False  # marked as a directory (MS-DOS or Unix attribute, or a name ending in "/")


class Checkpoint:
    """A PyTorch checkpoint opened for reading. Use as a context manager.

    `tensors` maps names to TensorRef; `iter_bytes(tensor)` yields its bytes in C order, in
    chunks, so memory does not grow with the checkpoint. `path` may be a list of raw byte pieces
    of one checkpoint (`split` output), read as one file and never joined on disk; then every
    storage is also checked against its CRC-32 as it is read, so pieces in the wrong order can
    never yield a garbled tensor.
    """

    def __init__(self, path: Path | list[Path] | tuple[Path, ...]) -> None:
        pieces = [Path(p) for p in path] if isinstance(path, (list, tuple)) else [Path(path)]
        self.path = pieces[0]
        self._file = JoinedFile(pieces)
        self._check_crc = len(pieces) > 1
        self._crc_checked: set[str] = set()
        try:
            self._size = self._file.size
            self._members = read_zip_members(self._file, self._size, self._file.name)
            self._open_archive()
        except (MdistError, MemoryError):
            self.close()
            raise
        except Exception as exc:
            self.close()
            raise CheckpointError(f"{self._file.name}: malformed archive ({type(exc).__name__})") from None

    def __enter__(self) -> "Checkpoint":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    # -- opening -----------------------------------------------------------------------------
    def _open_archive(self) -> None:
        pickles = [n for n in self._members if _DATA_PKL.fullmatch(n)]
        if not pickles:
            raise InputError(f"{self._file.name} is not a torch.save archive: it has no data.pkl")
        if len(pickles) != 1:
            raise CheckpointError(f"expected exactly one */data.pkl in the archive, found {len(pickles)}")
        self.prefix = pickles[0][: -len("data.pkl")]
        outside = [n for n in self._members if not n.startswith(self.prefix)]
        if outside:  # torch resolves every record inside the first entry's folder
            raise CheckpointError(f"entry {outside[0][:100]!r} is outside the archive folder {self.prefix!r}")
        deflated = sum(m.file_size for m in self._members.values() if m.method == _DEFLATED)
        self._inflate_budget = MAX_INFLATE_FACTOR * deflated + INFLATE_SLACK_BYTES
        byteorder = self._members.get(self.prefix + "byteorder")
        if byteorder is not None and self._read_small(byteorder, 16).strip() not in (b"little", b""):
            raise CheckpointError("big-endian checkpoints are not supported")
        self._storages: dict[str, StorageRef] = {}
        self._entries: dict[str, ZipMember] = {}
        self.tensors: dict[str, TensorRef] = interpret_state_dict(
            self._read_small(self._members[pickles[0]], MAX_PICKLE_BYTES), self._lookup_storage
        )

    def _read_small(self, member: ZipMember, limit: int) -> bytes:
        _refuse_folder(member)
        if member.file_size > limit:
            raise CheckpointError(f"{member.name} is larger than allowed ({member.file_size} > {limit} bytes)")
        _check_ratio(member)
        return b"".join(self._iter_member(member, 0, member.file_size, CHUNK_BYTES))

    def _lookup_storage(self, key: str, dtype: StorageDType, numel: int) -> StorageRef:
        """Called by the pickle interpreter for each persistent id: check it against the archive."""
        if key in self._storages:
            known = self._storages[key]
            if known.dtype != dtype or known.numel != numel:
                raise CheckpointError(f"storage {key!r} is referenced with different types or sizes")
            return known
        name = f"{self.prefix}data/{key}"
        member = self._members.get(name)
        if member is None:
            raise CheckpointError(f"persistent id points to {name!r}, which is not in the archive")
        _refuse_folder(member)
        _check_ratio(member)
        if member.file_size != numel * dtype.itemsize:
            raise CheckpointError(
                f"storage {key!r} declares {numel} x {dtype.itemsize} bytes but its entry holds {member.file_size}"
            )
        self._entries[key] = member
        ref = StorageRef(key, dtype, numel)
        self._storages[key] = ref
        return ref

    # -- reading -----------------------------------------------------------------------------
    def file_range(self, tensor: TensorRef) -> tuple[int, int] | None:
        """(fd, offset) when the tensor's bytes lie verbatim in the archive (stored and contiguous)."""
        entry = self._entries[tensor.storage.key]
        if entry.method != _STORED or not tensor.is_contiguous() or tensor.numel == 0 or self._check_crc:
            return None
        return self._file.locate(entry.data_start + tensor.offset * tensor.storage.dtype.itemsize, tensor.nbytes)

    def iter_bytes(self, tensor: TensorRef, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
        """Yield the tensor's bytes in C order, at most about `chunk_bytes` at a time."""
        if tensor.numel == 0:
            return
        itemsize = tensor.storage.dtype.itemsize
        entry = self._entries[tensor.storage.key]
        if tensor.is_contiguous():
            if self._check_crc and entry.name not in self._crc_checked and entry.method == _STORED:
                yield from self._checked_stream(entry, tensor.offset * itemsize, tensor.nbytes, chunk_bytes)
            else:
                yield from self._iter_member(entry, tensor.offset * itemsize, tensor.nbytes, chunk_bytes)
            return
        view = self.array(tensor)
        rows = view.reshape(view.shape[0], -1) if view.ndim > 1 else view.reshape(-1, 1)
        step = max(1, chunk_bytes // max(1, rows.shape[1] * itemsize))
        for start in range(0, rows.shape[0], step):
            yield np.ascontiguousarray(rows[start : start + step]).tobytes()

    def _checked_stream(self, member: ZipMember, start: int, length: int, chunk_bytes: int) -> Iterator[bytes]:
        """A stored entry's bytes [start, start + length), reading the whole entry once to check
        its CRC-32 before the last wanted chunk is handed out."""
        crc, pos, held = 0, 0, b""
        for data in self._iter_member(member, 0, member.file_size, chunk_bytes):
            crc = zlib.crc32(data, crc)
            first, last = max(start - pos, 0), min(start + length - pos, len(data))
            pos += len(data)
            if first < last:
                if held:
                    yield held
                held = data[first:last]
        if crc != member.crc:  # only pieces are checked: most likely joined in the wrong order
            raise InputError(f"{member.name}: CRC-32 differs from the archive's: the pieces of "
                             f"{self._file.name} are out of order, or one is damaged")
        self._crc_checked.add(member.name)
        if held:
            yield held

    def _check_entry_crc(self, member: ZipMember) -> None:
        if self._check_crc and member.method == _STORED and member.name not in self._crc_checked:
            for _ in self._checked_stream(member, 0, 0, CHUNK_BYTES):
                pass

    def _iter_member(self, member: ZipMember, start: int, length: int, chunk_bytes: int) -> Iterator[bytes]:
        """Bytes [start, start + length) of an entry's uncompressed data."""
        if member.method == _DEFLATED:
            yield from self._inflate(member, start, length, chunk_bytes)
            return
        pos, end = member.data_start + start, member.data_start + start + length
        while pos < end:
            data = self._file.pread(min(chunk_bytes, end - pos), pos)
            if not data:
                raise CheckpointError(f"{member.name}: unexpected end of file")
            pos += len(data)
            yield data

    def _inflate(self, member: ZipMember, start: int, length: int, chunk_bytes: int) -> Iterator[bytes]:
        """Decompress the whole entry (to check its size and CRC), yielding the wanted range.

        Output is bounded per call, so a stream that inflates beyond its declared size is
        refused as soon as it does; total inflation per checkpoint is bounded by a budget.
        """
        inflater = zlib.decompressobj(-15)
        pos, end = member.data_start, member.data_start + member.compress_size
        produced, crc, pending = 0, 0, b""
        try:
            while not inflater.eof:
                if not pending:
                    if pos >= end:
                        raise CheckpointError(f"{member.name}: compressed data ends early")
                    pending = self._file.pread(min(chunk_bytes, end - pos), pos)
                    if not pending:
                        raise CheckpointError(f"{member.name}: unexpected end of file")
                    pos += len(pending)
                data = inflater.decompress(pending, chunk_bytes)
                pending = inflater.unconsumed_tail
                self._charge_inflation(member, produced, len(data))
                crc = zlib.crc32(data, crc)
                first, last = max(start - produced, 0), min(start + length - produced, len(data))
                produced += len(data)
                if first < last:
                    yield data[first:last]
        except zlib.error as exc:
            raise CheckpointError(f"{member.name}: corrupt compressed data ({exc})") from None
        if pos != end or pending or inflater.unused_data or produced != member.file_size or crc != member.crc:
            raise CheckpointError(f"{member.name}: compressed data does not match its size or CRC")

    def _charge_inflation(self, member: ZipMember, produced: int, more: int) -> None:
        if produced + more > member.file_size:
            raise CheckpointError(f"{member.name}: inflates past its declared {member.file_size} bytes (zip bomb)")
        self._inflate_budget -= more
        if self._inflate_budget < 0:
            raise CheckpointError("reading the checkpoint inflates its deflated storages too many times")

    def array(self, tensor: TensorRef) -> np.ndarray:
        """The tensor as a numpy array of unsigned integers of its item size (raw bits).

        Stored entries are memory-mapped (read-only), so this does not copy the storage.
        """
        itemsize = tensor.storage.dtype.itemsize
        dtype = _NUMPY_UINT[itemsize]
        entry = self._entries[tensor.storage.key]
        numel = tensor.storage.numel
        if tensor.numel == 0:
            return np.zeros(tensor.shape, dtype=dtype)
        if entry.method == _STORED:
            self._check_entry_crc(entry)
            storage = self._file.array(dtype, entry.data_start, numel)
        elif numel * itemsize > MAX_INFLATED_VIEW_BYTES:
            raise CheckpointError(
                f"{entry.name}: a strided view of a deflated storage over {MAX_INFLATED_VIEW_BYTES} bytes; "
                "re-save the checkpoint without compression"
            )
        else:
            data = bytearray()
            for chunk in self._iter_member(entry, 0, numel * itemsize, CHUNK_BYTES):
                data += chunk
            storage = np.frombuffer(data, dtype=dtype)
        return np.lib.stride_tricks.as_strided(
            storage[tensor.offset :],
            shape=tensor.shape,
            strides=tuple(s * itemsize for s in tensor.stride),
            writeable=False,
        )


def _check_ratio(member: ZipMember) -> None:
    if member.method == _DEFLATED and member.file_size > MAX_DEFLATE_RATIO * member.compress_size + DEFLATE_SLACK_BYTES:
        raise CheckpointError(f"{member.name}: compression ratio suggests a zip bomb")


# -- the strict zip reader ----------------------------------------------------------------------
def read_zip_members(fd: JoinedFile, size: int, label: str) -> dict[str, ZipMember]:
    """Parse and check a zip archive's structure; return its entries by name."""
    cd_offset, cd_size, count = _read_end_records(fd, size, label)
    members = _read_central_directory(_pread(fd, cd_size, cd_offset), count)
    return {m.name: m for m in _check_layout(fd, members, cd_offset)}


def _pread(fd: JoinedFile, length: int, offset: int) -> bytes:
    data = fd.pread(length, offset)
    if len(data) != length:
        raise CheckpointError("unexpected end of file (the file changed while being read?)")
    return data


def _read_end_records(fd: JoinedFile, size: int, label: str) -> tuple[int, int, int]:
    """(central directory offset, size, entry count) from the end records, which must end the file."""
    not_zip = InputError(f"{label} is not a torch.save zip archive (empty, truncated, legacy format or plain pickle?)")
    if size < _END.size:
        raise not_zip
    end_start = size - _END.size
    sig, disk, cd_disk, on_disk, count, cd_size, cd_offset, comment = _END.unpack(_pread(fd, _END.size, end_start))
    if sig != b"PK\x05\x06":
        tail = _pread(fd, min(size, 0x10000 + _END.size), max(0, size - 0x10000 - _END.size))
        found = tail.rfind(b"PK\x05\x06")
        if found >= 0 and found + _END.size > len(tail):  # the record itself is cut: a short download
            raise InputError(f"{label} is truncated: its zip end record is cut short (download it again)")
        if found >= 0:
            raise CheckpointError(f"{label}: bytes follow the zip end record (a comment or appended data)")
        raise not_zip
    if disk or cd_disk or on_disk != count or comment:
        raise CheckpointError(f"{label}: multi-disk archive or archive comment")
    tail_start = end_start
    if end_start >= _END64_LOCATOR.size:
        locator = _END64_LOCATOR.unpack(_pread(fd, _END64_LOCATOR.size, end_start - _END64_LOCATOR.size))
        if locator[0] == b"PK\x06\x07":
            tail_start = end_start - _END64_LOCATOR.size - _END64.size
            if locator[1] != 0 or locator[2] != tail_start or locator[3] != 1 or tail_start < 0:
                raise CheckpointError(f"{label}: zip64 locator does not point just before itself")
            z = _END64.unpack(_pread(fd, _END64.size, tail_start))
            if z[0] != b"PK\x06\x06" or z[1] != _END64.size - 12 or z[4] or z[5] or z[6] != z[7]:
                raise CheckpointError(f"{label}: malformed zip64 end record")
            for small, big, sentinel in ((count, z[7], _U16), (cd_size, z[8], _U32), (cd_offset, z[9], _U32)):
                if small not in (sentinel, big):
                    raise CheckpointError(f"{label}: zip64 end record disagrees with the end record")
            count, cd_size, cd_offset = z[7], z[8], z[9]
    if tail_start == end_start and (count == _U16 or _U32 in (cd_size, cd_offset)):
        raise CheckpointError(f"{label}: end record needs zip64 values but there is no zip64 record")
    if count > MAX_ZIP_ENTRIES or cd_size > MAX_CENTRAL_DIRECTORY_BYTES:
        raise CheckpointError(f"{label}: {count} entries in a {cd_size}-byte central directory is more than allowed")
    if cd_offset + cd_size != tail_start:
        raise CheckpointError(
            f"{label}: the central directory (offset {cd_offset}, {cd_size} bytes) does not end where the end "
            f"records begin (offset {tail_start}): the archive holds bytes it does not account for"
        )
    return cd_offset, cd_size, count


def _read_central_directory(data: bytes, count: int) -> list[ZipMember]:
    members, seen, pos = [], set(), 0
    for _ in range(count):
        if pos + _CENTRAL.size > len(data):
            raise CheckpointError(f"the central directory is too short for its {count} entries")
        fields = _CENTRAL.unpack_from(data, pos)
        sig, _, _, flags, method, _, _, crc, csize, usize, name_len, extra_len, comment_len, disk, _, external, offset = fields
        raw_name = data[pos + _CENTRAL.size : pos + _CENTRAL.size + name_len]
        extra = data[pos + _CENTRAL.size + name_len : pos + _CENTRAL.size + name_len + extra_len]
        pos += _CENTRAL.size + name_len + extra_len + comment_len
        if sig != b"PK\x01\x02" or pos > len(data):
            raise CheckpointError("malformed central directory record")
        usize, csize, offset, disk = _zip64_values(extra, [usize, csize, offset, disk], (8, 8, 8, 4))
        name = _decode_name(raw_name, flags)
        if raw_name.lower() in seen:  # miniz (torch) compares names ignoring ASCII case
            raise CheckpointError(
                f"the archive has two entries named {name[:100]!r} (ignoring case): torch and other zip readers "
                "would read different ones"
            )
        seen.add(raw_name.lower())
        if flags & ~_ALLOWED_FLAGS or method not in (_STORED, _DEFLATED) or disk:
            raise CheckpointError(f"{name[:100]}: unsupported zip flags {flags:#x}, method {method} or disk {disk}")
        if method == _STORED and csize != usize:
            raise CheckpointError(f"{name[:100]}: stored entry sizes disagree")
        folder = bool(external & _MSDOS_FOLDER) or (external >> 16) & 0o170000 == 0o040000 or raw_name.endswith(b"/")
        members.append(ZipMember(name, raw_name, flags, method, crc, csize, usize, offset, folder=folder))
    if pos != len(data):
        raise CheckpointError(f"the central directory holds {len(data) - pos} bytes its {count} entries do not use")
    return members


_MSDOS_FOLDER = 0x10


def _refuse_folder(member: ZipMember) -> None:
    """An entry mdist reads must be a file: torch's zip reader gives no data for one marked as a
    directory (a tensor of uninitialised memory), so the two would read different weights."""
    if member.folder:
        raise CheckpointError(f"{member.name[:100]} is marked as a directory in the zip directory, not a file")


def _decode_name(raw: bytes, flags: int) -> str:
    try:
        if b"\x00" in raw:
            raise ValueError
        return raw.decode("utf-8") if flags & 0x0800 else raw.decode("ascii")
    except (UnicodeDecodeError, ValueError):
        raise CheckpointError(f"entry name {raw[:100]!r} is not ASCII or flagged UTF-8") from None


def _extra_fields(extra: bytes) -> dict[int, bytes]:
    """Extra field blocks by tag; they must tile the extra field exactly, each tag at most once."""
    fields, pos = {}, 0
    while pos < len(extra):
        if pos + 4 > len(extra):
            raise CheckpointError("malformed zip extra field")
        tag, length = struct.unpack_from("<HH", extra, pos)
        if tag in fields or pos + 4 + length > len(extra):
            raise CheckpointError("malformed zip extra field")
        fields[tag] = extra[pos + 4 : pos + 4 + length]
        pos += 4 + length
    return fields


def _zip64_values(extra: bytes, values: list[int], widths: tuple[int, ...]) -> list[int]:
    """Replace 32-bit sentinel values by the zip64 extra field's, in the order the spec lists them."""
    zip64 = _extra_fields(extra).get(0x0001, b"")
    pos, result = 0, []
    for value, width in zip(values, widths):
        if value == (_U32 if width == 8 else _U16):
            if pos + width > len(zip64):
                raise CheckpointError("zip entry needs a zip64 field it does not have")
            value = int.from_bytes(zip64[pos : pos + width], "little")
            pos += width
        result.append(value)
    return result


def _check_layout(fd: JoinedFile, members: list[ZipMember], cd_offset: int) -> list[ZipMember]:
    """Entries, sorted by offset, must tile the file from byte 0 to the central directory."""
    ordered = sorted(members, key=lambda m: m.header_offset)
    checked, expected = [], 0
    for i, member in enumerate(ordered):
        if member.header_offset != expected:
            what = "overlaps the entry before it" if member.header_offset < expected else (
                f"starts {member.header_offset - expected} bytes after the end of the entry before it"
                if i else f"starts at byte {member.header_offset}, not 0")
            raise CheckpointError(f"entry {member.name[:100]!r} {what}: the archive is ambiguous")
        member = _check_local_header(fd, member)
        data_end = member.data_start + member.compress_size
        next_start = ordered[i + 1].header_offset if i + 1 < len(ordered) else cd_offset
        if data_end > next_start:
            raise CheckpointError(f"entry {member.name[:100]!r} runs into the next entry or the central directory")
        expected = data_end + _descriptor_length(fd, member, data_end, next_start)
        checked.append(member)
    if expected != cd_offset:
        raise CheckpointError(f"{cd_offset - expected} bytes before the central directory belong to no entry")
    return checked


def _check_local_header(fd: JoinedFile, member: ZipMember) -> ZipMember:
    """The local header must name the same entry with the same method, flags and sizes."""
    sig, _, flags, method, _, _, crc, csize, usize, name_len, extra_len = _LOCAL.unpack(
        _pread(fd, _LOCAL.size, member.header_offset)
    )
    start = member.header_offset + _LOCAL.size
    raw_name = _pread(fd, name_len, start)
    extra = _pread(fd, extra_len, start + name_len)
    if sig != b"PK\x03\x04" or raw_name != member.raw_name:
        raise CheckpointError(f"local header of {member.name[:100]!r} names {raw_name[:100]!r}")
    if flags != member.flags or method != member.method:
        raise CheckpointError(f"local header of {member.name[:100]!r} has another method or flags")
    usize, csize = _zip64_values(extra, [usize, csize], (8, 8))
    central = (member.crc, member.compress_size, member.file_size)
    for local, value in zip((crc, csize, usize), central):
        if local != value and not (flags & 0x0008 and local == 0):  # zero when a data descriptor follows
            raise CheckpointError(f"local header of {member.name[:100]!r} disagrees with the central directory")
    return replace(member, data_start=start + name_len + extra_len)


def _descriptor_length(fd: JoinedFile, member: ZipMember, data_end: int, next_start: int) -> int:
    """Length of the data descriptor after an entry's data: present and matching iff flagged."""
    if not member.flags & 0x0008:
        return 0
    length = next_start - data_end
    layout = _DESCRIPTORS.get(length)
    raw = _pread(fd, length, data_end) if layout else b""
    if not layout or (length in (16, 24)) != raw.startswith(b"PK\x07\x08"):
        raise CheckpointError(f"entry {member.name[:100]!r} lacks its data descriptor")
    if struct.unpack(layout, raw) != (member.crc, member.compress_size, member.file_size):
        raise CheckpointError(f"data descriptor of {member.name[:100]!r} disagrees with the central directory")
    return length
