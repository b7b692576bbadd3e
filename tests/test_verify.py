"""mdist verify / manifest / digest / sign: against the fixture, tampered copies and the model_signing CLI."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from conftest import FIXTURE, REPO, random_mistral, run_mdist
from mdist.convert import convert


def verify_json(directory: Path, *args: str) -> tuple[int, dict]:
    result = run_mdist("verify", str(directory), "--json", *args)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def statuses(payload: dict) -> dict[str, str]:
    return {row["path"]: row["status"] for row in payload["report"]["files"]}


def test_fixture_is_recognised_and_verified(fixture_copy: Path) -> None:
    code, payload = verify_json(fixture_copy)
    assert code == 0 and payload["ok"]
    assert payload["report"]["manifest"] == "tiny-mistral" and payload["report"]["identified"]
    assert statuses(payload) == {"consolidated.00.pth": "ok", "params.json": "ok", "tokenizer.model": "ok"}


def test_the_human_table(fixture_copy: Path) -> None:
    result = run_mdist("verify", str(fixture_copy))
    assert result.returncode == 0
    assert "recognised as tiny-mistral" in result.stdout and "verified" in result.stdout


def test_one_flipped_byte_is_named(fixture_copy: Path) -> None:
    target = fixture_copy / "consolidated.00.pth"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    code, payload = verify_json(fixture_copy)
    assert code == 1 and not payload["ok"]
    row = next(r for r in payload["report"]["files"] if r["path"] == "consolidated.00.pth")
    assert row["status"] == "mismatch" and row["expected"].startswith("2e0bef5d") and row["actual"] != row["expected"]
    human = run_mdist("verify", str(fixture_copy))
    assert human.returncode == 1 and "consolidated.00.pth" in human.stdout and "mismatch" in human.stdout


def test_missing_extra_and_truncated_files(fixture_copy: Path) -> None:
    (fixture_copy / "tokenizer.model").unlink()
    (fixture_copy / "evil.pth").write_bytes(b"x")
    with open(fixture_copy / "params.json", "r+b") as handle:
        handle.truncate(100)
    code, payload = verify_json(fixture_copy, "--manifest", "tiny-mistral")
    assert code == 1
    assert statuses(payload) == {"consolidated.00.pth": "ok", "params.json": "mismatch",
                                 "tokenizer.model": "missing", "evil.pth": "refused"}
    row = next(r for r in payload["report"]["files"] if r["path"] == "params.json")
    assert "size 100" in row["detail"]


def test_extra_file_alone_is_reported_but_not_a_failure(fixture_copy: Path) -> None:
    (fixture_copy / "notes.txt").write_text("hello")
    code, payload = verify_json(fixture_copy)
    assert code == 0 and statuses(payload)["notes.txt"] == "unexpected"


def test_symlinks_are_refused_not_followed(fixture_copy: Path, tmp_path: Path) -> None:
    (tmp_path / "outside").write_text("secret")
    (fixture_copy / "link").symlink_to(tmp_path / "outside")
    code, payload = verify_json(fixture_copy)
    assert code == 1 and statuses(payload)["link"] == "refused"


def test_no_known_release(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "weights.bin").write_bytes(b"abc")
    code, payload = verify_json(tmp_path / "m")
    assert code == 1 and payload["report"]["manifest"] is None
    assert "no known release" in run_mdist("verify", str(tmp_path / "m")).stdout


def test_published_json_content_is_checked(tmp_path: Path) -> None:
    """mistral-7b-v0.1 publishes params.json's content but no sizes or hashes."""
    folder = tmp_path / "mistral-7B-v0.1"
    folder.mkdir()
    for name in ("RELEASE", "consolidated.00.pth", "tokenizer.model"):
        (folder / name).write_bytes(b"placeholder")
    params = {"dim": 4096, "n_layers": 32, "head_dim": 128, "hidden_dim": 14336, "n_heads": 32, "n_kv_heads": 8,
              "norm_eps": 1e-05, "sliding_window": 4096, "vocab_size": 32000}
    (folder / "params.json").write_text(json.dumps(params))
    code, payload = verify_json(folder)
    assert payload["report"]["manifest"] == "mistral-7b-v0.1"
    assert statuses(payload)["params.json"] == "ok" and statuses(payload)["consolidated.00.pth"] == "not checkable"
    assert code == 0 and payload["report"]["not_checked"] == ["RELEASE", "consolidated.00.pth", "tokenizer.model"]
    params["sliding_window"] = 8192
    (folder / "params.json").write_text(json.dumps(params))
    code, payload = verify_json(folder)  # no longer that release: the closest one and what differs
    assert code == 1 and payload["report"]["manifest"] is None
    assert payload["report"]["closest"] == "mistral-7b-v0.1"
    assert "params.json content differs from the published one" in payload["report"]["differences"]
    code, payload = verify_json(folder, "--manifest", "mistral-7b-v0.1")
    assert code == 1 and statuses(payload)["params.json"] == "mismatch"


