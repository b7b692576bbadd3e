"""mdist convert: bit-identical round trips against torch.load, and the HF layout against transformers."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from conftest import FIXTURE, random_mistral, run_mdist
from mdist.convert import convert
from mdist.convert.checkpoint import Checkpoint
from mdist.errors import InputError
from reference_mistral import reference_logits


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def assert_bit_identical(expected: dict[str, torch.Tensor], actual: dict[str, torch.Tensor]) -> None:
    assert set(expected) == set(actual)
    for name, tensor in expected.items():
        got = actual[name]
        assert got.dtype == tensor.dtype, name
        assert tuple(got.shape) == tuple(tensor.shape), name
        raw_expected = tensor.contiguous().reshape(-1).view(torch.uint8) if tensor.numel() else tensor
        raw_actual = got.contiguous().reshape(-1).view(torch.uint8) if got.numel() else got
        assert torch.equal(raw_expected, raw_actual), name


def test_fixture_round_trip_is_bit_identical(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_mdist("convert", str(FIXTURE), "--out", str(out), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["tensors"] == 57
    expected = torch.load(FIXTURE / "consolidated.00.pth", weights_only=True)
    assert_bit_identical(expected, load_safetensors(out / "consolidated.safetensors"))
    with safe_open(str(out / "consolidated.safetensors"), framework="pt") as f:
        assert f.metadata() == {"format": "pt"}
    assert (out / "params.json").read_bytes() == (FIXTURE / "params.json").read_bytes()
    assert (out / "tokenizer.model").read_bytes() == (FIXTURE / "tokenizer.model").read_bytes()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_views_offsets_and_strides(tmp_path: Path, dtype: torch.dtype) -> None:
    torch.manual_seed(1)
    base = torch.randn(12, 10).to(dtype)
    state = {
        "plain": torch.randn(5, 7).to(dtype),
        "base": base,
        "rows_with_offset": base[3:9],  # shares base's storage, storage_offset 30
        "transposed": base.t(),  # non-contiguous strides
        "column": base[:, 4],  # stride 10, offset 4
        "every_other": base[::2, 1::3],
        "scalar": torch.tensor(3.5).to(dtype),
        "empty": torch.zeros(0, 4).to(dtype),
        "ints": torch.arange(10, dtype=torch.int64).reshape(2, 5).t(),
    }
    (tmp_path / "m").mkdir()
    torch.save(state, tmp_path / "m" / "consolidated.00.pth")
    convert(tmp_path / "m", tmp_path / "out")
    expected = torch.load(tmp_path / "m" / "consolidated.00.pth", weights_only=True)
    assert_bit_identical(expected, load_safetensors(tmp_path / "out" / "consolidated.safetensors"))


def test_deflated_archive_reads_the_same(tmp_path: Path) -> None:
    deflated = tmp_path / "d" / "consolidated.00.pth"
    deflated.parent.mkdir()
    with zipfile.ZipFile(FIXTURE / "consolidated.00.pth") as src, zipfile.ZipFile(deflated, "w") as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info), compress_type=zipfile.ZIP_DEFLATED)
    convert(deflated, tmp_path / "out")
    expected = torch.load(FIXTURE / "consolidated.00.pth", weights_only=True)
    assert_bit_identical(expected, load_safetensors(tmp_path / "out" / "consolidated.safetensors"))


def test_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run_mdist("convert", str(FIXTURE), "--out", str(out)).returncode == 0
    before = (out / "consolidated.safetensors").stat().st_mtime_ns
    again = run_mdist("convert", str(FIXTURE), "--out", str(out))
    assert again.returncode == 2
    assert "--force" in again.stderr and len(again.stderr.strip().splitlines()) == 1
    assert (out / "consolidated.safetensors").stat().st_mtime_ns == before
    assert run_mdist("convert", str(FIXTURE), "--out", str(out), "--force").returncode == 0


def test_missing_input_is_a_usage_error(tmp_path: Path) -> None:
    result = run_mdist("convert", str(tmp_path / "nope"))
    assert result.returncode == 2
    assert result.stderr.startswith("mdist: error:") and "Traceback" not in result.stderr


def _hf_model(out: Path) -> "torch.nn.Module":
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(
        out, dtype=torch.float32, attn_implementation="eager", output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    return model.eval()


@pytest.mark.parametrize(
    "shape",
    [
        dict(n_heads=4, n_kv_heads=4),  # GQA ratio 1
        dict(n_heads=4, n_kv_heads=2, sliding_window=8),  # ratio 2, window shorter than the sequence
        dict(n_heads=8, n_kv_heads=2, head_dim=8, rope_theta=1e6),  # ratio 4, theta 1e6
        dict(n_heads=4, n_kv_heads=1, sliding_window=5, rope_theta=1e6, dtype="float32"),
    ],
)
def test_hf_layout_matches_the_original(tmp_path: Path, shape: dict) -> None:
    src = random_mistral(tmp_path / "src", **shape)
    out = tmp_path / "hf"
    result = run_mdist("convert", str(src), "--layout", "hf", "--out", str(out), "--shard-size", "60KB")
    assert result.returncode == 0, result.stderr
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1  # really sharded
    model = _hf_model(out)
    params = json.loads((src / "params.json").read_text())
    tokens = list(np.random.default_rng(0).integers(0, params["vocab_size"], 20))
    expected = reference_logits(torch.load(src / "consolidated.00.pth", weights_only=True), params, tokens)
    with torch.no_grad():
        actual = model(torch.tensor([tokens])).logits[0]
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)


def test_hf_layout_of_the_fixture(tmp_path: Path) -> None:
    out = tmp_path / "hf"
    convert(FIXTURE, out, layout="hf")
    config = json.loads((out / "config.json").read_text())
    assert config["rope_theta"] == 10000.0 and config["sliding_window"] == 64
    model = _hf_model(out)
    params = json.loads((FIXTURE / "params.json").read_text())
    tokens = list(np.random.default_rng(1).integers(0, 2048, 100))  # longer than the window
    expected = reference_logits(torch.load(FIXTURE / "consolidated.00.pth", weights_only=True), params, tokens)
    with torch.no_grad():
        actual = model(torch.tensor([tokens])).logits[0]
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)


def test_checkpoint_arrays_match_torch() -> None:
    expected = torch.load(FIXTURE / "consolidated.00.pth", weights_only=True)
    with Checkpoint(FIXTURE / "consolidated.00.pth") as checkpoint:
        for name, ref in checkpoint.tensors.items():
            raw = np.asarray(checkpoint.array(ref))
            assert np.array_equal(raw, expected[name].view(torch.int16).numpy().view(np.uint16)), name


def test_deflated_archive_with_views(tmp_path: Path) -> None:
    """Storage offsets and strides inside deflated entries (streamed from the middle of a stream)."""
    torch.manual_seed(2)
    base = torch.randn(12, 10).to(torch.bfloat16)
    state = {"base": base, "rows": base[3:9], "transposed": base.t(), "column": base[:, 4]}
    torch.save(state, tmp_path / "plain.pth")
    (tmp_path / "m").mkdir()
    with zipfile.ZipFile(tmp_path / "plain.pth") as src, \
            zipfile.ZipFile(tmp_path / "m" / "consolidated.00.pth", "w") as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info), compress_type=zipfile.ZIP_DEFLATED)
    convert(tmp_path / "m", tmp_path / "out")
    expected = torch.load(tmp_path / "plain.pth", weights_only=True)
    assert_bit_identical(expected, load_safetensors(tmp_path / "out" / "consolidated.safetensors"))


def _torch_bytes(tensor: torch.Tensor) -> bytes:
    """torch's own bytes of a tensor in C order (bf16 through a 16-bit integer view: numpy has no bf16)."""
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.view(torch.int16)
    return tensor.contiguous().numpy().tobytes()


