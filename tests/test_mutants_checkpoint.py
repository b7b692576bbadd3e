"""mdist.convert.pickle_reader and mdist.convert.checkpoint, in process: the bounds at their edges.

Written for mutation testing (bench/mutation.py, docs/testing.md): tests/test_hostile.py and
tests/test_checkpoint_attacks.py refuse hostile archives and pickles; these pin each bound exactly.
"""

from __future__ import annotations

import pytest

from mdist.convert import pickle_reader as pr
from mdist.errors import CheckpointError

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
