"""Hostile documents from outside: safetensors headers, params.json / config.json and manifests.

Every document is checked against a schema (types, ranges) before use; a hostile one is refused
with one line (an MdistError), never a traceback, a hang or a huge allocation. For safetensors
the `safetensors` library is the reference: each file it refuses is fed to both readers.
"""

from __future__ import annotations

import json
import math
import os
import signal
import struct
import tracemalloc
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from mdist.convert.safetensors_reader import MAX_HEADER_BYTES, open_safetensors
from mdist.errors import InputError, MdistError
from mdist.model_folder import HF, MISTRAL, Layout, read_config
from mdist.modelconfig import MistralConfig, read_json
from mdist.runner.model import KVCache


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert text and "\n" not in text, repr(text)
    return text


@contextmanager
def _deadline(seconds: int):
    """Fail instead of hanging (a FIFO blocks open() forever on a reader that does not check)."""
    def expire(signum, frame):
        raise TimeoutError(f"still blocked after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# -- safetensors ------------------------------------------------------------------------------------

def _st(header: dict | bytes, data: bytes = b"") -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def _t(dtype: str, shape: list, offsets: list) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": offsets}


def _raw_entry(name: str = "a", shape: str = "[2]", offsets: str = "[0,8]") -> str:
    return f'"{name}":{{"dtype":"F32","shape":{shape},"data_offsets":{offsets}}}'


# Files the safetensors library refuses; mdist must refuse each of them too.
LIBRARY_REFUSES = {
    "duplicate tensor, file not covered": _st(("{" + _raw_entry() + "," + _raw_entry(shape="[1]", offsets="[0,4]") + "}").encode(), bytes(8)),
    "duplicate field": _st(b'{"a":{"dtype":"F32","dtype":"F32","shape":[2],"data_offsets":[0,8]}}', bytes(8)),
    "overlapping ranges": _st({"a": _t("F32", [2], [0, 8]), "b": _t("F32", [2], [4, 12])}, bytes(12)),
    "two tensors, one range": _st({"a": _t("F32", [2], [0, 8]), "b": _t("F32", [2], [0, 8])}, bytes(8)),
    "hole between tensors": _st({"a": _t("F32", [1], [0, 4]), "b": _t("F32", [1], [8, 12])}, bytes(12)),
    "uncovered tail": _st({"a": _t("F32", [2], [0, 8])}, bytes(12)),
    "data shorter than offsets": _st({"a": _t("F32", [2], [0, 8])}, bytes(4)),
    "reversed offsets": _st({"a": _t("F32", [0], [8, 0])}, bytes(8)),
    "three offsets": _st({"a": _t("F32", [2], [0, 8, 8])}, bytes(8)),
    "float shape": _st({"a": _t("F32", [2.0], [0, 8])}, bytes(8)),
    "float shape 1e3": _st({"a": _t("F32", [1e3], [0, 4000])}, bytes(4000)),
    "string offsets": _st({"a": _t("F32", [2], ["0", "8"])}, bytes(8)),
    "bool in shape": _st({"a": _t("F32", [True, 2], [0, 8])}, bytes(8)),
    "bool offsets": _st({"a": _t("F32", [1], [False, True])}, bytes(1)),
    "negative shape": _st({"a": _t("F32", [-2], [0, 8])}, bytes(8)),
    "shape product overflows int64": _st({"a": _t("F32", [2**32, 2**32], [0, 8])}, bytes(8)),
    "shape (0, 2**64-1)": _st({"a": _t("F32", [0, 2**64 - 1], [0, 0])}),
    "shape (0, 2**70)": _st({"a": _t("F32", [0, 2**70], [0, 0])}),
    "rank 70": _st({"a": _t("F32", [1] * 70, [0, 4])}, bytes(4)),
    "dtype as a list": _st({"a": _t(["F32"], [2], [0, 8])}, bytes(8)),
    "unknown dtype": _st({"a": _t("Q9", [2], [0, 8])}, bytes(8)),
    "tensor entry null": _st({"a": None}, bytes(8)),
    "metadata value an int": _st({"__metadata__": {"x": 1}, "a": _t("F32", [2], [0, 8])}, bytes(8)),
    "metadata a list": _st({"__metadata__": ["x"], "a": _t("F32", [2], [0, 8])}, bytes(8)),
    "tensor named __metadata__": _st({"__metadata__": _t("F32", [2], [0, 8])}, bytes(8)),
    "tensor named __metadata__ beside another": _st({"__metadata__": _t("F32", [2], [0, 8]), "a": _t("F32", [2], [8, 16])}, bytes(16)),
    "lone surrogate in a name": _st(("{" + _raw_entry(name="a\\udc80") + "}").encode(), bytes(8)),
    "lone surrogate in metadata": _st(b'{"__metadata__":{"k":"\\ud800"},' + _raw_entry().encode() + b"}", bytes(8)),
    "invalid UTF-8": _st(b'{"a\xff":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', bytes(8)),
    "NaN": _st(b'{"a":{"dtype":"F32","shape":[NaN],"data_offsets":[0,4]}}', bytes(4)),
    "deeply nested list": _st(b"[" * 100_000 + b"]" * 100_000),
    "deeply nested value": _st(b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
    "not an object": _st(b"[]"),
    "NUL after the object": _st(("{" + _raw_entry() + "}").encode() + b"\0\0", bytes(8)),
    "empty header": _st(b""),
    "header length past the file": struct.pack("<Q", 1000) + b"{}",
    "header length 2**63": struct.pack("<Q", 2**63) + b"{}",
    "shorter than 8 bytes": b"abc",
    "empty file": b"",
}

# Files the library accepts that mdist refuses on purpose (see the reader's docstring).
MDIST_STRICTER = {
    "duplicate tensor, same entry": _st(("{" + _raw_entry() + "," + _raw_entry() + "}").encode(), bytes(8)),
    "duplicate metadata key": _st(b'{"__metadata__":{"x":"1","x":"2"},' + _raw_entry().encode() + b"}", bytes(8)),
    "control character in a name": _st(("{" + _raw_entry(name="a\\u0001") + "}").encode(), bytes(8)),
    "newline in a name": _st(("{" + _raw_entry(name="a\\nb") + "}").encode(), bytes(8)),
    "unknown field in an entry": _st({"a": {**_t("F32", [2], [0, 8]), "x": 1}}, bytes(8)),
    "header over the limit": _st({"__metadata__": {"x": "a" * MAX_HEADER_BYTES}}),
}

# Files both accept: the checks must not refuse what is valid.
BOTH_ACCEPT = {
    "one tensor": _st({"a": _t("F32", [2], [0, 8])}, np.arange(2, dtype=np.float32).tobytes()),
    "no tensors": _st({}),
    "scalar": _st({"a": _t("F32", [], [0, 4])}, np.float32(3).tobytes()),
    "zero-size tensors anywhere": _st({"a": _t("F32", [0, 5], [0, 0]), "b": _t("I8", [3], [0, 3]), "c": _t("F16", [2, 0], [3, 3])}, b"\1\2\3"),
    "metadata null": _st({"__metadata__": None, "a": _t("U8", [1], [0, 1])}, b"\7"),
    "metadata strings": _st({"__metadata__": {"format": "pt", "note": "a\nb"}, "a": _t("U8", [1], [0, 1])}, b"\7"),
    "whitespace around the header": _st(b"  {" + _raw_entry().encode() + b"}   ", bytes(8)),
    "unaligned and out of order": _st({"b": _t("F32", [1], [1, 5]), "a": _t("U8", [1], [0, 1])}, bytes(5)),
    "empty name": _st({"": _t("U8", [1], [0, 1])}, b"\1"),
}


def _library_refuses(path: Path) -> bool:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            for key in handle.keys():
                handle.get_tensor(key)
    except Exception:  # the library raises SafetensorError, ValueError, ...: any refusal counts
        return True
    return False


def _write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "model.safetensors"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("case", sorted(LIBRARY_REFUSES))
def test_files_the_library_refuses_are_refused(tmp_path: Path, case: str) -> None:
    path = _write(tmp_path, LIBRARY_REFUSES[case])
    assert _library_refuses(path), "the reference accepts this file: the case is wrong"
    with pytest.raises(InputError) as caught:
        open_safetensors(path)
    assert str(path) in _one_line(caught.value)


@pytest.mark.parametrize("case", sorted(MDIST_STRICTER))
def test_mdist_is_stricter_than_the_library(tmp_path: Path, case: str) -> None:
    path = _write(tmp_path, MDIST_STRICTER[case])
    with pytest.raises(InputError) as caught:
        open_safetensors(path)
    _one_line(caught.value)


@pytest.mark.parametrize("case", sorted(BOTH_ACCEPT))
def test_valid_files_read_like_the_library(tmp_path: Path, case: str) -> None:
    from safetensors.numpy import load_file

    path = _write(tmp_path, BOTH_ACCEPT[case])
    expected = load_file(str(path))
    ours = open_safetensors(path)
    assert sorted(ours) == sorted(expected)
    for name, array in expected.items():
        assert ours[name].shape == array.shape and ours[name].tobytes() == array.tobytes()


def test_a_huge_header_is_refused_before_it_is_read(tmp_path: Path) -> None:
    """95 MB of header took 2 GB to parse; the length is checked first (a sparse file costs no disk)."""
    path = tmp_path / "huge.safetensors"
    header_len = 95 << 20
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", header_len) + b'{"__metadata__":{"x":"')
        handle.truncate(8 + header_len + 8)
    tracemalloc.start()
    try:
        with pytest.raises(InputError) as caught:
            open_safetensors(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(MAX_HEADER_BYTES) in _one_line(caught.value)
    assert peak < 1 << 20


def test_a_fifo_is_refused_not_waited_on(tmp_path: Path) -> None:
    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)
    with _deadline(5), pytest.raises(InputError) as caught:
        open_safetensors(fifo)
    assert "not a regular file" in _one_line(caught.value)


def test_a_device_is_refused(tmp_path: Path) -> None:
    link = tmp_path / "model.safetensors"
    link.symlink_to("/dev/zero")
    with _deadline(5), pytest.raises(InputError) as caught:
        open_safetensors(link)
    assert "not a regular file" in _one_line(caught.value)


def test_round_trip_with_the_library_writer(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    tensors = {"x": np.arange(12, dtype=np.float32).reshape(3, 4), "y": np.ones((2, 2, 2), dtype=np.int8),
               "z": np.zeros((0, 7), dtype=np.float16)}
    save_file(tensors, str(tmp_path / "m.safetensors"), metadata={"format": "np"})
    ours = open_safetensors(tmp_path / "m.safetensors")
    for name, array in tensors.items():
        np.testing.assert_array_equal(ours[name], array)


@pytest.mark.parametrize("name", ["a\x01", "a\nb", "\udc80", "__metadata__", "dup"])
def test_the_writer_refuses_names_the_reader_refuses(name: str) -> None:
    """A .pth key is anyone's text: refused before a multi-GB file nobody can read is written."""
    from mdist.convert.safetensors_writer import TensorSource, build_header

    tensors = [TensorSource(n, "U8", (1,), 1, lambda: [b"\0"]) for n in ("dup", name)]
    with pytest.raises(InputError) as caught:
        build_header(tensors, {"format": "pt"} if name != "__metadata__" else None)
    _one_line(caught.value)


# -- params.json / config.json ----------------------------------------------------------------------

MISTRAL_7B = {"dim": 4096, "n_layers": 32, "head_dim": 128, "hidden_dim": 14336, "n_heads": 32, "n_kv_heads": 8,
              "norm_eps": 1e-05, "sliding_window": 4096, "vocab_size": 32000}
MIXTRAL_8X7B = {"dim": 4096, "n_layers": 32, "head_dim": 128, "hidden_dim": 14336, "n_heads": 32, "n_kv_heads": 8,
                "norm_eps": 1e-05, "vocab_size": 32000, "rope_theta": 1e6,
                "moe": {"num_experts_per_tok": 2, "num_experts": 8}}
HF_MISTRAL_7B = MistralConfig.from_params(MISTRAL_7B).to_hf_config()

BAD_PARAMS = {
    "dim a bool": {"dim": True},
    "dim a float": {"dim": 4096.0},
    "dim a string": {"dim": "4096"},
    "dim too large": {"dim": 1 << 17, "head_dim": 128},
    "n_layers 10**9": {"n_layers": 10**9},
    "n_layers a float": {"n_layers": 32.5},
    "n_heads a list": {"n_heads": [32]},
    "n_heads 0": {"n_heads": 0},
    "n_heads 10**6": {"n_heads": 10**6, "n_kv_heads": 10**6},
    "n_kv_heads negative": {"n_kv_heads": -8},
    "head_dim 10**5": {"head_dim": 10**5},
    "head_dim odd": {"head_dim": 127},
    "attention width too large": {"n_heads": 1024, "n_kv_heads": 8, "head_dim": 1024},
    "hidden_dim 10**8": {"hidden_dim": 10**8},
    "vocab_size 10**9": {"vocab_size": 10**9},
    "vocab_size null": {"vocab_size": None},
    "sliding_window 10**12": {"sliding_window": 10**12},
    "sliding_window a bool": {"sliding_window": True},
    "sliding_window 0": {"sliding_window": 0},
    "rope_theta a string": {"rope_theta": "1e6"},
    "rope_theta NaN": {"rope_theta": math.nan},
    "rope_theta inf": {"rope_theta": math.inf},
    "rope_theta 1e300": {"rope_theta": 1e300},
    "rope_theta a bool": {"rope_theta": True},
    "norm_eps NaN": {"norm_eps": math.nan},
    "norm_eps inf": {"norm_eps": math.inf},
    "norm_eps 0": {"norm_eps": 0},
    "norm_eps a string": {"norm_eps": "1e-5"},
    "norm_eps a dict": {"norm_eps": {}},
}

BAD_HF = {
    "architectures an int": {"architectures": 5, "model_type": None},
    "architectures a string": {"architectures": "MistralForCausalLM", "model_type": None},
    "architectures of ints": {"architectures": [1, 2], "model_type": None},
    "model_type a list": {"model_type": ["mistral"], "architectures": None},
    "rope_parameters a list": {"rope_parameters": [1], "rope_theta": None},
    "hidden_size a bool": {"hidden_size": True},
    "num_hidden_layers 10**9": {"num_hidden_layers": 10**9},
    "sliding_window 10**12": {"sliding_window": 10**12},
    "rope_theta a string": {"rope_theta": "big"},
    "rms_norm_eps NaN": {"rms_norm_eps": math.nan},
    "head_dim a string": {"head_dim": "128"},
}


def load_config(directory: Path) -> tuple[MistralConfig, str]:
    """The config a layout of this folder is read with (mdist.model_folder.read_config), and its layout."""
    kind, name = (MISTRAL, "params.json") if (directory / "params.json").exists() else (HF, "config.json")
    return read_config(directory, Layout(kind, name, ())), kind


def _model_dir(tmp_path: Path, name: str, content: dict | str) -> Path:
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(content if isinstance(content, str) else json.dumps(content))
    return folder


def test_published_configs_parse(tmp_path: Path) -> None:
    assert load_config(_model_dir(tmp_path, "params.json", MISTRAL_7B))[0].sliding_window == 4096
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps(HF_MISTRAL_7B))
    assert load_config(hf) == (MistralConfig.from_params(MISTRAL_7B), "hf")


def test_mixtral_params_with_a_moe_block_do_not_crash(tmp_path: Path) -> None:
    config, layout = load_config(_model_dir(tmp_path, "params.json", MIXTRAL_8X7B))
    assert layout == "mistral" and config.rope_theta == 1e6 and config.dim == 4096


@pytest.mark.parametrize("case", sorted(BAD_PARAMS))
def test_bad_params_json_is_one_line(tmp_path: Path, case: str) -> None:
    folder = _model_dir(tmp_path, "params.json", {**MISTRAL_7B, **BAD_PARAMS[case]})
    with pytest.raises(InputError) as caught:
        load_config(folder)
    _one_line(caught.value)


@pytest.mark.parametrize("case", sorted(BAD_HF))
def test_bad_config_json_is_one_line(tmp_path: Path, case: str) -> None:
    config = {**HF_MISTRAL_7B, **BAD_HF[case]}
    folder = _model_dir(tmp_path, "config.json", {k: v for k, v in config.items() if v is not None})
    with pytest.raises(InputError) as caught:
        load_config(folder)
    _one_line(caught.value)


@pytest.mark.parametrize("content", ["[" * 100_000 + "]" * 100_000, '{"dim": ' + "[" * 100_000, "\udcff", "{} {}"])
def test_unparseable_params_json_is_one_line(tmp_path: Path, content: str) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "params.json").write_bytes(content.encode("utf-8", "surrogateescape"))
    with pytest.raises(InputError) as caught:
        load_config(folder)
    _one_line(caught.value)


def test_params_json_as_a_fifo_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    os.mkfifo(folder / "config.json")
    with _deadline(5), pytest.raises(InputError) as caught:
        read_json(folder / "config.json")
    assert "not a regular file" in _one_line(caught.value)


def _tiny(window: int | None) -> MistralConfig:
    return MistralConfig(dim=8, n_layers=1, head_dim=2, hidden_dim=8, n_heads=4, n_kv_heads=1, norm_eps=1e-5,
                         vocab_size=16, sliding_window=window)


def test_kv_cache_follows_the_context_not_the_window() -> None:
    """A window of 2**31 (allowed) must not size the cache: min(window, capacity) slots."""
    cache = KVCache(_tiny(1 << 31), 8)
    assert cache.k.shape[2] == 8 and cache.v.shape[2] == 8


def test_kv_cache_smaller_than_the_window_refuses_to_wrap() -> None:
    cache = KVCache(_tiny(1000), 4)
    kv = np.zeros((1, 4, 2), dtype=np.float32)
    cache.store(0, np.arange(4), kv, kv)
    with pytest.raises(InputError):
        cache.store(0, np.arange(4, 8), kv, kv)  # slot = position % 4 would overwrite visible keys


def test_kv_cache_with_a_small_window_still_rolls() -> None:
    cache = KVCache(_tiny(4), 16)
    assert cache.k.shape[2] == 4
    kv = np.ones((1, 8, 2), dtype=np.float32)
    cache.store(0, np.arange(8), kv, kv)  # positions past the window reuse slots


# -- manifests --------------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
TINY = json.loads((REPO / "checksums" / "tiny-mistral.json").read_text())
SEVEN_B = json.loads((REPO / "checksums" / "mistral-7b-v0.1.json").read_text())
HUB = json.loads((REPO / "checksums" / "mistral-7b-v0.1-hub.json").read_text())
H64 = "ab" * 32


def _with(base: dict, path: str, value) -> dict:
    """A deep copy of base with the value at a |-separated key path replaced (... deletes the key)."""
    data = json.loads(json.dumps(base))
    *parents, last = path.split("|")
    target = data
    for key in parents:
        target = target[key]
    if value is ...:
        del target[last]
    else:
        target[last] = value
    return data


BAD_MANIFESTS = {
    "files a list": _with(TINY, "files", ["params.json"]),
    "files null": _with(TINY, "files", None),
    "sources a list": _with(TINY, "sources", ["btih"]),
    "title an int": _with(TINY, "title", 5),
    "title with an escape sequence": _with(TINY, "title", "tiny\x1b[2J"),
    "files_complete a string": _with(TINY, "files_complete", "false"),
    "files_complete null": _with(TINY, "files_complete", None),
    "tensor_digest short": _with(TINY, "tensor_digest", "abc"),
    "tensor_digest uppercase": _with(TINY, "tensor_digest", H64.upper()),
    "tensor_digest an int": _with(TINY, "tensor_digest", 7),
    "size a bool": _with(TINY, "files|params.json|size", True),
    "size a float": _with(TINY, "files|params.json|size", 154.0),
    "size negative": _with(TINY, "files|params.json|size", -1),
    "size 2**64": _with(TINY, "files|params.json|size", 2**64),
    "size a string": _with(TINY, "files|params.json|size", "154"),
    "sha256 an int": _with(TINY, "files|params.json|sha256", 1),
    "sha256 too long": _with(TINY, "files|params.json|sha256", H64 + "00"),
    "md5 not hex": _with(TINY, "files|params.json|md5", "z" * 32),
    "misspelt sha256": _with(TINY, "files|params.json|sha265", H64),
    "entry a list": _with(TINY, "files|params.json", [1]),
    "path with ..": _with(TINY, "files|../params.json", {}),
    "absolute path": _with(TINY, "files|/etc/passwd", {}),
    "path in .git": _with(TINY, "files|.git/config", {}),
    "path in .mdist": _with(TINY, "files|.mdist/complete.json", {}),
    "backslash path": _with(TINY, "files|a\\b", {}),
    "control character in a path": _with(TINY, "files|a\x01", {}),
    "case collision": _with(TINY, "files|PARAMS.JSON", {}),
    "btih short": _with(TINY, "sources|btih", "abc"),
    "btih an int": _with(TINY, "sources|btih", 5),
    "btih uppercase": _with(TINY, "sources|btih", "D" * 40),
    "btmh without 1220": _with(TINY, "sources|btmh", "1221" + H64),
    "btmh short": _with(TINY, "sources|btmh", "1220abc"),
    "btmh a list": _with(TINY, "sources|btmh", ["1220" + H64]),
    "display_name a dict": _with(TINY, "sources|display_name", {}),
    "trackers a string": _with(SEVEN_B, "sources|trackers", "udp://x:1/announce"),
    "trackers of ints": _with(SEVEN_B, "sources|trackers", [1]),
    "tracker a file URL": _with(SEVEN_B, "sources|trackers", ["file:///etc/passwd"]),
    "magnet an int": _with(SEVEN_B, "sources|magnet", 1),
    "magnet not a magnet": _with(SEVEN_B, "sources|magnet", "http://example.com"),
    "magnet with a newline": _with(SEVEN_B, "sources|magnet", "magnet:?xt=urn:btih:\n"),
    "hub_alternative an int": _with(SEVEN_B, "sources|hub_alternative", 3),
    "hub_alternative a path": _with(SEVEN_B, "sources|hub_alternative", "../x"),
    "hub a string": _with(HUB, "sources|hub", "mistralai/Mistral-7B-v0.1"),
    "hub without repo": _with(HUB, "sources|hub", {"revision": "main"}),
    "hub repo without owner": _with(HUB, "sources|hub|repo", "Mistral-7B-v0.1"),
    "hub repo with ..": _with(HUB, "sources|hub|repo", "../x"),
    "hub repo an int": _with(HUB, "sources|hub|repo", 7),
    "hub revision an int": _with(HUB, "sources|hub|revision", 7),
    "hub revision with ..": _with(HUB, "sources|hub|revision", "a/../../x"),
    "hub extra key": _with(HUB, "sources|hub|url", "http://x"),
    "unknown source": _with(TINY, "sources|ftp", "ftp://x"),
    "unknown top-level key": _with(TINY, "tensor_digets", H64),
    "name uppercase": _with(TINY, "name", "Tiny"),
    "name a list": _with(TINY, "name", ["tiny"]),
    "name too long": _with(TINY, "name", "a" * 101),
    "released not a date": _with(SEVEN_B, "released", 2023),
    "archives a dict": _with(SEVEN_B, "archives", {}),
    "archive md5 short": _with(SEVEN_B, "archives", [{"name": "x.tar", "md5": "ab"}]),
    "provenance a string": _with(TINY, "provenance", "me"),
    "provenance fields a string": _with(TINY, "provenance", [{"fields": "files", "source": "me"}]),
    "notes an int": _with(TINY, "notes", 1),
}


# JSON Schema cannot say these: paths equal after case folding; 154.0 is an "integer" to it.
SCHEMA_CANNOT_EXPRESS = {"case collision", "size a float"}


def test_every_registry_manifest_parses_and_validates() -> None:
    import jsonschema

    from mdist.verify.manifest import load_registry

    schema = json.loads((REPO / "docs" / "manifest.schema.json").read_text())
    for path in sorted((REPO / "checksums").glob("*.json")):
        jsonschema.validate(json.loads(path.read_text()), schema)
    assert len(load_registry()) == len(list((REPO / "checksums").glob("*.json")))


@pytest.mark.parametrize("case", sorted(BAD_MANIFESTS))
def test_bad_manifest_is_refused_by_mdist_and_the_schema(case: str) -> None:
    import jsonschema

    from mdist.verify.manifest import parse_manifest

    data = BAD_MANIFESTS[case]
    with pytest.raises(InputError) as caught:
        parse_manifest(data, "m.json")
    assert _one_line(caught.value).startswith("m.json")
    schema = json.loads((REPO / "docs" / "manifest.schema.json").read_text())
    if case not in SCHEMA_CANNOT_EXPRESS:
        assert not jsonschema.Draft202012Validator(schema).is_valid(data), "docs/manifest.schema.json accepts it"


@pytest.mark.parametrize("content", [b'{"schema": "mdist-manifest/1", "name": "x", "files": {"a": {"size": 1}, "a": {}}}',
                                     b'{"schema": "mdist-manifest/1", "name": "x", "name": "y"}',
                                     b"[" * 100_000, b"\xff\xfe", b"{" * 50_000 + b"}" * 50_000])
def test_manifest_file_errors_are_one_line(tmp_path: Path, content: bytes) -> None:
    from mdist.verify.manifest import find_manifest

    path = tmp_path / "m.json"
    path.write_bytes(content)
    with pytest.raises(InputError) as caught:
        find_manifest(str(path))
    assert str(path) in _one_line(caught.value)


def test_manifest_path_rule_is_mdist_paths() -> None:
    from mdist.paths import UnsafePathError
    from mdist.verify.manifest import safe_relative_path

    assert safe_relative_path("a/b.json") == "a/b.json"
    for bad in ("../x", "a/./b", ".git/config", "x/.MDIST/y", "C:x", "a\u0085b"):
        with pytest.raises(UnsafePathError):
            safe_relative_path(bad)


@pytest.mark.parametrize("name", ["my-model", "mistral-7b-v0.1", "a", "0_x.y-z", "a" * 100])
def test_release_names_accepted(name: str) -> None:
    from mdist.verify.manifest import check_release_name

    assert check_release_name(name) == name


@pytest.mark.parametrize("name", ["My Model/../x", "", ".", "..", "-x", ".x", "a/b", "A", "a b", "a" * 101, "é", "a\n",
                                  None, 5, ["a"]])
def test_release_names_refused(name) -> None:
    from mdist.verify.manifest import check_release_name

    with pytest.raises(InputError) as caught:
        check_release_name(name)
    _one_line(caught.value)


GOOD_MANIFESTS = {
    "hub revision a branch": _with(HUB, "sources|hub|revision", "main"),
    "hub revision a commit": _with(HUB, "sources|hub|revision", "ab" * 20),
    "hub revision a PR ref": _with(HUB, "sources|hub|revision", "refs/pr/1"),
    "https and wss trackers": _with(SEVEN_B, "sources|trackers", ["https://t.example/announce", "wss://t.example:443"]),
    "notes over lines": _with(TINY, "notes", "first line\nsecond\tline"),
    "unicode title": _with(TINY, "title", "Ünïcode 模型"),
    "nested file": _with(TINY, "files|original/params.json", {"size": 0}),
    "size at the limit": _with(TINY, "files|params.json|size", 2**63 - 1),
    "no files": _with(TINY, "files", {}),
    "no sources": _with(TINY, "sources", ...),
    "json content": _with(TINY, "files|x.json", {"json": {"a": [1, None, "b"]}}),
}


@pytest.mark.parametrize("case", sorted(GOOD_MANIFESTS))
def test_valid_manifest_variants_are_accepted(case: str) -> None:
    import jsonschema

    from mdist.verify.manifest import parse_manifest

    data = GOOD_MANIFESTS[case]
    parse_manifest(data, "m.json")
    jsonschema.validate(data, json.loads((REPO / "docs" / "manifest.schema.json").read_text()))


# -- fuzzing: only mdist's own errors, and never looser than the reference --------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

FUZZ = settings(max_examples=200, deadline=2000, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
TRICKY_TEXT = ["", "a", "b", "__metadata__", "F32", "BF16", "a\x01", "\udc80", "..", "/etc", "É", "1220", "magnet:?"]
text = st.sampled_from(TRICKY_TEXT) | st.text(max_size=8)
scalars = (st.none() | st.booleans() | st.sampled_from([0, 1, -1, 8, 2**31, 2**63, 2**64, 2**70])
           | st.integers(-10, 10**6) | st.floats(allow_nan=True, allow_infinity=True) | text)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
                           max_leaves=10)
DELETE = object()


def _fresh(path: Path, data: bytes) -> Path:
    """Replace the file (a new inode): a map of the previous example must not see it truncated."""
    path.unlink(missing_ok=True)
    path.write_bytes(data)
    return path


def _agrees_with_library(path: Path) -> None:
    """mdist refuses with its own error, or reads exactly what the library reads."""
    from safetensors.numpy import load_file

    try:
        ours = open_safetensors(path)
    except MdistError:
        return
    expected = load_file(str(path))  # mdist accepted: the reference must too
    assert sorted(ours) == sorted(expected)
    for name, array in expected.items():
        assert ours[name].shape == array.shape and ours[name].tobytes() == array.tobytes()


def _valid_file() -> bytes:
    from safetensors.numpy import save

    return save({"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.arange(3, dtype=np.int8),
                 "e": np.zeros((0, 2), dtype=np.float16)}, metadata={"format": "pt"})


VALID_FILE = _valid_file()
HEADER_END = 8 + struct.unpack("<Q", VALID_FILE[:8])[0]


@FUZZ
@given(mutations=st.lists(st.tuples(st.integers(0, HEADER_END - 1), st.integers(0, 255)), min_size=1, max_size=6),
       keep=st.integers(0, len(VALID_FILE)))
def test_fuzzed_safetensors_bytes(tmp_path_factory, mutations, keep) -> None:
    data = bytearray(VALID_FILE)
    for position, value in mutations:
        data[position] = value
    _agrees_with_library(_fresh(tmp_path_factory.getbasetemp() / "fuzz.safetensors", bytes(data[:keep])))


dtypes = st.sampled_from(["F32", "BF16", "U8", "I64", "BOOL", "F8_E4M3", "Q9", ""]) | json_values
shapes = st.lists(st.integers(0, 3), max_size=3) | st.lists(st.sampled_from([-1, 0, 2**32, 2**63, 2**64 - 1, True, 1.0]), max_size=3) | json_values
offsets = st.lists(st.integers(0, 40), min_size=2, max_size=2).map(sorted) | json_values
entries = st.fixed_dictionaries({"dtype": dtypes, "shape": shapes, "data_offsets": offsets}) | json_values


@FUZZ
@given(header=st.dictionaries(text, entries, max_size=4), data=st.binary(max_size=40))
def test_fuzzed_safetensors_headers(tmp_path_factory, header, data) -> None:
    raw = json.dumps(header).encode()  # lone surrogates become \udc80 escapes, NaN stays NaN
    _agrees_with_library(_fresh(tmp_path_factory.getbasetemp() / "header.safetensors", _st(raw, data)))


PARAMS_KEYS = sorted(MISTRAL_7B) + ["rope_theta", "moe", "max_seq_len"]
HF_KEYS = sorted(HF_MISTRAL_7B) + ["model_type", "architectures"]


def _edited(base: dict, edits: list) -> dict:
    document = dict(base)
    for key, value in edits:
        if value is DELETE:
            document.pop(key, None)
        else:
            document[key] = value
    return document


@FUZZ
@given(base=st.sampled_from([MISTRAL_7B, MIXTRAL_8X7B]),
       edits=st.lists(st.tuples(st.sampled_from(PARAMS_KEYS), json_values | st.just(DELETE)), max_size=4))
def test_fuzzed_params_json(base, edits) -> None:
    try:
        config = MistralConfig.from_params(_edited(base, edits))
    except InputError:
        return
    assert KVCache(config, 4).k.shape[2] <= 4  # anything accepted is bounded


@FUZZ
@given(edits=st.lists(st.tuples(st.sampled_from(HF_KEYS), json_values | st.just(DELETE)), max_size=4),
       document=json_values)
def test_fuzzed_config_json(edits, document) -> None:
    for candidate in (_edited(HF_MISTRAL_7B, edits), document):
        try:
            MistralConfig.from_hf_config(candidate)
        except InputError:
            pass


@FUZZ
@given(content=st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()))
def test_fuzzed_params_json_bytes(tmp_path_factory, content) -> None:
    folder = tmp_path_factory.getbasetemp() / "fuzz-model"
    folder.mkdir(exist_ok=True)
    _fresh(folder / "params.json", content)
    try:
        load_config(folder)
    except MdistError:
        pass


