"""mdist.convert.pickle_reader and mdist.convert.checkpoint, in process: the bounds at their edges.

Written for mutation testing (bench/mutation.py, docs/testing.md): tests/test_hostile.py and
tests/test_checkpoint_attacks.py refuse hostile archives and pickles; these pin each bound exactly.
"""

from __future__ import annotations

import pytest

from mdist.convert import pickle_reader as pr
from mdist.errors import CheckpointError, MdistError

F32 = pr.STORAGE_TYPES["FloatStorage"]
U8 = pr.STORAGE_TYPES["ByteStorage"]


def view(numel: int, offset: int, shape: tuple, stride: tuple, dtype=F32) -> pr.TensorRef:
    return pr.TensorRef(pr.StorageRef("0", dtype, numel), offset, shape, stride)


def refused(tensor: pr.TensorRef, message: str) -> None:
    with pytest.raises(CheckpointError) as caught:
        pr.check_view(tensor)
    assert str(caught.value) == message


def test_limits() -> None:
    assert (pr.MAX_PICKLE_BYTES, pr.MAX_OPCODES, pr.MAX_OBJECTS, pr.MAX_MEMO_ENTRIES) == (
        16 << 20, 1 << 21, 1 << 20, 1 << 18)
    assert (pr.MAX_STRING_CHARS, pr.MAX_NDIM, pr.INT64_MAX) == (1 << 16, 8, (1 << 63) - 1)
    assert {name: (s.safetensors_dtype, s.itemsize) for name, s in pr.STORAGE_TYPES.items()} == {
        "BFloat16Storage": ("BF16", 2), "HalfStorage": ("F16", 2), "FloatStorage": ("F32", 4),
        "DoubleStorage": ("F64", 8), "LongStorage": ("I64", 8), "IntStorage": ("I32", 4),
        "ShortStorage": ("I16", 2), "CharStorage": ("I8", 1), "ByteStorage": ("U8", 1), "BoolStorage": ("BOOL", 1)}


def test_tensor_sizes_and_contiguity() -> None:
    t = view(24, 0, (2, 3, 4), (12, 4, 1))
    assert (t.numel, t.nbytes, t.is_contiguous()) == (24, 96, True)
    assert view(24, 0, (2, 3), (1, 2)).is_contiguous() is False
    assert view(24, 0, (3, 1), (1, 7)).is_contiguous() is True  # a size-1 dimension's stride is free
    assert view(24, 0, (1, 3), (5, 1)).is_contiguous() is True
    assert view(24, 0, (2, 2), (2, 2)).is_contiguous() is False
    assert view(24, 0, (), ()).numel == 1 and view(24, 0, (), ()).is_contiguous()
    assert view(24, 0, (0, 5), (5, 1)).numel == 0
    assert view(8, 0, (2,), (1,), U8).nbytes == 2


def test_views_that_fit_exactly() -> None:
    pr.check_view(view(6, 0, (2, 3), (3, 1)))
    pr.check_view(view(7, 1, (2, 3), (3, 1)))  # last element 1 + 5 = 6 of 7
    pr.check_view(view(6, 0, (3, 2), (1, 3)))  # transposed
    pr.check_view(view(6, 0, (2, 3), (1, 2)))
    pr.check_view(view(1, 0, (1, 1), (0, 0)))  # size-1 dimensions may have any stride
    pr.check_view(view(5, 4, (), ()))
    pr.check_view(view(0, 0, (0,), (1,)))
    pr.check_view(view(3, 3, (0, 4), (4, 1)))  # an empty tensor may start at the end


def test_views_that_do_not_fit() -> None:
    refused(view(6, 1, (2, 3), (3, 1)), "tensor reaches element 6 of storage '0' which has 6")
    refused(view(5, 0, (2, 3), (3, 1)), "tensor has 6 elements but storage '0' has 5")
    refused(view(6, 6, (), ()), "tensor reaches element 6 of storage '0' which has 6")
    refused(view(3, 4, (0,), (1,)), "empty tensor starts past the end of storage '0'")
    refused(view(100, 0, (2, 2), (1, 1)),
            "tensor elements overlap in storage '0' (shape (2, 2), stride (1, 1))")
    refused(view(100, 0, (3, 2), (2, 3)),  # 0,2,4 and 0,3: 3 <= reach 4
            "tensor elements overlap in storage '0' (shape (3, 2), stride (2, 3))")
    refused(view(100, 0, (4,), (0,)), "tensor elements overlap in storage '0' (shape (4,), stride (0,))")
    pr.check_view(view(100, 0, (3, 2), (2, 5)))  # 5 > reach 4: distinct


def test_int64_byte_counts() -> None:
    biggest = pr.INT64_MAX // 4
    with pytest.raises(CheckpointError, match="tensor has"):
        pr.check_view(view(10, 0, (biggest,), (1,)))  # fits int64 bytes, but not the storage
    with pytest.raises(CheckpointError, match="tensor has"):
        pr.check_view(view(10, 0, (1, biggest, 1), (1, 1, 1)))  # size-1 dimensions add nothing
    refused(view(10, 0, (biggest + 1,), (1,)), f"tensor shape ({biggest + 1},) is too large for int64 byte counts")
    refused(view(10, 0, (0, biggest + 1), (1, 1)),
            f"tensor shape (0, {biggest + 1}) is too large for int64 byte counts")  # even when empty
    with pytest.raises(CheckpointError, match="tensor has"):
        pr.check_view(view(10, 0, (pr.INT64_MAX,), (1,), U8))


def test_describe() -> None:
    assert pr._describe(pr._ORDERED_DICT) == "collections.OrderedDict"
    assert pr._describe(F32) == "torch.FloatStorage"
    assert pr._describe(1) == "int" and pr._describe(None) == "NoneType"
    assert repr(pr._REBUILD_TENSOR_V2) == "torch._utils._rebuild_tensor_v2"


# -- the interpreter against Python's own unpickler ------------------------------------------------

import pickle  # noqa: E402


def lookup(key: str, dtype: pr.StorageDType, numel: int) -> pr.StorageRef:
    return pr.StorageRef(key, dtype, numel)


def run(data: bytes):
    return pr._Interpreter(lookup).run(data)


def refused_pickle(data: bytes, message: str) -> None:
    with pytest.raises(CheckpointError) as caught:
        run(data)
    assert str(caught.value) == message


SHARED = [1]
PLAIN = [None, True, False, 0, -1, 255, 65535, 1 << 40, pr.INT64_MAX, -(1 << 63), 1.5, "", "name", "é" * 300,
         (), (1,), (1, 2), (1, 2, 3), (1, 2, 3, 4), [], [1, 2, 3], {}, {"a": 1, "b": [True, False, None]},
         {1: "x", "y": (2, [3])}, [SHARED, SHARED, (SHARED,)], list(range(2000)), {str(i): i for i in range(1500)}]


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_plain_data_reads_as_pickle_reads_it(protocol: int) -> None:
    for value in PLAIN:
        data = pickle.dumps(value, protocol=protocol)
        assert run(data) == pickle.loads(data), value
        assert type(run(data)) is type(value)
    shared = run(pickle.dumps([SHARED, SHARED], protocol=protocol))
    assert shared[0] is shared[1]  # memo entries are the same object, as in pickle


# Hand-written opcodes pickle.dumps does not emit for these values (each also checked with pickle.loads).
HAND = {
    "dup": b"\x80\x02]2\x86.",                              # EMPTY_LIST DUP TUPLE2
    "list": b"\x80\x02(K\x01K\x02l.",                       # MARK 1 2 LIST
    "dict": b"\x80\x02(X\x01\x00\x00\x00aK\x01K\x02K\x03d.",  # MARK 'a' 1 2 3 DICT
    "empty dict": b"\x80\x02(d.",
    "true false": b"\x80\x02\x88\x89\x86.",
    "pop": b"\x80\x02K\x01K\x020.",                        # 1 2 POP -> 1
    "pop mark": b"\x80\x02K\x07(K\x01K\x021.",              # 7 MARK 1 2 POP_MARK -> 7
    "append": b"\x80\x02]K\x05a.",
    "setitem": b"\x80\x02}X\x01\x00\x00\x00kK\x05s.",
    "memoize": b"\x80\x04\x95\x07\x00\x00\x00\x00\x00\x00\x00]\x94h\x00\x86\x94.",  # FRAME [] MEMOIZE GET 0 TUPLE2
    "put get": b"\x80\x02]q\x05h\x05\x86.",
    "long put get": b"\x80\x02]r\x00\x00\x01\x00j\x00\x00\x01\x00\x86.",
}


@pytest.mark.parametrize("case", sorted(HAND))
def test_hand_written_opcodes(case: str) -> None:
    data = HAND[case]
    assert run(data) == pickle.loads(data)
    if case in ("dup", "memoize", "put get", "long put get"):
        result = run(data)
        assert result[0] is result[1]


def test_refused_shapes_of_data() -> None:
    refused_pickle(b"\x80\x02(K\x01d.", "odd number of items for a dict")
    refused_pickle(b"\x80\x02(]K\x01d.", "dict key of type list refused")
    refused_pickle(b"\x80\x02}K\x01a.", "APPEND to a dict")
    refused_pickle(b"\x80\x02](K\x01e}(e.", "APPEND to a dict")  # APPENDS
    refused_pickle(b"\x80\x02]K\x01K\x02s.", "SETITEM on a list")
    refused_pickle(b"\x80\x02](K\x01K\x02u.", "SETITEM on a list")  # SETITEMS
    refused_pickle(b"\x80\x02}(\x88K\x01u.", "dict key of type bool refused")
    refused_pickle(b"\x80\x02}N\x88s.", "dict key of type NoneType refused")
    refused_pickle(b"\x80\x020.", "pickle stack underflow")
    refused_pickle(b"\x80\x022.", "pickle stack underflow")
    refused_pickle(b"\x80\x02l.", "pickle has no MARK where one is needed")
    refused_pickle(b"\x80\x02h\x03.", "pickle memo has no entry 3")
    refused_pickle(b"\x80\x02K\x01K\x02.", "pickle ends with objects left on its stack")
    refused_pickle(b"\x80\x02(K\x01.", "pickle ends with objects left on its stack")
    refused_pickle(b"\x80\x06N.", "unsupported pickle protocol 6")
    refused_pickle(b"\x80\x01N.", "unsupported pickle protocol 1")
    for protocol in (2, 4):
        assert run(pickle.dumps(True, protocol=protocol)) is True
        assert run(pickle.dumps(False, protocol=protocol)) is False


def test_scalars_at_their_bounds() -> None:
    assert run(pickle.dumps("x" * pr.MAX_STRING_CHARS, protocol=2)) == "x" * pr.MAX_STRING_CHARS
    refused_pickle(pickle.dumps("x" * (pr.MAX_STRING_CHARS + 1), protocol=2), "pickle string is too long")
    assert run(pickle.dumps((1 << 63) - 1, protocol=2)) == (1 << 63) - 1
    assert run(pickle.dumps(-(1 << 63), protocol=2)) == -(1 << 63)
    refused_pickle(pickle.dumps(1 << 64, protocol=2), "pickle integer is too large")
    assert run(pickle.dumps((1 << 64) - 1, protocol=2)) == (1 << 64) - 1  # 64 bits: accepted


