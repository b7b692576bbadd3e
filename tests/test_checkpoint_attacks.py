"""Attacks on the .pth reader: ambiguous zip archives, resource bombs, non-regular files, exit codes.

Hostile files are built from real torch.save archives (or by hand where torch cannot write the
attack), and the real CLI runs with capped address space, file size and time, so a regression
fails the test instead of the machine. Where an archive is ambiguous, the test first shows that
torch.load and Python's zipfile (what mdist used to read through) really see different bytes.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import zipfile
import zlib
from pathlib import Path

import pytest
import torch

from conftest import FIXTURE
from mdist.convert import checkpoint as checkpoint_module
from mdist.convert.checkpoint import Checkpoint
from mdist.errors import CheckpointError, InputError
from pickle_payloads import G, J, PROTO2, S, run_mdist_capped, state_dict, tensor, write_archive

EVIL = struct.pack("<4f", 9, 9, 9, 9)
ORIGINAL = [0.0, 1.0, 2.0, 3.0]


# -- building archives byte by byte -------------------------------------------------------------
def local_entry(name: str, data: bytes, *, method: int = 0, sizes: tuple[int, int] | None = None,
                payload: bytes | None = None) -> bytes:
    """A local header (no data descriptor) and the entry's bytes; `sizes`/`payload` override what it claims/holds."""
    csize, usize = sizes or (len(data), len(data))
    raw = name.encode()
    header = struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, method, 0, 0x21, zlib.crc32(data), csize, usize,
                         len(raw), 0)
    return header + raw + (data if payload is None else payload)


def central_record(name: str, data: bytes, offset: int, *, method: int = 0,
                   sizes: tuple[int, int] | None = None) -> bytes:
    raw = name.encode()
    csize, usize = sizes or (len(data), len(data))
    return struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, method, 0, 0x21, zlib.crc32(data), csize, usize,
                       len(raw), 0, 0, 0, 0, 0, offset) + raw


def end_record(count: int, cd_size: int, cd_offset: int) -> bytes:
    return struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, count, count, cd_size, cd_offset, 0)


def build(entries: list[tuple[str, bytes]], gap_after: dict[int, bytes] | None = None) -> bytes:
    """A plain stored zip of the entries, in order; `gap_after[i]` puts bytes after entry i."""
    body, records = b"", []
    for i, (name, data) in enumerate(entries):
        records.append(central_record(name, data, len(body)))
        body += local_entry(name, data) + (gap_after or {}).get(i, b"")
    return body + b"".join(records) + end_record(len(records), sum(map(len, records)), len(body))


def split_archive(raw: bytes) -> tuple[bytes, list[bytes]]:
    """(everything before the central directory, the central directory records) of a small zip."""
    _, _, _, _, count, cd_size, cd_offset, _ = struct.unpack("<4s4H2LH", raw[-22:])
    records, pos = [], cd_offset
    for _ in range(count):
        name_len, extra_len, comment_len = struct.unpack_from("<3H", raw, pos + 28)
        end = pos + 46 + name_len + extra_len + comment_len
        records.append(raw[pos:end])
        pos = end
    return raw[:cd_offset], records


def with_records(body: bytes, records: list[bytes], count: int | None = None) -> bytes:
    """Rewrite the central directory (plain end record; torch's zip64 records are not needed below 4 GB)."""
    cd = b"".join(records)
    return body + cd + end_record(len(records) if count is None else count, len(cd), len(body))


def saved(tmp_path: Path, state: dict | None = None) -> Path:
    """A real torch.save archive in tmp_path/m/consolidated.00.pth (by default, w = [0, 1, 2, 3])."""
    path = tmp_path / "m" / "consolidated.00.pth"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"w": torch.arange(4, dtype=torch.float32)} if state is None else state, path)
    return path


def entries_of(path: Path) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(path) as archive:
        return [(info.filename, archive.read(info)) for info in archive.infolist()]


