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
