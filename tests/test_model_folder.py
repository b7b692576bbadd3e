"""What verify checks is what run, convert and digest load: one owner (mdist.model_folder) decides.

Each test builds a real folder (torch.save fixture, mdist's own conversions, safetensors written by
the safetensors library) and runs the real CLI. A planted weight file, a forged or stale record of
a derived file, or a symlinked output must never get other weights loaded or written through.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import FIXTURE, copy_fixture, run_mdist


@pytest.fixture(autouse=True)
def private_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test has its own machine key (XDG_STATE_HOME) and cache, like a separate user."""
    state = tmp_path / "state"
    monkeypatch.setenv("XDG_STATE_HOME", str(state))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return state


def statuses(result) -> dict[str, str]:
    payload = json.loads(result.stdout)
    return {row["path"]: row["status"] for row in payload["report"]["files"]}


def greedy(model: Path, *extra: str):
    return run_mdist("run", str(model), "--prompt", "ROMEO:", "--max-tokens", "8", "--json", *extra)


def attacker_weights(tmp_path: Path, hf: bool = False) -> dict[str, torch.Tensor]:
    """The fixture's weights converted by mdist, with the output head replaced (the attacker's tokens)."""
    out = tmp_path / "attacker"
    layout = ["--layout", "hf"] if hf else []
    assert run_mdist("convert", str(FIXTURE), "--out", str(out), *layout).returncode == 0
    files = sorted(out.glob("model-*.safetensors")) if hf else [out / "consolidated.safetensors"]
    tensors = {k: v for f in files for k, v in load_file(str(f)).items()}
    head = "lm_head.weight" if hf else "output.weight"
    tensors[head] = tensors[head].flip(0).contiguous()
    return {head: tensors[head]}


def release_copy(tmp_path: Path, name: str = "release") -> Path:
    return copy_fixture(tmp_path / name)


# -- critical 1: a planted weight file ------------------------------------------------------------
def test_planted_consolidated_safetensors_is_refused_everywhere(tmp_path: Path) -> None:
    release = release_copy(tmp_path)
    honest = greedy(release)
    assert honest.returncode == 0, honest.stderr
    honest_ids = json.loads(honest.stdout)["token_ids"]
    (release / "consolidated.safetensors").unlink()  # start again from the bare release
    shutil.rmtree(release / ".mdist")
    save_file(attacker_weights(tmp_path) | {k: v for k, v in load_file(
        str(tmp_path / "attacker" / "consolidated.safetensors")).items() if k != "output.weight"},
        str(release / "consolidated.safetensors"))

    verified = run_mdist("verify", str(release), "--json")
    assert verified.returncode == 1
    assert statuses(verified)["consolidated.safetensors"] == "refused"
    for args in (("run", str(release), "--prompt", "ROMEO:", "--max-tokens", "8"),
                 ("digest", str(release)), ("convert", str(release), "--out", str(tmp_path / "c"))):
        result = run_mdist(*args)
        assert result.returncode == 1, (args, result.stderr)
        assert "holds consolidated.safetensors, which is not part of that release" in result.stderr
        assert result.stdout == ""
    # once the planted file is gone, run generates the honest tokens again
    (release / "consolidated.safetensors").unlink()
    again = greedy(release)
    assert again.returncode == 0 and json.loads(again.stdout)["token_ids"] == honest_ids


def test_planted_hf_shard_is_refused(tmp_path: Path) -> None:
    hf = tmp_path / "hf"
    assert run_mdist("convert", str(FIXTURE), "--layout", "hf", "--out", str(hf)).returncode == 0
    shutil.rmtree(hf / ".mdist")  # as if downloaded: the tiny-mistral-hf release itself
    clean = run_mdist("verify", str(hf), "--json")
    assert clean.returncode == 0, clean.stdout
    assert json.loads(clean.stdout)["report"]["manifest"] == "tiny-mistral-hf"
    save_file(attacker_weights(tmp_path, hf=True), str(hf / "model-00002-of-00002.safetensors"))

    verified = run_mdist("verify", str(hf), "--json")
    assert verified.returncode == 1
    assert statuses(verified)["model-00002-of-00002.safetensors"] == "refused"
    result = greedy(hf)
    assert result.returncode == 1 and "model-00002-of-00002.safetensors" in result.stderr