def test_manifest_command_round_trip(tmp_path: Path) -> None:
    model = random_mistral(tmp_path / "m")
    out = tmp_path / "m.json"
    assert run_mdist("manifest", str(model), "--name", "my-model", "--out", str(out)).returncode == 0
    data = json.loads(out.read_text())
    assert set(data["files"]) == {"consolidated.00.pth", "params.json", "tokenizer.model"}
    assert re.fullmatch("[0-9a-f]{64}", data["tensor_digest"])
    code, payload = verify_json(model, "--manifest", str(out), "--tensors")
    assert code == 0 and payload["tensor_digest"]["actual"] == data["tensor_digest"]


def test_digest_is_the_same_across_formats(tmp_path: Path) -> None:
    for src, name in ((FIXTURE, "fixture"), (random_mistral(tmp_path / "r", sliding_window=4), "random")):
        convert(src, tmp_path / name / "st")
        convert(src, tmp_path / name / "hf", layout="hf")
        result = run_mdist("digest", str(src / "consolidated.00.pth"), str(tmp_path / name / "st"), "--json")
        assert result.returncode == 0 and json.loads(result.stdout)["same"]
        result = run_mdist("digest", str(src / "consolidated.00.pth"), str(tmp_path / name / "hf"), "--json")
        assert result.returncode == 0 and json.loads(result.stdout)["same"], result.stdout
    expected = json.loads((REPO / "checksums" / "tiny-mistral.json").read_text())["tensor_digest"]
    result = run_mdist("digest", str(tmp_path / "fixture" / "hf"))
    assert result.stdout.split()[0] == expected


def test_digest_names_a_changed_tensor(tmp_path: Path) -> None:
    import torch

    sd = torch.load(FIXTURE / "consolidated.00.pth", weights_only=True)
    sd["layers.3.attention.wk.weight"][5, 7] += 1
    (tmp_path / "changed").mkdir()
    torch.save(sd, tmp_path / "changed" / "consolidated.00.pth")
    result = run_mdist("digest", str(FIXTURE / "consolidated.00.pth"), str(tmp_path / "changed"), "--json")
    assert result.returncode == 1
    assert json.loads(result.stdout)["differing"] == ["layers.3.attention.wk.weight"]


def test_every_manifest_validates_against_the_schema() -> None:
    import jsonschema

    schema = json.loads((REPO / "docs" / "manifest.schema.json").read_text())
    manifests = sorted((REPO / "checksums").glob("*.json"))
    assert len(manifests) >= 5
    lengths = {"sha256": 64, "md5": 32}
    for path in manifests:
        data = json.loads(path.read_text())
        jsonschema.validate(data, schema)
        assert data["name"] == path.stem
        for entry in data["files"].values():
            for algorithm, length in lengths.items():
                if algorithm in entry:
                    assert re.fullmatch(f"[0-9a-f]{{{length}}}", entry[algorithm]), (path, entry)
        for key in ("btih",):
            if key in data.get("sources", {}):
                assert re.fullmatch("[0-9a-f]{40}", data["sources"][key])


# -- signatures ----------------------------------------------------------------------------------
@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    private = ec.generate_private_key(ec.SECP256R1())
    private_path, public_path = tmp_path / "key.pem", tmp_path / "key.pub"
    private_path.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))
    public_path.write_bytes(private.public_key().public_bytes(serialization.Encoding.PEM,
                                                              serialization.PublicFormat.SubjectPublicKeyInfo))
    return private_path, public_path


def model_signing_cli(*args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "model_signing"
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=120)


def test_mdist_signature_verifies_with_model_signing(fixture_copy: Path, tmp_path: Path, keys) -> None:
    private, public = keys
    sig = tmp_path / "model.sig"
    assert run_mdist("sign", str(fixture_copy), "--private-key", str(private), "--signature", str(sig)).returncode == 0
    theirs = model_signing_cli("verify", "key", str(fixture_copy), "--signature", str(sig), "--public_key", str(public))
    assert theirs.returncode == 0, theirs.stdout + theirs.stderr
    code, payload = verify_json(fixture_copy, "--signature", str(sig), "--public-key", str(public))
    assert code == 0 and payload["signature"] == "valid"


