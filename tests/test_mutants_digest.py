"""mdist.verify.digest, in process: each digest against hashlib over torch's or numpy's own bytes.

Written for mutation testing (bench/mutation.py, docs/testing.md). tests/test_verify.py checks the
same through the CLI (same root digest across formats); these pin each piece to an independent
computation.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import FIXTURE, copy_fixture
from mdist.errors import InputError
from mdist.verify import digest as dg
from mdist.verify.digest import TensorDigest, compare, root_digest, tensor_digests

MIB = 1 << 20


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def torch_reference(pth: Path) -> dict[str, tuple[str, tuple[int, ...], str]]:
    """{name: (dtype, shape, sha256 of the C-order bytes)} as torch reads the checkpoint."""
    import torch

    names = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32"}
    state = torch.load(pth, weights_only=True, map_location="cpu")
    return {n: (names[t.dtype], tuple(t.shape), sha(t.contiguous().view(torch.uint8).numpy().tobytes()))
            for n, t in state.items()}


def as_dict(digests: list[TensorDigest]) -> dict[str, tuple[str, tuple[int, ...], str]]:
    return {d.name: (d.dtype, d.shape, d.sha256) for d in digests}


def test_line_and_root_digest() -> None:
    a = TensorDigest("b.weight", "BF16", (2, 3), "ab" * 32)
    b = TensorDigest("a.weight", "F32", (4,), "cd" * 32)
    c = TensorDigest("c", "U8", (), "ef" * 32)
    assert a.line() == "b.weight\tBF16\t2,3\t" + "ab" * 32
    assert c.line() == "c\tU8\t\t" + "ef" * 32
    expected = sha(b"mdist-tensor-digest/1\n" + f"a.weight\tF32\t4\t{'cd' * 32}\n".encode()
                   + f"b.weight\tBF16\t2,3\t{'ab' * 32}\n".encode() + f"c\tU8\t\t{'ef' * 32}\n".encode())
    assert root_digest([a, b, c]) == root_digest([c, b, a]) == expected
    assert root_digest([]) == sha(b"mdist-tensor-digest/1\n")


@pytest.mark.parametrize("shape,dtype", [((5,), np.float32), ((3, 4), np.int16), ((2, 3, 4), np.float64),
                                         ((0, 3), np.float32), ((3, 0), np.uint8), ((), np.float32)])
def test_array_chunks_are_the_c_order_bytes(shape: tuple, dtype) -> None:
    array = np.arange(int(np.prod(shape)), dtype=dtype).reshape(shape)
    for view in (array, array.T):
        chunks = list(dg._array_chunks(view))
        assert b"".join(chunks) == np.ascontiguousarray(view).tobytes()
        assert dg._sha(iter(chunks)) == sha(np.ascontiguousarray(view).tobytes())


def test_array_chunks_of_big_arrays_are_16_mib_of_whole_rows() -> None:
    rows = np.zeros((5, 4 * MIB), dtype=np.uint8)
    rows[4, -1] = 7
    assert [len(c) for c in dg._array_chunks(rows)] == [16 * MIB, 4 * MIB]
    assert b"".join(dg._array_chunks(rows)) == rows.tobytes()
    flat = np.arange(5 * MIB, dtype=np.float32)
    chunks = list(dg._array_chunks(flat))
    assert [len(c) for c in chunks] == [16 * MIB, 4 * MIB] and b"".join(chunks) == flat.tobytes()
    wide = np.ones((2, 9 * MIB), dtype=np.uint16)  # a row over 16 MiB: one row at a time
    assert [len(c) for c in dg._array_chunks(wide)] == [18 * MIB, 18 * MIB]
    assert list(dg._array_chunks(np.zeros((3, 0), dtype=np.uint8))) == []
    assert list(dg._array_chunks(np.zeros((0, 3), dtype=np.uint8))) == []


def test_a_file_with_an_empty_tensor_digests_like_its_pth(tmp_path: Path) -> None:
    """A (0, n) tensor made `mdist digest` of a safetensors file an internal error (reshape(0, -1))."""
    import torch
    from safetensors.numpy import save_file

    state = {"empty": torch.zeros((0, 7), dtype=torch.float16), "x": torch.arange(3, dtype=torch.float32)}
    torch.save(state, tmp_path / "m.pth")
    save_file({n: t.numpy() for n, t in state.items()}, str(tmp_path / "m.safetensors"))
    expected = {"empty": ("F16", (0, 7), sha(b"")), "x": ("F32", (3,), sha(state["x"].numpy().tobytes()))}
    assert as_dict(tensor_digests(tmp_path / "m.pth")) == expected
    assert as_dict(tensor_digests(tmp_path / "m.safetensors")) == expected


def test_pth_digests_match_torch(tmp_path: Path) -> None:
    assert as_dict(tensor_digests(FIXTURE / "consolidated.00.pth")) == torch_reference(FIXTURE / "consolidated.00.pth")
    assert as_dict(tensor_digests(FIXTURE)) == torch_reference(FIXTURE / "consolidated.00.pth")


def test_every_format_digests_like_the_pth(tmp_path: Path) -> None:
    from mdist.convert import convert

    reference = torch_reference(FIXTURE / "consolidated.00.pth")
    convert(FIXTURE, tmp_path / "st")
    convert(FIXTURE, tmp_path / "hf", layout="hf")
    assert as_dict(tensor_digests(tmp_path / "st")) == reference
    assert as_dict(tensor_digests(tmp_path / "st" / "consolidated.safetensors")) == reference
    assert as_dict(tensor_digests(tmp_path / "hf")) == reference
    shards = sorted(p.name for p in (tmp_path / "hf").glob("*.safetensors"))
    assert as_dict(tensor_digests(tmp_path / "hf" / shards[0])) == reference  # a shard: its whole layout


def test_a_lone_safetensors_file_is_digested_under_its_own_names(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    arrays = {"model.embed_tokens.weight": np.arange(6, dtype=np.float32).reshape(2, 3),
              "x": np.arange(4, dtype=np.int8)}
    save_file(arrays, str(tmp_path / "m.safetensors"))
    assert as_dict(tensor_digests(tmp_path / "m.safetensors")) == {
        "model.embed_tokens.weight": ("F32", (2, 3), sha(arrays["model.embed_tokens.weight"].tobytes())),
        "x": ("I8", (4,), sha(arrays["x"].tobytes()))}


def test_hf_tensors_mdist_cannot_name_keep_their_own_names(tmp_path: Path) -> None:
    import json

    import torch
    from safetensors.torch import load_file, save_file

    from mdist.convert import convert

    convert(FIXTURE, tmp_path / "conv", layout="hf")
    (tmp_path / "hf").mkdir()  # the converted files without mdist's record of them: no release, no derivation
    for item in (tmp_path / "conv").iterdir():
        if item.is_file():
            shutil.copy(item, tmp_path / "hf" / item.name)
    shard = sorted((tmp_path / "hf").glob("*.safetensors"))[0]
    tensors = load_file(str(shard))
    tensors["lm_head.bias"] = torch.arange(3, dtype=torch.float32)
    save_file(tensors, str(shard), metadata={"format": "pt"})
    index = tmp_path / "hf" / "model.safetensors.index.json"
    if index.exists():
        data = json.loads(index.read_text())
        data["weight_map"]["lm_head.bias"] = shard.name
        index.write_text(json.dumps(data))
    digests = as_dict(tensor_digests(tmp_path / "hf"))
    assert digests["lm_head.bias"] == ("F32", (3,), sha(np.arange(3, dtype=np.float32).tobytes()))
    assert {n: d for n, d in digests.items() if n != "lm_head.bias"} == torch_reference(FIXTURE / "consolidated.00.pth")


def test_refusals(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(InputError) as caught:
        tensor_digests(tmp_path / "nothing.pth")
    assert str(caught.value) == f"{tmp_path / 'nothing.pth'} does not exist"
    (tmp_path / "w.bin").write_bytes(b"x")
    with pytest.raises(InputError) as caught:
        tensor_digests(tmp_path / "w.bin")
    assert str(caught.value) == f"{tmp_path / 'w.bin'}: not a .pth, .safetensors, .gguf or model folder"
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    shutil.copy(FIXTURE / "params.json", sharded)
    for name in ("consolidated.00.pth", "consolidated.01.pth"):  # no known release's: refused before reading
        (sharded / name).write_bytes(b"not read")
    with pytest.raises(InputError) as caught:
        tensor_digests(sharded)
    assert str(caught.value) == f"{sharded} holds 2 checkpoint shards; only single-file checkpoints are supported"


def test_a_name_twice_is_refused(monkeypatch, tmp_path: Path) -> None:
    one = TensorDigest("a", "F32", (1,), "00" * 32)
    other = TensorDigest("b", "F32", (1,), "11" * 32)
    monkeypatch.setattr(dg, "_digests", lambda path, note: [one, other])
    assert tensor_digests(tmp_path) == [one, other]
    monkeypatch.setattr(dg, "_digests", lambda path, note: [one, other, one])
    with pytest.raises(InputError) as caught:
        tensor_digests(tmp_path)
    assert str(caught.value) == f"{tmp_path}: tensor a appears more than once"


def test_compare() -> None:
    a = TensorDigest("a", "F32", (1,), "00" * 32)
    b = TensorDigest("b", "F32", (1,), "11" * 32)
    b2 = TensorDigest("b", "F32", (1,), "22" * 32)
    b3 = TensorDigest("b", "F16", (1,), "11" * 32)
    c = TensorDigest("c", "F32", (1,), "33" * 32)
    assert compare([a, b], [b, a]) == []
    assert compare([c, b, a], [b2, a]) == ["b", "c"]
    assert compare([a], [a, b3, c]) == ["b", "c"]


def test_a_gguf_folder_is_digested_by_the_gguf_reader(tmp_path: Path, monkeypatch) -> None:
    from mdist.verify import gguf_digest

    seen: list[Path] = []
    one = TensorDigest("a", "F32", (1,), "00" * 32)
    monkeypatch.setattr(gguf_digest, "gguf_digests", lambda path: seen.append(path) or [one])
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    assert tensor_digests(tmp_path) == [one] and seen == [tmp_path / "model.gguf"]
    assert tensor_digests(tmp_path / "model.gguf") == [one] and seen[-1] == tmp_path / "model.gguf"


def test_one_byte_elements_are_chunked_16_mib_at_a_time() -> None:
    flat = np.zeros(20 * MIB, dtype=np.uint8)
    assert [len(c) for c in dg._array_chunks(flat)] == [16 * MIB, 4 * MIB]
    column = np.zeros((20 * MIB, 1), dtype=np.uint8)
    assert [len(c) for c in dg._array_chunks(column)] == [16 * MIB, 4 * MIB]


def test_the_layout_used_is_said(tmp_path: Path) -> None:
    from mdist.convert import convert

    folder = tmp_path / "m"
    copy_fixture(folder)
    convert(folder, folder)  # consolidated.safetensors beside the .pth: two layouts
    notes: list[str] = []
    assert as_dict(tensor_digests(folder, note=notes.append)) == torch_reference(FIXTURE / "consolidated.00.pth")
    assert notes == [f"{folder} holds several layouts (mistral, pth); digest uses pth (consolidated.00.pth)"]


def test_raw_pieces_of_a_checkpoint_digest_as_the_whole(tmp_path: Path) -> None:
    folder = tmp_path / "pieces"
    folder.mkdir()
    shutil.copy(FIXTURE / "params.json", folder)
    data = (FIXTURE / "consolidated.00.pth").read_bytes()
    cut = len(data) // 3
    for i, piece in enumerate((data[:cut], data[cut:2 * cut], data[2 * cut:])):
        (folder / f"consolidated.00.pth-split{i}").write_bytes(piece)
    assert as_dict(tensor_digests(folder)) == torch_reference(FIXTURE / "consolidated.00.pth")


def test_raw_pieces_out_of_order_are_named(tmp_path: Path) -> None:
    folder = tmp_path / "pieces"
    folder.mkdir()
    shutil.copy(FIXTURE / "params.json", folder)
    data = (FIXTURE / "consolidated.00.pth").read_bytes()
    cut = len(data) // 3
    for i, piece in enumerate((data[cut:2 * cut], data[:cut], data[2 * cut:])):  # the first two swapped
        (folder / f"consolidated.00.pth-split{i}").write_bytes(piece)
    with pytest.raises(InputError) as caught:
        tensor_digests(folder)
    assert str(caught.value).startswith("the 3 pieces consolidated.00.pth-split0 ... consolidated.00.pth-split2 do "
                                        "not join into a checkpoint (out of order, missing or of the wrong size?): ")


def test_a_file_beside_an_hf_layout_is_digested_alone(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    from mdist.convert import convert

    convert(FIXTURE, tmp_path / "conv", layout="hf")
    folder = tmp_path / "hf"
    folder.mkdir()
    for item in (tmp_path / "conv").iterdir():
        if item.is_file():
            shutil.copy(item, folder / item.name)
    x = np.arange(5, dtype=np.float32)
    save_file({"x": x}, str(folder / "other.safetensors"))
    assert as_dict(tensor_digests(folder / "other.safetensors")) == {"x": ("F32", (5,), sha(x.tobytes()))}