def member_offsets(raw: bytes, name: str) -> tuple[int, int]:
    """(local header offset, data offset) of an entry of a well-formed zip."""
    with zipfile.ZipFile(io.BytesIO(raw)) as archive:
        info = archive.getinfo(name)
    name_len, extra_len = struct.unpack_from("<HH", raw, info.header_offset + 26)
    return info.header_offset, info.header_offset + 30 + name_len + extra_len


def torch_reads(path: Path) -> list[float]:
    return torch.load(path, weights_only=True)["w"].tolist()


def assert_refused(path: Path, cause: str, exit_code: int = 1, command: str = "digest") -> str:
    """The real CLI refuses the file, in one line naming the cause, with the expected exit code."""
    result = run_mdist_capped(command, str(path), *(("--out", str(path.parent.parent / "out")) if command == "convert" else ()))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == exit_code, (result.returncode, result.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("mdist: error:"), result.stderr[-2000:]
    assert cause in lines[0], lines[0]
    return lines[0]


# -- 1. ambiguous archives ---------------------------------------------------------------------
def test_a_duplicate_entry_is_refused_where_torch_and_zipfile_disagree(tmp_path: Path) -> None:
    path = saved(tmp_path)
    body, records = split_archive(path.read_bytes())
    name = "consolidated.00/data/0"
    path.write_bytes(with_records(body + local_entry(name, EVIL), records + [central_record(name, EVIL, len(body))]))
    assert torch_reads(path) == ORIGINAL  # miniz: binary search finds the first entry
    with zipfile.ZipFile(path) as archive:
        assert archive.read(name) == EVIL  # zipfile (mdist before): the last one
    assert_refused(path, "two entries named 'consolidated.00/data/0'")


@pytest.mark.parametrize("external", [0x10, 0o040755 << 16], ids=["ms-dos", "unix"])
def test_an_entry_marked_as_a_directory_is_refused(tmp_path: Path, external: int) -> None:
    """torch's zip reader gives no data for an entry whose attributes say directory (its tensor is
    then uninitialised memory, different at each load); zipfile reads the stored bytes. Found by
    the fuzzer below (test_hostile.py), which then failed at random."""
    path = saved(tmp_path)
    body, records = split_archive(path.read_bytes())
    name = b"consolidated.00/data/0"
    marked = [record[:38] + struct.pack("<L", external) + record[42:] if record[46:46 + len(name)] == name
              and len(record) >= 46 + len(name) else record for record in records]
    assert marked != records
    path.write_bytes(with_records(body, marked))
    with zipfile.ZipFile(path) as archive:
        assert struct.unpack("<4f", archive.read(name.decode())) == tuple(ORIGINAL)  # the bytes are there
    assert_refused(path, "consolidated.00/data/0 is marked as a directory in the zip directory, not a file")


def test_names_differing_only_in_case_are_duplicates(tmp_path: Path) -> None:
    """miniz finds names ignoring case: torch can be steered to a DATA/0 entry that zipfile never reads as data/0."""
    entries = entries_of(saved(tmp_path))
    torch_saw = set()
    for position in range(len(entries) + 1):
        path = tmp_path / f"case{position}" / "consolidated.00.pth"
        path.parent.mkdir()
        path.write_bytes(build(entries[:position] + [("consolidated.00/DATA/0", EVIL)] + entries[position:]))
        torch_saw.add(torch_reads(path)[0])
        with zipfile.ZipFile(path) as archive:
            assert archive.read("consolidated.00/data/0") != EVIL
        with pytest.raises(CheckpointError, match="ignoring case"):
            Checkpoint(path)
    assert torch_saw == {0.0, 9.0}, torch_saw
    assert_refused(path, "(ignoring case)")


def test_a_local_header_naming_another_entry_is_refused(tmp_path: Path) -> None:
    path = saved(tmp_path)
    raw = bytearray(path.read_bytes())
    header, _ = member_offsets(bytes(raw), "consolidated.00/data/0")
    raw[header + 30 : header + 30 + 22] = b"consolidated.00/data/9"
    path.write_bytes(raw)
    assert torch_reads(path) == ORIGINAL  # miniz trusts the central directory only
    with zipfile.ZipFile(path) as archive, pytest.raises(zipfile.BadZipFile):
        archive.read("consolidated.00/data/0")  # zipfile (and any streaming reader) sees another file
    assert_refused(path, "local header of 'consolidated.00/data/0' names b'consolidated.00/data/9'")


def test_a_local_header_with_another_method_is_refused(tmp_path: Path) -> None:
    path = saved(tmp_path)
    raw = bytearray(path.read_bytes())
    header, _ = member_offsets(bytes(raw), "consolidated.00/data/0")
    raw[header + 8 : header + 10] = struct.pack("<H", 8)  # deflated, says the local header; stored, says the directory
    path.write_bytes(raw)
    assert torch_reads(path) == ORIGINAL
    assert_refused(path, "local header of 'consolidated.00/data/0' has another method or flags")


def test_local_sizes_of_a_stored_entry_must_match(tmp_path: Path) -> None:
    entries = entries_of(saved(tmp_path))
    body, records = b"", []
    for name, data in entries:
        records.append(central_record(name, data, len(body)))
        body += local_entry(name, data, sizes=(8, 8) if name.endswith("data/0") else None)
    path = tmp_path / "m" / "consolidated.00.pth"
    path.write_bytes(with_records(body, records))
    assert torch_reads(path) == ORIGINAL  # a streaming reader would read 8 bytes, then look for a header
    assert_refused(path, "local header of 'consolidated.00/data/0' disagrees with the central directory")


def test_a_data_descriptor_must_match(tmp_path: Path) -> None:
    path = saved(tmp_path)
    raw = bytearray(path.read_bytes())
    _, data = member_offsets(bytes(raw), "consolidated.00/data/0")
    assert raw[data + 16 : data + 20] == b"PK\x07\x08"  # torch writes descriptors after every entry
    raw[data + 24 : data + 28] = struct.pack("<L", 8)  # its compressed size
    path.write_bytes(raw)
    assert torch_reads(path) == ORIGINAL
    assert_refused(path, "data descriptor of 'consolidated.00/data/0' disagrees with the central directory")


def test_overlapping_entries_are_refused(tmp_path: Path) -> None:
    """An entry whose data holds another whole entry: the same bytes belong to two names."""
    entries = entries_of(saved(tmp_path))
    inner = local_entry("consolidated.00/data/0", dict(entries)["consolidated.00/data/0"])
    body, records = b"", []
    for name, data in entries:
        if name.endswith("/data/0"):
            continue
        records.append(central_record(name, data, len(body)))
        body += local_entry(name, data)
    outer = "consolidated.00/zzz"
    records.append(central_record(outer, inner, len(body)))
    records.append(central_record("consolidated.00/data/0", dict(entries)["consolidated.00/data/0"],
                                  len(body) + 30 + len(outer)))
    body += local_entry(outer, inner)
    path = tmp_path / "m" / "consolidated.00.pth"
    path.write_bytes(with_records(body, records))
    assert torch_reads(path) == ORIGINAL
    assert_refused(path, "entry 'consolidated.00/zzz' runs into the next entry or the central directory")


def test_an_entry_running_into_the_central_directory_is_refused(tmp_path: Path) -> None:
    entries = entries_of(saved(tmp_path))
    body, records = b"", []
    for i, (name, data) in enumerate(entries):
        claimed = (len(data) + 46,) * 2 if i == len(entries) - 1 else None  # local header and directory agree
        records.append(central_record(name, data, len(body), sizes=claimed))
        body += local_entry(name, data, sizes=claimed)
    path = tmp_path / "m" / "consolidated.00.pth"
    path.write_bytes(with_records(body, records))
    assert_refused(path, "runs into the next entry or the central directory")


def test_bytes_between_entries_are_refused(tmp_path: Path) -> None:
    """Unaccounted bytes can hold a whole hidden entry a streaming reader would find."""
    entries = entries_of(saved(tmp_path))
    path = tmp_path / "m" / "consolidated.00.pth"
    path.write_bytes(build(entries, gap_after={1: local_entry("consolidated.00/data/0", EVIL)}))
    assert torch_reads(path) == ORIGINAL
    assert_refused(path, "bytes after the end of the entry before it: the archive is ambiguous")


def test_prepended_bytes_are_refused(tmp_path: Path) -> None:
    """zipfile silently shifts every offset by the prefix; torch cannot read the file; mdist used to."""
    path = saved(tmp_path)
    path.write_bytes(b"J" * 100 + build(entries_of(path)))
    with zipfile.ZipFile(path) as archive:
        assert archive.read("consolidated.00/data/0") == struct.pack("<4f", *ORIGINAL)
    assert_refused(path, "the archive holds bytes it does not account for")


def test_prepended_bytes_with_rewritten_offsets_are_refused(tmp_path: Path) -> None:
    entries = entries_of(saved(tmp_path))
    body, records = b"J" * 100, []
    for name, data in entries:
        records.append(central_record(name, data, len(body)))
        body += local_entry(name, data)
    path = tmp_path / "m" / "consolidated.00.pth"
    path.write_bytes(with_records(body, records))
    assert_refused(path, "starts at byte 100, not 0")


def test_appended_bytes_are_refused(tmp_path: Path) -> None:
    path = saved(tmp_path)
    path.write_bytes(path.read_bytes() + b"trailing bytes")
    assert torch_reads(path) == ORIGINAL
    assert_refused(path, "bytes follow the zip end record")


@pytest.mark.parametrize("cut", [1, 10, 18])  # 18: the 4-byte signature is all that is left
def test_a_file_cut_inside_its_end_record_is_called_truncated(tmp_path: Path, cut: int) -> None:
    """A short download ends inside the 22-byte end record: "truncated", exit 2, as when more is
    missing, not "bytes follow the end record" (exit 1), which is about bytes added."""
    path = saved(tmp_path)
    path.write_bytes(path.read_bytes()[:-cut])
    assert_refused(path, "is truncated: its zip end record is cut short", exit_code=2)


def test_an_entry_count_that_hides_records_is_refused(tmp_path: Path) -> None:
    """miniz reads `count` records, zipfile reads records until the directory's size is used up."""
    path = saved(tmp_path)
    body, records = split_archive(path.read_bytes())
    path.write_bytes(with_records(body, records, count=len(records) - 1))
    with zipfile.ZipFile(path) as archive:
        assert len(archive.infolist()) == len(records)
    assert_refused(path, f"bytes its {len(records) - 1} entries do not use")


def test_a_zip64_locator_pointing_elsewhere_is_refused(tmp_path: Path) -> None:
    """zipfile assumes the zip64 end record sits just before its locator; miniz follows the pointer."""
    path = saved(tmp_path)
    raw = bytearray(path.read_bytes())
    locator = len(raw) - 22 - 20
    assert raw[locator : locator + 4] == b"PK\x06\x07"
    raw[locator + 8 : locator + 16] = struct.pack("<Q", 0)
    path.write_bytes(raw)
    assert_refused(path, "zip64 locator does not point just before itself")


def test_entries_outside_the_archive_folder_are_refused(tmp_path: Path) -> None:
    entries = entries_of(saved(tmp_path))
    path = tmp_path / "m" / "consolidated.00.pth"
    path.write_bytes(build(entries + [("elsewhere/data/0", EVIL)]))
    assert_refused(path, "entry 'elsewhere/data/0' is outside the archive folder 'consolidated.00/'")


def test_a_deflated_entry_inflating_past_its_declared_size_is_refused(tmp_path: Path) -> None:
    """zipfile stops at the declared size (and checks the CRC of that prefix); a streaming reader inflates it all."""
    entries = dict(entries_of(saved(tmp_path)))
    stream = zlib.compressobj(9, zlib.DEFLATED, -15)
    deflated = stream.compress(struct.pack("<4f", *ORIGINAL) + EVIL * 1000) + stream.flush()
    body, records = b"", []
    for name, data in entries.items():
        if name.endswith("data/0"):
            records.append(central_record(name, data, len(body), method=8, sizes=(len(deflated), len(data))))
            body += local_entry(name, data, method=8, sizes=(len(deflated), len(data)), payload=deflated)
        else:
            records.append(central_record(name, data, len(body)))
            body += local_entry(name, data)
    path = tmp_path / "m" / "consolidated.00.pth"
    path.write_bytes(with_records(body, records))
    with zipfile.ZipFile(path) as archive:
        assert archive.read("consolidated.00/data/0") == struct.pack("<4f", *ORIGINAL)
    assert_refused(path, "consolidated.00/data/0: inflates past its declared 16 bytes")


def test_legitimate_archives_still_open() -> None:
    """Positive control for the strict reader: torch.save's own layout (descriptors, zip64 end records, padding)."""
    with Checkpoint(FIXTURE / "consolidated.00.pth") as checkpoint:
        assert len(checkpoint.tensors) == 57


def _zip64_archive(path: Path, entries: list[tuple[str, bytes]], pad: int) -> None:
    """A sparse archive whose first entry holds `pad` zero bytes (> 4 GiB), so the rest need zip64 offsets."""
    def zip64(*values: int) -> bytes:
        return struct.pack("<HH", 1, 8 * len(values)) + struct.pack(f"<{len(values)}Q", *values)

    records = []
    with open(path, "wb") as out:
        raw = b"consolidated.00/pad"
        out.write(struct.pack("<4s5H3L2H", b"PK\x03\x04", 45, 0, 0, 0, 0x21, 0, 0xFFFFFFFF, 0xFFFFFFFF, len(raw), 20)
                  + raw + zip64(pad, pad))
        records.append(struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 45, 45, 0, 0, 0, 0x21, 0, 0xFFFFFFFF, 0xFFFFFFFF,
                                   len(raw), 20, 0, 0, 0, 0, 0) + raw + zip64(pad, pad))
        out.seek(pad, os.SEEK_CUR)  # a hole: zeros that take no disk
        for name, data in entries:
            offset = out.tell()
            out.write(local_entry(name, data))
            raw = name.encode()
            records.append(struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 45, 45, 0, 0, 0, 0x21, zlib.crc32(data),
                                       len(data), len(data), len(raw), 12, 0, 0, 0, 0, 0xFFFFFFFF) + raw + zip64(offset))
        cd_offset, cd = out.tell(), b"".join(records)
        end64 = cd_offset + len(cd)
        out.write(cd + struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, len(records), len(records),
                                   len(cd), cd_offset)
                  + struct.pack("<4sLQL", b"PK\x06\x07", 0, end64, 1)
                  + struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(records), len(records), len(cd), 0xFFFFFFFF, 0))


