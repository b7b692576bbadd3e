"""A pickle interpreter that understands only what `torch.save` of a state dict emits.

Nothing from the file is ever executed: opcodes are decoded by `pickletools.genops` (a pure
parser) and interpreted here against an allow-list of globals that map to inert sentinels.
Any other global, any object-construction opcode (INST, OBJ, NEWOBJ, EXT*), any REDUCE or BUILD
on something not allowed, and any malformed persistent id is refused with `CheckpointError`.

Whatever the file claims, work and memory stay bounded: opcodes, objects (every stack or
metastack growth, every container item touched) and memo entries are counted, and every tensor
must be an injective strided view that stays inside its storage, so no tensor can describe more
elements than its storage holds.
"""

from __future__ import annotations

import io
import pickletools
from dataclasses import dataclass
from types import NoneType
from typing import Any, Callable

from mdist.errors import CheckpointError

MAX_PICKLE_BYTES = 16 << 20  # a 7B state dict's data.pkl is ~30 KB (~100 bytes a tensor)
MAX_OPCODES = 1 << 21  # ~32 opcodes a tensor: room for 65k tensors, a few seconds of work
MAX_OBJECTS = 1 << 20  # stack pushes + MARKs + container items touched: a few hundred MB at most
MAX_MEMO_ENTRIES = 1 << 18  # ~8 memo entries a tensor
MAX_STRING_CHARS = 1 << 16  # tensor names and storage keys are short
MAX_NDIM = 8  # model weights have at most 2 dimensions; torch allows 64 but no checkpoint needs them
INT64_MAX = (1 << 63) - 1  # torch sizes, strides and offsets are int64; so are safetensors readers'


@dataclass(frozen=True)
class StorageDType:
    """A torch storage class, by its safetensors dtype name and item size in bytes."""

    torch_name: str
    safetensors_dtype: str
    itemsize: int


STORAGE_TYPES: dict[str, StorageDType] = {
    s.torch_name: s
    for s in (
        StorageDType("BFloat16Storage", "BF16", 2),
        StorageDType("HalfStorage", "F16", 2),
        StorageDType("FloatStorage", "F32", 4),
        StorageDType("DoubleStorage", "F64", 8),
        StorageDType("LongStorage", "I64", 8),
        StorageDType("IntStorage", "I32", 4),
        StorageDType("ShortStorage", "I16", 2),
        StorageDType("CharStorage", "I8", 1),
        StorageDType("ByteStorage", "U8", 1),
        StorageDType("BoolStorage", "BOOL", 1),
    )
}


@dataclass(frozen=True)
class StorageRef:
    """A persistent-id reference to `data/<key>` in the archive."""

    key: str
    dtype: StorageDType
    numel: int


@dataclass(frozen=True)
class TensorRef:
    """A tensor as `_rebuild_tensor_v2` describes it: a strided view into a storage."""

    storage: StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * self.storage.dtype.itemsize

    def is_contiguous(self) -> bool:
        expected = 1
        for size, stride in zip(reversed(self.shape), reversed(self.stride)):
            if size != 1 and stride != expected:
                return False
            expected *= size
        return True


def check_view(tensor: TensorRef) -> None:
    """Refuse a tensor unless its elements are distinct elements of its storage.

    Overlapping strides (a zero stride on a dimension of size > 1, or any non-injective view)
    would let a tiny storage describe an unbounded tensor; so dims sorted by stride must each
    step past everything the smaller ones reach. Then numel <= storage numel always holds.
    """
    storage, itemsize = tensor.storage, tensor.storage.dtype.itemsize
    nominal = 1
    for size in tensor.shape:
        nominal *= max(size, 1)
    if nominal * itemsize > INT64_MAX:
        raise CheckpointError(f"tensor shape {tensor.shape} is too large for int64 byte counts")
    if tensor.numel == 0:
        if tensor.offset > storage.numel:
            raise CheckpointError(f"empty tensor starts past the end of storage {storage.key!r}")
        return
    if tensor.numel > storage.numel:
        raise CheckpointError(f"tensor has {tensor.numel} elements but storage {storage.key!r} has {storage.numel}")
    reach = 0  # the largest element offset the dimensions seen so far can reach
    for stride, size in sorted((st, sz) for sz, st in zip(tensor.shape, tensor.stride) if sz > 1):
        if stride <= reach:
            raise CheckpointError(
                f"tensor elements overlap in storage {storage.key!r} (shape {tensor.shape}, "
                f"stride {tensor.stride})"
            )
        reach += (size - 1) * stride
    last = tensor.offset + reach
    if last >= storage.numel:
        raise CheckpointError(f"tensor reaches element {last} of storage {storage.key!r} which has {storage.numel}")