def test_globals() -> None:
    for protocol in (2, 4):  # GLOBAL, STACK_GLOBAL
        data = pickle.dumps(__import__("collections").OrderedDict, protocol=protocol)
        assert run(data) is pr._ORDERED_DICT
        refused_pickle(pickle.dumps(__import__("os").system, protocol=protocol),
                       "refused global posix.system: not part of a tensor state dict")
    refused_pickle(b"\x80\x04\x8c\x01a\x94K\x01\x93.", "STACK_GLOBAL needs two strings")  # 'a' 1
    refused_pickle(b"\x80\x04K\x01\x8c\x01a\x93.", "STACK_GLOBAL needs two strings")  # 1 'a'
    long = "m" * 300
    refused_pickle(b"\x80\x02c" + long.encode() + b"\n" + long.encode() + b"\n.",
                   f"refused global {'m' * 200}.{'m' * 200}: not part of a tensor state dict")
    refused_pickle(b"\x80\x02ctorch\nFloat Storage x\n.",  # GLOBAL's module ends at the first space
                   "refused global torch.Float Storage x: not part of a tensor state dict")
    assert run(b"\x80\x02ctorch\nHalfStorage\n.") is pr.STORAGE_TYPES["HalfStorage"]
    assert run(b"\x80\x02ctorch._utils\n_rebuild_parameter\n.") is pr._REBUILD_PARAMETER


OD = b"ccollections\nOrderedDict\n"


def test_build() -> None:
    assert run(b"\x80\x02" + OD + b")RNb.") == {}  # OrderedDict() with None state
    assert run(b"\x80\x02" + OD + b")R}b.") == {}  # ... with a dict state (_metadata)
    assert isinstance(run(b"\x80\x02" + OD + b")R}b."), pr._StateDict)
    refused_pickle(b"\x80\x02" + OD + b")R]b.", "refused BUILD on _StateDict")
    refused_pickle(b"\x80\x02" + OD + b")RK\x01b.", "refused BUILD on _StateDict")
    refused_pickle(b"\x80\x02}Nb.", "refused BUILD on dict")
    refused_pickle(b"\x80\x02]}b.", "refused BUILD on list")


def test_reduce() -> None:
    assert run(b"\x80\x02" + OD + b"](X\x01\x00\x00\x00aK\x01\x86X\x01\x00\x00\x00bK\x02\x86e\x85R.") == {"a": 1, "b": 2}
    assert run(b"\x80\x02" + OD + b"](X\x01\x00\x00\x00aK\x01\x86e\x85R.") == {"a": 1}
    refused_pickle(b"\x80\x02" + OD + b"]R.", "REDUCE arguments are not a tuple")
    refused_pickle(b"\x80\x02" + OD + b"K\x01\x85R.", "malformed OrderedDict call")
    refused_pickle(b"\x80\x02" + OD + b"]]\x86R.", "malformed OrderedDict call")
    refused_pickle(b"\x80\x02" + OD + b"]K\x01a\x85R.", "OrderedDict items are not pairs")
    refused_pickle(b"\x80\x02" + OD + b"](K\x01K\x02K\x03\x87e\x85R.", "OrderedDict items are not pairs")
    refused_pickle(b"\x80\x02ctorch\nHalfStorage\n)R.", "refused call of torch.HalfStorage")
    refused_pickle(b"\x80\x02ctorch._utils\n_rebuild_parameter\n)R.", "malformed _rebuild_parameter call")


# -- inflating a deflated entry (through Checkpoint: its internals are being reworked) ----------------

import os  # noqa: E402
import struct  # noqa: E402
import zipfile  # noqa: E402
import zlib  # noqa: E402

from mdist.convert import checkpoint as ck  # noqa: E402
from pickle_payloads import state_dict, tensor  # noqa: E402

RAW = bytes(range(256)) * 40 + b"\0" * 5000 + os.urandom(3000)  # 18,240 bytes, partly compressible
RANGES = ((0, len(RAW)), (0, 1), (1, 10), (6, 8), (999, 2002), (len(RAW) - 5, 5), (10240, 5000), (3, 0))


def deflate(raw: bytes) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    return packer.compress(raw) + packer.flush()


def deflated_archive(path, payload: bytes, raw: bytes = RAW, *, file_size: int | None = None,
                     crc: int | None = None, ranges=((0, len(RAW)),)):
    """A torch.save-shaped archive whose storage '0' is a deflated entry holding `payload` as its
    compressed bytes, declared as `file_size` bytes of CRC `crc`; one byte tensor per (offset, length)."""
    file_size = len(raw) if file_size is None else file_size
    crc = zlib.crc32(raw) if crc is None else crc
    entries = [(f"t{i}", tensor("0", file_size, offset, (length,), (1,), "ByteStorage"))
               for i, (offset, length) in enumerate(ranges)]
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", state_dict(*entries))
        archive.writestr("archive/data/0", payload)  # stored: then declared deflated below
        archive.writestr("archive/version", "3\n")
        local = archive.getinfo("archive/data/0").header_offset
    data = bytearray(path.read_bytes())
    central = data.index(b"PK\x01\x02")
    while data[central + 46:central + 46 + 14] != b"archive/data/0":
        central = data.index(b"PK\x01\x02", central + 4)
    for at, method_at, crc_at, usize_at in ((local, 8, 14, 22), (central, 10, 16, 24)):
        struct.pack_into("<H", data, at + method_at, 8)
        struct.pack_into("<L", data, at + crc_at, crc)
        struct.pack_into("<L", data, at + usize_at, file_size)
    path.write_bytes(bytes(data))
    return path


def read_all(path, chunk: int = 1 << 20) -> dict[str, list[bytes]]:
    with ck.Checkpoint(path) as checkpoint:
        return {name: list(checkpoint.iter_bytes(t, chunk)) for name, t in checkpoint.tensors.items()}


def inflate_error(path, message: str, chunk: int = 1 << 20) -> None:
    with pytest.raises(CheckpointError) as caught:
        read_all(path, chunk)
    assert str(caught.value) == message


def test_inflate_yields_exactly_the_range_asked(tmp_path) -> None:
    path = deflated_archive(tmp_path / "m.pth", deflate(RAW), ranges=RANGES)
    for chunk in (7, 1000, 4096, 1 << 20):
        read = read_all(path, chunk)
        for i, (start, length) in enumerate(RANGES):
            assert b"".join(read[f"t{i}"]) == RAW[start:start + length], (chunk, start, length)
            assert all(0 < len(c) <= chunk for c in read[f"t{i}"])  # bounded output per step, no empty chunk


def test_inflate_refusals(tmp_path) -> None:
    whole = deflate(RAW)
    inflate_error(deflated_archive(tmp_path / "a.pth", whole[:-40]), "archive/data/0: compressed data ends early")
    inflate_error(deflated_archive(tmp_path / "b.pth", whole, crc=zlib.crc32(RAW) ^ 1),
                  "archive/data/0: compressed data does not match its size or CRC")
    inflate_error(deflated_archive(tmp_path / "c.pth", whole + b"\0\0"),
                  "archive/data/0: compressed data does not match its size or CRC")
    inflate_error(deflated_archive(tmp_path / "c2.pth", whole + b"junk" * 10),  # the stream ends before the entry:
                  "archive/data/0: compressed data does not match its size or CRC", chunk=len(whole))  # junk unread
    inflate_error(deflated_archive(tmp_path / "d.pth", whole, file_size=len(RAW) + 1),
                  "archive/data/0: compressed data does not match its size or CRC")
    inflate_error(deflated_archive(tmp_path / "e.pth", whole, file_size=len(RAW) - 1, ranges=((0, len(RAW) - 1),)),
                  f"archive/data/0: inflates past its declared {len(RAW) - 1} bytes (zip bomb)")
    bad = bytearray(whole)
    bad[0] = 0xFF  # an invalid block type
    with pytest.raises(CheckpointError) as caught:
        read_all(deflated_archive(tmp_path / "f.pth", bytes(bad)))
    assert str(caught.value).startswith("archive/data/0: corrupt compressed data (Error -3 ")


def test_inflate_of_a_file_cut_short_while_open(tmp_path) -> None:
    path = deflated_archive(tmp_path / "m.pth", deflate(RAW))
    with ck.Checkpoint(path) as checkpoint:
        os.truncate(path, 200)
        with pytest.raises(MdistError) as caught:
            b"".join(checkpoint.iter_bytes(checkpoint.tensors["t0"]))
    assert str(caught.value) in ("archive/data/0: unexpected end of file", f"{path} changed while being read")


