"""Hand-assembled pickle streams: one valid state dict, and hostile payloads that mdist must refuse."""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

PROTO2 = b"\x80\x02"


def G(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def S(text: str) -> bytes:
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def J(value: int) -> bytes:
    return b"J" + struct.pack("<i", value)


def T(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


def tensor(key: str = "0", numel: int = 4, offset: int = 0, size=(2, 2), stride=(2, 1),
           storage: str = "FloatStorage") -> bytes:
    pid = T(S("storage"), G("torch", storage), S(key), S("cpu"), J(numel)) + b"Q"
    hooks = G("collections", "OrderedDict") + b")R"
    return (G("torch._utils", "_rebuild_tensor_v2")
            + T(pid, J(offset), T(*map(J, size)), T(*map(J, stride)), b"\x89", hooks) + b"R")


def state_dict(*entries: tuple[str, bytes]) -> bytes:
    body = b"".join(S(name) + value for name, value in entries)
    return PROTO2 + b"}(" + body + b"u."


VALID = state_dict(("w", tensor()))


def payloads(marker: Path) -> dict[str, tuple[bytes, bool]]:
    """name -> (data.pkl bytes, whether plain pickle.loads would create `marker`)."""
    cmd = f"touch {marker}"
    py = f"open({str(marker)!r}, 'w').close()"
    return {
        "os.system via REDUCE": (PROTO2 + G("os", "system") + S(cmd) + b"\x85R.", True),
        "posix.system": (PROTO2 + G("posix", "system") + S(cmd) + b"\x85R.", True),
        "builtins.eval": (PROTO2 + G("builtins", "eval") + S(py) + b"\x85R.", True),
        "builtins.exec": (PROTO2 + G("builtins", "exec") + S(py) + b"\x85R.", True),
        "getattr chain": (PROTO2 + G("builtins", "getattr") + G("builtins", "__import__") + S("os") + b"\x85R"
                          + S("system") + b"\x86R" + S(cmd) + b"\x85R.", True),
        "subprocess.Popen": (PROTO2 + G("subprocess", "check_call") + b"](" + S("touch") + S(str(marker))
                             + b"e\x85R.", True),
        "__import__": (PROTO2 + G("builtins", "__import__") + S("os") + b"\x85R.", False),
        "STACK_GLOBAL os.system": (b"\x80\x04" + S("os") + S("system") + b"\x93" + S(cmd) + b"\x85R.", True),
        "INST": (b"(" + S(cmd) + b"ios\nsystem\n.", True),
        "OBJ": (b"(" + G("os", "system") + S(cmd) + b"o.", True),
        "NEWOBJ": (PROTO2 + G("subprocess", "Popen") + b"](" + S("touch") + S(str(marker)) + b"e\x85\x81.", False),
        "BUILD with __setstate__": (PROTO2 + G("collections", "OrderedDict") + b"}" + S("__setstate__")
                                    + G("os", "system") + b"sb.", False),
        "BUILD on a tensor": (PROTO2 + tensor() + b"}b.", False),
        "functools.partial": (PROTO2 + G("functools", "partial") + G("os", "system") + S(cmd) + b"\x86R)R.", True),
        "EXT1": (PROTO2 + b"\x82\x01.", False),
        "PERSID text opcode": (PROTO2 + b"P0\n.", False),
        "torch.load global": (PROTO2 + G("torch", "load") + S(str(marker)) + b"\x85R.", False),
        "numpy _reconstruct": (PROTO2 + G("numpy.core.multiarray", "_reconstruct") + b").", False),
        "copyreg._reconstructor": (PROTO2 + G("copyreg", "_reconstructor") + b").", False),
        "REDUCE on a storage class": (PROTO2 + G("torch", "FloatStorage") + b")R.", False),
        "tensor value hides os.system": (state_dict(("x", G("os", "system") + S(cmd) + b"\x85R"), ("w", tensor())), True),
        "persistent id outside the archive": (state_dict(("w", tensor(key="../../etc/passwd"))), False),
        "persistent id to a missing entry": (state_dict(("w", tensor(key="7"))), False),
        "persistent id with a non-storage type": (PROTO2 + b"}(" + S("w") + T(S("storage"), G("collections", "OrderedDict"), S("0"), S("cpu"), J(4)) + b"Qu.", False),
        "storage larger than its entry": (state_dict(("w", tensor(numel=4000, size=(2000, 2)))), False),
        "tensor past the end of its storage": (state_dict(("w", tensor(offset=3))), False),
        "deeply nested containers": (PROTO2 + b"]" * 200_000 + b"a" * 199_999 + b".", False),
        "nested dict instead of tensors": (PROTO2 + b"}(" + S("a") + b"}(" + S("b") + tensor() + b"uu.", False),
        "tuple dict key": (PROTO2 + b"}(" + T(S("a")) + tensor() + b"u.", False),
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


def zip_bomb(path: Path, size: int = 300 << 20) -> Path:
    """A storage entry of `size` zero bytes, deflated to a few hundred KB."""
    numel = size // 4
    pkl = state_dict(("w", tensor(numel=numel, size=(numel,), stride=(1,))))
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pkl)
        archive.writestr("archive/data/0", bytes(size), compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
        archive.writestr("archive/version", "3\n")
    return path