class _Global:
    """An inert stand-in for an allowed global; calling it is interpreted, never executed."""

    def __init__(self, qualname: str) -> None:
        self.qualname = qualname

    def __repr__(self) -> str:
        return self.qualname


class _Mark:
    pass


_MARK = _Mark()
_ORDERED_DICT = _Global("collections.OrderedDict")
_REBUILD_TENSOR_V2 = _Global("torch._utils._rebuild_tensor_v2")
_REBUILD_PARAMETER = _Global("torch._utils._rebuild_parameter")

_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): _ORDERED_DICT,
    ("torch._utils", "_rebuild_tensor_v2"): _REBUILD_TENSOR_V2,
    ("torch._utils", "_rebuild_parameter"): _REBUILD_PARAMETER,
}
_ALLOWED_GLOBALS.update({("torch", name): STORAGE_TYPES[name] for name in STORAGE_TYPES})


class _StateDict(dict):
    """The dict an allowed OrderedDict() call produces; BUILD may attach `_metadata` to it."""


def _describe(obj: Any) -> str:
    """Name an object for an error message without repr() of attacker-shaped data."""
    if isinstance(obj, _Global):
        return obj.qualname
    if isinstance(obj, StorageDType):
        return f"torch.{obj.torch_name}"
    return type(obj).__name__


