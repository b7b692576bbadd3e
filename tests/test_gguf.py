"""GGUF: mdist's bounded reader, `convert --layout gguf`, digests against the release, `run` on a GGUF.

transformers (an independent GGUF loader: the gguf package's reader, its own dequantisation and
q/k permutation) is the reference that the files mdist writes are what llama.cpp's converter writes.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mdist.convert.gguf_reader import MAX_ARRAY_ITEMS, MAX_TENSORS, read_gguf
from mdist.errors import InputError


# -- hand-made GGUF bytes -----------------------------------------------------------------------
def _str(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def _kv_u32(key: str, value: int) -> bytes:
    return _str(key) + struct.pack("<II", 4, value)


def _info(name: str | bytes, dims: list[int], type_id: int, offset: int) -> bytes:
    return _str(name) + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims) + struct.pack(
        "<IQ", type_id, offset)


def make_gguf(kvs: list[bytes], infos: list[bytes], data: bytes, *, version: int = 3,
              n_tensors: int | None = None, n_kv: int | None = None) -> bytes:
    head = b"GGUF" + struct.pack("<IQQ", version, len(infos) if n_tensors is None else n_tensors,
                                 len(kvs) if n_kv is None else n_kv)
    body = head + b"".join(kvs) + b"".join(infos)
    body += b"\0" * (-len(body) % 32)
    return body + data


def _valid() -> bytes:
    """Two F32 tensors of 4x8 and 8 values, and an array of strings."""
    kvs = [_str("general.architecture") + struct.pack("<I", 8) + _str("llama"),
           _str("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, 3) + _str("a") + _str("b") + _str("c"),
           _kv_u32("llama.block_count", 1)]
    infos = [_info("token_embd.weight", [8, 4], 0, 0), _info("output_norm.weight", [8], 0, 128)]
    return make_gguf(kvs, infos, np.arange(40, dtype=np.float32).tobytes())


def _write(tmp_path: Path, data: bytes, name: str = "m.gguf") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_reader_reads_a_valid_file(tmp_path: Path) -> None:
    gguf = read_gguf(_write(tmp_path, _valid()))
    assert gguf.metadata["general.architecture"] == "llama"
    assert gguf.metadata["tokenizer.ggml.tokens"] == ["a", "b", "c"]
    embd = gguf.tensors["token_embd.weight"]
    assert embd.shape == (4, 8) and embd.type_name == "F32"
    assert gguf.array(embd).tolist() == np.arange(32, dtype=np.float32).reshape(4, 8).tolist()
    assert gguf.array(gguf.tensors["output_norm.weight"]).tolist() == list(range(32, 40))


HOSTILE = {
    "not gguf": (b"GGML" + b"\0" * 40, "not a GGUF file"),
    "version 1": (make_gguf([], [], b"", version=1), "version 1"),
    "tensor count": (make_gguf([], [], b"", n_tensors=1 << 62), "more than allowed"),
    "kv count beyond the file": (make_gguf([], [], b"", n_kv=1000), "past the end"),
    "huge string": (make_gguf([_str("k") + struct.pack("<IQ", 8, 1 << 60)], [], b""), "allowed"),
    "string past the end": (make_gguf([_str("k") + struct.pack("<IQ", 8, 5000)], [], b""), "past the end"),
    "huge key": (make_gguf([struct.pack("<Q", 1 << 40)], [], b""), "allowed"),
    "huge array": (make_gguf([_str("k") + struct.pack("<IIQ", 9, 4, 1 << 40)], [], b""), "allowed"),
    "array of arrays": (make_gguf([_str("k") + struct.pack("<IIQ", 9, 9, 1)], [], b"\0" * 64), "not of numbers"),
    "unknown value type": (make_gguf([_str("k") + struct.pack("<I", 77)], [], b"\0" * 64), "unknown value type"),
    "bad bool": (make_gguf([_str("k") + struct.pack("<IB", 7, 2)], [], b"\0" * 64), "neither 0 nor 1"),
    "duplicate key": (make_gguf([_kv_u32("k", 1), _kv_u32("k", 2)], [], b""), "twice"),
    "unknown tensor type": (make_gguf([], [_info("t", [8], 99, 0)], b"\0" * 32), "unknown type 99"),
    "absurd dimension": (make_gguf([], [_info("t", [1 << 50], 0, 0)], b""), "dimension outside"),
    "zero dimension": (make_gguf([], [_info("t", [0], 0, 0)], b""), "dimension outside"),
    "rank 5": (make_gguf([], [_info("t", [1] * 5, 0, 0)], b""), "dimensions"),
    "tensor past the end": (make_gguf([], [_info("t", [1 << 30], 0, 0)], b"\0" * 32), "past the end"),
    "offset past the end": (make_gguf([], [_info("t", [8], 0, 1 << 62)], b"\0" * 32), "past the end"),
    "overlap": (make_gguf([], [_info("a", [16], 0, 0), _info("b", [16], 0, 32)], b"\0" * 128), "overlap"),
    "unaligned": (make_gguf([], [_info("a", [8], 0, 4)], b"\0" * 64), "aligned"),
    "duplicate tensor": (make_gguf([], [_info("a", [8], 0, 0), _info("a", [8], 0, 32)], b"\0" * 64), "twice"),
    "partial block": (make_gguf([], [_info("q", [33], 8, 0)], b"\0" * 128), "blocks"),
    "bad alignment": (make_gguf([_kv_u32("general.alignment", 3)], [], b""), "power of two"),
    "name not utf-8": (make_gguf([], [_info(b"\xff\xfe", [8], 0, 0)], b"\0" * 32), "UTF-8"),
    "control character": (make_gguf([], [_info("a\nb", [8], 0, 0)], b"\0" * 32), "control"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_reader_refuses_hostile_headers_with_one_line(tmp_path: Path, case: str) -> None:
    data, expected = HOSTILE[case]
    with pytest.raises(InputError) as error:
        read_gguf(_write(tmp_path, data))
    assert expected in str(error.value) and "\n" not in str(error.value)


def test_reader_limits_are_far_above_real_models() -> None:
    assert MAX_TENSORS >= 1 << 14 and MAX_ARRAY_ITEMS >= 262144  # DeepSeek V3's tensors, Gemma 3's vocabulary


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(st.integers(0, 400), st.binary(min_size=1, max_size=9)), max_size=4),
       cut=st.integers(0, 500))
def test_fuzzed_headers_give_only_mdists_error(tmp_path: Path, edits, cut) -> None:
    data = bytearray(_valid())
    for position, patch in edits:
        data[position : position + len(patch)] = patch
    data = bytes(data[: max(cut, 24)]) if cut < len(data) else bytes(data)
    path = _write(tmp_path, data, "fuzzed.gguf")
    try:
        gguf = read_gguf(path)
    except InputError as exc:
        assert "\n" not in str(exc)
        return
    for tensor in gguf.tensors.values():  # whatever was accepted lies inside the file
        assert tensor.offset + tensor.nbytes <= len(data)
        assert gguf.raw(tensor).nbytes == tensor.nbytes


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(count=st.integers(0, (1 << 64) - 1), length=st.integers(0, (1 << 64) - 1),
       dims=st.lists(st.integers(0, (1 << 64) - 1), min_size=1, max_size=4), offset=st.integers(0, (1 << 64) - 1),
       type_id=st.integers(0, (1 << 32) - 1))
def test_fuzzed_header_fields_give_only_mdists_error(tmp_path: Path, count, length, dims, offset, type_id) -> None:
    kvs = [_str("k") + struct.pack("<IIQ", 9, 8, count) + struct.pack("<Q", length) + b"x" * 8]
    infos = [_str("t") + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims)
             + struct.pack("<IQ", type_id, offset)]
    path = _write(tmp_path, make_gguf(kvs, infos, b"\0" * 256), "fields.gguf")
    with pytest.raises(InputError):
        read_gguf(path)


# -- convert --layout gguf ------------------------------------------------------------------------
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402

import torch  # noqa: E402

from conftest import FIXTURE, random_mistral, run_mdist  # noqa: E402
from mdist.convert import convert  # noqa: E402
from mdist.convert.gguf_layout import decode  # noqa: E402
from mdist.runner.q8_kernel import compile_q8_0, host_has_avx2, q8_0_gemv, q8_0_reference  # noqa: E402

TOKENS = [1, *np.random.default_rng(0).integers(3, 2048, 40).tolist()]


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> dict[str, Path]:
    """The fixture as every GGUF type (into one folder), and its HF conversion (the reference)."""
    base = tmp_path_factory.mktemp("gguf")
    out = base / "gguf"
    files = {t: convert(FIXTURE, out, layout="gguf", gguf_type=t).files[0] for t in ("bf16", "f32", "f16", "q8_0")}
    convert(FIXTURE, base / "hf", layout="hf")
    return {**files, "hf": base / "hf"}


def _logits(model, tokens) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].float().numpy()


def _relative(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


def test_transformers_loads_mdists_gguf_with_the_reference_logits(converted) -> None:
    from transformers import AutoModelForCausalLM

    def load(path: Path, **kwargs):
        return AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager", **kwargs).eval()

    expected32 = _logits(load(converted["hf"], dtype=torch.float32), TOKENS)
    expected16 = _logits(load(converted["hf"], dtype=torch.bfloat16), TOKENS)
    errors = {}
    for kind, dtype, expected in (("f32", torch.float32, expected32), ("bf16", torch.bfloat16, expected16),
                                  ("f16", torch.float32, expected32), ("q8_0", torch.float32, expected32)):
        model = load(converted[kind].parent, gguf_file=converted[kind].name, dtype=dtype)
        assert type(model).__name__ == "LlamaForCausalLM"
        errors[kind] = _relative(_logits(model, TOKENS), expected)
    assert errors["f32"] <= 1e-4 and errors["bf16"] <= 1e-4, errors  # like-for-like dtypes
    assert errors["f16"] <= 1e-3, errors  # bf16 -> f16 rounds a few values
    # Q8_0: each weight within half a step of its block's max/127 (<= 0.4 %); measured 0.8 % on the logits
    assert 1e-4 < errors["q8_0"] <= 0.03, errors


def test_gguf_metadata_and_types_follow_llama_cpps_converter(converted) -> None:
    q8 = read_gguf(converted["q8_0"])
    meta = q8.metadata
    assert meta["general.architecture"] == "llama" and meta["general.name"] == "tiny-mistral"
    assert (meta["llama.block_count"], meta["llama.embedding_length"], meta["llama.feed_forward_length"]) == (6, 256, 768)
    assert (meta["llama.attention.head_count"], meta["llama.attention.head_count_kv"]) == (8, 2)
    assert meta["llama.rope.dimension_count"] == 32 and meta["llama.rope.freq_base"] == 10000.0
    assert meta["llama.attention.sliding_window"] == 64 and meta["llama.context_length"] == 32768
    assert abs(meta["llama.attention.layer_norm_rms_epsilon"] - 1e-5) < 1e-12
    assert meta["general.file_type"] == 7 and meta["tokenizer.ggml.model"] == "llama"
    assert len(meta["tokenizer.ggml.tokens"]) == 2048 == len(meta["tokenizer.ggml.scores"])
    assert (meta["tokenizer.ggml.bos_token_id"], meta["tokenizer.ggml.eos_token_id"]) == (1, 2)
    types = {t.name: t.type_name for t in q8.tensors.values()}
    assert types["blk.0.attn_norm.weight"] == types["output_norm.weight"] == "F32"
    assert types["blk.0.attn_q.weight"] == types["token_embd.weight"] == types["output.weight"] == "Q8_0"
    assert q8.tensors["blk.0.attn_k.weight"].dims == (256, 64)  # ggml order: innermost first


def test_gguf_from_an_hf_folder_equals_the_gguf_from_the_pth(converted, tmp_path: Path) -> None:
    made = convert(converted["hf"], tmp_path, layout="gguf", gguf_type="bf16").files[0]
    a, b = read_gguf(made), read_gguf(converted["bf16"])
    assert list(a.tensors) == list(b.tensors) or set(a.tensors) == set(b.tensors)
    for name, tensor in b.tensors.items():
        assert np.array_equal(a.raw(a.tensors[name]), b.raw(tensor)), name  # q/k un-permuted exactly


def test_gguf_in_a_release_folder_is_derived_and_verifies(fixture_copy: Path) -> None:
    result = run_mdist("convert", str(fixture_copy), "--layout", "gguf", "--type", "q8_0")
    assert result.returncode == 0, result.stderr
    verify = run_mdist("verify", str(fixture_copy), "--json")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "derived" in verify.stdout and "tiny-mistral-Q8_0.gguf" in verify.stdout


def test_foreign_gguf_in_a_release_folder_is_refused(fixture_copy: Path, converted) -> None:
    shutil.copy(converted["q8_0"], fixture_copy / "downloaded.gguf")
    verify = run_mdist("verify", str(fixture_copy))
    assert verify.returncode == 1 and "refused" in verify.stdout


def test_q8_0_falls_back_to_f16_where_rows_are_not_whole_blocks(tmp_path: Path) -> None:
    src = random_mistral(tmp_path / "src", dim=48, head_dim=16, n_heads=3, n_kv_heads=1, hidden_dim=64,
                         vocab_size=2048)
    gguf = read_gguf(convert(src, tmp_path / "out", layout="gguf", gguf_type="q8_0").files[0])
    assert gguf.tensors["blk.0.attn_q.weight"].type_name == "F16"  # 48 values per row: not whole blocks
    assert gguf.tensors["blk.0.ffn_down.weight"].type_name == "Q8_0"  # 64 per row
    down = decode(gguf.raw(gguf.tensors["blk.0.ffn_down.weight"]), "Q8_0")
    assert down.shape == (48, 64)


# -- digest and verify --tensors -------------------------------------------------------------------
from mdist.verify.digest import root_digest, tensor_digests  # noqa: E402


def _altered(source: Path, target: Path, tensor_name: str, change) -> Path:
    """A copy of a GGUF with one tensor's stored bytes changed in place (`change(raw uint8 array)`)."""
    shutil.copy(source, target)
    gguf = read_gguf(target)
    tensor = gguf.tensors[tensor_name]
    raw = np.array(gguf.raw(tensor))
    change(raw)
    with open(target, "r+b") as handle:
        handle.seek(tensor.offset)
        handle.write(raw.tobytes())
    return target