def test_zip64_archives_past_4_gib_read_like_torch(tmp_path: Path) -> None:
    """Zip64 sizes and offsets (local and central extra fields, end record and locator), as in real 14 GB files."""
    entries = entries_of(saved(tmp_path, {"w": torch.arange(4, dtype=torch.float32), "v": torch.ones(3, 2).t()}))
    path = tmp_path / "big" / "consolidated.00.pth"
    path.parent.mkdir()
    _zip64_archive(path, entries, (4 << 30) + 12345)
    assert path.stat().st_size > 4 << 30
    expected = torch.load(path, weights_only=True)
    with Checkpoint(path) as checkpoint:
        for name, tensor in expected.items():
            assert b"".join(checkpoint.iter_bytes(checkpoint.tensors[name])) == tensor.numpy().tobytes(), name
    result = run_mdist_capped("digest", str(path))
    assert result.returncode == 0, result.stderr


# -- 2. resource bombs -------------------------------------------------------------------------
def _archive(tmp_path: Path, data_pkl: bytes, storages: dict[str, bytes] | None = None, **kwargs) -> Path:
    return write_archive(tmp_path / "m" / "consolidated.00.pth", data_pkl, storages, **kwargs)


def test_mark_bomb(tmp_path: Path) -> None:
    """MARKs were not counted as objects: 2.6 MB of them took 4.6 GB and 58 s; 15 MB exhaust the 1 GiB cap."""
    path = _archive(tmp_path, PROTO2 + b"(" * 15_000_000)
    assert_refused(path, "pickle creates more than 1048576 objects")