def test_unknown_folder_loads_only_the_shards_its_index_names(tmp_path: Path) -> None:
    """Outside a known release nothing is verified, but a stray shard is still never loaded."""
    hf = tmp_path / "hf"
    assert run_mdist("convert", str(FIXTURE), "--layout", "hf", "--out", str(hf)).returncode == 0
    config = json.loads((hf / "config.json").read_text())
    config["rms_norm_eps"] = 1e-5  # no longer the tiny-mistral-hf release
    (hf / "config.json").write_text(json.dumps(config))
    shutil.rmtree(hf / ".mdist")
    baseline = greedy(hf)
    assert baseline.returncode == 0, baseline.stderr
    save_file(attacker_weights(tmp_path, hf=True), str(hf / "model-00002-of-00002.safetensors"))
    again = greedy(hf)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["token_ids"] == json.loads(baseline.stdout)["token_ids"]


# -- derived files: recorded, unforgeable, never stale ---------------------------------------------
def test_run_output_is_derived_and_verify_says_so(tmp_path: Path) -> None:
    release = release_copy(tmp_path)
    assert greedy(release).returncode == 0
    assert (release / "consolidated.safetensors").is_file()
    verified = run_mdist("verify", str(release), "--json", "--strict")
    assert verified.returncode == 0, verified.stdout
    assert statuses(verified)["consolidated.safetensors"] == "derived"


def test_a_copied_folder_cannot_bring_its_derived_record(tmp_path: Path, private_state: Path) -> None:
    """A record made under another machine's key is not mdist's own; a copy made here is stale."""
    release = release_copy(tmp_path)
    assert greedy(release).returncode == 0
    shutil.rmtree(private_state)  # from here on, this is another machine: a new key
    copied = tmp_path / "copied"
    shutil.copytree(release, copied)  # what a USB disk or a torrent delivers: same bytes, same record
    result = greedy(copied)
    assert result.returncode == 1 and "not derived by mdist" in result.stderr
    assert statuses(run_mdist("verify", str(copied), "--json"))["consolidated.safetensors"] == "refused"
    assert greedy(release).returncode == 1  # the original folder too, under the new key


def test_a_copied_folder_is_made_usable_again_by_convert_force(tmp_path: Path, private_state: Path) -> None:
    """A folder copied from another machine or account: the refusal names the way on,
    `convert DIR --force`, which writes the file again from the release (the copied one, here
    altered, is never read); run then gives the release's own tokens. --force of another layout,
    or into another folder, does not lift the refusal."""
    release = release_copy(tmp_path)
    first = greedy(release)
    assert first.returncode == 0, first.stderr
    shutil.rmtree(private_state)  # another machine: a new key
    copied = tmp_path / "copied"
    shutil.copytree(release, copied)
    save_file(attacker_weights(tmp_path) | {k: v for k, v in load_file(
        str(copied / "consolidated.safetensors")).items() if k != "output.weight"},
        str(copied / "consolidated.safetensors"))
    refused = greedy(copied)
    assert refused.returncode == 1 and f"`mdist convert {copied} --force`" in refused.stderr, refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    for args in (("--layout", "hf", "--force"), ("--out", str(tmp_path / "elsewhere"), "--force"), ()):
        result = run_mdist("convert", str(copied), *args)
        assert result.returncode == 1 and "holds consolidated.safetensors" in result.stderr, (args, result.stderr)
    fixed = run_mdist("convert", str(copied), "--force")
    assert fixed.returncode == 0, fixed.stderr
    # the same bytes as the conversion made on the first machine: written from the release
    assert (copied / "consolidated.safetensors").read_bytes() == (release / "consolidated.safetensors").read_bytes()
    again = greedy(copied)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["token_ids"] == json.loads(first.stdout)["token_ids"]
    assert statuses(run_mdist("verify", str(copied), "--json"))["consolidated.safetensors"] == "derived"


def _sign_at_once(state: str, barrier, queue) -> None:
    os.environ["XDG_STATE_HOME"] = state
    from mdist import derived

    barrier.wait(timeout=30)
    try:
        queue.put(("ok", derived.sign_bytes(b"data", "purpose")))
    except BaseException as exc:  # noqa: BLE001 - reported to the test
        queue.put(("error", f"{type(exc).__name__}: {exc}"))