def test_bf16_and_f32_ggufs_digest_as_the_release(converted) -> None:
    release = root_digest(tensor_digests(FIXTURE))
    assert root_digest(tensor_digests(converted["bf16"])) == release  # same dtype: the same root
    result = run_mdist("digest", str(FIXTURE), str(converted["bf16"]))
    assert result.returncode == 0 and "same weights" in result.stdout, result.stdout + result.stderr
    assert result.stdout.splitlines()[0].split()[0] == result.stdout.splitlines()[1].split()[0]
    for kind in ("f32", "f16", "q8_0"):  # another type: the release re-encoded, compared byte for byte
        result = run_mdist("digest", str(FIXTURE), str(converted[kind]), "--json")
        assert result.returncode == 0, (kind, result.stdout, result.stderr)
        assert '"same": true' in result.stdout and kind.upper() in result.stdout


def test_one_changed_value_is_a_different_root_naming_the_tensor(converted, tmp_path: Path) -> None:
    def bump(raw: np.ndarray) -> None:
        raw.view(np.uint16)[3, 5] ^= 1  # one bf16 value, lowest mantissa bit

    changed = _altered(converted["bf16"], tmp_path / "changed.gguf", "blk.2.attn_k.weight", bump)
    assert root_digest(tensor_digests(changed)) != root_digest(tensor_digests(FIXTURE))
    result = run_mdist("digest", str(FIXTURE), str(changed))
    assert result.returncode == 1 and "layers.2.attention.wk.weight" in result.stdout, result.stdout