def _big_state() -> dict[str, torch.Tensor]:
    """Tensors over CHUNK_BYTES (16 MiB), so reading them takes several chunks, stored and as views."""
    torch.manual_seed(3)
    big = torch.randn(2816, 4096).to(torch.bfloat16)  # 23 MB
    wide = torch.randn(1400, 4100)  # 23 MB of float32
    return {"big": big, "big_transposed": big.t(), "big_rows": big[100:], "wide_columns": wide[:, 3:4003],
            "wide": wide}


def _assert_streams_match_torch(path: Path, expected: dict[str, torch.Tensor]) -> None:
    with Checkpoint(path) as checkpoint:
        assert set(checkpoint.tensors) == set(expected)
        for name, tensor in expected.items():
            chunks = list(checkpoint.iter_bytes(checkpoint.tensors[name]))
            assert len(chunks) >= 2, (name, len(chunks))  # really several chunks
            assert hashlib.sha256(b"".join(chunks)).hexdigest() == hashlib.sha256(_torch_bytes(tensor)).hexdigest(), name
    result = run_mdist("digest", str(path), "--per-tensor", "--json")
    assert result.returncode == 0, result.stderr
    digests = {t["name"]: t["sha256"] for t in json.loads(result.stdout)["paths"][0]["per_tensor"]}
    assert digests == {name: hashlib.sha256(_torch_bytes(t)).hexdigest() for name, t in expected.items()}


def test_tensors_over_one_chunk_stream_like_torch(tmp_path: Path) -> None:
    """Each chunk continues where the last ended: contiguous, offset and strided views of > 16 MiB tensors."""
    path = tmp_path / "consolidated.00.pth"
    torch.save(_big_state(), path)
    _assert_streams_match_torch(path, torch.load(path, weights_only=True))