def test_mdist_processes_started_together_share_one_complete_key(tmp_path: Path) -> None:
    """Eight processes make the machine key at the same moment (a fleet's hosts on a fresh machine):
    each signs with the one key that was written, none reads a key file still being written (it
    was an internal AssertionError: the file existed, empty, between its creation and its write)."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    for attempt in range(6):
        state = str(tmp_path / f"state{attempt}")
        barrier, queue = context.Barrier(8), context.Queue()
        procs = [context.Process(target=_sign_at_once, args=(state, barrier, queue)) for _ in range(8)]
        for proc in procs:
            proc.start()
        results = [queue.get(timeout=60) for _ in procs]
        for proc in procs:
            proc.join(timeout=60)
        assert [kind for kind, _ in results] == ["ok"] * 8, results
        key = (Path(state) / "mdist" / "derived.key").read_bytes()
        assert len(key) == 32 and os.listdir(Path(state) / "mdist") == ["derived.key"]  # no temporary left
        expected = hmac.new(key, b"mdist signed bytes\0purpose\0data", hashlib.sha256).hexdigest()
        assert {mac for _, mac in results} == {expected}


def test_a_damaged_machine_key_is_one_line_and_never_replaced(tmp_path: Path, private_state: Path) -> None:
    key = private_state / "mdist" / "derived.key"
    key.parent.mkdir(parents=True)
    key.write_bytes(b"short")
    release = release_copy(tmp_path)
    result = run_mdist("convert", str(release))
    assert result.returncode == 2, result.stderr
    assert not (release / "consolidated.safetensors").exists()  # said before anything is written
    assert result.stderr.strip() == (f"mdist: error: mdist's key {key} is not a 32-byte file (damaged, or a link); "
                                     f"remove it to make a new one (files mdist derived under the old key are "
                                     f"converted again)")
    assert key.read_bytes() == b"short"


def test_a_converted_folder_runs_after_a_copy_or_a_touch_of_its_source(tmp_path: Path) -> None:
    """`convert SRC --out DIR` makes a folder of its own: copied (same user: its records become
    stale) it still runs, as the same copy does for a user whose key never signed them; a source
    merely touched does not stop the known release DIR holds (verify says it is whole). It said
    'config.json was derived by mdist from files that have changed since', exit 2."""
    release = release_copy(tmp_path)
    first = greedy(release)
    assert first.returncode == 0, first.stderr
    for layout in ("mistral", "hf"):
        out = tmp_path / f"out-{layout}"
        assert run_mdist("convert", str(release), "--layout", layout, "--out", str(out)).returncode == 0
        copied = tmp_path / "elsewhere" / out.name
        shutil.copytree(out, copied)
        for folder in (copied, out):
            result = greedy(folder)
            assert result.returncode == 0, (folder, result.stderr)
            assert json.loads(result.stdout)["token_ids"] == json.loads(first.stdout)["token_ids"]
        os.utime(release / "consolidated.00.pth")  # touched: the conversion's record goes stale
        result = greedy(out)
        assert result.returncode == 0, (layout, result.stderr)
        if layout == "hf":  # the tiny-mistral-hf release, whole by its published hashes
            assert run_mdist("verify", str(out)).returncode == 0


@pytest.mark.parametrize("layout", ["mistral", "hf", "gguf"])
def test_out_inside_the_model_folder_is_refused_before_anything_is_written(tmp_path: Path, layout: str) -> None:
    """It was accepted, and the release was then refused for holding hf/model-00001-of-00001.safetensors."""
    release = release_copy(tmp_path)
    before = sorted(os.listdir(release))
    result = run_mdist("convert", str(release), "--layout", layout, "--out", str(release / "sub"))
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (
        f"mdist: error: --out {release / 'sub'} is inside the model folder {release}: mdist would then refuse that "
        f"folder for holding files that are not part of it; write into the folder itself (no --out) or into one "
        f"beside it")
    assert sorted(os.listdir(release)) == before
    assert greedy(release).returncode == 0


def test_verify_of_a_converted_folder_names_the_folder_it_was_made_from(tmp_path: Path) -> None:
    release = release_copy(tmp_path)
    out = tmp_path / "out"
    assert run_mdist("convert", str(release), "--out", str(out)).returncode == 0
    result = run_mdist("verify", str(out), "--manifest", "tiny-mistral", "--json")
    rows = {row["path"]: row for row in json.loads(result.stdout)["report"]["files"]}
    assert result.returncode == 1 and rows["consolidated.safetensors"]["status"] == "refused"
    assert rows["consolidated.safetensors"]["detail"] == (
        f"written by mdist, but from files in {release.resolve()}, not in this folder "
        f"(`mdist verify {release.resolve()}` checks those)")
    assert run_mdist("verify", str(release.resolve())).returncode == 0


def test_an_unknown_folder_converted_in_place_is_converted_again_when_its_source_changes(tmp_path: Path) -> None:
    """Outside a known release a stale record still matters where its source is in the folder: the
    weights were replaced, so run converts them again instead of loading the old conversion."""
    folder = tmp_path / "mine"
    folder.mkdir()
    torch.save({k: v.clone() for k, v in torch.load(FIXTURE / "consolidated.00.pth", weights_only=True).items()},
               folder / "consolidated.00.pth")  # the test's own file, so torch.load is safe
    for name in ("params.json", "tokenizer.model"):
        shutil.copy(FIXTURE / name, folder)
    first = greedy(folder)
    assert first.returncode == 0 and "converting" in first.stderr, first.stderr
    state = torch.load(folder / "consolidated.00.pth", weights_only=True)
    state["output.weight"] = state["output.weight"].flip(0).contiguous()
    torch.save(state, folder / "consolidated.00.pth")
    again = greedy(folder)
    assert again.returncode == 0 and "converting" in again.stderr, again.stderr
    assert json.loads(again.stdout)["token_ids"] != json.loads(first.stdout)["token_ids"]


def test_a_copy_made_here_is_converted_again_not_loaded(tmp_path: Path) -> None:
    release = release_copy(tmp_path)
    first = greedy(release)
    copied = tmp_path / "copied"
    shutil.copytree(release, copied)
    save_file(attacker_weights(tmp_path) | {k: v for k, v in load_file(
        str(copied / "consolidated.safetensors")).items() if k != "output.weight"},
        str(copied / "consolidated.safetensors"))  # tampered after mdist recorded it
    verified = run_mdist("verify", str(copied), "--json")  # ours but changed: stale, never loaded
    assert verified.returncode == 0 and statuses(verified)["consolidated.safetensors"] == "stale"
    result = greedy(copied)
    assert result.returncode == 0 and "converting" in result.stderr
    assert json.loads(result.stdout)["token_ids"] == json.loads(first.stdout)["token_ids"]


def test_a_changed_source_makes_the_derived_file_stale(tmp_path: Path) -> None:
    release = release_copy(tmp_path)
    first = greedy(release)
    assert first.returncode == 0
    derived = release / "consolidated.safetensors"
    before = derived.stat().st_ino
    source = release / "consolidated.00.pth"
    data = source.read_bytes()
    source.unlink()
    source.write_bytes(data)  # the same release, re-downloaded: a new file
    second = greedy(release)
    assert second.returncode == 0, second.stderr
    assert "converting" in second.stderr  # the stale conversion was replaced, not loaded
    assert derived.stat().st_ino != before
    assert json.loads(second.stdout)["token_ids"] == json.loads(first.stdout)["token_ids"]


# -- several layouts in one folder -------------------------------------------------------------------
def test_hf_conversion_into_the_release_folder(tmp_path: Path) -> None:
    release = release_copy(tmp_path)
    assert run_mdist("convert", str(release), "--layout", "hf").returncode == 0
    result = greedy(release)
    assert result.returncode == 0, result.stderr
    assert "several layouts" not in result.stderr  # hf was made from the pth beside it: nothing to choose
    digest = run_mdist("digest", str(release))
    assert "several layouts (hf, pth); digest uses pth" in digest.stderr  # a choice between two: said
    verified = run_mdist("verify", str(release), "--json", "--strict")
    assert verified.returncode == 0, verified.stdout
    rows = statuses(verified)
    assert json.loads(verified.stdout)["report"]["manifest"] == "tiny-mistral"
    assert rows["consolidated.00.pth"] == "ok" and rows["model-00001-of-00001.safetensors"] == "derived"
    digest = run_mdist("digest", str(release))
    expected = json.loads((FIXTURE.parents[2] / "checksums" / "tiny-mistral.json").read_text())["tensor_digest"]
    assert digest.returncode == 0 and digest.stdout.split()[0] == expected


# -- critical 5: outputs never written through a link ------------------------------------------------
def test_convert_never_writes_through_a_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("do not touch")
    out = tmp_path / "out"
    out.mkdir()
    (out / "tokenizer.model").symlink_to(victim)
    refused = run_mdist("convert", str(FIXTURE), "--layout", "hf", "--out", str(out))
    assert refused.returncode == 2 and "tokenizer.model exists; use --force" in refused.stderr
    forced = run_mdist("convert", str(FIXTURE), "--layout", "hf", "--out", str(out), "--force")
    assert forced.returncode == 0, forced.stderr
    assert victim.read_text() == "do not touch"
    assert not (out / "tokenizer.model").is_symlink()
    assert (out / "tokenizer.model").read_bytes() == (FIXTURE / "tokenizer.model").read_bytes()


def test_every_convert_output_is_in_the_overwrite_check(tmp_path: Path) -> None:
    for name in ("tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
        out = tmp_path / name
        out.mkdir()
        (out / name).write_text("mine")
        result = run_mdist("convert", str(FIXTURE), "--layout", "hf", "--out", str(out))
        assert result.returncode == 2 and f"{name} exists" in result.stderr
        assert (out / name).read_text() == "mine"


def test_read_only_output_folder_is_one_line(tmp_path: Path) -> None:
    out = Path("/proc/self/x") if os.geteuid() == 0 else tmp_path / "ro" / "x"  # root may write anywhere else
    if os.geteuid() != 0:
        out.parent.mkdir(mode=0o500)
    result = run_mdist("convert", str(FIXTURE), "--out", str(out))
    assert result.returncode == 2
    assert result.stderr.startswith("mdist: error:") and "Traceback" not in result.stderr


# -- found by a hostile review -----------------------------------------------------------------------
def evil_release(tmp_path: Path) -> Path:
    """The release's layout with the output head flipped, saved by real torch.save."""
    folder = release_copy(tmp_path, "evil")
    state = torch.load(folder / "consolidated.00.pth", weights_only=True)
    state["output.weight"] = state["output.weight"].flip(0).contiguous()
    torch.save(state, folder / "consolidated.00.pth")
    return folder