def test_opcode_bomb(tmp_path: Path) -> None:
    """Opcodes that create nothing (PROTO, FRAME, PUT) still cost time: they are counted too."""
    path = _archive(tmp_path, PROTO2 * 3_000_000)
    assert_refused(path, "pickle has more than 2097152 opcodes")


def test_memoized_list_walked_again_and_again(tmp_path: Path) -> None:
    """OrderedDict(list) walks the list: 300k calls on one memoized 400k-item list is 10^11 steps unless counted."""
    pair = S("a") + J(1) + b"\x86" + b"q\x00"  # memo 0: ("a", 1)
    items = b"](" + b"h\x00" * 400_000 + b"eq\x01"  # memo 1: [pair] * 400k
    calls = (b"h\x02h\x01\x85R0") * 300_000  # OrderedDict(memo 1), dropped
    data = PROTO2 + pair + b"0" + items + b"0" + G("collections", "OrderedDict") + b"q\x02" + b"0" + calls
    path = _archive(tmp_path, data + state_dict(("w", tensor()))[2:])
    assert_refused(path, "pickle creates more than 1048576 objects")


def test_zero_strides_describing_2_to_the_40_elements(tmp_path: Path) -> None:
    """`mdist digest` of a 4-byte storage viewed as 2^20 x 2^20 never ended."""
    path = _archive(tmp_path, state_dict(("w", tensor(numel=1, size=(1 << 20, 1 << 20), stride=(0, 0)))),
                    {"0": bytes(4)})
    assert_refused(path, "tensor has 1099511627776 elements but storage '0' has 1")