def test_tensors_over_one_chunk_stream_like_torch_when_deflated(tmp_path: Path) -> None:
    plain = tmp_path / "plain.pth"
    torch.save(_big_state(), plain)
    deflated = tmp_path / "consolidated.00.pth"
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(deflated, "w") as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info), compress_type=zipfile.ZIP_DEFLATED, compresslevel=1)
    _assert_streams_match_torch(deflated, torch.load(plain, weights_only=True))


@pytest.mark.parametrize("layout", ["mistral", "hf"])
def test_mistral_common_tokenizer_files_are_copied(tmp_path: Path, layout: str) -> None:
    """A v3 SentencePiece file or tekken.json (Mistral 7B v0.3, Nemo) goes beside the output, unchanged."""
    src = random_mistral(tmp_path / "src", tokenizer=False)
    (src / "tokenizer.model.v3").write_bytes((FIXTURE / "tokenizer.model").read_bytes())
    out = tmp_path / "out"
    result = run_mdist("convert", str(src), "--layout", layout, "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert (out / "tokenizer.model.v3").read_bytes() == (FIXTURE / "tokenizer.model").read_bytes()
    assert not (out / "tokenizer.model").exists()


@pytest.mark.parametrize("layout", ["mistral", "hf", "gguf"])
def test_out_naming_a_file_is_one_line_before_anything_is_read(tmp_path: Path, layout: str) -> None:
    """--out is a folder: a file there (or on the way) is said as such, exit 2, not mkdir's 'File exists'."""
    taken = tmp_path / "taken"
    taken.write_text("not a folder")
    for out in (taken, taken / "sub"):
        result = run_mdist("convert", str(FIXTURE), "--layout", layout, "--out", str(out))
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1 and "File exists" not in result.stderr, result.stderr
        assert f"mdist: error: --out: {taken}" in result.stderr and "is a file, not a folder" in result.stderr
    assert taken.read_text() == "not a folder"
    with pytest.raises(InputError, match="is a file, not a folder"):  # the module says it, not only the CLI
        convert(FIXTURE, taken / "sub", layout=layout)


TOKENIZER_HINT = "tokenizer (tokenizer.model, tokenizer.model.v3 or tekken.json)"


@pytest.mark.parametrize("layout", ["mistral", "hf"])
@pytest.mark.parametrize("where", ["--out", "in place"])
def test_a_conversion_without_a_tokenizer_says_it_cannot_run(tmp_path: Path, layout: str, where: str) -> None:
    """The source has weights and params.json but no tokenizer: converted (exit 0), with one warning
    line on stderr and `missing` in --json; `run` of the output then indeed refuses for that reason."""
    src = random_mistral(tmp_path / "src", tokenizer=False)
    out = tmp_path / "out" if where == "--out" else src
    args = ["--out", str(out)] if where == "--out" else []
    env = {"XDG_STATE_HOME": str(tmp_path / "state")}
    result = run_mdist("convert", str(src), "--layout", layout, *args, "--json", env=env)
    assert result.returncode == 0, result.stderr
    nor = f" (nor has {src})" if where == "--out" else ""
    warning = f"{out} has no {TOKENIZER_HINT}{nor}: `mdist run` cannot use it until it is copied there from the release"
    assert result.stderr.splitlines() == [f"mdist: warning: {warning}"]
    payload = json.loads(result.stdout)
    assert payload["missing"] == ["tokenizer"] and payload["warnings"] == [warning]
    target = out if layout == "hf" or where == "--out" else src / "consolidated.safetensors"
    ran = run_mdist("run", str(target), "--prompt", "x", "--max-tokens", "1", env=env)
    assert ran.returncode == 2 and "holds no tokenizer" in ran.stderr, ran.stderr


def test_a_conversion_without_params_names_both(tmp_path: Path) -> None:
    src = random_mistral(tmp_path / "src", tokenizer=False)
    (src / "params.json").unlink()
    result = run_mdist("convert", str(src), "--out", str(tmp_path / "out"), "--json",
                       env={"XDG_STATE_HOME": str(tmp_path / "state")})
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["missing"] == ["tokenizer", "params.json"]
    assert f"has no {TOKENIZER_HINT} and no params.json (nor has {src}): `mdist run` cannot use it until they are " \
           f"copied" in payload["warnings"][0]


def test_a_conversion_with_its_tokenizer_warns_of_nothing(tmp_path: Path) -> None:
    src = random_mistral(tmp_path / "src")
    result = run_mdist("convert", str(src), "--out", str(tmp_path / "out"), "--layout", "hf", "--json",
                       env={"XDG_STATE_HOME": str(tmp_path / "state")})
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert json.loads(result.stdout)["missing"] == [] and json.loads(result.stdout)["warnings"] == []