def test_q8_0_with_one_block_scale_changed_fails_naming_the_tensor(converted, tmp_path: Path) -> None:
    def scale(raw: np.ndarray) -> None:
        block = raw.reshape(-1, 34)[7]
        block[:2] = (block[:2].view(np.float16) * np.float16(1.001)).view(np.uint8)  # well under 1 %

    changed = _altered(converted["q8_0"], tmp_path / "scaled.gguf", "blk.4.ffn_up.weight", scale)
    assert not np.array_equal(read_gguf(changed).raw(read_gguf(changed).tensors["blk.4.ffn_up.weight"]),
                              read_gguf(converted["q8_0"]).raw(read_gguf(converted["q8_0"]).tensors["blk.4.ffn_up.weight"]))
    result = run_mdist("digest", str(FIXTURE), str(changed))
    assert result.returncode == 1 and "layers.4.feed_forward.w3.weight" in result.stdout, result.stdout


def test_digest_of_a_q8_0_gguf_says_what_was_compared_and_what_matched(converted, tmp_path: Path) -> None:
    """Two different roots then 'same' confused: the output shows the root of the release re-encoded
    into the GGUF's types (the one the GGUF's must equal), how each tensor was re-encoded, and how
    many matched; --json carries the same."""
    import json

    stored = {t.name: t.dtype for t in tensor_digests(converted["q8_0"])}
    counts = {kind: sum(1 for v in stored.values() if v == kind) for kind in ("Q8_0", "F32")}
    assert counts["Q8_0"] and counts["F32"] and sum(counts.values()) == len(stored)  # norms stay F32
    result = run_mdist("digest", str(FIXTURE), str(converted["q8_0"]))
    assert result.returncode == 0, result.stdout + result.stderr
    release, gguf, re_encoded, verdict = result.stdout.splitlines()
    assert release.split()[0] != gguf.split()[0]  # other types, another root ...
    assert re_encoded == f"{gguf.split()[0]}  {FIXTURE}, re-encoded into the GGUF's types"  # ... this one
    assert verdict.startswith(f"same weights: the GGUF's {len(stored)} tensors equal the release re-encoded")
    assert f"{counts['Q8_0']} quantised to Q8_0 by the gguf package's reference quantiser" in verdict
    assert f"{counts['F32']} widened exactly to F32" in verdict
    payload = json.loads(run_mdist("digest", str(FIXTURE), str(converted["q8_0"]), "--json").stdout)
    assert payload["same"] and payload["compared"] == {
        "tensors": len(stored), "matched": len(stored), "as_stored": 0, "re_encoded": counts,
        "re_encoded_root": gguf.split()[0], "not_checkable": []}
    assert payload["verdict"] == verdict

    def scale(raw: np.ndarray) -> None:
        block = raw.reshape(-1, 34)[7]
        block[:2] = (block[:2].view(np.float16) * np.float16(1.001)).view(np.uint8)

    changed = _altered(converted["q8_0"], tmp_path / "scaled.gguf", "blk.4.ffn_up.weight", scale)
    result = run_mdist("digest", str(FIXTURE), str(changed))
    assert result.returncode == 1, result.stdout + result.stderr
    _, gguf, re_encoded, verdict = result.stdout.splitlines()
    assert re_encoded.split()[0] != gguf.split()[0]
    assert verdict.startswith(f"DIFFERENT: 1 of the GGUF's {len(stored)} tensors differ from the release re-encoded")
    assert verdict.endswith("first: layers.4.feed_forward.w3.weight")
    result = run_mdist("digest", str(FIXTURE), str(converted["bf16"]))  # same types: compared as stored
    assert result.stdout.splitlines()[2] == f"same weights: all {len(stored)} tensors equal (names, types, shapes, " \
                                            f"bytes), so the roots are equal"