def test_a_conversion_of_other_weights_into_a_release_is_not_derived_from_it(tmp_path: Path) -> None:
    release = release_copy(tmp_path)
    evil = evil_release(tmp_path)
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(evil / "consolidated.00.pth", lone / "weights.pth")  # no side files: nothing to overwrite
    assert run_mdist("convert", str(lone / "weights.pth"), "--out", str(release)).returncode == 0
    verified = run_mdist("verify", str(release), "--json", "--tensors")
    assert verified.returncode == 1 and statuses(verified)["consolidated.safetensors"] == "refused"
    result = greedy(release)
    assert result.returncode == 1 and "not part of that release" in result.stderr


def test_small_json_files_do_not_hide_the_release(tmp_path: Path) -> None:
    """Files of tiny-mistral-hf (without its weights) must not turn off tiny-mistral's refusal."""
    release = release_copy(tmp_path)
    hf = tmp_path / "hf"
    assert run_mdist("convert", str(FIXTURE), "--layout", "hf", "--out", str(hf)).returncode == 0
    for name in ("config.json", "generation_config.json", "special_tokens_map.json", "tokenizer_config.json"):
        shutil.copy(hf / name, release / name)
    save_file(attacker_weights(tmp_path) | {k: v for k, v in load_file(
        str(tmp_path / "attacker" / "consolidated.safetensors")).items() if k != "output.weight"},
        str(release / "consolidated.safetensors"))
    for args in (("run", str(release), "--prompt", "ROMEO:"), ("digest", str(release))):
        result = run_mdist(*args)
        assert result.returncode == 1 and "not part of that release" in result.stderr, result.stderr