class _Interpreter:
    def __init__(self, storage_lookup: Callable[[str, StorageDType, int], StorageRef]) -> None:
        self.stack: list[Any] = []
        self.metastack: list[list[Any]] = []
        self.memo: dict[int, Any] = {}
        self.storage_lookup = storage_lookup
        self.objects = 0

    # -- stack helpers -------------------------------------------------------------------
    def charge(self, count: int) -> None:
        """Count objects created or container items walked, so memory and time stay bounded."""
        self.objects += count
        if self.objects > MAX_OBJECTS:
            raise CheckpointError(f"pickle creates more than {MAX_OBJECTS} objects")

    def push(self, obj: Any) -> None:
        self.charge(1)
        self.stack.append(obj)

    def pop(self) -> Any:
        if not self.stack:
            raise CheckpointError("pickle stack underflow")
        return self.stack.pop()

    def pop_mark(self) -> list[Any]:
        if not self.metastack:
            raise CheckpointError("pickle has no MARK where one is needed")
        items = self.stack
        self.stack = self.metastack.pop()
        return items

    def top(self) -> Any:
        if not self.stack:
            raise CheckpointError("pickle stack underflow")
        return self.stack[-1]

    # -- the opcodes -------------------------------------------------------------------------
    def run(self, data: bytes) -> Any:
        for count, (opcode, arg, pos) in enumerate(pickletools.genops(io.BytesIO(data))):
            if count >= MAX_OPCODES:
                raise CheckpointError(f"pickle has more than {MAX_OPCODES} opcodes")
            name = opcode.name
            handler = getattr(self, "op_" + name, None)
            if handler is None:
                raise CheckpointError(f"refused pickle opcode {name} at byte {pos}")
            if name == "STOP":
                result = self.pop()
                if self.stack or self.metastack:
                    raise CheckpointError("pickle ends with objects left on its stack")
                return result
            handler(arg)
        raise CheckpointError("pickle has no STOP opcode")

    def op_PROTO(self, arg: int) -> None:
        if not 2 <= arg <= 5:
            raise CheckpointError(f"unsupported pickle protocol {arg}")

    def op_FRAME(self, arg: int) -> None:
        pass

    def op_STOP(self, arg: None) -> None:  # handled in run()
        pass

    def op_MARK(self, arg: None) -> None:
        self.charge(1)
        self.metastack.append(self.stack)
        self.stack = []

    def op_POP(self, arg: None) -> None:
        self.pop()

    def op_POP_MARK(self, arg: None) -> None:
        self.pop_mark()

    def op_DUP(self, arg: None) -> None:
        self.push(self.top())

    def _scalar(self, arg: Any) -> None:
        if isinstance(arg, str) and len(arg) > MAX_STRING_CHARS:
            raise CheckpointError("pickle string is too long")
        if isinstance(arg, int) and arg.bit_length() > 64:
            raise CheckpointError("pickle integer is too large")
        self.push(arg)

    op_BININT = op_BININT1 = op_BININT2 = op_LONG1 = op_INT = _scalar
    op_BINUNICODE = op_SHORT_BINUNICODE = op_BINUNICODE8 = op_UNICODE = _scalar
    op_BINFLOAT = _scalar

    def op_NONE(self, arg: None) -> None:
        self.push(None)

    def op_NEWTRUE(self, arg: None) -> None:
        self.push(True)

    def op_NEWFALSE(self, arg: None) -> None:
        self.push(False)

    def op_EMPTY_TUPLE(self, arg: None) -> None:
        self.push(())

    def op_EMPTY_LIST(self, arg: None) -> None:
        self.push([])

    def op_EMPTY_DICT(self, arg: None) -> None:
        self.push({})

    def op_TUPLE(self, arg: None) -> None:
        self.push(tuple(self.pop_mark()))

    def op_TUPLE1(self, arg: None) -> None:
        self.push((self.pop(),))

    def op_TUPLE2(self, arg: None) -> None:
        b, a = self.pop(), self.pop()
        self.push((a, b))

    def op_TUPLE3(self, arg: None) -> None:
        c, b, a = self.pop(), self.pop(), self.pop()
        self.push((a, b, c))

    def op_LIST(self, arg: None) -> None:
        self.push(self.pop_mark())

    def op_DICT(self, arg: None) -> None:
        items = self.pop_mark()
        target: dict[Any, Any] = {}
        self._set_items(target, items)
        self.push(target)

    def op_APPEND(self, arg: None) -> None:
        value = self.pop()
        self._list_top().append(value)

    def op_APPENDS(self, arg: None) -> None:
        items = self.pop_mark()
        self._list_top().extend(items)

    def op_SETITEM(self, arg: None) -> None:
        value, key = self.pop(), self.pop()
        self._set_items(self._dict_top(), [key, value])

    def op_SETITEMS(self, arg: None) -> None:
        items = self.pop_mark()
        self._set_items(self._dict_top(), items)

    def _list_top(self) -> list[Any]:
        target = self.top()
        if not isinstance(target, list):
            raise CheckpointError(f"APPEND to a {_describe(target)}")
        return target

    def _dict_top(self) -> dict[Any, Any]:
        target = self.top()
        if not isinstance(target, dict):
            raise CheckpointError(f"SETITEM on a {_describe(target)}")
        return target

    @staticmethod
    def _set_items(target: dict[Any, Any], items: list[Any]) -> None:
        if len(items) % 2:
            raise CheckpointError("odd number of items for a dict")
        for i in range(0, len(items), 2):
            key = items[i]
            if type(key) not in (str, int):
                raise CheckpointError(f"dict key of type {_describe(key)} refused")
            target[key] = items[i + 1]

    # -- memo --------------------------------------------------------------------------------
    def _put(self, index: int) -> None:
        if len(self.memo) >= MAX_MEMO_ENTRIES and index not in self.memo:
            raise CheckpointError("pickle memo is too large")
        self.memo[index] = self.top()

    op_PUT = op_BINPUT = op_LONG_BINPUT = _put

    def op_MEMOIZE(self, arg: None) -> None:
        self._put(len(self.memo))

    def _get(self, index: int) -> None:
        if index not in self.memo:
            raise CheckpointError(f"pickle memo has no entry {index}")
        self.push(self.memo[index])

    op_GET = op_BINGET = op_LONG_BINGET = _get

    # -- globals, calls, persistent ids ------------------------------------------------------
    def _resolve_global(self, module: str, name: str) -> Any:
        found = _ALLOWED_GLOBALS.get((module, name))
        if found is None:
            raise CheckpointError(f"refused global {module[:200]}.{name[:200]}: not part of a tensor state dict")
        return found

    def op_GLOBAL(self, arg: str) -> None:
        module, _, name = arg.partition(" ")
        self.push(self._resolve_global(module, name))

    def op_STACK_GLOBAL(self, arg: None) -> None:
        name, module = self.pop(), self.pop()
        if not isinstance(name, str) or not isinstance(module, str):
            raise CheckpointError("STACK_GLOBAL needs two strings")
        self.push(self._resolve_global(module, name))

    def op_REDUCE(self, arg: None) -> None:
        args, func = self.pop(), self.pop()
        if not isinstance(args, tuple):
            raise CheckpointError("REDUCE arguments are not a tuple")
        if func is _ORDERED_DICT:
            self.push(self._ordered_dict(args))
        elif func is _REBUILD_TENSOR_V2:
            self.push(self._rebuild_tensor(args))
        elif func is _REBUILD_PARAMETER:
            if len(args) != 3 or not isinstance(args[0], TensorRef):
                raise CheckpointError("malformed _rebuild_parameter call")
            self.push(args[0])
        else:
            raise CheckpointError(f"refused call of {_describe(func)}")

    def _ordered_dict(self, args: tuple[Any, ...]) -> _StateDict:
        result = _StateDict()
        if args == ():
            return result
        if len(args) == 1 and isinstance(args[0], list):
            self.charge(len(args[0]))  # a memoized list can be walked again and again
            flat: list[Any] = []
            for pair in args[0]:
                if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
                    raise CheckpointError("OrderedDict items are not pairs")
                flat.extend(pair)
            self._set_items(result, flat)
            return result
        raise CheckpointError("malformed OrderedDict call")

    def _rebuild_tensor(self, args: tuple[Any, ...]) -> TensorRef:
        if len(args) not in (6, 7):
            raise CheckpointError("malformed _rebuild_tensor_v2 call")
        storage, offset, shape, stride, requires_grad, hooks = args[:6]
        if not isinstance(storage, StorageRef):
            raise CheckpointError("tensor storage is not a persistent storage reference")
        metadata = args[6] if len(args) == 7 else None
        if type(requires_grad) is not bool or not isinstance(hooks, dict) or not isinstance(metadata, (dict, NoneType)):
            raise CheckpointError("malformed _rebuild_tensor_v2 call: requires_grad, hooks or metadata")
        if not (isinstance(shape, tuple) and isinstance(stride, tuple)) or len(shape) != len(stride):
            raise CheckpointError("tensor shape and stride do not match")
        if len(shape) > MAX_NDIM:
            raise CheckpointError(f"tensor has {len(shape)} dimensions, more than {MAX_NDIM}")
        if any(type(v) is not int or not 0 <= v <= INT64_MAX for v in (offset, *shape, *stride)):
            raise CheckpointError("tensor offset, shape or stride is negative, not an integer or not an int64")
        tensor = TensorRef(storage, offset, shape, stride)
        check_view(tensor)
        return tensor

    def op_BUILD(self, arg: None) -> None:
        state = self.pop()
        target = self.top()
        if isinstance(target, _StateDict) and (state is None or isinstance(state, dict)):
            return  # OrderedDict state (e.g. `_metadata` of a module state dict): ignored
        raise CheckpointError(f"refused BUILD on {_describe(target)}")

    def op_BINPERSID(self, arg: None) -> None:
        pid = self.pop()
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise CheckpointError("malformed persistent id: expected ('storage', type, key, location, numel)")
        _, storage_type, key, location, numel = pid
        if not isinstance(storage_type, StorageDType):
            raise CheckpointError(f"persistent id names {_describe(storage_type)}, not a storage type")
        if not (isinstance(key, str) and key and len(key) <= 64 and key.replace("_", "").isalnum()):
            raise CheckpointError("persistent id has an invalid storage key")
        if not isinstance(location, str) or type(numel) is not int or not 0 <= numel <= INT64_MAX // 8:
            raise CheckpointError("persistent id has an invalid location or size")
        self.push(self.storage_lookup(key, storage_type, numel))