REGISTRY = [json.loads(p.read_text()) for p in sorted((REPO / "checksums").glob("*.json"))]
SCHEMA = json.loads((REPO / "docs" / "manifest.schema.json").read_text())


def _key_paths(node, prefix: tuple = ()) -> list[tuple]:
    """Every path to a value inside a document (the document itself is the empty path)."""
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found += _key_paths(value, prefix + (key,))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _key_paths(value, prefix + (index,))
    return found


def _mutate(document, path: tuple, operation: str, value, key: str):
    """Replace, delete or rename the value at path, or add a key beside it."""
    if not path:
        return value if operation == "replace" else document
    parent = document
    for step in path[:-1]:
        parent = parent[step]
    last = path[-1]
    if operation == "replace":
        parent[last] = value
    elif operation == "delete":
        del parent[last]
    elif isinstance(parent, dict) and operation == "rename":
        parent[key] = parent.pop(last)
    elif isinstance(parent, dict):
        parent[key] = value
    return document


@FUZZ
@given(base=st.sampled_from(REGISTRY), pick=st.integers(0, 10**6), operation=st.sampled_from(["replace", "delete", "rename", "add"]),
       value=json_values, key=text)
def test_fuzzed_manifests(base, pick, operation, value, key) -> None:
    import jsonschema

    from mdist.verify.manifest import parse_manifest

    document = json.loads(json.dumps(base))
    paths = _key_paths(document)
    document = _mutate(document, paths[pick % len(paths)], operation, value, key)
    try:
        parse_manifest(document, "fuzz.json")
    except InputError:
        return
    if set(SCHEMA["required"]) <= set(document):  # mdist defaults title, files, files_complete; needs no provenance
        jsonschema.validate(document, SCHEMA)  # mdist accepts nothing else the published schema refuses


def test_a_null_tensor_digest_is_absent_for_mdist_and_the_schema() -> None:
    """mdist reads "tensor_digest": null as absent; the published schema must accept what mdist accepts
    (Hypothesis found this one at random in test_fuzzed_manifests)."""
    import jsonschema

    from mdist.verify.manifest import parse_manifest

    for base in REGISTRY:
        document = {**json.loads(json.dumps(base)), "tensor_digest": None}
        assert parse_manifest(document, "null.json").tensor_digest is None
        jsonschema.validate(document, SCHEMA)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**REGISTRY[0], "tensor_digest": "x"}, SCHEMA)


@FUZZ
@given(base=st.sampled_from(REGISTRY), mutations=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=4),
       keep=st.integers(0, 10**6))
def test_fuzzed_manifest_bytes(tmp_path_factory, base, mutations, keep) -> None:
    from mdist.verify.manifest import find_manifest

    data = bytearray(json.dumps(base).encode())
    for position, value in mutations:
        data[position % len(data)] = value
    path = _fresh(tmp_path_factory.getbasetemp() / "fuzz-manifest.json", bytes(data[: keep % (len(data) + 1)]))
    try:
        find_manifest(str(path))
    except MdistError:
        pass