def test_digest_of_a_shard_is_that_shard_layout(tmp_path: Path) -> None:
    evil = evil_release(tmp_path)
    folder = tmp_path / "mixed"
    assert run_mdist("convert", str(evil), "--layout", "hf", "--out", str(folder)).returncode == 0
    shutil.copy(FIXTURE / "consolidated.00.pth", folder / "consolidated.01.pth")  # honest weights beside
    shutil.rmtree(folder / ".mdist")  # as delivered: a folder no release and no record vouches for
    (folder / "model-00001-of-00001.safetensors").rename(folder / "model-a.safetensors")
    index = folder / "model.safetensors.index.json"
    index.write_text(index.read_text().replace("model-00001-of-00001", "model-a"))
    shard = run_mdist("digest", str(folder / "model-a.safetensors"))
    evil_digest = run_mdist("digest", str(evil / "consolidated.00.pth"))
    assert shard.returncode == 0 and evil_digest.returncode == 0
    assert shard.stdout.split()[0] == evil_digest.stdout.split()[0]


def test_linked_tokenizer_and_params_are_never_followed(tmp_path: Path) -> None:
    release = release_copy(tmp_path)
    other = tmp_path / "other.model"
    shutil.move(release / "tokenizer.model", other)
    (release / "tokenizer.model").symlink_to(other)
    result = greedy(release)
    assert result.returncode == 2 and "tokenizer.model is a symbolic link" in result.stderr
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(FIXTURE / "consolidated.00.pth", lone / "consolidated.00.pth")
    (lone / "params.json").symlink_to(FIXTURE / "params.json")
    converted = run_mdist("convert", str(lone / "consolidated.00.pth"), "--out", str(tmp_path / "o"))
    assert converted.returncode == 2 and "params.json is a symbolic link" in converted.stderr