def test_model_signing_signature_verifies_with_mdist(fixture_copy: Path, tmp_path: Path, keys) -> None:
    private, public = keys
    sig = tmp_path / "theirs.sig"
    theirs = model_signing_cli("sign", "key", str(fixture_copy), "--signature", str(sig), "--private_key", str(private))
    assert theirs.returncode == 0, theirs.stdout + theirs.stderr
    code, payload = verify_json(fixture_copy, "--signature", str(sig), "--public-key", str(public))
    assert code == 0 and payload["signature"] == "valid"


def test_tampered_file_fails_signature_verification(fixture_copy: Path, tmp_path: Path, keys) -> None:
    private, public = keys
    sig = tmp_path / "model.sig"
    assert run_mdist("sign", str(fixture_copy), "--private-key", str(private), "--signature", str(sig)).returncode == 0
    with open(fixture_copy / "params.json", "a") as handle:
        handle.write(" ")
    code, payload = verify_json(fixture_copy, "--manifest", "tiny-mistral", "--signature", str(sig),
                                "--public-key", str(public))
    assert code == 1 and payload["signature"] == "invalid"
    import hashlib
    expected = hashlib.sha256((FIXTURE / "params.json").read_bytes()).hexdigest()
    actual = hashlib.sha256((fixture_copy / "params.json").read_bytes()).hexdigest()
    assert f"params.json: sha256 expected {expected} got {actual}" in " ".join(payload["notes"])
    assert "b'" not in " ".join(payload["notes"])  # words, not Python reprs
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    wrong = tmp_path / "wrong.pub"
    wrong.write_bytes(other.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    shutil.copy(FIXTURE / "params.json", fixture_copy / "params.json")
    code, payload = verify_json(fixture_copy, "--signature", str(sig), "--public-key", str(wrong))
    assert code == 1 and payload["signature"] == "invalid"


def test_manifest_name_is_checked_before_anything_is_written(tmp_path: Path) -> None:
    out = tmp_path / "m.json"
    result = run_mdist("manifest", str(FIXTURE), "--name", "My Model/../x", "--out", str(out))
    assert result.returncode == 2 and "invalid release name" in result.stderr
    assert not out.exists()


def test_manifest_of_a_folder_without_weights_claims_no_tensor_digest(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "README.md").write_text("no model here\n")
    result = run_mdist("manifest", str(tmp_path / "docs"), "--name", "docs-only")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert "tensor_digest" not in data
    assert all("tensor_digest" not in entry["fields"] for entry in data["provenance"])
    import hashlib
    assert data["files"]["README.md"]["sha256"] == hashlib.sha256(b"no model here\n").hexdigest()


def test_a_wrong_size_names_the_closest_release_not_another(fixture_copy: Path) -> None:
    with open(fixture_copy / "consolidated.00.pth", "r+b") as handle:
        handle.truncate(5_000_000)
    code, payload = verify_json(fixture_copy)
    assert code == 1 and payload["report"]["manifest"] is None  # never "mistral-7b-v0.1"
    assert payload["report"]["closest"] == "tiny-mistral"
    size = json.loads((REPO / "checksums" / "tiny-mistral.json").read_text())["files"]["consolidated.00.pth"]["size"]
    assert payload["report"]["differences"] == [f"consolidated.00.pth size 5000000, expected {size}"]
    human = run_mdist("verify", str(fixture_copy))
    assert "closest: tiny-mistral; consolidated.00.pth size 5000000" in human.stdout


def test_a_tampered_config_of_the_hf_release_is_not_called_the_pth_release(tmp_path: Path) -> None:
    hf = tmp_path / "hf"
    convert(FIXTURE, hf, layout="hf")
    shutil.rmtree(hf / ".mdist")
    config = json.loads((hf / "config.json").read_text())
    config["rms_norm_eps"] = 2e-5
    config["note"] = "tampered"  # a different size: no longer that release
    (hf / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    code, payload = verify_json(hf)
    assert code == 1 and payload["report"]["manifest"] is None
    assert payload["report"]["closest"] == "tiny-mistral-hf"
    assert any(d.startswith("config.json size") for d in payload["report"]["differences"])