def test_zero_strides_within_the_storage_size(tmp_path: Path) -> None:
    """As many elements as the storage, all of them element 0."""
    path = _archive(tmp_path, state_dict(("w", tensor(numel=1024, size=(32, 32), stride=(0, 0)))),
                    {"0": bytes(4096)})
    assert_refused(path, "tensor elements overlap in storage '0' (shape (32, 32), stride (0, 0))")


def test_zero_stride_conversion_cannot_fill_the_disk(tmp_path: Path) -> None:
    """A ~600-byte file converted to 2 GiB of output."""
    path = _archive(tmp_path, state_dict(("w", tensor(numel=1, size=(1 << 29,), stride=(0,)))), {"0": bytes(4)})
    assert path.stat().st_size < 1000
    assert_refused(path, "tensor has 536870912 elements but storage '0' has 1", command="convert")
    assert not (path.parent.parent / "out").exists()


@pytest.mark.parametrize("size, stride", [((3, 2), (1, 2)), ((2, 3), (3, 2)), ((4, 4, 1), (2, 1, 0))])
def test_overlapping_views_are_refused(tmp_path: Path, size: tuple, stride: tuple) -> None:
    path = _archive(tmp_path, state_dict(("w", tensor(numel=16, size=size, stride=stride))), {"0": bytes(64)})
    assert_refused(path, "tensor elements overlap")