def test_a_linked_state_folder_is_refused_not_written_through(tmp_path: Path) -> None:
    release = release_copy(tmp_path)
    victim = tmp_path / "victim"
    victim.mkdir()
    (release / ".mdist").symlink_to(victim)
    verified = run_mdist("verify", str(release), "--json")
    assert verified.returncode == 1 and statuses(verified)[".mdist"] == "refused"
    result = greedy(release)
    assert result.returncode == 2 and ".mdist is a symbolic link" in result.stderr
    assert list(victim.iterdir()) == []


def test_a_plain_file_in_a_cache_snapshot_is_never_read(tmp_path: Path) -> None:
    repo = tmp_path / "models--evil--m"
    snapshot = repo / "snapshots" / "abc"
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    import hashlib
    for name in ("params.json", "tokenizer.model"):
        data = (FIXTURE / name).read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / name).symlink_to(Path("../../blobs") / blob.name)
    assert run_mdist("convert", str(FIXTURE), "--out", str(tmp_path / "c")).returncode == 0
    shutil.copy(tmp_path / "c" / "consolidated.safetensors", snapshot / "consolidated.safetensors")
    verified = run_mdist("verify", str(snapshot), "--json")
    assert verified.returncode == 1 and statuses(verified)["consolidated.safetensors"] == "refused"
    assert greedy(snapshot).returncode == 2  # no weights it may read
    (snapshot / "consolidated.safetensors").unlink()
    only_links = run_mdist("verify", str(snapshot), "--json")  # consistent, but proves no release
    assert only_links.returncode == 0
    assert any("integrity only" in note for note in json.loads(only_links.stdout)["notes"])


def test_a_config_with_a_repeated_key_is_refused(tmp_path: Path) -> None:
    """json keeps the last of two equal keys silently; which one a reader sees must not be a guess."""
    folder = release_copy(tmp_path)
    text = (folder / "params.json").read_text()
    (folder / "params.json").write_text(text.replace("{", '{"n_layers": 1, ', 1))
    result = greedy(folder)
    assert result.returncode == 2 and "duplicate key 'n_layers'" in result.stderr


def test_a_deeply_nested_folder_is_one_line(tmp_path: Path) -> None:
    """os.walk recursed once per level: 1,200 levels ended in RecursionError and a traceback.
    Now the walk is iterative and refuses folders nested deeper than 64."""
    release = release_copy(tmp_path)
    deep = release
    for _ in range(100):  # past the 64-folder limit; the walk itself no longer recurses
        deep = deep / "d"
        deep.mkdir()
    for args in (("verify", str(release)), ("digest", str(release)), ("run", str(release), "--prompt", "x")):
        result = run_mdist(*args)
        assert result.returncode == 2, (args, result.stderr[-500:])
        assert result.stderr.count("\n") == 1 and "nested deeper than 64 folders" in result.stderr