def interpret_state_dict(
    data: bytes, storage_lookup: Callable[[str, StorageDType, int], StorageRef]
) -> dict[str, TensorRef]:
    """Interpret `data.pkl` bytes; return tensor name -> TensorRef.

    Raises only CheckpointError; MemoryError passes through unchanged, since the limits above
    should make it impossible and hiding it as "malformed" would hide a broken limit.
    """
    if len(data) > MAX_PICKLE_BYTES:
        raise CheckpointError("data.pkl is larger than any tensor state dict needs")
    try:
        result = _Interpreter(storage_lookup).run(data)
    except (CheckpointError, MemoryError):
        raise
    except Exception as exc:  # a malformed stream: genops' ValueError, bad UTF-8, recursion...
        raise CheckpointError(f"malformed pickle: {type(exc).__name__}: {str(exc)[:200]}") from None
    if not isinstance(result, dict):
        raise CheckpointError(f"checkpoint holds a {_describe(result)}, not a dict of tensors")
    tensors: dict[str, TensorRef] = {}
    for name, value in result.items():
        if not isinstance(name, str) or not isinstance(value, TensorRef):
            raise CheckpointError(f"checkpoint entry {str(name)[:100]!r} is a {_describe(value)}, not a tensor")
        tensors[name] = value
    return tensors