def test_views_that_do_not_overlap_are_accepted(tmp_path: Path) -> None:
    """Interleaved but injective strides, size-1 dims with any stride: as torch.as_strided makes them."""
    base = torch.arange(16, dtype=torch.float32)
    state = {"interleaved": base.as_strided((2, 2), (2, 3)), "unit dims": base.as_strided((1, 4, 1), (0, 4, 7)),
             "gapped": base.as_strided((2, 3), (8, 2), 1)}
    path = saved(tmp_path, state)
    with Checkpoint(path) as checkpoint:
        for name, expected in state.items():
            assert b"".join(checkpoint.iter_bytes(checkpoint.tensors[name])) == expected.numpy().tobytes(), name


def test_inflating_one_storage_for_every_view_is_bounded(tmp_path: Path) -> None:
    """Thousands of one-element views at the end of a deflated storage: each view used to inflate it all again."""
    storage = os.urandom(16 << 20)
    view = tensor(numel=len(storage), offset=len(storage) - 1, size=(1,), stride=(1,), storage="ByteStorage")
    path = tmp_path / "m" / "consolidated.00.pth"
    path.parent.mkdir()
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", state_dict(*((f"w{i}", view) for i in range(4000))))
        archive.writestr("archive/data/0", storage, compress_type=zipfile.ZIP_DEFLATED, compresslevel=1)
    assert_refused(path, "inflates its deflated storages too many times")