def test_a_name_ending_in_a_newline_is_judged_alike_everywhere(tmp_path: Path) -> None:
    release = release_copy(tmp_path)
    shutil.copy(release / "consolidated.00.pth", release / "consolidated.01.pth\n")
    verified = run_mdist("verify", str(release), "--json")
    assert verified.returncode == 1 and statuses(verified)["consolidated.01.pth\n"] == "refused"
    digest = run_mdist("digest", str(release))  # never taken for a checkpoint: the release's own digest
    expected = json.loads((FIXTURE.parents[2] / "checksums" / "tiny-mistral.json").read_text())["tensor_digest"]
    assert digest.returncode == 0 and digest.stdout.split()[0] == expected


def test_names_equal_but_for_case_are_refused(tmp_path: Path) -> None:
    release = release_copy(tmp_path)
    (release / "Params.json").write_text("{}")
    verified = run_mdist("verify", str(release), "--json")
    assert verified.returncode == 1 and statuses(verified)["Params.json"] == "refused"


def test_a_conversion_whose_source_was_deleted_still_runs(tmp_path: Path) -> None:
    """`convert SRC --out DIR`, then SRC deleted or edited: DIR's records are stale, but nothing of
    its sources is in DIR to convert again from, so DIR runs like any folder, on its own files
    (and verify says nothing vouches for it)."""
    src = tmp_path / "src"
    copy_fixture(src)
    out = tmp_path / "out"
    assert run_mdist("convert", str(src), "--out", str(out)).returncode == 0
    before = run_mdist("run", str(out), "--prompt", "ROMEO:", "--max-tokens", "6", "--json")
    assert before.returncode == 0, before.stderr
    (src / "consolidated.00.pth").unlink()  # the weights gone, the side files unchanged
    after = run_mdist("run", str(out), "--prompt", "ROMEO:", "--max-tokens", "6", "--json")
    assert after.returncode == 0, after.stderr
    assert json.loads(after.stdout)["token_ids"] == json.loads(before.stdout)["token_ids"]
    (src / "params.json").write_text((src / "params.json").read_text() + " ")  # an existing source edited
    edited = run_mdist("run", str(out), "--prompt", "ROMEO:", "--max-tokens", "6", "--json")
    assert edited.returncode == 0, edited.stderr  # DIR holds its own params.json
    assert json.loads(edited.stdout)["token_ids"] == json.loads(before.stdout)["token_ids"]
    shutil.rmtree(src)
    gone = run_mdist("run", str(out), "--prompt", "ROMEO:", "--max-tokens", "6", "--json")
    assert gone.returncode == 0, gone.stderr
    assert json.loads(gone.stdout)["token_ids"] == json.loads(before.stdout)["token_ids"]
    verified = run_mdist("verify", str(out), "--manifest", "tiny-mistral", "--json")  # nothing vouches for it
    statuses = {f["path"]: f["status"] for f in json.loads(verified.stdout)["report"]["files"]}
    assert verified.returncode == 1 and statuses["consolidated.safetensors"] == "stale", statuses


def test_a_link_in_a_subfolder_does_not_stop_the_model_beside_it(tmp_path: Path) -> None:
    """Outside a known release, layouts read top-level files only: a link further down (an
    unrelated folder under ~/Downloads) is no reason to refuse; one at the top still is. (In a
    known release any weights-like link is refused, like foreign weights anywhere in it.)"""
    from conftest import random_mistral

    folder = random_mistral(tmp_path / "m", vocab_size=2048)  # the fixture's tokenizer; no known release
    (folder / "sub").mkdir()
    (folder / "sub" / "model.safetensors").symlink_to("/etc/hostname")
    result = run_mdist("run", str(folder), "--prompt", "ROMEO:", "--max-tokens", "2")
    assert result.returncode == 0, result.stderr
    (folder / "model.safetensors").symlink_to("/etc/hostname")
    result = run_mdist("run", str(folder), "--prompt", "ROMEO:", "--max-tokens", "2")
    assert result.returncode == 2 and "is a symbolic link or special file" in result.stderr