def test_inflate_budget(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(ck, "INFLATE_SLACK_BYTES", 0)  # the budget: 4 x the deflated size
    path = deflated_archive(tmp_path / "m.pth", deflate(RAW))
    with ck.Checkpoint(path) as checkpoint:
        for _ in range(4):
            assert b"".join(checkpoint.iter_bytes(checkpoint.tensors["t0"], 1000)) == RAW
        with pytest.raises(CheckpointError) as caught:
            b"".join(checkpoint.iter_bytes(checkpoint.tensors["t0"], 1000))
    assert str(caught.value) == "reading the checkpoint inflates its deflated storages too many times"


def test_file_range_only_for_stored_contiguous_bytes(tmp_path) -> None:
    import torch

    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    state = {"base": base, "rows": base[1:3], "one": base[2, 5:6], "empty": base[:0], "transposed": base.t()}
    torch.save(state, tmp_path / "m.pth")
    with ck.Checkpoint(tmp_path / "m.pth") as checkpoint:
        for name in ("base", "rows", "one"):
            where = checkpoint.file_range(checkpoint.tensors[name])
            assert where is not None, name
            fd, offset = where
            assert os.pread(fd, state[name].numel() * 4, offset) == state[name].contiguous().numpy().tobytes(), name
        assert checkpoint.file_range(checkpoint.tensors["empty"]) is None
        assert checkpoint.file_range(checkpoint.tensors["transposed"]) is None
    path = deflated_archive(tmp_path / "d.pth", deflate(RAW))
    with ck.Checkpoint(path) as checkpoint:
        assert checkpoint.file_range(checkpoint.tensors["t0"]) is None  # deflated: never copied verbatim


def test_interpret_state_dict_results() -> None:
    from pickle_payloads import S, VALID

    tensors = pr.interpret_state_dict(VALID, lookup)
    assert tensors == {"w": pr.TensorRef(pr.StorageRef("0", F32, 4), 0, (2, 2), (2, 1))}
    for data, message in (
            (b"\x80\x02]" + b".", "checkpoint holds a list, not a dict of tensors"),
            (b"\x80\x02}" + S("a") + b"K\x01s.", "checkpoint entry 'a' is a int, not a tensor"),
            (b"\x80\x02}K\x07K\x01s.", "checkpoint entry '7' is a int, not a tensor"),
            (b"\x80\x02K", "malformed pickle: ValueError: "),
            (b"\x80\x02N", "malformed pickle: ValueError: pickle exhausted before seeing STOP")):
        with pytest.raises(CheckpointError) as caught:
            pr.interpret_state_dict(data, lookup)
        assert str(caught.value).startswith(message), str(caught.value)
    with pytest.raises(CheckpointError) as caught:
        pr.interpret_state_dict(b"\x80\x02}" + b"\x00" * pr.MAX_PICKLE_BYTES, lookup)
    assert str(caught.value) == "data.pkl is larger than any tensor state dict needs"
    pieces, room = [], pr.MAX_PICKLE_BYTES - 4
    while room:  # strings popped at once, filling the pickle to exactly the limit
        size = min(room - 6, 60000) if room - 6 - 60000 >= 6 or room - 6 <= 60000 else 30000
        pieces.append(S("x" * size) + b"0")
        room -= size + 6
    padded = b"\x80\x02" + b"".join(pieces) + b"}."  # exactly the limit: read
    assert len(padded) == pr.MAX_PICKLE_BYTES and pr.interpret_state_dict(padded, lookup) == {}


def test_strided_views_stream_whole_rows(tmp_path) -> None:
    """A non-contiguous view is copied a few whole rows at a time (never the whole tensor at once)."""
    import torch

    base = torch.arange(48, dtype=torch.float32).reshape(6, 8)
    state = {"transposed": base.t(), "cols": base[:, ::2], "skip": base.reshape(-1)[::3],
             "bytes": torch.arange(40, dtype=torch.uint8)[::2], "cube": torch.arange(24.0).reshape(2, 3, 4).permute(2, 0, 1)}
    torch.save(state, tmp_path / "m.pth")
    with ck.Checkpoint(tmp_path / "m.pth") as checkpoint:
        def chunks(name: str, size: int) -> list[int]:
            data = list(checkpoint.iter_bytes(checkpoint.tensors[name], size))
            assert b"".join(data) == state[name].contiguous().numpy().tobytes(), name
            return [len(c) for c in data]

        assert chunks("transposed", 48) == [48] * 4  # 8 rows of 6 x 4 bytes, two at a time
        assert chunks("transposed", 40) == [24] * 8
        assert chunks("cols", 40) == [32, 32, 32]  # rows of 16 bytes, two at a time
        assert chunks("cols", 10) == [16] * 6  # a row over the chunk size: one row at a time
        assert chunks("skip", 12) == [12] * 5 + [4]  # one-dimensional: elements, three at a time
        assert chunks("bytes", 10) == [10, 10]  # one-byte elements: ten at a time
        assert chunks("cube", 48) == [48, 48]  # 3-d: rows of 2 x 3 elements, two at a time


def test_array_of_any_tensor(tmp_path, monkeypatch) -> None:
    import numpy as np
    import torch

    state = {"one": torch.tensor([7.5]), "scalar": torch.tensor(2.5), "empty": torch.zeros(0, 3),
             "half": torch.arange(6, dtype=torch.float16).reshape(2, 3).t()}
    torch.save(state, tmp_path / "m.pth")
    with ck.Checkpoint(tmp_path / "m.pth") as checkpoint:
        for name, tensor in state.items():
            array = checkpoint.array(checkpoint.tensors[name])
            expected = tensor.numpy().view({4: np.uint32, 2: np.uint16}[tensor.element_size()])
            assert array.dtype == expected.dtype and array.shape == expected.shape, name
            assert np.array_equal(array, expected), name
            assert not array.flags.writeable or name == "empty"
    path = deflated_archive(tmp_path / "d.pth", deflate(RAW), ranges=((3, 100),))
    view = pr.TensorRef(pr.StorageRef("0", U8, len(RAW)), 3, (50,), (2,))
    monkeypatch.setattr(ck, "MAX_INFLATED_VIEW_BYTES", len(RAW))  # a strided view of exactly the limit: read
    with ck.Checkpoint(path) as checkpoint:
        assert checkpoint.array(view).tobytes() == RAW[3:103:2]
    monkeypatch.setattr(ck, "MAX_INFLATED_VIEW_BYTES", len(RAW) - 1)
    with ck.Checkpoint(path) as checkpoint:
        with pytest.raises(CheckpointError) as caught:
            checkpoint.array(view)
    assert str(caught.value) == (f"archive/data/0: a strided view of a deflated storage over {len(RAW) - 1} bytes; "
                                 f"re-save the checkpoint without compression")


def test_pickle_limits_at_their_edges(monkeypatch) -> None:
    monkeypatch.setattr(pr, "MAX_OPCODES", 3)
    assert run(b"\x80\x02N.") is None  # PROTO NONE STOP: 3 opcodes
    refused_pickle(b"\x80\x02N0N.", "pickle has more than 3 opcodes")
    monkeypatch.setattr(pr, "MAX_OPCODES", 1 << 21)
    monkeypatch.setattr(pr, "MAX_OBJECTS", 3)
    assert run(b"\x80\x02NN0N0.") is None  # three pushes
    refused_pickle(b"\x80\x02NN0N0N0.", "pickle creates more than 3 objects")
    refused_pickle(b"\x80\x02(N0N01N.", "pickle creates more than 3 objects")  # a MARK counts
    od = b"\x80\x02" + OD + b"](K\x01K\x02\x86e\x85R."  # OrderedDict([(1, 2)]): walking its list counts too
    monkeypatch.setattr(pr, "MAX_OBJECTS", 9)  # 8 pushes and MARKs, and the one pair walked
    assert run(od) == {1: 2}
    monkeypatch.setattr(pr, "MAX_OBJECTS", 8)
    refused_pickle(od, "pickle creates more than 8 objects")
    monkeypatch.setattr(pr, "MAX_OBJECTS", 1 << 20)
    monkeypatch.setattr(pr, "MAX_MEMO_ENTRIES", 3)
    three = b"\x80\x02Nq\x00q\x01q\x020"
    assert run(three + b"h\x02.") is None
    assert run(three + b"Nq\x010h\x01.") is None  # full, but an entry already there may be put again
    refused_pickle(three + b"q\x03.", "pickle memo is too large")


def test_arrays_are_read_only(tmp_path) -> None:
    path = deflated_archive(tmp_path / "d.pth", deflate(RAW), ranges=((3, 100),))
    view = pr.TensorRef(pr.StorageRef("0", U8, len(RAW)), 3, (50,), (2,))
    with ck.Checkpoint(path) as checkpoint:
        assert not checkpoint.array(view).flags.writeable
        assert not checkpoint.array(checkpoint.tensors["t0"]).flags.writeable


# -- tensors and persistent ids, in process --------------------------------------------------------

from pickle_payloads import G, J, S, T  # noqa: E402

REBUILD = G("torch._utils", "_rebuild_tensor_v2")
HOOKS = OD + b")R"


def pid(storage: str = "FloatStorage", key: str = "0", location: bytes | None = None, numel: bytes | None = None,
        head: bytes | None = None) -> bytes:
    return T(S("storage") if head is None else head, G("torch", storage), S(key),
             S("cpu") if location is None else location, J(4) if numel is None else numel) + b"Q"


def rebuild(*args: bytes) -> bytes:
    return b"\x80\x02" + REBUILD + T(*args) + b"R."


def good(offset=J(0), size=T(J(2), J(2)), stride=T(J(2), J(1)), grad=b"\x89", hooks=HOOKS, extra=()) -> bytes:
    return rebuild(pid(), offset, size, stride, grad, hooks, *extra)


def test_rebuild_tensor() -> None:
    expected = pr.TensorRef(pr.StorageRef("0", F32, 4), 0, (2, 2), (2, 1))
    assert run(good()) == expected
    assert run(good(extra=(b"N",))) == expected  # metadata None
    assert run(good(extra=(b"}",))) == expected  # metadata {}
    assert run(good(offset=J(1), size=T(J(3)), stride=T(J(1)))) == pr.TensorRef(pr.StorageRef("0", F32, 4), 1, (3,),
                                                                                  (1,))
    assert run(good(hooks=b"}")) == expected  # a plain dict of hooks
    for data, message in (
            (rebuild(pid(), J(0), T(J(2)), T(J(1)), b"\x89"), "malformed _rebuild_tensor_v2 call"),
            (good(extra=(b"N", b"N")), "malformed _rebuild_tensor_v2 call"),
            (rebuild(J(0), J(0), T(J(2)), T(J(1)), b"\x89", HOOKS), "tensor storage is not a persistent storage reference"),
            (good(grad=J(0)), "malformed _rebuild_tensor_v2 call: requires_grad, hooks or metadata"),
            (good(hooks=b"]"), "malformed _rebuild_tensor_v2 call: requires_grad, hooks or metadata"),
            (good(extra=(b"]",)), "malformed _rebuild_tensor_v2 call: requires_grad, hooks or metadata"),
            (good(size=b"]", stride=T(J(1))), "tensor shape and stride do not match"),
            (good(size=b"](" + J(2) + J(2) + b"e"), "tensor shape and stride do not match"),  # a list [2, 2]
            (good(stride=b"](" + J(2) + J(1) + b"e"), "tensor shape and stride do not match"),
            (good(size=T(J(4)), stride=b"]"), "tensor shape and stride do not match"),
            (good(size=T(J(4)), stride=T(J(1), J(1))), "tensor shape and stride do not match"),
            (good(size=T(*[J(1)] * 9), stride=T(*[J(1)] * 9)), "tensor has 9 dimensions, more than 8"),
            (good(offset=J(-1)), "tensor offset, shape or stride is negative, not an integer or not an int64"),
            (good(size=T(J(-1), J(2))), "tensor offset, shape or stride is negative, not an integer or not an int64"),
            (good(stride=T(J(2), J(1 << 63))), "tensor offset, shape or stride is negative, not an integer or not an int64"),
            (good(offset=b"\x88"), "tensor offset, shape or stride is negative, not an integer or not an int64"),
            (good(offset=J(3)), "tensor reaches element 6 of storage '0' which has 4")):
        refused_pickle(data, message)
    assert run(good(size=T(*[J(1)] * 8), stride=T(*[J(1)] * 8))).shape == (1,) * 8
    assert run(good(offset=J(0), size=T(J(0)), stride=T(J((1 << 63) - 1)))).stride == ((1 << 63) - 1,)


def test_rebuild_parameter() -> None:
    param = G("torch._utils", "_rebuild_parameter")
    tensor = REBUILD + T(pid(), J(0), T(J(4)), T(J(1)), b"\x89", HOOKS) + b"R"
    assert run(b"\x80\x02" + param + T(tensor, b"\x89", HOOKS) + b"R.") == pr.TensorRef(
        pr.StorageRef("0", F32, 4), 0, (4,), (1,))
    refused_pickle(b"\x80\x02" + param + T(tensor, b"\x89") + b"R.", "malformed _rebuild_parameter call")
    refused_pickle(b"\x80\x02" + param + T(J(1), b"\x89", HOOKS) + b"R.", "malformed _rebuild_parameter call")


def test_persistent_ids() -> None:
    seen: list[tuple] = []

    def record(key, dtype, numel):
        seen.append((key, dtype, numel))
        return pr.StorageRef(key, dtype, numel)

    data = b"\x80\x02" + pid("HalfStorage", "a_1", numel=J(7)) + b"."
    assert pr._Interpreter(record).run(data) == pr.StorageRef("a_1", pr.STORAGE_TYPES["HalfStorage"], 7)
    assert seen == [("a_1", pr.STORAGE_TYPES["HalfStorage"], 7)]
    assert run(b"\x80\x02" + pid(key="k" * 64, numel=J(pr.INT64_MAX // 8)) + b".").numel == pr.INT64_MAX // 8
    assert run(b"\x80\x02" + pid(numel=J(0)) + b".").numel == 0
    for data, message in (
            (b"\x80\x02" + T(S("storage"), S("x")) + b"Q.", "malformed persistent id: expected ('storage', type, key, location, numel)"),
            (b"\x80\x02" + pid(head=S("module")) + b".", "malformed persistent id: expected ('storage', type, key, location, numel)"),
            (b"\x80\x02" + S("storage") + b"Q.", "malformed persistent id: expected ('storage', type, key, location, numel)"),
            (b"\x80\x02" + T(S("storage"), S("FloatStorage"), S("0"), S("cpu"), J(4)) + b"Q.",
             "persistent id names str, not a storage type"),
            (b"\x80\x02" + T(S("storage"), OD, S("0"), S("cpu"), J(4)) + b"Q.",
             "persistent id names collections.OrderedDict, not a storage type"),
            (b"\x80\x02" + pid(key="") + b".", "persistent id has an invalid storage key"),
            (b"\x80\x02" + pid(key="k" * 65) + b".", "persistent id has an invalid storage key"),
            (b"\x80\x02" + pid(key="../0") + b".", "persistent id has an invalid storage key"),
            (b"\x80\x02" + pid(key="__") + b".", "persistent id has an invalid storage key"),  # no letter or digit
            (b"\x80\x02" + T(S("storage"), G("torch", "FloatStorage"), J(0), S("cpu"), J(4)) + b"Q.",
             "persistent id has an invalid storage key"),
            (b"\x80\x02" + pid(location=J(0)) + b".", "persistent id has an invalid location or size"),
            (b"\x80\x02" + pid(numel=J(-1)) + b".", "persistent id has an invalid location or size"),
            (b"\x80\x02" + pid(numel=J(pr.INT64_MAX // 8 + 1)) + b".", "persistent id has an invalid location or size"),
            (b"\x80\x02" + pid(numel=b"\x88") + b".", "persistent id has an invalid location or size")):
        refused_pickle(data, message)


def test_a_storage_referenced_twice_must_agree(tmp_path) -> None:
    from pickle_payloads import write_archive

    ok = state_dict(("a", tensor("0", 4)), ("b", tensor("0", 4, 1, (3,), (1,))))
    with ck.Checkpoint(write_archive(tmp_path / "ok.pth", ok)) as checkpoint:
        assert checkpoint.tensors["b"].storage is checkpoint.tensors["a"].storage
    for other in (tensor("0", 4, storage="IntStorage"), tensor("0", 2, 0, (2,), (1,))):  # a type, a size
        path = write_archive(tmp_path / "bad.pth", state_dict(("a", tensor("0", 4)), ("b", other)))
        with pytest.raises(CheckpointError) as caught:
            ck.Checkpoint(path)
        assert str(caught.value) == "storage '0' is referenced with different types or sizes"


def test_byteorder_entry_at_its_limit(tmp_path) -> None:
    from pickle_payloads import VALID

    def archive(byteorder: bytes):
        path = tmp_path / "m.pth"
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("archive/data.pkl", VALID)
            z.writestr("archive/byteorder", byteorder)
            z.writestr("archive/data/0", struct.pack("<4f", 1, 2, 3, 4))
        return path

    with ck.Checkpoint(archive(b"little" + b" " * 10)) as checkpoint:  # 16 bytes: read
        assert list(checkpoint.tensors) == ["w"]
    with pytest.raises(CheckpointError) as caught:
        ck.Checkpoint(archive(b"little" + b" " * 11))
    assert str(caught.value) == "archive/byteorder is larger than allowed (17 > 16 bytes)"
    with pytest.raises(CheckpointError) as caught:
        ck.Checkpoint(archive(b"big"))
    assert str(caught.value) == "big-endian checkpoints are not supported"


def test_a_stored_entry_cut_short_while_open(tmp_path) -> None:
    from pickle_payloads import write_archive

    path = write_archive(tmp_path / "m.pth", state_dict(("w", tensor("0", 4, 0, (4,), (1,)))))
    with ck.Checkpoint(path) as checkpoint:
        os.truncate(path, 100)
        with pytest.raises(MdistError) as caught:
            b"".join(checkpoint.iter_bytes(checkpoint.tensors["w"]))
    assert str(caught.value) in ("archive/data/0: unexpected end of file", f"{path} changed while being read")


def test_the_deflate_ratio_at_its_edge(tmp_path) -> None:
    payload = deflate(RAW)
    edge = ck.MAX_DEFLATE_RATIO * len(payload) + ck.DEFLATE_SLACK_BYTES
    with ck.Checkpoint(deflated_archive(tmp_path / "a.pth", payload, file_size=edge, ranges=((0, 1),))) as checkpoint:
        assert checkpoint.tensors["t0"].storage.numel == edge  # opens: the ratio is checked, not yet the size
    with pytest.raises(CheckpointError) as caught:
        ck.Checkpoint(deflated_archive(tmp_path / "b.pth", payload, file_size=edge + 1, ranges=((0, 1),)))
    assert str(caught.value) == "archive/data/0: compression ratio suggests a zip bomb"


def test_long_names_and_messages_are_cut(monkeypatch) -> None:
    from pickle_payloads import S

    with pytest.raises(CheckpointError) as caught:
        pr.interpret_state_dict(b"\x80\x02}" + S("n" * 150) + b"K\x01s.", lookup)
    assert str(caught.value) == f"checkpoint entry {'n' * 100!r} is a int, not a tensor"

    def genops(stream):
        raise ValueError("v" * 300)

    monkeypatch.setattr(pr.pickletools, "genops", genops)
    with pytest.raises(CheckpointError) as caught:
        pr.interpret_state_dict(b"\x80\x02}.", lookup)
    assert str(caught.value) == "malformed pickle: ValueError: " + "v" * 200


def test_archive_folder_and_empty_byteorder(tmp_path) -> None:
    from pickle_payloads import VALID

    path = tmp_path / "m.pth"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", VALID)
        z.writestr("archive/byteorder", b"")  # empty: little-endian, as torch reads it
        z.writestr("archive/data/0", struct.pack("<4f", 1, 2, 3, 4))
    with ck.Checkpoint(path) as checkpoint:
        assert list(checkpoint.tensors) == ["w"]
    with zipfile.ZipFile(path, "a") as z:
        z.writestr("x" * 150, b"")
    with pytest.raises(CheckpointError) as caught:
        ck.Checkpoint(path)
    assert str(caught.value) == f"entry {'x' * 100!r} is outside the archive folder 'archive/'"


# -- the strict zip reader, in process ----------------------------------------------------------------
# Archives are built byte by byte (every field can be set apart in the local header, the central record
# and the end records), read by read_zip_members and its helpers directly, and checked against Python's
# zipfile and torch.save's own output; each refusal must name its cause.

import io  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402

import torch  # noqa: E402

from mdist.convert.joined import JoinedFile  # noqa: E402
from mdist.errors import InputError  # noqa: E402

LONG = "d/" + "n" * 148  # a name over the 100 characters a message shows
SIG = b"PK\x07\x08"


@dataclass
class Entry:
    name: str
    data: bytes = b"abcdef"
    flags: int = 0
    method: int = 0
    local: dict = field(default_factory=dict)  # local header fields to override
    central: dict = field(default_factory=dict)  # central record fields to override
    payload: bytes | None = None  # the bytes after the local header (default: data, deflated for method 8)
    descriptor: bytes | None = None  # after the payload (default: a 16-byte one, signed, when flags & 8)

    def stored(self) -> bytes:
        if self.payload is not None:
            return self.payload
        return deflate(self.data) if self.method == 8 else self.data

    def fields(self, offset: int) -> dict:
        return {"sig": None, "name": self.name.encode(), "flags": self.flags, "method": self.method,
                "crc": zlib.crc32(self.data), "csize": len(self.stored()), "usize": len(self.data), "extra": b"",
                "offset": offset, "comment": b"", "disk": 0}

    def local_bytes(self, offset: int) -> bytes:
        f = self.fields(offset) | self.local
        return struct.pack("<4s5H3L2H", f["sig"] or b"PK\x03\x04", 20, f["flags"], f["method"], 0, 0x21, f["crc"],
                           f["csize"], f["usize"], f.get("name_len", len(f["name"])), len(f["extra"])) + f["name"] + f["extra"]

    def central_bytes(self, offset: int) -> bytes:
        f = self.fields(offset) | self.central
        return struct.pack("<4s6H3L5H2L", f["sig"] or b"PK\x01\x02", 20, 20, f["flags"], f["method"], 0, 0x21,
                           f["crc"], f["csize"], f["usize"], f.get("name_len", len(f["name"])), len(f["extra"]),
                           len(f["comment"]), f["disk"], 0, 0, f["offset"]) + f["name"] + f["extra"] + f["comment"]

    def after(self) -> bytes:
        if self.descriptor is not None:
            return self.descriptor
        if self.flags & 8:
            return SIG + struct.pack("<3L", zlib.crc32(self.data), len(self.stored()), len(self.data))
        return b""


def build_zip(entries: list[Entry], *, between: dict | None = None, end: dict | None = None,
              zip64: dict | None = None, tail: bytes = b"", order: list[int] | None = None) -> bytes:
    """The entries' local headers, data and descriptors (`between[i]` after entry i), their central records (in
    `order`), a zip64 end record and locator when `zip64` is given (its fields overridden), the end record."""
    body, records = b"", []
    for i, entry in enumerate(entries):
        records.append(entry.central_bytes(len(body)))
        body += entry.local_bytes(len(body)) + entry.stored() + entry.after() + (between or {}).get(i, b"")
    cd = b"".join(records[i] for i in (order or range(len(records))))
    n = len(entries)
    records64 = b""
    if zip64 is not None:
        z = {"sig": b"PK\x06\x06", "size": 44, "disk": 0, "cd_disk": 0, "on_disk": n, "count": n, "cd_size": len(cd),
             "cd_offset": len(body), "lsig": b"PK\x06\x07", "ldisk": 0, "at": len(body) + len(cd), "disks": 1} | zip64
        records64 = (struct.pack("<4sQ2H2L4Q", z["sig"], z["size"], 45, 45, z["disk"], z["cd_disk"], z["on_disk"],
                                 z["count"], z["cd_size"], z["cd_offset"])
                     + struct.pack("<4sLQL", z["lsig"], z["ldisk"], z["at"], z["disks"]))
    e = {"disk": 0, "cd_disk": 0, "on_disk": n, "count": n, "cd_size": len(cd), "cd_offset": len(body),
         "comment": 0} | (end or {})
    return body + cd + records64 + struct.pack("<4s4H2LH", b"PK\x05\x06", e["disk"], e["cd_disk"], e["on_disk"],
                                               e["count"], e["cd_size"], e["cd_offset"], e["comment"]) + tail


def zip_members(tmp_path, raw: bytes, label: str = "z.zip") -> dict[str, ck.ZipMember]:
    path = tmp_path / "z.zip"
    path.write_bytes(raw)
    with JoinedFile([path]) as fd:
        return ck.read_zip_members(fd, fd.size, label)


def zip_refused(tmp_path, raw: bytes, message: str, error: type = CheckpointError) -> None:
    with pytest.raises(MdistError) as caught:
        zip_members(tmp_path, raw)
    assert (type(caught.value), str(caught.value)) == (error, message)


def as_zipfile_reads(raw: bytes) -> list[tuple]:
    """What Python's zipfile finds: (name, raw name, flags, method, crc, sizes, header offset, data offset, data)."""
    found = []
    with zipfile.ZipFile(io.BytesIO(raw)) as archive:
        for info in archive.infolist():
            name_len, extra_len = struct.unpack_from("<HH", raw, info.header_offset + 26)
            raw_name = info.filename.encode("utf-8" if info.flag_bits & 0x800 else "ascii")
            found.append((info.filename, raw_name, info.flag_bits, info.compress_type, info.CRC, info.compress_size,
                          info.file_size, info.header_offset, info.header_offset + 30 + name_len + extra_len,
                          archive.read(info)))
    return found


def as_mdist_reads(raw: bytes, members: dict[str, ck.ZipMember]) -> list[tuple]:
    found = []
    for m in members.values():
        stored = raw[m.data_start:m.data_start + m.compress_size]
        data = zlib.decompress(stored, -15) if m.method == 8 else stored
        found.append((m.name, m.raw_name, m.flags, m.method, m.crc, m.compress_size, m.file_size, m.header_offset,
                      m.data_start, data))
    return found


def test_zip_reader_limits() -> None:
    assert (ck.MAX_ZIP_ENTRIES, ck.MAX_CENTRAL_DIRECTORY_BYTES, ck.MAX_DEFLATE_RATIO, ck.DEFLATE_SLACK_BYTES) == (
        1 << 16, 16 << 20, 100, 1 << 20)
    assert (ck.MAX_INFLATE_FACTOR, ck.INFLATE_SLACK_BYTES, ck.MAX_INFLATED_VIEW_BYTES, ck.CHUNK_BYTES) == (
        4, 256 << 20, 1 << 30, 16 << 20)


def test_torch_save_archives_read_as_zipfile_reads_them(tmp_path) -> None:
    """torch.save's layout: UTF-8 names, 16-byte data descriptors, padding in the local
    extra fields, a zip64 end record and locator before the end record."""
    state = {"w": torch.arange(4, dtype=torch.float32), "v": torch.ones(3, 2, dtype=torch.bfloat16),
             "é": torch.zeros(0), "big": torch.arange(3000, dtype=torch.int64)}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    raw = buffer.getvalue()
    assert raw[-42:-38] == b"PK\x06\x07"
    members = zip_members(tmp_path, raw)
    assert as_mdist_reads(raw, members) == sorted(as_zipfile_reads(raw), key=lambda m: m[7])
    assert {m.flags for m in members.values()} == {0x808, 0x800}  # a descriptor after most entries, not all
    (tmp_path / "m.pth").write_bytes(raw)
    with ck.Checkpoint(tmp_path / "m.pth") as checkpoint:
        for name, value in state.items():
            assert b"".join(checkpoint.iter_bytes(checkpoint.tensors[name])) == value.view(torch.uint8).numpy().tobytes()


def test_zipfile_archives_read_as_zipfile_reads_them(tmp_path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("a/stored", RAW)
        archive.writestr("a/deflated", RAW, compress_type=zipfile.ZIP_DEFLATED)
        archive.writestr("a/empty", b"")
        archive.writestr("a/é", b"utf-8 name")
        with archive.open("a/zip64", "w", force_zip64=True) as out:  # zip64 sizes in the local header
            out.write(b"x" * 1000)
    raw = buffer.getvalue()
    assert b"\x01\x00\x10\x00" in raw  # the zip64 extra field, 16 bytes
    members = zip_members(tmp_path, raw)
    assert list(members) == ["a/stored", "a/deflated", "a/empty", "a/é", "a/zip64"]
    assert as_mdist_reads(raw, members) == as_zipfile_reads(raw)
    assert zip_members(tmp_path, zipfile_bytes({})) == {}  # an empty archive: the end record alone, 22 bytes
    assert len(zipfile_bytes({})) == 22


def zipfile_bytes(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_built_archives_read_as_zipfile_reads_them(tmp_path) -> None:
    """The builder's own archives (descriptors of every layout, zip64 fields) as zipfile reads them, and
    central records in another order than the entries."""
    entries = [Entry("a/one", RAW[:100]), Entry("a/two", RAW, method=8), Entry("a/three", b"")]
    for order in ([0, 1, 2], [2, 0, 1], [1, 2, 0]):
        raw = build_zip(entries, order=order)
        members = zip_members(tmp_path, raw)
        assert list(members) == ["a/one", "a/two", "a/three"]  # by offset, not by central directory order
        assert as_mdist_reads(raw, members) == sorted(as_zipfile_reads(raw), key=lambda m: m[7])
    for descriptor in (lambda c, s, u: struct.pack("<3L", c, s, u), lambda c, s, u: SIG + struct.pack("<3L", c, s, u),
                       lambda c, s, u: struct.pack("<LQQ", c, s, u), lambda c, s, u: SIG + struct.pack("<LQQ", c, s, u)):
        flagged = [Entry(e.name, e.data, flags=8, method=e.method, local={"crc": 0, "csize": 0, "usize": 0},
                         descriptor=descriptor(zlib.crc32(e.data), len(e.stored()), len(e.data))) for e in entries]
        raw = build_zip(flagged)
        assert as_mdist_reads(raw, zip_members(tmp_path, raw)) == as_zipfile_reads(raw)


def zip64_extra(*values: int, widths: tuple[int, ...] | None = None) -> bytes:
    widths = widths or (8,) * len(values)
    body = b"".join(v.to_bytes(w, "little") for v, w in zip(values, widths))
    return struct.pack("<HH", 1, len(body)) + body


def test_zip64_fields_read_as_zipfile_reads_them(tmp_path) -> None:
    data = RAW[:3000]
    packed = deflate(data)
    first = Entry("a/first", b"12345")
    at = len(first.local_bytes(0)) + 5
    second = Entry("a/z", data, method=8,  # every sentinel: sizes (uncompressed first) and offset from the extra field
                   local={"csize": ck._U32, "usize": ck._U32, "extra": zip64_extra(len(data), len(packed))},
                   central={"csize": ck._U32, "usize": ck._U32, "offset": ck._U32,
                            "extra": zip64_extra(len(data), len(packed), at)})
    raw = build_zip([first, second])
    members = zip_members(tmp_path, raw)
    assert (members["a/z"].compress_size, members["a/z"].file_size, members["a/z"].header_offset) == (
        len(packed), len(data), at)
    assert as_mdist_reads(raw, members) == as_zipfile_reads(raw)
    # the disk number too (16-bit sentinel, 4-byte field), after the three 8-byte values
    for disk, ok in ((0, True), (1, False)):
        entry = Entry("a/z", data, method=8, central={
            "csize": ck._U32, "usize": ck._U32, "offset": ck._U32, "disk": ck._U16,
            "extra": zip64_extra(len(data), len(packed), 0, disk, widths=(8, 8, 8, 4))})
        if ok:
            assert as_mdist_reads(build_zip([entry]), zip_members(tmp_path, build_zip([entry])))[0][5:9] == (
                len(packed), len(data), 0, 33)
        else:
            zip_refused(tmp_path, build_zip([entry]), "a/z: unsupported zip flags 0x0, method 8 or disk 1")
    # the sizes swapped in the local extra field: another entry than the central directory's
    swapped = Entry("a/z", data, method=8, local={"csize": ck._U32, "usize": ck._U32,
                                                   "extra": zip64_extra(len(packed), len(data))})
    zip_refused(tmp_path, build_zip([swapped]), "local header of 'a/z' disagrees with the central directory")


def test_zip64_values() -> None:
    assert ck._zip64_values(b"", [1, 2, 3], (8, 8, 4)) == [1, 2, 3]  # no sentinel: no field needed
    assert ck._zip64_values(b"", [ck._U16, ck._U16 + 1], (8, 8)) == [ck._U16, ck._U16 + 1]  # 0xFFFF is 64-bit data
    extra = zip64_extra(7, 9)
    assert ck._zip64_values(extra, [ck._U32, 5, ck._U32], (8, 8, 8)) == [7, 5, 9]  # in order, skipping the others
    assert ck._zip64_values(zip64_extra(6, widths=(4,)), [ck._U16], (4,)) == [6]
    assert ck._zip64_values(zip64_extra(1 << 40, 3, widths=(8, 4)), [ck._U32, ck._U16], (8, 4)) == [1 << 40, 3]
    other = struct.pack("<HH", 2, 8) + (5).to_bytes(8, "little")  # another tag's field is not the zip64 one
    assert ck._zip64_values(other + extra, [ck._U32], (8,)) == [7]
    for bad in (b"", other, zip64_extra(7), struct.pack("<HH", 1, 15) + b"\7" * 15, zip64_extra(5, widths=(4,))):
        with pytest.raises(CheckpointError) as caught:
            ck._zip64_values(bad, [ck._U32, ck._U32], (8, 8))
        assert str(caught.value) == "zip entry needs a zip64 field it does not have"
    assert ck._zip64_values(zip64_extra(7, 9), [ck._U32, ck._U32], (8, 8)) == [7, 9]  # exactly enough
    for bad in (b"", other):  # a 4-byte value (the disk number) needs the field too
        with pytest.raises(CheckpointError) as caught:
            ck._zip64_values(bad, [ck._U16], (4,))
        assert str(caught.value) == "zip entry needs a zip64 field it does not have"


def test_extra_fields() -> None:
    assert ck._extra_fields(b"") == {}
    assert ck._extra_fields(struct.pack("<HH", 7, 0)) == {7: b""}  # a header alone, at the very end
    assert ck._extra_fields(struct.pack("<HH", 1, 3) + b"abc" + struct.pack("<HH", 9, 1) + b"z") == {1: b"abc", 9: b"z"}
    assert ck._extra_fields(struct.pack("<HH", 0x9901, 1) + b"z") == {0x9901: b"z"}  # unsigned tags and lengths
    assert ck._extra_fields(struct.pack("<HH", 7, 0x8000) + b"\0" * 0x8000) == {7: b"\0" * 0x8000}
    for bad in (b"\x01", b"\x01\x00\x00", struct.pack("<HH", 1, 0) + b"\x02\x00\x00",  # a header cut short
                struct.pack("<HH", 1, 4) + b"abc",  # a field past the end
                struct.pack("<HH", 1, 0x8000) + b"abc", struct.pack("<HH", 1, 0xFFFF) + b"\0" * 0xFFFE,
                struct.pack("<HH", 1, 1) + b"a" + struct.pack("<HH", 1, 1) + b"b"):  # a tag twice
        with pytest.raises(CheckpointError) as caught:
            ck._extra_fields(bad)
        assert str(caught.value) == "malformed zip extra field", bad


def test_decode_name() -> None:
    assert ck._decode_name(b"a/b.c", 0) == "a/b.c"
    assert ck._decode_name(b"a/b.c", 0x800) == "a/b.c"
    assert ck._decode_name("é/ü".encode(), 0x800) == "é/ü"
    assert ck._decode_name("é/ü".encode(), 0x808) == "é/ü"
    for raw, flags in (("é".encode(), 0), ("é".encode(), 0x8), ("é".encode(), 0x1), (b"a\x00b", 0), (b"a\x00b", 0x800), (b"\xff", 0x800),
                       (b"\xc3" * 150, 0)):
        with pytest.raises(CheckpointError) as caught:
            ck._decode_name(raw, flags)
        assert str(caught.value) == f"entry name {raw[:100]!r} is not ASCII or flagged UTF-8"


def central(name: bytes, *, flags: int = 0, method: int = 0, crc: int = 5, csize: int = 3, usize: int = 3,
            offset: int = 0, disk: int = 0, extra: bytes = b"", comment: bytes = b"", name_len: int | None = None,
            sig: bytes = b"PK\x01\x02") -> bytes:
    return struct.pack("<4s6H3L5H2L", sig, 20, 20, flags, method, 0, 0, crc, csize, usize,
                       len(name) if name_len is None else name_len, len(extra), len(comment), disk, 0, 0, offset) + (
        name + extra + comment)


def cd_refused(data: bytes, count: int, message: str) -> None:
    with pytest.raises(CheckpointError) as caught:
        ck._read_central_directory(data, count)
    assert str(caught.value) == message


def test_central_directory_records() -> None:
    data = central(b"a", crc=11, offset=0) + central(b"b", method=8, crc=12, csize=2, usize=9, offset=40,
                                                      extra=struct.pack("<HH", 5, 2) + b"xx", comment=b"hello")
    assert ck._read_central_directory(data, 2) == [ck.ZipMember("a", b"a", 0, 0, 11, 3, 3, 0),
                                                   ck.ZipMember("b", b"b", 0, 8, 12, 2, 9, 40)]
    assert ck._read_central_directory(b"", 0) == []
    assert ck._read_central_directory(central(b""), 1) == [ck.ZipMember("", b"", 0, 0, 5, 3, 3, 0)]  # 46 bytes exactly
    assert ck._read_central_directory(central("é".encode(), flags=0x800), 1)[0].name == "é"
    for flags in (0x800, 0x8, 0x2, 0x4, 0x6, 0x80e):
        assert ck._read_central_directory(central(b"n", flags=flags), 1)[0].flags == flags
    cd_refused(central(b"a"), 2, "the central directory is too short for its 2 entries")
    cd_refused(central(b"a")[:-2], 1, "the central directory is too short for its 1 entries")
    cd_refused(central(b"abc", name_len=4), 1, "malformed central directory record")  # the name runs past the end
    cd_refused(central(b"abc", sig=b"PK\x01\x03"), 1, "malformed central directory record")
    cd_refused(central(b"a") + b"xy", 1, "the central directory holds 2 bytes its 1 entries do not use")
    cd_refused(central(b"a") + central(b"b"), 1, "the central directory holds 47 bytes its 1 entries do not use")
    cd_refused(central(LONG.encode()) + central(LONG.upper().encode()), 2,
               f"the archive has two entries named {LONG.upper()[:100]!r} (ignoring case): torch and other zip "
               "readers would read different ones")
    cd_refused(central(b"a/B") + central(b"a/b"), 2, "the archive has two entries named 'a/b' (ignoring case): "
               "torch and other zip readers would read different ones")
    for flags in (0x1, 0x10, 0x20, 0x40, 0x1000, 0x2000, 0x4000, 0x8000, 0x809):
        cd_refused(central(LONG.encode(), flags=flags), 1,
                   f"{LONG[:100]}: unsupported zip flags {flags:#x}, method 0 or disk 0")
    for method in (1, 6, 9, 12, 14, 99):
        cd_refused(central(b"a", method=method), 1, f"a: unsupported zip flags 0x0, method {method} or disk 0")
    cd_refused(central(b"a", disk=1), 1, "a: unsupported zip flags 0x0, method 0 or disk 1")
    cd_refused(central(LONG.encode(), csize=3, usize=4), 1, f"{LONG[:100]}: stored entry sizes disagree")
    cd_refused(central(b"a", csize=4, usize=3), 1, "a: stored entry sizes disagree")
    assert ck._read_central_directory(central(b"a", method=8, csize=4, usize=3), 1)[0].compress_size == 4
    cd_refused(central(b"a", extra=b"\x01\x00\x05\x00"), 1, "malformed zip extra field")
    cd_refused(central(b"a", csize=ck._U32, usize=ck._U32), 1, "zip entry needs a zip64 field it does not have")
    cd_refused(central(b"\xff"), 1, "entry name b'\\xff' is not ASCII or flagged UTF-8")


def test_end_record_must_end_the_file(tmp_path) -> None:
    raw = build_zip([Entry("a/x"), Entry("a/y", b"12")])
    assert list(zip_members(tmp_path, raw)) == ["a/x", "a/y"]
    not_zip = "z.zip is not a torch.save zip archive (empty, truncated, legacy format or plain pickle?)"
    for junk in (b"", b"x" * 21, b"\0" * 22, b"\0" * 1000, b"PK\x03\x04" + b"\0" * 40, raw[:-30]):
        zip_refused(tmp_path, junk, not_zip, InputError)
    for cut in (1, 10, 18):  # a short download: the end record cut short
        zip_refused(tmp_path, raw[:-cut], "z.zip is truncated: its zip end record is cut short (download it again)",
                    InputError)
    empty = zipfile_bytes({})
    follows = "z.zip: bytes follow the zip end record (a comment or appended data)"
    # a file over 64 KiB: the whole tail searched, to its last byte; the last signature is the record's
    big = build_zip([Entry("a/x", b"PK\x05\x06" * 20000)])
    for cut in (1, 10, 18):
        zip_refused(tmp_path, big[:-cut], "z.zip is truncated: its zip end record is cut short (download it again)",
                    InputError)
    zip_refused(tmp_path, big + b"x", follows)
    for appended in (b"x", b"\0" * 100, b"\0" * 0x10000):  # up to 64 KiB (a zip comment's most) after the record
        zip_refused(tmp_path, raw + appended, follows)
    zip_refused(tmp_path, raw + b"\0" * 0x10001, not_zip, InputError)
    zip_refused(tmp_path, empty + b"\0" * 10, follows)  # the record at byte 0
    zip_refused(tmp_path, b"\0" * 100 + empty + b"\0" * 0xFFD0, follows)  # the record at the tail's first byte
    zip_refused(tmp_path, build_zip([Entry("a/x")], tail=b"hi", end={"comment": 2}), follows)
    with zipfile.ZipFile(tmp_path / "c.zip", "w") as archive:
        archive.writestr("a/x", b"1")
        archive.comment = b"a comment"
    zip_refused(tmp_path, (tmp_path / "c.zip").read_bytes(), follows)


def test_end_record_fields(tmp_path) -> None:
    entries = [Entry("a/x"), Entry("a/y", b"12")]
    multi = "z.zip: multi-disk archive or archive comment"
    for end in ({"disk": 1}, {"cd_disk": 1}, {"on_disk": 1}, {"on_disk": 3}, {"comment": 1}, {"comment": 40}):
        zip_refused(tmp_path, build_zip(entries, end=end), multi)
    zip_refused(tmp_path, build_zip(entries, end={"count": 1, "on_disk": 1}),
                "the central directory holds 49 bytes its 1 entries do not use")
    zip_refused(tmp_path, build_zip(entries, end={"count": 3, "on_disk": 3}),
                "the central directory is too short for its 3 entries")
    raw = build_zip(entries)
    cd_size, cd_offset = struct.unpack_from("<2L", raw, len(raw) - 10)
    for end, offset, size in (({"cd_offset": cd_offset + 1}, cd_offset + 1, cd_size),
                              ({"cd_offset": cd_offset - 1}, cd_offset - 1, cd_size),
                              ({"cd_size": cd_size - 1}, cd_offset, cd_size - 1)):
        zip_refused(tmp_path, build_zip(entries, end=end),
                    f"z.zip: the central directory (offset {offset}, {size} bytes) does not end where the end records "
                    f"begin (offset {cd_offset + cd_size}): the archive holds bytes it does not account for")
    zip_refused(tmp_path, b"J" * 7 + zipfile_bytes({"a/x": b"1"}),  # zipfile would shift every offset by 7
                "z.zip: the central directory (offset 34, 49 bytes) does not end where the end records begin "
                "(offset 90): the archive holds bytes it does not account for")
    for end in ({"count": ck._U16, "on_disk": ck._U16}, {"cd_size": ck._U32}, {"cd_offset": ck._U32}):
        zip_refused(tmp_path, build_zip(entries, end=end),
                    "z.zip: end record needs zip64 values but there is no zip64 record")


def test_entry_and_directory_limits(tmp_path, monkeypatch) -> None:
    entries = [Entry("a/x"), Entry("a/y", b"12"), Entry("a/z", b"")]
    raw = build_zip(entries)
    cd_size = struct.unpack_from("<L", raw, len(raw) - 10)[0]
    monkeypatch.setattr(ck, "MAX_ZIP_ENTRIES", 3)
    monkeypatch.setattr(ck, "MAX_CENTRAL_DIRECTORY_BYTES", cd_size)
    assert len(zip_members(tmp_path, raw)) == 3
    message = f"z.zip: 3 entries in a {cd_size}-byte central directory is more than allowed"
    monkeypatch.setattr(ck, "MAX_ZIP_ENTRIES", 2)
    zip_refused(tmp_path, raw, message)
    monkeypatch.setattr(ck, "MAX_ZIP_ENTRIES", 3)
    monkeypatch.setattr(ck, "MAX_CENTRAL_DIRECTORY_BYTES", cd_size - 1)
    zip_refused(tmp_path, raw, message)
    monkeypatch.setattr(ck, "MAX_CENTRAL_DIRECTORY_BYTES", 1 << 40)  # the zip64 values are the ones checked
    monkeypatch.setattr(ck, "MAX_ZIP_ENTRIES", 2)
    zip_refused(tmp_path, build_zip(entries, zip64={}, end={"count": ck._U16, "on_disk": ck._U16}), message)


def test_zip64_end_records(tmp_path) -> None:
    entries = [Entry("a/x"), Entry("a/y", b"12")]
    plain = zip_members(tmp_path, build_zip(entries))
    raw = build_zip(entries)
    cd_size, cd_offset = struct.unpack_from("<2L", raw, len(raw) - 10)
    # the end record's values, or its sentinels standing for the zip64 record's
    for end in ({}, {"count": ck._U16, "on_disk": ck._U16}, {"cd_size": ck._U32}, {"cd_offset": ck._U32},
                {"count": ck._U16, "on_disk": ck._U16, "cd_size": ck._U32, "cd_offset": ck._U32}):
        raw64 = build_zip(entries, zip64={}, end=end)
        assert zip_members(tmp_path, raw64) == plain, end
        assert len(zipfile.ZipFile(io.BytesIO(raw64)).infolist()) == 2
    empty64 = build_zip([], zip64={})  # the zip64 end record at byte 0
    assert len(empty64) == 98 and zip_members(tmp_path, empty64) == {}
    assert zipfile.ZipFile(io.BytesIO(empty64)).infolist() == []
    disagrees = "z.zip: zip64 end record disagrees with the end record"
    for end in ({"count": 1, "on_disk": 1}, {"count": ck._U32 & 0xFFFE, "on_disk": ck._U32 & 0xFFFE},
                {"cd_size": cd_size + 1}, {"cd_size": ck._U16}, {"cd_offset": cd_offset - 1}, {"cd_offset": ck._U16}):
        zip_refused(tmp_path, build_zip(entries, zip64={}, end=end), disagrees)
    zip_refused(tmp_path, build_zip(entries, zip64={"count": 3, "on_disk": 3}), disagrees)
    zip_refused(tmp_path, build_zip(entries, zip64={"cd_size": cd_size - 1}), disagrees)
    zip_refused(tmp_path, build_zip(entries, zip64={"cd_offset": cd_offset + 1}), disagrees)
    # with sentinels, the zip64 record's values are the ones checked and used
    zip_refused(tmp_path, build_zip(entries, zip64={"count": 3, "on_disk": 3}, end={"count": ck._U16,
                                                                                  "on_disk": ck._U16}),
                "the central directory is too short for its 3 entries")
    zip_refused(tmp_path, build_zip(entries, zip64={"cd_offset": cd_offset + 1}, end={"cd_offset": ck._U32}),
                f"z.zip: the central directory (offset {cd_offset + 1}, {cd_size} bytes) does not end where the end "
                f"records begin (offset {cd_offset + cd_size}): the archive holds bytes it does not account for")
    zip_refused(tmp_path, build_zip(entries, zip64={"cd_size": cd_size - 1}, end={"cd_size": ck._U32}),
                f"z.zip: the central directory (offset {cd_offset}, {cd_size - 1} bytes) does not end where the end "
                f"records begin (offset {cd_offset + cd_size}): the archive holds bytes it does not account for")
    malformed = "z.zip: malformed zip64 end record"
    for z in ({"sig": b"PK\x06\x05"}, {"size": 43}, {"size": 45}, {"disk": 1}, {"cd_disk": 1}, {"on_disk": 1},
              {"on_disk": 3}):
        zip_refused(tmp_path, build_zip(entries, zip64=z), malformed)
    locator = "z.zip: zip64 locator does not point just before itself"
    for z in ({"ldisk": 1}, {"at": cd_offset + cd_size + 1}, {"at": cd_offset + cd_size - 1}, {"at": 0},
              {"disks": 0}, {"disks": 2}):
        zip_refused(tmp_path, build_zip(entries, zip64=z), locator)
    # a locator with no room for the zip64 record before it; at byte 0, just room for itself
    zip_refused(tmp_path, struct.pack("<4sLQL", b"PK\x06\x07", 0, 0, 1) + zipfile_bytes({}), locator)
    zip_refused(tmp_path, b"\0" * 30 + struct.pack("<4sLQL", b"PK\x06\x07", 0, 0, 1) + zipfile_bytes({}), locator)
    # 20 bytes before the end record that are no locator are the central directory's
    raw = build_zip(entries, zip64={"lsig": b"PK\x06\x08"})
    zip_refused(tmp_path, raw, f"z.zip: the central directory (offset {cd_offset}, {cd_size} bytes) does not end "
                f"where the end records begin (offset {len(raw) - 22}): the archive holds bytes it does not account for")
    zip_refused(tmp_path, b"\0" * 19 + zipfile_bytes({}), "z.zip: the central directory (offset 0, 0 bytes) does not "
                "end where the end records begin (offset 19): the archive holds bytes it does not account for")


def test_entries_must_tile_the_file(tmp_path) -> None:
    entries = [Entry("a/x"), Entry(LONG, b"12"), Entry("a/z", b"345")]
    raw = build_zip(entries)
    assert list(zip_members(tmp_path, raw)) == ["a/x", LONG, "a/z"]
    zip_refused(tmp_path, build_zip(entries, between={0: b"xyz"}),
                f"entry {LONG[:100]!r} starts 3 bytes after the end of the entry before it: the archive is ambiguous")
    zip_refused(tmp_path, build_zip(entries, between={2: b"xyz"}),
                "3 bytes before the central directory belong to no entry")
    zip_refused(tmp_path, b"junk" + build_zip([], end={"cd_offset": 4}),  # no entry at all
                "4 bytes before the central directory belong to no entry")
    first = Entry(LONG, b"1", central={"offset": 3})  # the offsets shifted, as if 3 bytes were prepended
    body = b"abc" + first.local_bytes(3) + b"1"
    cd = first.central_bytes(3)
    zip_refused(tmp_path, body + cd + struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 1, 1, len(cd), len(body), 0),
                f"entry {LONG[:100]!r} starts at byte 3, not 0: the archive is ambiguous")
    # the third entry said to start 1 byte early, inside the second one's data: the second runs into it
    third_at = len(entries[0].local_bytes(0)) + 6 + len(entries[1].local_bytes(0)) + 2
    shifted = [entries[0], entries[1], Entry("a/z", b"345", central={"offset": third_at - 1})]
    zip_refused(tmp_path, build_zip(shifted), f"entry {LONG[:100]!r} runs into the next entry or the central directory")
    # two entries at one offset: the first runs into the second
    twice = [entries[0], Entry("a/z", b"345", central={"offset": 0})]
    zip_refused(tmp_path, build_zip(twice), "entry 'a/x' runs into the next entry or the central directory")
    # data said to be one byte longer (local header and directory agree) runs into the next entry / the directory
    for i in (1, 2):
        claims = {"csize": len(entries[i].data) + 1, "usize": len(entries[i].data) + 1}
        longer = list(entries)
        longer[i] = Entry(entries[i].name, entries[i].data, local=claims, central=claims)
        zip_refused(tmp_path, build_zip(longer),
                    f"entry {entries[i].name[:100]!r} runs into the next entry or the central directory")


def test_local_headers_must_agree(tmp_path) -> None:
    def refused(entry: Entry, message: str) -> None:
        zip_refused(tmp_path, build_zip([Entry("a/x"), entry, Entry("a/y", b"")]), message)

    data = RAW[:500]
    names = f"local header of {LONG[:100]!r}"
    refused(Entry(LONG, local={"sig": b"PK\x03\x05"}), f"{names} names {LONG.encode()[:100]!r}")
    refused(Entry(LONG, local={"name": (LONG + "x").encode()}), f"{names} names {(LONG + 'x').encode()[:100]!r}")
    refused(Entry("a/b", local={"name": b"a/c"}), "local header of 'a/b' names b'a/c'")
    refused(Entry("a/b", local={"name": b"a/B"}), "local header of 'a/b' names b'a/B'")
    refused(Entry(LONG, local={"flags": 0x800}), f"{names} has another method or flags")
    refused(Entry(LONG, data, method=8, local={"method": 0}), f"{names} has another method or flags")
    disagrees = f"{names} disagrees with the central directory"
    for key, value in (("crc", 1), ("crc", 0), ("csize", 7), ("csize", 0), ("usize", 7), ("usize", 0)):
        refused(Entry(LONG, b"abcdef", local={key: value}), disagrees)  # without a descriptor, 0 is a value
    packed = len(deflate(data))
    for key, value in (("crc", 1), ("csize", packed - 1), ("usize", len(data) + 1)):
        refused(Entry(LONG, data, method=8, flags=8, local={key: value}), disagrees)
    for zeros in ({"crc": 0}, {"csize": 0}, {"usize": 0}, {"crc": 0, "csize": 0, "usize": 0}):
        entry = Entry("a/b", data, method=8, flags=8, local=zeros)  # zeros, the sizes in the descriptor after the data
        raw = build_zip([entry])
        assert as_mdist_reads(raw, zip_members(tmp_path, raw)) == as_zipfile_reads(raw)
    # the data starts after the local header's own name and extra field (padding, as torch writes)
    padded = Entry("a/b", data, local={"extra": struct.pack("<HH", 0x4246, 21) + b"\0" * 21})
    raw = build_zip([Entry("a/x"), padded])
    assert zip_members(tmp_path, raw)["a/b"].data_start == (30 + 3 + 6) + 30 + 3 + 25
    assert as_mdist_reads(raw, zip_members(tmp_path, raw)) == as_zipfile_reads(raw)
    refused(Entry("a/b", local={"extra": b"\x01\x00"}), "malformed zip extra field")
    refused(Entry("a/b", local={"csize": ck._U32}), "zip entry needs a zip64 field it does not have")


def test_data_descriptors(tmp_path) -> None:
    def raw_with(descriptor: bytes, *, flags: int = 8, last: bool = False) -> bytes:
        entry = Entry(LONG, b"abcdef", flags=flags, descriptor=descriptor)
        return build_zip([entry] if last else [entry, Entry("a/y", b"")])

    crc = zlib.crc32(b"abcdef")
    lacks = f"entry {LONG[:100]!r} lacks its data descriptor"
    disagrees = f"data descriptor of {LONG[:100]!r} disagrees with the central directory"
    for last in (False, True):
        for descriptor in (struct.pack("<3L", crc, 6, 6), SIG + struct.pack("<3L", crc, 6, 6),
                           struct.pack("<LQQ", crc, 6, 6), SIG + struct.pack("<LQQ", crc, 6, 6)):
            raw = raw_with(descriptor, last=last)
            assert as_mdist_reads(raw, zip_members(tmp_path, raw)) == as_zipfile_reads(raw)
        for descriptor in (b"", SIG, struct.pack("<3L", crc, 6, 6)[:-1], struct.pack("<3L", crc, 6, 6) + b"\0",
                           SIG + struct.pack("<2L", 6, 6), struct.pack("<4L", 0, crc, 6, 6),  # 12 signed, 16 unsigned
                           SIG + struct.pack("<LQQ", crc, 6, 6)[:-4], struct.pack("<LQQ", crc, 6, 6)[:4] + b"\0" * 20,
                           b"\0" * 28):
            zip_refused(tmp_path, raw_with(descriptor, last=last), lacks)
        for values in ((crc ^ 1, 6, 6), (crc, 5, 6), (crc, 6, 7)):
            zip_refused(tmp_path, raw_with(struct.pack("<3L", *values), last=last), disagrees)
            zip_refused(tmp_path, raw_with(SIG + struct.pack("<3L", *values), last=last), disagrees)
            zip_refused(tmp_path, raw_with(struct.pack("<LQQ", *values), last=last), disagrees)
            zip_refused(tmp_path, raw_with(SIG + struct.pack("<LQQ", *values), last=last), disagrees)
    # a descriptor the flags do not announce is bytes that belong to no entry
    zip_refused(tmp_path, raw_with(SIG + struct.pack("<3L", crc, 6, 6), flags=0),
                "entry 'a/y' starts 16 bytes after the end of the entry before it: the archive is ambiguous")
    zip_refused(tmp_path, raw_with(SIG + struct.pack("<3L", crc, 6, 6), flags=0, last=True),
                "16 bytes before the central directory belong to no entry")


def test_reads_past_the_end(tmp_path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"0123456789")
    with JoinedFile([path]) as fd:
        assert ck._pread(fd, 10, 0) == b"0123456789"
        assert ck._pread(fd, 3, 7) == b"789"
        assert ck._pread(fd, 0, 10) == b""
        for length, offset in ((11, 0), (4, 7), (1, 10)):
            with pytest.raises(CheckpointError) as caught:
                ck._pread(fd, length, offset)
            assert str(caught.value) == "unexpected end of file (the file changed while being read?)"
    # a local header whose name runs past the end of the file
    zip_refused(tmp_path, build_zip([Entry("a/x", local={"name_len": 60000})]),
                "unexpected end of file (the file changed while being read?)")


def test_checkpoint_names_its_file_and_closes_it(tmp_path, monkeypatch) -> None:
    buffer = io.BytesIO()
    torch.save({"w": torch.arange(4, dtype=torch.float32)}, buffer)
    raw = buffer.getvalue()
    (tmp_path / "m.pth").write_bytes(raw + b"x")
    with pytest.raises(CheckpointError) as caught:
        ck.Checkpoint(tmp_path / "m.pth")
    assert str(caught.value) == "m.pth: bytes follow the zip end record (a comment or appended data)"
    (tmp_path / "p0").write_bytes(raw[:1000])
    (tmp_path / "p1").write_bytes(raw[1000:] + b"x")
    with pytest.raises(CheckpointError) as caught:
        ck.Checkpoint((tmp_path / "p0", tmp_path / "p1"))
    assert str(caught.value) == "p0 (+1 pieces): bytes follow the zip end record (a comment or appended data)"
    (tmp_path / "p1").write_bytes(raw[1000:])
    with ck.Checkpoint((tmp_path / "p0", tmp_path / "p1")) as checkpoint:
        assert checkpoint.path == tmp_path / "p0"
        assert b"".join(checkpoint.iter_bytes(checkpoint.tensors["w"])) == struct.pack("<4f", 0, 1, 2, 3)
    with ck.Checkpoint([tmp_path / "p0", tmp_path / "p1"]) as checkpoint:
        assert checkpoint.path == tmp_path / "p0" and checkpoint._check_crc is True
    (tmp_path / "m.pth").write_bytes(raw)
    with ck.Checkpoint(str(tmp_path / "m.pth")) as checkpoint:
        assert checkpoint.path == tmp_path / "m.pth" and checkpoint._check_crc is False
    opened = len(os.listdir("/proc/self/fd"))
    for error, expected in ((KeyError("k"), "m.pth: malformed archive (KeyError)"),
                            (struct.error("s"), "m.pth: malformed archive (error)")):
        def broken(*args, error=error):
            raise error

        monkeypatch.setattr(ck, "read_zip_members", broken)
        with pytest.raises(CheckpointError) as caught:
            ck.Checkpoint(tmp_path / "m.pth")
        assert str(caught.value) == expected and caught.value.__cause__ is None and caught.value.__suppress_context__
        assert len(os.listdir("/proc/self/fd")) == opened  # closed
    for error in (MemoryError(), InputError("i"), CheckpointError("c")):
        def broken(*args, error=error):
            raise error

        monkeypatch.setattr(ck, "read_zip_members", broken)
        with pytest.raises(type(error)) as caught:
            ck.Checkpoint(tmp_path / "m.pth")
        assert caught.value is error
        assert len(os.listdir("/proc/self/fd")) == opened


def test_a_single_file_is_not_crc_checked_but_pieces_are(tmp_path) -> None:
    """A stored storage whose bytes differ from its CRC (both headers agree): one file reads its bytes as they
    are (what torch.load does too), pieces are checked."""
    from pickle_payloads import write_archive

    path = write_archive(tmp_path / "m.pth", state_dict(("w", tensor("0", 4, 0, (4,), (1,)))))
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("archive/data/0")
    central_at = raw.rindex(b"archive/data/0") - 46  # the last occurrence is the central record's
    assert raw[central_at:central_at + 4] == b"PK\x01\x02"
    for at in (info.header_offset + 14, central_at + 16):
        struct.pack_into("<L", raw, at, info.CRC ^ 1)
    path.write_bytes(bytes(raw))
    assert torch.load(path, weights_only=True)["w"].tolist() == [1, 2, 3, 4]
    with ck.Checkpoint(path) as checkpoint:
        assert b"".join(checkpoint.iter_bytes(checkpoint.tensors["w"])) == struct.pack("<4f", 1, 2, 3, 4)
    (tmp_path / "a").write_bytes(raw[:200])
    (tmp_path / "b").write_bytes(raw[200:])
    with ck.Checkpoint([tmp_path / "a", tmp_path / "b"]) as checkpoint, pytest.raises(InputError) as caught:
        b"".join(checkpoint.iter_bytes(checkpoint.tensors["w"]))
    assert str(caught.value) == ("archive/data/0: CRC-32 differs from the archive's: the pieces of a (+1 pieces) are "
                                 "out of order, or one is damaged")


def pieces_of(tmp_path, raw: bytes, cut: int) -> list:
    (tmp_path / "a").write_bytes(raw[:cut])
    (tmp_path / "b").write_bytes(raw[cut:])
    return [tmp_path / "a", tmp_path / "b"]


def test_pieces_stream_exactly_the_range_asked_after_the_crc(tmp_path) -> None:
    """Pieces: a stored storage is read whole once to check its CRC-32, handing out the range asked in chunks,
    the last one only after the check; later reads of that storage read only their range."""
    from pickle_payloads import write_archive

    storage = bytes(range(256)) * 4 + bytes(range(40))  # 1064 bytes: 266 floats
    ranges = ((0, 266), (0, 2), (1, 5), (100, 66), (264, 2), (7, 0))
    path = write_archive(tmp_path / "m.pth", state_dict(
        *[(f"t{i}", tensor("0", 266, offset, (length,), (1,))) for i, (offset, length) in enumerate(ranges)]),
        {"0": storage})
    raw = path.read_bytes()
    for chunk in (7, 8, 100, 1064, 1 << 20):
        for i, (offset, length) in enumerate(ranges):
            with ck.Checkpoint(pieces_of(tmp_path, raw, 300)) as checkpoint:
                got = list(checkpoint.iter_bytes(checkpoint.tensors[f"t{i}"], chunk))
                assert b"".join(got) == storage[offset * 4:(offset + length) * 4], (chunk, offset, length)
                assert all(got), (chunk, offset, length)  # no empty chunk
                read = []
                original = checkpoint._file.pread
                checkpoint._file.pread = lambda n, at: read.append(n) or original(n, at)
                again = b"".join(checkpoint.iter_bytes(checkpoint.tensors["t2"], chunk))
                # checked once (by the first read of any bytes): then only the range is read
                assert again == storage[4:24] and sum(read) == (20 if length else len(storage))
    # a wrong CRC: refused before the last chunk of the range is handed out, even when it ends on a chunk's end
    at = raw.rindex(b"archive/data/0") - 46 + 16  # the central record's CRC...
    local = raw.index(b"archive/data/0") - 30 + 14  # ...and the local header's
    bad = bytearray(raw)
    for where in (at, local):
        struct.pack_into("<L", bad, where, zlib.crc32(storage) ^ 1)
    for chunk in (8, 16, 1064):
        with ck.Checkpoint(pieces_of(tmp_path, bytes(bad), 300)) as checkpoint:
            got = []
            with pytest.raises(InputError) as caught:
                for data in checkpoint.iter_bytes(checkpoint.tensors["t1"], chunk):  # bytes 0..8
                    got.append(data)
            assert got == [] and str(caught.value) == (
                "archive/data/0: CRC-32 differs from the archive's: the pieces of a (+1 pieces) are out of order, or "
                "one is damaged")


def test_strided_views_of_pieces_are_crc_checked_too(tmp_path) -> None:
    """A view that is not contiguous is read through array(): of pieces, its stored storage is CRC-checked
    first (once); of one file, never; a deflated storage is checked by inflating it."""
    from pickle_payloads import write_archive

    storage = struct.pack("<6f", 0, 1, 2, 3, 4, 5)
    path = write_archive(tmp_path / "m.pth", state_dict(("t", tensor("0", 6, 0, (3, 2), (1, 3))),
                                                         ("c", tensor("0", 6, 0, (6,), (1,)))), {"0": storage})
    expected = torch.arange(6, dtype=torch.float32).reshape(2, 3).t().contiguous().numpy().tobytes()
    raw = bytearray(path.read_bytes())
    for chunk in (4, 1 << 20):
        with ck.Checkpoint(pieces_of(tmp_path, bytes(raw), 120)) as checkpoint:
            assert b"".join(checkpoint.iter_bytes(checkpoint.tensors["t"], chunk)) == expected
            assert checkpoint._crc_checked == {"archive/data/0"}
    for where in (raw.rindex(b"archive/data/0") - 46 + 16, raw.index(b"archive/data/0") - 30 + 14):
        struct.pack_into("<L", raw, where, zlib.crc32(storage) ^ 1)
    path.write_bytes(bytes(raw))
    with ck.Checkpoint(path) as checkpoint:  # one file: no CRC check, as torch.load
        assert b"".join(checkpoint.iter_bytes(checkpoint.tensors["t"])) == expected
        assert checkpoint._crc_checked == set()
    with ck.Checkpoint(pieces_of(tmp_path, bytes(raw), 120)) as checkpoint, pytest.raises(InputError) as caught:
        checkpoint.array(checkpoint.tensors["t"])
    assert str(caught.value) == ("archive/data/0: CRC-32 differs from the archive's: the pieces of a (+1 pieces) are "
                                 "out of order, or one is damaged")
    # deflated: inflating checks the CRC; the stored-entry check is not run on it
    deflated_path = deflated_archive(tmp_path / "d.pth", deflate(RAW), ranges=((0, 4),))
    with ck.Checkpoint(pieces_of(tmp_path, deflated_path.read_bytes(), 150)) as checkpoint:
        assert checkpoint.array(checkpoint.tensors["t0"]).tobytes() == RAW[:4]
        assert checkpoint._crc_checked == set()


# -- entries marked as folders, storages and data.pkl named in messages, opcodes (fast-tier survivors) ----

def with_external(record: bytes, external: int) -> bytes:
    """A central record with its external attributes (4 bytes at offset 38) set."""
    return record[:38] + struct.pack("<L", external) + record[42:]


def test_entries_marked_as_folders() -> None:
    """An entry is a folder by the MS-DOS directory bit, a Unix directory mode (each alone), or a name
    ending in '/'; other attributes (archive bit, regular files, links) are files."""
    def is_folder(name: bytes = b"n", external: int = 0) -> bool:
        return ck._read_central_directory(with_external(central(name), external), 1)[0].folder

    for external in (0, 0x20, 0x01, (0o100644 << 16) | 0x20, 0o100755 << 16, 0o120777 << 16, 0o060644 << 16):
        assert not is_folder(external=external), oct(external)
    for external in (0x10, 0x10 | 0x20, 0o040755 << 16, 0o040000 << 16, (0o040700 << 16) | 0x10):
        assert is_folder(external=external), oct(external)
    assert is_folder(b"d/") and is_folder(b"a/b/") and not is_folder(b"a/b") and not is_folder(b"/x")


def test_an_entry_marked_as_a_folder_is_refused_where_read() -> None:
    member = ck.ZipMember(LONG, LONG.encode(), 0, 0, 0, 0, 0, 0, folder=True)
    with pytest.raises(CheckpointError) as caught:
        ck._refuse_folder(member)
    assert str(caught.value) == f"{LONG[:100]} is marked as a directory in the zip directory, not a file"
    ck._refuse_folder(ck.ZipMember(LONG, LONG.encode(), 0, 0, 0, 0, 0, 0))  # a file: nothing said


def test_storage_and_data_pkl_refusals_name_their_cause(tmp_path) -> None:
    from pickle_payloads import VALID, state_dict, tensor, write_archive

    def refused(path, message: str, error: type = CheckpointError) -> None:
        with pytest.raises(MdistError) as caught:
            ck.Checkpoint(path)
        assert (type(caught.value), str(caught.value)) == (error, message)

    refused(write_archive(tmp_path / "a.pth", state_dict(("w", tensor("7")))),
            "persistent id points to 'archive/data/7', which is not in the archive")
    refused(write_archive(tmp_path / "b.pth", state_dict(("w", tensor("0", 4))), {"0": b"\0" * 12}),
            "storage '0' declares 4 x 4 bytes but its entry holds 12")
    path = tmp_path / "c.pth"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/byteorder", b"little")
    refused(path, f"{path.name} is not a torch.save archive: it has no data.pkl", InputError)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", VALID)
        z.writestr("other/data.pkl", VALID)
    refused(path, "expected exactly one */data.pkl in the archive, found 2")


def test_opcodes_refused_by_name_and_position(monkeypatch) -> None:
    refused_pickle(b"\x80\x02N\x82\x01.", "refused pickle opcode EXT1 at byte 3")  # no handler: never run
    refused_pickle(b"\x80\x02(N\x81.", "refused pickle opcode NEWOBJ at byte 4")
    monkeypatch.setattr(pr, "MAX_OPCODES", 3)
    refused_pickle(b"\x80\x02N\x85.", "pickle has more than 3 opcodes")  # the fourth, STOP, is one too many


def test_globals_are_named_in_messages() -> None:
    refused_pickle(b"\x80\x02" + OD + b"}b.", "refused BUILD on collections.OrderedDict")
    refused_pickle(b"\x80\x02" + OD + b"K\x01a.", "APPEND to a collections.OrderedDict")