def test_verify_tensors_checks_the_gguf_mdist_derived_in_the_folder(fixture_copy: Path) -> None:
    assert run_mdist("convert", str(fixture_copy), "--layout", "gguf", "--type", "q8_0").returncode == 0
    result = run_mdist("verify", str(fixture_copy), "--tensors", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "tiny-mistral-Q8_0.gguf: same weights" in result.stdout


def test_two_gguf_tensors_of_one_mistral_name_are_refused_by_every_digest(tmp_path: Path) -> None:
    """`blk.0.attn_q.weight` and a tensor literally named `layers.0.attention.wq.weight` digest under
    one name: compare() kept the last, so a changed blk.0.attn_q.weight with the original beside it
    under the other name compared as the same weights (verify --tensors went through no check)."""
    from mdist.verify.gguf_digest import gguf_digests

    arch = _str("general.architecture") + struct.pack("<I", 8) + _str("llama")
    infos = [_info("blk.0.attn_q.weight", [8], 0, 0), _info("layers.0.attention.wq.weight", [8], 0, 32)]
    path = _write(tmp_path, make_gguf([arch], infos, np.arange(16, dtype=np.float32).tobytes()))
    with pytest.raises(InputError, match="two tensors are the Mistral tensor layers.0.attention.wq.weight"):
        gguf_digests(path)
    result = run_mdist("digest", str(path))
    assert result.returncode == 2 and "layers.0.attention.wq.weight" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("count", [None, 0, 1000, 1])
def test_stacked_experts_digest_by_the_expert_count_or_are_one_line(tmp_path: Path, count: int | None) -> None:
    """blk.N.ffn_*_exps.weight without a usable llama.expert_count was an internal error
    (IndexError) in digest; with one expert it was digested as one 3-D tensor, not as the runner
    reads it (expert 0, 2-D)."""
    from mdist.verify.gguf_digest import gguf_digests

    kvs = [_str("general.architecture") + struct.pack("<I", 8) + _str("llama")]
    kvs += [] if count is None else [_kv_u32("llama.expert_count", count)]
    info = [_info("blk.0.ffn_gate_exps.weight", [8, 2, 1], 0, 0)]
    path = _write(tmp_path, make_gguf(kvs, info, np.zeros(16, np.float32).tobytes()))
    if count == 1:
        (digest,) = gguf_digests(path)
        assert (digest.name, digest.shape) == ("layers.0.feed_forward.experts.0.w1.weight", (2, 8))
        return
    result = run_mdist("digest", str(path))
    assert result.returncode == 2 and "stacks experts, but llama.expert_count is missing" in result.stderr, \
        result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_digest_of_a_gguf_of_another_architecture_is_one_line(tmp_path: Path) -> None:
    data = make_gguf([_str("general.architecture") + struct.pack("<I", 8) + _str("gpt2")], [], b"")
    result = run_mdist("digest", str(_write(tmp_path, data)))
    assert result.returncode == 2 and "gpt2" in result.stderr and len(result.stderr.strip().splitlines()) == 1


# -- run ------------------------------------------------------------------------------------------
def _run(path: Path, tokens: int = 40) -> tuple[int, list[int], str]:
    import json

    result = run_mdist("run", str(path), "--prompt", "ROMEO:", "--max-tokens", str(tokens), "--json")
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    return result.returncode, payload["token_ids"], payload["text"]


def test_run_on_the_bf16_gguf_equals_run_on_the_release_token_for_token(converted, fixture_copy: Path) -> None:
    release = _run(fixture_copy, 80)  # 80 > the fixture's sliding window of 64
    assert _run(converted["bf16"], 80) == release
    assert _run(converted["bf16"].parent / "tiny-mistral-F32.gguf", 80) == release


def test_run_on_the_q8_0_gguf_decodes_on_the_fly_close_to_the_release(converted) -> None:
    from mdist.runner import Model

    tokens = TOKENS
    reference = Model.load(converted["hf"]).logits(tokens)
    cached = Model.load(converted["q8_0"]).logits(tokens)  # small: widened once
    streamed = Model.load(converted["q8_0"], f32_budget_bytes=0)  # decoded on the fly (kernel + row chunks)
    assert not streamed.weights.cached and streamed.weights.q8
    assert _relative(cached, reference) < 0.03
    assert _relative(streamed.logits(tokens), cached) < 1e-4  # same weights, other arithmetic order
    cache = streamed.new_cache(64)  # one token at a time: the compiled Q8_0 kernel, activations quantised as ggml does
    step = np.concatenate([streamed.forward(np.array([t]), cache) for t in tokens[:12]])
    kernel = q8_0_gemv() is not None
    assert _relative(step, cached[:12]) < (0.02 if kernel else 1e-4)  # measured 0.7 % with the kernel
    assert _relative(step, reference[:12]) < 0.03


def _numba_avx2() -> bool:
    return q8_0_gemv() is not None and host_has_avx2()


# Both block kernels where this host can run them: the AVX2 one (ggml's vpsignb/vpmaddubsw/vpmaddwd
# sequence) and the portable one, which non-AVX2 hosts use.
KERNEL_VARIANTS = [pytest.param(True, id="avx2", marks=pytest.mark.skipif(not _numba_avx2(), reason="host without AVX2")),
                   pytest.param(False, id="portable")] if q8_0_gemv() is not None else []


@pytest.mark.skipif(q8_0_gemv() is None, reason="numba missing or MDIST_KERNELS=numpy")
@pytest.mark.parametrize("avx2", KERNEL_VARIANTS)
@pytest.mark.parametrize(("rows", "cols", "tokens"), [(64, 128, 1), (300, 256, 3), (1000, 4096, 8), (37, 4096 + 96, 1)])
def test_q8_0_kernel_is_ggmls_arithmetic_and_close_to_float(avx2: bool, rows: int, cols: int, tokens: int) -> None:
    from gguf import GGMLQuantizationType, quants

    rng = np.random.default_rng(rows)
    weights = rng.standard_normal((rows, cols), dtype=np.float32) * 0.02
    weights[0] = 0  # an all-zero block's scale is 0, as is an all-zero block of x
    blocks = quants.quantize(weights, GGMLQuantizationType.Q8_0)
    x = rng.standard_normal((tokens, cols), dtype=np.float32)
    x[0, :32] = 0
    out = np.full((tokens, rows), np.nan, dtype=np.float32)
    kernel = compile_q8_0(avx2)
    kernel(blocks, x, out)
    assert _relative(out, q8_0_reference(blocks, x)) < 1e-5  # the same integers and scales, float32 sums
    # against float weights times float x: activations rounded to 8 bits, <= half a step of amax/127 each
    assert _relative(out, x @ quants.dequantize(blocks, GGMLQuantizationType.Q8_0).T) < 0.015
    if tokens == 1:  # one token's rows on one core or split across cores: identical bits
        serial = np.full((1, rows), np.nan, dtype=np.float32)
        kernel(blocks, x, serial, parallel=False)
        kernel(blocks, x, out, parallel=True)
        assert np.array_equal(serial, out)
    # -128, which ggml's quantiser never writes but a GGUF may hold: |w| = 128 must not saturate the
    # 16-bit pair sums (2 * 128 * 127), so the integers stay exact
    blocks.reshape(rows, -1, 34)[:, :, 2:] = np.where(rng.random((rows, cols // 32, 32)) < 0.5, 0x80, 0x7F)
    kernel(blocks, x, out)
    assert _relative(out, q8_0_reference(blocks, x)) < 1e-5


def test_convert_lists_the_tokenizer_it_writes_beside_the_gguf(tmp_path: Path) -> None:
    result = run_mdist("convert", str(FIXTURE), "--layout", "gguf", "--type", "Q8_0", "--out", str(tmp_path), "--json")
    assert result.returncode == 0, result.stderr
    files = json.loads(result.stdout)["files"]
    assert files == [str(tmp_path / "tiny-mistral-Q8_0.gguf"), str(tmp_path / "tokenizer.model")]
    assert (tmp_path / "tokenizer.model").read_bytes() == (FIXTURE / "tokenizer.model").read_bytes()


def test_a_gguf_alone_runs_with_a_tokenizer_rebuilt_from_its_vocabulary(converted, tmp_path: Path) -> None:
    """Most GGUFs come without their tokenizer.model: run writes one from the GGUF's own vocabulary
    (recorded as derived from it) that encodes as the release's own SentencePiece model does, and
    generates the tokens run gives with the release's tokenizer.model beside the GGUF."""
    import sentencepiece

    from mdist.runner.gguf_tokenizer import sentencepiece_model

    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(converted["q8_0"], alone)
    first = run_mdist("run", str(alone), "--prompt", "ROMEO:", "--max-tokens", "12", "--json")
    assert first.returncode == 0, first.stderr
    assert f"wrote tokenizer.model from {converted['q8_0'].name}'s own vocabulary" in first.stderr
    beside = run_mdist("run", str(converted["q8_0"].parent), "--prompt", "ROMEO:", "--max-tokens", "12", "--json")
    assert json.loads(first.stdout)["token_ids"] == json.loads(beside.stdout)["token_ids"]
    assert json.loads(first.stdout)["prompt_token_ids"] == json.loads(beside.stdout)["prompt_token_ids"]
    from mdist.derived import derived_state

    assert "tokenizer.model" in derived_state(alone).valid  # recorded as made here from the GGUF
    again = run_mdist("run", str(alone), "--prompt", "ROMEO:", "--max-tokens", "12", "--json")
    assert again.returncode == 0 and "wrote tokenizer.model" not in again.stderr
    rebuilt = sentencepiece.SentencePieceProcessor(model_proto=sentencepiece_model(read_gguf(converted["bf16"])))
    original = sentencepiece.SentencePieceProcessor(model_file=str(FIXTURE / "tokenizer.model"))
    texts = ["ROMEO: But soft, what light through yonder window breaks?", "  two  spaces\tand a tab\n\nlines",
             "digits 1234567890 3.14159", "unicode: ünïcödé, 日本語, 🤖", "", " ", "x" * 300,
             (Path(__file__).parents[1] / "README.md").read_text()[:20000]]
    for text in texts:
        assert rebuilt.encode(text) == original.encode(text), text[:40]
        assert rebuilt.decode(original.encode(text)) == original.decode(original.encode(text))


def test_a_gguf_alone_in_a_read_only_folder_or_with_another_tokenizer_kind_is_one_line(converted, tmp_path: Path) -> None:
    from gguf import GGUFWriter

    from mdist.runner.gguf_tokenizer import sentencepiece_model

    locked = tmp_path / "locked"
    locked.mkdir()
    shutil.copy(converted["bf16"], locked)
    locked.chmod(0o555)
    try:
        result = run_mdist("run", str(locked), "--prompt", "ROMEO:", "--max-tokens", "2")
    finally:
        locked.chmod(0o755)
    assert result.returncode == 2 and result.stderr.strip() == (
        f"mdist: error: {locked} holds no tokenizer.model and cannot be written; copy {converted['bf16'].name} "
        f"to a folder you can write, where mdist makes one from the GGUF's own vocabulary"), result.stderr
    assert sorted(os.listdir(locked)) == [converted["bf16"].name]
    for kind, tokens, message in (("gpt2", ["a", "b"], "holds a 'gpt2' tokenizer, not SentencePiece's"),
                                  ("llama", ["a", "a", "b"], "its vocabulary is not a SentencePiece model")):
        writer = GGUFWriter(str(tmp_path / f"{kind}.gguf"), "llama")
        writer.add_tokenizer_model(kind)
        writer.add_token_list(tokens)
        writer.add_token_scores([0.0] * len(tokens))
        writer.add_token_types([1] * len(tokens))
        writer.add_bos_token_id(0)
        writer.add_eos_token_id(1)
        writer.add_unk_token_id(1)
        writer.add_tensor("token_embd.weight", np.zeros((len(tokens), 4), dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        with pytest.raises(InputError, match=message):
            sentencepiece_model(read_gguf(tmp_path / f"{kind}.gguf"))


def test_run_refuses_a_tokenizer_that_is_not_the_ggufs_vocabulary(converted, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    shutil.copy(converted["bf16"], folder)
    shutil.copy(FIXTURE / "tokenizer.model", folder)
    gguf = read_gguf(folder / converted["bf16"].name)
    tokens = gguf.metadata["tokenizer.ggml.tokens"]
    data = (folder / converted["bf16"].name).read_bytes()
    position = data.index(struct.pack("<Q", len(tokens[300].encode())) + tokens[300].encode())
    swapped = bytearray(data)
    swapped[position + 8] ^= 0x20  # one token's text, same length
    (folder / converted["bf16"].name).write_bytes(bytes(swapped))
    result = run_mdist("run", str(folder), "--prompt", "hi", "--max-tokens", "2")
    assert result.returncode == 1 and "disagree on token 300" in result.stderr, result.stderr
    (folder / "tokenizer.model").unlink()  # alone, the GGUF runs with its own vocabulary, whatever it holds
    result = run_mdist("run", str(folder), "--prompt", "hi", "--max-tokens", "2")
    assert result.returncode == 0 and "wrote tokenizer.model from" in result.stderr, result.stderr


@pytest.mark.parametrize("key", ["tokenizer.ggml.scores", "tokenizer.ggml.token_type"])
@pytest.mark.parametrize("value", ["x", ["0.0"] * 2048, np.zeros(2048, dtype=bool), np.zeros(5, dtype=np.float32)])
def test_token_scores_or_types_that_are_not_numbers_are_refused(converted, key: str, value) -> None:
    """A string (or strings) where the GGUF's token scores or types go was an internal error
    (ValueError from numpy), exit 2 with 'please report it'."""
    from mdist.errors import VerificationError
    from mdist.runner.gguf_weights import check_tokenizer

    gguf = read_gguf(converted["bf16"])
    gguf.metadata[key] = value
    with pytest.raises(VerificationError, match="token scores or types missing, not numbers or of another length"):
        check_tokenizer(gguf, FIXTURE / "tokenizer.model", 2048)


def test_a_file_type_that_is_not_a_number_is_digested_as_stored(tmp_path: Path) -> None:
    """general.file_type as an array was an internal error (unhashable) in digest."""
    kvs = [_str("general.architecture") + struct.pack("<I", 8) + _str("llama"),
           _str("general.file_type") + struct.pack("<IIQ", 9, 4, 2) + struct.pack("<II", 32, 1)]
    infos = [_info("output_norm.weight", [8], 0, 0)]
    result = run_mdist("digest", str(_write(tmp_path, make_gguf(kvs, infos, np.zeros(8, np.float32).tobytes()))))
    assert result.returncode == 0 and "(1 tensors)" in result.stdout, result.stdout + result.stderr


def test_hostile_gguf_on_the_command_line_is_one_line_exit_2(tmp_path: Path) -> None:
    path = _write(tmp_path / "m", HOSTILE["huge array"][0], "model.gguf") if (tmp_path / "m").mkdir() is None else None
    for args in (("digest", str(path)), ("run", str(path), "--prompt", "hi")):
        result = run_mdist(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.startswith("mdist: error:") and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("present, message", [
    ("tekken.json", "has tekken.json and no tokenizer.model: GGUF conversion needs the SentencePiece tokenizer "
                    "(tokenizer.model); a tekken tokenizer is not supported for GGUF"),
    ("tokenizer.model.v3", "has tokenizer.model.v3 and no tokenizer.model: GGUF conversion reads the SentencePiece "
                           "tokenizer named tokenizer.model (the GGUF carries its vocabulary)"),
    (None, "has no tokenizer.model; a GGUF carries the vocabulary of the SentencePiece tokenizer"),
])
def test_gguf_without_a_sentencepiece_tokenizer_says_what_it_needs(tmp_path: Path, present: str | None,
                                                                     message: str) -> None:
    """A folder whose tokenizer is tekken.json (or only a versioned SentencePiece file) is told that
    GGUF conversion needs tokenizer.model, not that tokenizer.model 'is missing'."""
    folder = random_mistral(tmp_path / "m", tokenizer=False)
    if present:
        shutil.copy(FIXTURE / "tokenizer.model", folder / present)  # its content is never read
    result = run_mdist("convert", str(folder), "--layout", "gguf", "--out", str(tmp_path / "out"))
    assert result.returncode == 2, result.stderr
    assert result.stderr == f"mdist: error: {folder} {message}\n"
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_run_reports_the_weights_as_the_file_stores_them(fixture_copy: Path, tmp_path: Path) -> None:
    """weights_bytes of a Q8_0 GGUF is the bytes of its tensors in the file (counted by the gguf
    package's own reader), whether mdist widened them to float32 (a small model) or decodes on the
    fly; of a bf16 safetensors model, its tensors' bytes (counted by the safetensors package)."""
    import json

    from gguf import GGUFReader

    from mdist.runner import Model

    path = convert(fixture_copy, tmp_path / "q8", layout="gguf", gguf_type="q8_0").files[0]
    tensors = GGUFReader(path).tensors
    stored = sum(int(t.n_bytes) for t in tensors)
    assert any(t.tensor_type.name == "Q8_0" for t in tensors) and stored < sum(int(t.n_elements) * 4 for t in tensors)
    result = run_mdist("run", str(path), "--prompt", "x", "--max-tokens", "1", "--json")
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["weights_cached_f32"] is True and payload["weights_bytes"] == stored
    assert Model.load(path, f32_budget_bytes=0).weights.stored_bytes == stored  # decoded on the fly: the same
    release = run_mdist("run", str(fixture_copy), "--prompt", "x", "--max-tokens", "1", "--json")
    assert release.returncode == 0, release.stderr
    raw = (fixture_copy / "consolidated.safetensors").read_bytes()  # the header's own offsets, read here
    header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])
    bf16 = sum(end - begin for key, t in header.items() if key != "__metadata__" for begin, end in [t["data_offsets"]])
    assert json.loads(release.stdout)["weights_bytes"] == bf16 == len(raw) - 8 - int.from_bytes(raw[:8], "little")