def test_strided_views_of_huge_deflated_storages_are_refused(tmp_path: Path, monkeypatch) -> None:
    """Such a view holds its whole storage in memory: refused above MAX_INFLATED_VIEW_BYTES (lowered here)."""
    monkeypatch.setattr(checkpoint_module, "MAX_INFLATED_VIEW_BYTES", 1000)
    base = torch.arange(600, dtype=torch.float32).reshape(20, 30)
    plain = saved(tmp_path, {"t": base.t()})
    deflated = tmp_path / "deflated.pth"
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(deflated, "w") as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info), compress_type=zipfile.ZIP_DEFLATED)
    with Checkpoint(deflated) as checkpoint, pytest.raises(CheckpointError, match="re-save the checkpoint"):
        list(checkpoint.iter_bytes(checkpoint.tensors["t"]))


# -- 3. files that are not regular files --------------------------------------------------------
def test_a_symlink_to_dev_zero_is_refused(tmp_path: Path) -> None:
    """Was read until the kernel killed mdist at 23.7 GB."""
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "consolidated.00.pth").symlink_to("/dev/zero")
    assert_refused(tmp_path / "m" / "consolidated.00.pth", "consolidated.00.pth is not a regular file", exit_code=2)
    assert run_mdist_capped("convert", str(tmp_path / "m"), "--out", str(tmp_path / "out")).returncode == 2
    with pytest.raises(InputError, match="is not a regular file"):
        Checkpoint(tmp_path / "m" / "consolidated.00.pth")


def test_a_fifo_is_refused_without_hanging(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    os.mkfifo(tmp_path / "m" / "consolidated.00.pth")
    assert_refused(tmp_path / "m" / "consolidated.00.pth", "is not a regular file", exit_code=2)
    with pytest.raises(InputError, match="is not a regular file"):
        Checkpoint(tmp_path / "m" / "consolidated.00.pth")


# -- 4. exit codes: not an archive at all is unreadable input (2) -------------------------------
def _legacy(path: Path) -> None:
    torch.save({"w": torch.ones(2)}, path, _use_new_zipfile_serialization=False)


@pytest.mark.parametrize("make", [
    pytest.param(_legacy, id="legacy torch format"),
    pytest.param(lambda p: p.write_bytes(pickle.dumps({"w": [1.0, 2.0]})), id="plain pickle"),
    pytest.param(lambda p: p.write_bytes(b""), id="empty"),
    pytest.param(lambda p: p.write_bytes((FIXTURE / "consolidated.00.pth").read_bytes()[:5_000_000]), id="truncated"),
    pytest.param(lambda p: p.write_bytes(os.urandom(4096)), id="random bytes"),
])
def test_files_that_are_not_torch_archives_are_unreadable_input(tmp_path: Path, make) -> None:
    path = tmp_path / "consolidated.00.pth"
    make(path)
    assert_refused(path, "consolidated.00.pth is not a torch.save zip archive", exit_code=2)


def test_a_zip_without_data_pkl_is_unreadable_input(tmp_path: Path) -> None:
    path = tmp_path / "consolidated.00.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes/readme.txt", "hello")
    assert_refused(path, "consolidated.00.pth is not a torch.save archive: it has no data.pkl", exit_code=2)


def test_refused_content_keeps_exit_1(tmp_path: Path) -> None:
    path = _archive(tmp_path, PROTO2 + G("os", "system") + S("true") + b"\x85R.")
    assert_refused(path, "refused global os.system", exit_code=1)
