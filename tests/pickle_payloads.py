"""Hand-assembled pickle streams: one valid state dict, and hostile payloads that mdist must refuse."""

from __future__ import annotations

import resource
import struct
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import NamedTuple

HOSTILE_ADDRESS_SPACE = 1 << 30  # digest/convert of the fixture need ~150 MB of address space (measured); bombs need GBs
HOSTILE_FILE_SIZE = 256 << 20  # no hostile test writes more; a stride-0 regression would write GBs
HOSTILE_TIMEOUT = 60  # refusals take a second or two; a regressed bomb runs for minutes or forever

PROTO2 = b"\x80\x02"


def G(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def S(text: str) -> bytes:
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def J(value: int) -> bytes:
    """An int: BININT when it fits 32 bits, else LONG1 (up to 64-bit values and beyond)."""
    if -(1 << 31) <= value < 1 << 31:
        return b"J" + struct.pack("<i", value)
    raw = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def T(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


def tensor(key: str = "0", numel: int = 4, offset: int = 0, size=(2, 2), stride=(2, 1),
           storage: str = "FloatStorage", hooks: bytes | None = None) -> bytes:
    pid = T(S("storage"), G("torch", storage), S(key), S("cpu"), J(numel)) + b"Q"
    hooks = G("collections", "OrderedDict") + b")R" if hooks is None else hooks
    return (G("torch._utils", "_rebuild_tensor_v2")
            + T(pid, J(offset), T(*map(J, size)), T(*map(J, stride)), b"\x89", hooks) + b"R")


def state_dict(*entries: tuple[str, bytes]) -> bytes:
    body = b"".join(S(name) + value for name, value in entries)
    return PROTO2 + b"}(" + body + b"u."


VALID = state_dict(("w", tensor()))


class Payload(NamedTuple):
    data: bytes  # data.pkl
    teeth: bool  # whether plain pickle.loads would create the marker
    cause: str  # what the one-line refusal must say
    storages: dict[str, bytes] | None = None  # archive storages; None: one 4-float storage "0"


def payloads(marker: Path) -> dict[str, Payload]:
    """name -> the payload; each is refused for the cause it names."""
    cmd = f"touch {marker}"
    py = f"open({str(marker)!r}, 'w').close()"
    P = Payload
    return {
        "os.system via REDUCE": P(PROTO2 + G("os", "system") + S(cmd) + b"\x85R.", True, "refused global os.system"),
        "posix.system": P(PROTO2 + G("posix", "system") + S(cmd) + b"\x85R.", True, "refused global posix.system"),
        "builtins.eval": P(PROTO2 + G("builtins", "eval") + S(py) + b"\x85R.", True, "refused global builtins.eval"),
        "builtins.exec": P(PROTO2 + G("builtins", "exec") + S(py) + b"\x85R.", True, "refused global builtins.exec"),
        "getattr chain": P(PROTO2 + G("builtins", "getattr") + G("builtins", "__import__") + S("os") + b"\x85R"
                           + S("system") + b"\x86R" + S(cmd) + b"\x85R.", True, "refused global builtins.getattr"),
        "subprocess.Popen": P(PROTO2 + G("subprocess", "check_call") + b"](" + S("touch") + S(str(marker))
                              + b"e\x85R.", True, "refused global subprocess.check_call"),
        "__import__": P(PROTO2 + G("builtins", "__import__") + S("os") + b"\x85R.", False,
                        "refused global builtins.__import__"),
        "STACK_GLOBAL os.system": P(b"\x80\x04" + S("os") + S("system") + b"\x93" + S(cmd) + b"\x85R.", True,
                                    "refused global os.system"),
        "INST": P(b"(" + S(cmd) + b"ios\nsystem\n.", True, "refused pickle opcode INST"),
        "OBJ": P(b"(" + G("os", "system") + S(cmd) + b"o.", True, "refused global os.system"),
        "NEWOBJ": P(PROTO2 + G("subprocess", "Popen") + b"](" + S("touch") + S(str(marker)) + b"e\x85\x81.", False,
                    "refused global subprocess.Popen"),
        "BUILD with __setstate__": P(PROTO2 + G("collections", "OrderedDict") + b"}" + S("__setstate__")
                                     + G("os", "system") + b"sb.", False, "refused global os.system"),
        "BUILD on a tensor": P(PROTO2 + tensor() + b"}b.", False, "refused BUILD on TensorRef"),
        "functools.partial": P(PROTO2 + G("functools", "partial") + G("os", "system") + S(cmd) + b"\x86R)R.", True,
                               "refused global functools.partial"),
        "EXT1": P(PROTO2 + b"\x82\x01.", False, "refused pickle opcode EXT1"),
        "PERSID text opcode": P(PROTO2 + b"P0\n.", False, "refused pickle opcode PERSID"),
        "torch.load global": P(PROTO2 + G("torch", "load") + S(str(marker)) + b"\x85R.", False,
                               "refused global torch.load"),
        "numpy _reconstruct": P(PROTO2 + G("numpy.core.multiarray", "_reconstruct") + b").", False,
                                "refused global numpy.core.multiarray._reconstruct"),
        "copyreg._reconstructor": P(PROTO2 + G("copyreg", "_reconstructor") + b").", False,
                                    "refused global copyreg._reconstructor"),
        "REDUCE on a storage class": P(PROTO2 + G("torch", "FloatStorage") + b")R.", False,
                                       "refused call of torch.FloatStorage"),
        "tensor value hides os.system": P(state_dict(("x", G("os", "system") + S(cmd) + b"\x85R"), ("w", tensor())),
                                          True, "refused global os.system"),
        # nothing but the allow-list can refuse this: the global is pushed, then popped unused
        "unknown global popped unused": P(PROTO2 + G("os", "system") + b"0" + state_dict(("w", tensor()))[2:], False,
                                          "refused global os.system"),
        "unknown global as backward hooks": P(state_dict(("w", tensor(hooks=G("posix", "system")))), False,
                                              "refused global posix.system"),
        "persistent id outside the archive": P(state_dict(("w", tensor(key="../../etc/passwd"))), False,
                                               "invalid storage key"),
        "persistent id to a missing entry": P(state_dict(("w", tensor(key="7"))), False,
                                              "'archive/data/7', which is not in the archive"),
        "persistent id with a non-storage type": P(PROTO2 + b"}(" + S("w") + T(S("storage"), G("collections", "OrderedDict"),
                                                   S("0"), S("cpu"), J(4)) + b"Qu.", False,
                                                   "names collections.OrderedDict, not a storage type"),
        "storage larger than its entry": P(state_dict(("w", tensor(numel=4000, size=(2000, 2)))), False,
                                           "declares 4000 x 4 bytes but its entry holds 16"),
        "tensor past the end of its storage": P(state_dict(("w", tensor(offset=3))), False,
                                                "reaches element 6 of storage '0' which has 4"),
        "tensor one element past its storage": P(state_dict(("w", tensor(offset=1))), False,
                                                 "reaches element 4 of storage '0' which has 4"),
        "zero stride": P(state_dict(("w", tensor(size=(4,), stride=(0,)))), False, "elements overlap"),
        "overlapping strides": P(state_dict(("w", tensor(size=(2, 2), stride=(1, 1)))), False, "elements overlap"),
        "more elements than its storage": P(state_dict(("w", tensor(numel=5, size=(3, 3), stride=(1, 1)))), False,
                                            "tensor has 9 elements but storage '0' has 5",
                                            {"0": struct.pack("<5f", 1, 2, 3, 4, 5)}),
        "stride of 2**63": P(state_dict(("w", tensor(size=(1, 1), stride=(1 << 63, 1)))), False, "not an int64"),
        "shape (0, 2**64 - 1)": P(state_dict(("w", tensor(size=(0, (1 << 64) - 1), stride=(1, 1)))), False,
                                  "not an int64"),
        "shape product overflows int64": P(state_dict(("w", tensor(size=(0, 1 << 40, 1 << 40), stride=(1, 1, 1)))),
                                           False, "too large for int64"),
        "empty tensor past its storage": P(state_dict(("w", tensor(offset=5, size=(0,), stride=(1,)))), False,
                                           "empty tensor starts past the end"),
        "deeply nested containers": P(PROTO2 + b"]" * 200_000 + b"a" * 199_999 + b".", False,
                                      "holds a list, not a dict of tensors"),
        "nested dict instead of tensors": P(PROTO2 + b"}(" + S("a") + b"}(" + S("b") + tensor() + b"uu.", False,
                                            "entry 'a' is a dict, not a tensor"),
        "tuple dict key": P(PROTO2 + b"}(" + T(S("a")) + tensor() + b"u.", False, "dict key of type tuple refused"),
    }


def write_archive(path: Path, data_pkl: bytes, storages: dict[str, bytes] | None = None,
                  data_pkl_compression: int = zipfile.ZIP_STORED) -> Path:
    """Write a torch.save-shaped zip archive holding the given data.pkl and storages."""
    storages = {"0": struct.pack("<4f", 1, 2, 3, 4)} if storages is None else storages
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", data_pkl, compress_type=data_pkl_compression)
        archive.writestr("archive/byteorder", "little")
        for key, raw in storages.items():
            archive.writestr(f"archive/data/{key}", raw)
        archive.writestr("archive/version", "3\n")
    return path


def run_mdist_capped(*args: str, address_space: int = HOSTILE_ADDRESS_SPACE,
                     timeout: float = HOSTILE_TIMEOUT) -> subprocess.CompletedProcess:
    """Run the real mdist CLI with capped address space, file size and time: a regression fails the test,
    not the machine (RLIMIT_AS makes a bomb a MemoryError; RLIMIT_FSIZE kills a runaway writer)."""

    def limits() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))
        resource.setrlimit(resource.RLIMIT_FSIZE, (HOSTILE_FILE_SIZE, HOSTILE_FILE_SIZE))

    return subprocess.run([sys.executable, "-m", "mdist", *args], capture_output=True, text=True, timeout=timeout,
                          preexec_fn=limits)


def zip_bomb(path: Path, size: int = 300 << 20) -> Path:
    """A storage entry of `size` zero bytes, deflated to a few hundred KB."""
    numel = size // 4
    pkl = state_dict(("w", tensor(numel=numel, size=(numel,), stride=(1,))))
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pkl)
        archive.writestr("archive/data/0", bytes(size), compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
        archive.writestr("archive/version", "3\n")
    return path
