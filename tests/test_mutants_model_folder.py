"""mdist.derived and mdist.model_folder, in process: each rule of the folder check at its edges.

Written for mutation testing (bench/mutation.py, docs/testing.md): tests/test_model_folder.py shows
the rules end to end through the CLI; these pin every condition so that a weakened one fails a test.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
from pathlib import Path

import pytest

from conftest import FIXTURE
from mdist import derived
from mdist import model_folder as mf
from mdist.errors import InputError, UnsafeContentError
from mdist.verify.manifest import FileEntry, Manifest, find_manifest

TINY = find_manifest("tiny-mistral")
TINY_HF = find_manifest("tiny-mistral-hf")


@pytest.fixture(autouse=True)
def private_key_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    state = tmp_path / "state"
    monkeypatch.setenv("XDG_STATE_HOME", str(state))
    return state


def sized(path: Path, size: int, content: bytes = b"") -> Path:
    """A file of `size` bytes (sparse), starting with `content`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(content)
        handle.truncate(size)
    return path


def tiny_release(folder: Path) -> Path:
    """tiny-mistral's names and sizes (the weights sparse), with the real params.json."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(FIXTURE / "params.json", folder / "params.json")
    sized(folder / "consolidated.00.pth", TINY.files["consolidated.00.pth"].size)
    sized(folder / "tokenizer.model", TINY.files["tokenizer.model"].size)
    return folder


# --- mdist.derived -------------------------------------------------------------------------------------

def test_the_key_lives_in_xdg_state_home_or_the_home_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert derived._key_path() == tmp_path / "state" / "mdist" / "derived.key"
    monkeypatch.setenv("XDG_STATE_HOME", "")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert derived._key_path() == tmp_path / "home" / ".local" / "state" / "mdist" / "derived.key"
    monkeypatch.delenv("XDG_STATE_HOME")
    assert derived._key_path() == tmp_path / "home" / ".local" / "state" / "mdist" / "derived.key"
    monkeypatch.setenv("XDG_STATE_HOME", "relative/state")  # ignored (XDG): the key must not depend on the cwd
    assert derived._key_path() == tmp_path / "home" / ".local" / "state" / "mdist" / "derived.key"


def test_the_key_is_made_once_private_and_random(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert derived._load_key(create=False) is None
    assert not (tmp_path / "state").exists()
    key = derived._load_key(create=True)
    path = tmp_path / "state" / "mdist" / "derived.key"
    assert key is not None and len(key) == 32 and path.read_bytes() == key
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert derived._load_key(create=False) == key
    assert derived._load_key(create=True) == key
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "other"))
    assert derived._load_key(create=True) != key


def test_a_key_of_the_wrong_length_is_no_key(tmp_path: Path) -> None:
    path = tmp_path / "state" / "mdist" / "derived.key"
    for size in (31, 33, 0):
        sized(path, size, b"k" * size)
        assert derived._load_key(create=False) is None
        assert derived._load_key(create=True) is None  # never overwritten
        assert path.read_bytes() == b"k" * size


def test_a_dangling_key_link_is_never_written_through(tmp_path: Path) -> None:
    path = tmp_path / "state" / "mdist" / "derived.key"
    path.parent.mkdir(parents=True)
    path.symlink_to(tmp_path / "elsewhere")
    assert derived._load_key(create=True) is None
    assert not (tmp_path / "elsewhere").exists()


def test_identity_is_size_mtime_inode_of_a_regular_file_only(tmp_path: Path) -> None:
    file = sized(tmp_path / "f", 5, b"hello")
    info = os.lstat(file)
    assert derived._identity(file) == [5, info.st_mtime_ns, info.st_ino]
    (tmp_path / "link").symlink_to(file)
    assert derived._identity(tmp_path / "link") is None
    assert derived._identity(tmp_path) is None
    assert derived._identity(tmp_path / "missing") is None
    os.mkfifo(tmp_path / "fifo")
    assert derived._identity(tmp_path / "fifo") is None


def test_the_mac_covers_name_identity_and_sources_in_a_fixed_form() -> None:
    key = b"k" * 32
    sources = {"b": [1, 2, 3], "a": [4, 5, 6]}
    message = b'["out",[7,8,9],[["a",[4,5,6]],["b",[1,2,3]]]]'
    assert derived._mac(key, "out", [7, 8, 9], sources) == hmac.new(key, message, hashlib.sha256).hexdigest()
    base = derived._mac(key, "out", [7, 8, 9], sources)
    assert derived._mac(key, "out", [7, 8, 9], dict(reversed(sources.items()))) == base
    assert derived._mac(b"j" * 32, "out", [7, 8, 9], sources) != base
    assert derived._mac(key, "out2", [7, 8, 9], sources) != base
    assert derived._mac(key, "out", [7, 8, 10], sources) != base
    assert derived._mac(key, "out", [7, 8, 9], {"a": [4, 5, 6]}) != base


def test_record_then_state_valid_then_stale(tmp_path: Path, private_key_home: Path) -> None:
    folder = tmp_path / "m"
    source = sized(folder / "consolidated.00.pth", 10, b"source")
    outside = sized(tmp_path / "outside.pth", 3, b"out")
    output = sized(folder / "consolidated.safetensors", 4, b"made")
    assert derived.derived_state(folder) is derived.NONE
    derived.record_derived(folder, [output], [source, outside, tmp_path / "missing"])
    record = json.loads((folder / ".mdist" / "derived.json").read_text())
    assert record["note"] == "files mdist derived here; see docs/trust-model.md"
    entry = record["files"]["consolidated.safetensors"]
    assert entry["identity"] == derived._identity(output)
    assert entry["sources"] == {"consolidated.00.pth": derived._identity(source),
                                str(outside.resolve()): derived._identity(outside)}
    key = (private_key_home / "mdist" / "derived.key").read_bytes()
    assert entry["mac"] == derived._mac(key, "consolidated.safetensors", entry["identity"], entry["sources"])
    text = (folder / ".mdist" / "derived.json").read_text()
    assert text == json.dumps(record, indent=1, sort_keys=True)

    state = derived.derived_state(folder)
    assert state.valid == {"consolidated.safetensors"} and state.stale == frozenset()
    assert state.sources == {"consolidated.safetensors": (str(outside.resolve()), "consolidated.00.pth")}
    assert state.known("consolidated.safetensors") and not state.known("consolidated.00.pth")

    sized(outside, 4, b"outx")  # a source changed
    state = derived.derived_state(folder)
    assert state.valid == frozenset() and state.stale == {"consolidated.safetensors"}
    assert state.known("consolidated.safetensors") and state.sources == {}


def test_a_changed_or_removed_output_is_stale(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    source = sized(folder / "a.pth", 10, b"source")
    output = sized(folder / "b.safetensors", 4, b"made")
    derived.record_derived(folder, [output], [source])
    output.unlink()
    sized(output, 4, b"made")  # same size and content, another inode / mtime
    assert derived.derived_state(folder).stale == {"b.safetensors"}
    output.unlink()
    assert derived.derived_state(folder).stale == {"b.safetensors"}
    derived.record_derived(folder, [output], [source])  # a missing output is not recorded
    assert derived.derived_state(folder).stale == {"b.safetensors"}


def test_a_removed_source_makes_it_stale(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    source = sized(folder / "a.pth", 10, b"source")
    output = sized(folder / "b.safetensors", 4, b"made")
    derived.record_derived(folder, [output], [source])
    source.unlink()
    assert derived.derived_state(folder).stale == {"b.safetensors"}


def test_records_accumulate_and_an_output_is_never_its_own_source(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    source = sized(folder / "a.pth", 10, b"source")
    first = sized(folder / "x.safetensors", 4, b"one")
    second = sized(folder / "sub" / "y.json", 4, b"two")
    derived.record_derived(folder, [first], [source])
    derived.record_derived(folder, [second, first], [source, first, second])
    state = derived.derived_state(folder)
    assert state.valid == {"x.safetensors", "sub/y.json"}
    assert state.sources == {"x.safetensors": ("a.pth",), "sub/y.json": ("a.pth",)}


def test_a_record_made_with_another_key_is_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "m"
    output = sized(folder / "b.safetensors", 4, b"made")
    derived.record_derived(folder, [output], [])
    assert derived.derived_state(folder).valid == {"b.safetensors"}  # no sources is still a record
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "another-machine"))
    assert derived.derived_state(folder) is derived.NONE  # no key here: nothing is derived
    derived._load_key(create=True)
    assert derived.derived_state(folder) == derived.DerivedState(frozenset(), frozenset(), {})


@pytest.mark.parametrize("mutate", [
    lambda r: r.update(mac=1),
    lambda r: r.pop("mac"),
    lambda r: r.update(sources=[]),
    lambda r: r.pop("sources"),
    lambda r: r.update(identity="x"),
    lambda r: r.pop("identity"),
    lambda r: r.update(mac="0" * 64),
    lambda r: r["identity"].__setitem__(0, 5),
    lambda r: r["sources"].update({"a.pth": [1, 2, 3]}),
])
def test_a_forged_or_malformed_record_is_ignored(tmp_path: Path, mutate) -> None:
    folder = tmp_path / "m"
    source = sized(folder / "a.pth", 10, b"source")
    output = sized(folder / "b.safetensors", 4, b"made")
    good = sized(folder / "c.json", 2, b"{}")
    derived.record_derived(folder, [output, good], [source])
    path = folder / ".mdist" / "derived.json"
    record = json.loads(path.read_text())
    mutate(record["files"]["b.safetensors"])
    path.write_text(json.dumps(record))
    state = derived.derived_state(folder)
    assert not state.known("b.safetensors")
    assert state.valid == {"c.json"}


@pytest.mark.parametrize("content", [b"", b"not json", b"[]", b'{"files": []}', b'{"files": 1}', b'{"x": {}}',
                                     b'{"files": {"a": 1, "b": []}}'])
def test_unreadable_records_are_no_records(tmp_path: Path, content: bytes) -> None:
    folder = tmp_path / "m"
    derived._load_key(create=True)
    sized(folder / ".mdist" / "derived.json", len(content), content)
    assert derived._records(folder) == ({} if b'"a"' not in content else {"a": 1, "b": []})
    state = derived.derived_state(folder)
    assert state.valid == frozenset() and state.stale == frozenset()


def test_an_oversized_record_file_is_not_read(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    output = sized(folder / "b.safetensors", 4, b"made")
    derived.record_derived(folder, [output], [])
    path = folder / ".mdist" / "derived.json"
    text = path.read_text()
    path.write_text(text[:-1] + " " * ((1 << 20) + 1 - len(text)) + "}")
    assert path.stat().st_size == (1 << 20) + 1
    assert derived._records(folder) == {}
    path.write_text(text[:-1] + " " * ((1 << 20) - len(text)) + "}")
    assert path.stat().st_size == 1 << 20
    assert derived._records(folder) != {}


def test_source_identities() -> None:
    assert derived._source_identities(Path("/"), []) is None
    assert derived._source_identities(Path("/"), {1: [1]}) is None
    assert derived._source_identities(Path("/nonexistent"), {}) == {}


def test_source_identities_absolute_and_relative(tmp_path: Path) -> None:
    inside = sized(tmp_path / "in", 1, b"i")
    outside = sized(tmp_path.parent / f"{tmp_path.name}-out", 1, b"o")
    try:
        ids = derived._source_identities(tmp_path, {"in": None, str(outside): None})
        assert ids == {"in": derived._identity(inside), str(outside): derived._identity(outside)}
        assert derived._source_identities(tmp_path, {"in": None, "gone": None}) is None
    finally:
        outside.unlink()


# --- mdist.model_folder: names and layouts ---------------------------------------------------------------

@pytest.mark.parametrize("name", ["a.safetensors", "A.SAFETENSORS", "x/c.pth", "m.pt", "pytorch_model.bin",
                                  "c.ckpt", "m.gguf", "m.ggml", "w.npz", "t.h5", "f.msgpack", "m.onnx", "p.pkl",
                                  "p.pickle", "consolidated.00.pth-split0", "x.SAFETENSORS-split12", "y.bin-split3"])
def test_weight_file_names(name: str) -> None:
    assert mf.is_weight_file(name)


@pytest.mark.parametrize("name", ["params.json", "model.safetensors.index.json", "tokenizer.model", "a.pth.txt",
                                  "x.pth-split", "x.pth-splitA", "x.txt-split1", "safetensors", "readme"])
def test_not_weight_file_names(name: str) -> None:
    assert not mf.is_weight_file(name)


def test_layout_files_are_config_extra_weights_tokenizer() -> None:
    layout = mf.Layout(mf.HF, "config.json", ("a", "b"), ("index",))
    assert layout.files("tok") == ("config.json", "index", "a", "b", "tok")
    assert layout.files(None) == ("config.json", "index", "a", "b")
    assert mf.Layout(mf.PTH, None, ("w",)).files(None) == ("w",)
    assert mf.Layout(mf.PTH, None, ("w",)).extra == ()


def test_preferences() -> None:
    assert mf.PREFERENCE == {"run": ("mistral", "hf", "pth", "gguf"), "digest": ("pth", "mistral", "hf", "gguf"),
                             "convert": ("pth", "mistral")}
    assert mf.SIDE_NAMES == ("params.json", "config.json", "model.safetensors.index.json", "tokenizer.model",
                             "tokenizer.model.v1", "tokenizer.model.v2", "tokenizer.model.v3", "tokenizer.model.v7",
                             "tekken.json", ".mdist")


def layouts(tmp_path: Path, names: dict[str, bytes]) -> tuple[list[mf.Layout], list[str]]:
    for name, content in names.items():
        sized(tmp_path / name, len(content), content)
    problems: list[str] = []
    files, _, _ = mf.scan(tmp_path)
    return mf._find_layouts(tmp_path, files, problems), problems


def test_find_layouts_of_each_kind(tmp_path: Path) -> None:
    index = json.dumps({"weight_map": {"a": "s2.safetensors", "b": "s1.safetensors", "c": "s1.safetensors"}})
    found, problems = layouts(tmp_path, {
        "params.json": b"{}", "consolidated.01.pth": b"1", "consolidated.00.pth": b"0", "consolidated.0.pth": b"",
        "xconsolidated.00.pth": b"", "consolidated.00.pthx": b"", "consolidated.safetensors": b"s",
        "config.json": b"{}", "model.safetensors.index.json": index.encode(), "s1.safetensors": b"1",
        "s2.safetensors": b"2", "model.safetensors": b"m"})
    assert problems == []
    assert found == [mf.Layout("pth", "params.json", ("consolidated.00.pth", "consolidated.01.pth")),
                     mf.Layout("mistral", "params.json", ("consolidated.safetensors",)),
                     mf.Layout("hf", "config.json", ("s1.safetensors", "s2.safetensors"),
                               ("model.safetensors.index.json",))]


def test_a_bare_checkpoint_and_a_single_hf_file(tmp_path: Path) -> None:
    found, _ = layouts(tmp_path / "a", {"consolidated.00.pth": b"0", "consolidated.safetensors": b"s"})
    assert found == [mf.Layout("pth", None, ("consolidated.00.pth",))]  # no params: no mistral layout
    found, _ = layouts(tmp_path / "b", {"config.json": b"{}", "model.safetensors": b"m"})
    assert found == [mf.Layout("hf", "config.json", ("model.safetensors",))]
    found, _ = layouts(tmp_path / "c", {"model.safetensors": b"m", "params.json": b"{}"})
    assert found == []
    found, _ = layouts(tmp_path / "d", {"config.json": b"{}"})
    assert found == []


@pytest.mark.parametrize("index, problem", [
    (b"[]", "model.safetensors.index.json has no weight_map"),
    (b'{"weight_map": []}', "model.safetensors.index.json has no weight_map"),
    (b'{"weight_map": {}}', "model.safetensors.index.json has no weight_map"),
    (b'{"x": {}}', "model.safetensors.index.json has no weight_map"),
    (b'{"weight_map": {"a": 1}}', "maps tensors to something other than file names"),
    (b'{"weight_map": {"a": "s.safetensors", "b": 1}}', "maps tensors to something other than file names"),
    (b'{"weight_map": {"a": "../s.safetensors"}}', "holds a separator"),
    (b'{"weight_map": {"a": ".."}}', "leads outside the folder"),
    (b'{"weight_map": {"a": "missing.safetensors"}}', "names missing.safetensors, which is not a safetensors file"),
    (b'{"weight_map": {"a": "config.json"}}', "names config.json, which is not a safetensors file"),
    (b'{"weight_map": {"a": "s.safetensors", "b": "t.bin"}}', "names t.bin, which is not a safetensors file"),
    (b"{", "model.safetensors.index.json"),
])
def test_a_bad_hf_index_is_a_problem_not_a_layout(tmp_path: Path, index: bytes, problem: str) -> None:
    found, problems = layouts(tmp_path, {"config.json": b"{}", "model.safetensors.index.json": index,
                                         "s.safetensors": b"s", "t.bin": b"t", "model.safetensors": b"m"})
    assert found == []
    assert len(problems) == 1 and problem in problems[0], problems


# --- scanning ----------------------------------------------------------------------------------------------

def test_scan_lists_regular_files_and_reports_the_rest(tmp_path: Path) -> None:
    sized(tmp_path / "a", 3, b"abc")
    sized(tmp_path / "sub" / "b", 2)
    sized(tmp_path / "sub" / ".mdist" / "c", 1)  # only the top-level state folder is mdist's
    sized(tmp_path / ".mdist" / "derived.json", 5)
    sized(tmp_path / ".cache" / "huggingface" / "x.lock", 1)
    sized(tmp_path / "sub" / ".cache" / "huggingface" / "y", 1)
    (tmp_path / "link").symlink_to(tmp_path / "a")
    (tmp_path / "dirlink").symlink_to(tmp_path / "sub")
    (tmp_path / "sub" / "dirlink2").symlink_to(tmp_path / "sub")
    os.mkfifo(tmp_path / "fifo")
    files, others, blobs = mf.scan(tmp_path)
    assert files == {"a": 3, "sub/b": 2, "sub/.mdist/c": 1, "sub/.cache/huggingface/y": 1}
    assert others == ["dirlink", "fifo", "link", "sub/dirlink2"]
    assert blobs == {}
    assert mf.list_files(tmp_path) == (files, others)


def test_a_cache_folder_without_huggingface_is_part_of_the_model(tmp_path: Path) -> None:
    sized(tmp_path / ".cache" / "other", 1)
    sized(tmp_path / ".cache" / "huggingface", 2)  # a file, not huggingface_hub's folder
    assert mf.scan(tmp_path)[0] == {".cache/other": 1, ".cache/huggingface": 2}


@pytest.mark.parametrize("kind", ["link", "file", "dangling"])
def test_a_state_folder_that_is_not_a_folder_is_reported(tmp_path: Path, kind: str) -> None:
    sized(tmp_path / "a", 1)
    if kind == "link":
        (tmp_path / "elsewhere").mkdir()
        (tmp_path / ".mdist").symlink_to(tmp_path / "elsewhere")
    elif kind == "file":
        sized(tmp_path / ".mdist", 1)
    else:
        (tmp_path / ".mdist").symlink_to(tmp_path / "nowhere")
    files, others, _ = mf.scan(tmp_path)
    assert others.count(".mdist") == 1
    assert "a" in files and ".mdist" not in files


def test_scan_of_a_file_or_nothing_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="is not a folder"):
        mf.scan(sized(tmp_path / "f", 1))
    with pytest.raises(InputError, match="is not a folder"):
        mf.scan(tmp_path / "missing")


def test_an_unreadable_subfolder_is_an_input_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sized(tmp_path / "sub" / "a", 1)
    real = os.scandir

    def scandir(path):  # what listing a folder does when it may not be read (root reads every folder)
        if Path(path).name == "sub":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(InputError) as info:
        mf.scan(tmp_path)
    assert str(info.value) == f"cannot read {tmp_path / 'sub'}: Permission denied"


SHA = "a" * 64
SHA1 = "b" * 40


def hf_cache(tmp_path: Path) -> tuple[Path, Path]:
    repo = tmp_path / "models--o--n"
    blobs = repo / "blobs"
    snapshot = repo / "snapshots" / ("c" * 40)
    sized(blobs / SHA, 7)
    sized(blobs / SHA1, 3)
    (blobs / ("d" * 64)).mkdir()
    sized(blobs / "notablob", 1)
    sized(repo / "elsewhere" / SHA, 2)
    snapshot.mkdir(parents=True)
    (snapshot / "sub").mkdir()
    (snapshot / "w.safetensors").symlink_to(f"../../blobs/{SHA}")
    (snapshot / "sub" / "config.json").symlink_to(blobs / SHA1)
    (snapshot / "dir").symlink_to(blobs / ("d" * 64))
    (snapshot / "odd").symlink_to(blobs / "notablob")
    (snapshot / "out").symlink_to(repo / "elsewhere" / SHA)
    (snapshot / "dangling").symlink_to(blobs / ("e" * 64))
    sized(snapshot / "plain.json", 2)
    return repo, snapshot


def test_a_cache_snapshot_follows_links_into_its_blobs_only(tmp_path: Path) -> None:
    repo, snapshot = hf_cache(tmp_path)
    assert mf.hf_cache_repo(snapshot) == repo.resolve()
    files, others, blobs = mf.scan(snapshot)
    assert files == {"w.safetensors": 7, "sub/config.json": 3}
    assert blobs == {"w.safetensors": SHA, "sub/config.json": SHA1}
    assert others == ["dangling", "dir", "odd", "out", "plain.json"]


def test_what_is_not_a_cache_snapshot(tmp_path: Path) -> None:
    repo, snapshot = hf_cache(tmp_path)
    assert mf.hf_cache_repo(repo) is None
    assert mf.hf_cache_repo(repo / "snapshots") is None
    assert mf.hf_cache_repo(snapshot / "sub") is None
    other = tmp_path / "models--o--m"
    (other / "snapshots" / "x").mkdir(parents=True)
    assert mf.hf_cache_repo(other / "snapshots" / "x") is None  # no blobs folder
    (other / "blobs").symlink_to(repo / "blobs")
    assert mf.hf_cache_repo(other / "snapshots" / "x") is None  # blobs is a link
    (tmp_path / "models--o--p" / "notsnapshots" / "x").mkdir(parents=True)
    (tmp_path / "models--o--p" / "blobs").mkdir()
    assert mf.hf_cache_repo(tmp_path / "models--o--p" / "notsnapshots" / "x") is None


def test_blob_target(tmp_path: Path) -> None:
    repo, snapshot = hf_cache(tmp_path)
    blobs = repo.resolve() / "blobs"
    assert mf._blob_target(snapshot / "w.safetensors", blobs) == (SHA, 7)
    assert mf._blob_target(snapshot / "sub" / "config.json", blobs) == (SHA1, 3)
    for name in ("dir", "odd", "out", "dangling"):
        assert mf._blob_target(snapshot / name, blobs) is None, name
    (snapshot / "short").symlink_to(blobs / SHA1[:39])
    sized(blobs / SHA1[:39], 1)
    (snapshot / "upper").symlink_to(blobs / SHA.upper())
    sized(blobs / SHA.upper(), 1)
    (snapshot / "long").symlink_to(blobs / (SHA + "0"))
    sized(blobs / (SHA + "0"), 1)
    for name in ("short", "upper", "long"):
        assert mf._blob_target(snapshot / name, blobs) is None, name


# --- the folder rule ----------------------------------------------------------------------------------------

def contents(files: dict[str, int], *, release: Manifest | None = TINY, valid=(), stale=(), sources=None,
             others=(), layouts_=()) -> mf.FolderContents:
    """Stale files here were made from a file still in the folder (remakeable), as by run's own
    conversion; test_outdated_is_stale_but_not_orphaned covers the other kinds."""
    state = derived.DerivedState(frozenset(valid), frozenset(stale), dict(sources or {}),
                                 remakeable=frozenset(stale))
    return mf.FolderContents(Path("/m"), dict(files), list(others), list(layouts_), state, release)


TINY_FILES = {name: entry.size for name, entry in TINY.files.items()}


def test_in_release_by_name_and_size() -> None:
    c = contents({**TINY_FILES, "params.json": 1, "extra": 2})
    assert c.in_release("consolidated.00.pth")
    assert not c.in_release("params.json")
    assert not c.in_release("extra")
    assert not c.in_release("missing")
    assert not contents(TINY_FILES, release=None).in_release("consolidated.00.pth")
    loose = Manifest("loose", "t", {"a": FileEntry("a"), "b": FileEntry("b", size=3)}, False)
    c = contents({"a": 5}, release=loose)
    assert c.in_release("a")
    assert not c.in_release("b")  # listed with a size but absent


def test_derived_from_release_follows_sources_within_the_release() -> None:
    c = contents({**TINY_FILES, "x.safetensors": 1, "y.json": 1, "z.bin": 1, "w": 1},
                 valid={"x.safetensors", "y.json", "z.bin", "w"},
                 sources={"x.safetensors": ("consolidated.00.pth", "params.json"), "y.json": ("x.safetensors",),
                          "z.bin": ("/abs/consolidated.00.pth",), "w": ()})
    assert c.derived_from_release("x.safetensors")
    assert c.derived_from_release("y.json")
    assert not c.derived_from_release("z.bin")
    assert not c.derived_from_release("w")  # made from nothing known
    assert not c.derived_from_release("consolidated.00.pth")  # part of the release, not derived
    assert c.trusted("consolidated.00.pth") and c.trusted("y.json") and not c.trusted("z.bin")
    assert not contents(TINY_FILES, stale={"x"}, sources={"x": ("params.json",)}).derived_from_release("x")


def test_a_derivation_chain_is_followed_five_levels_deep() -> None:
    def chain(n: int) -> mf.FolderContents:
        names = [f"d{i}" for i in range(n)]
        sources = {names[0]: ("params.json",), **{names[i]: (names[i - 1],) for i in range(1, n)}}
        return contents(TINY_FILES, valid=names, sources=sources)

    assert chain(5).derived_from_release("d4")
    assert not chain(6).derived_from_release("d5")
    cycle = contents(TINY_FILES, valid={"a", "b"}, sources={"a": ("b",), "b": ("a",)})
    assert not cycle.derived_from_release("a")


def test_foreign_weights() -> None:
    files = {**TINY_FILES, "evil.safetensors": 1, "notes.txt": 1, "good.safetensors": 1, "old.safetensors": 1,
             "other.bin": 1, "consolidated.01.pth": 1}
    c = contents(files, valid={"good.safetensors", "other.bin"}, stale={"old.safetensors"},
                 sources={"good.safetensors": ("consolidated.00.pth",), "other.bin": ("/x",)})
    assert c.foreign_weights() == ["consolidated.01.pth", "evil.safetensors", "other.bin"]
    assert contents(files, release=None).foreign_weights() == []
    bad_size = contents({**TINY_FILES, "consolidated.00.pth": 5})
    assert bad_size.foreign_weights() == ["consolidated.00.pth"]


PTH_LAYOUT = mf.Layout("pth", "params.json", ("consolidated.00.pth",))
MISTRAL_LAYOUT = mf.Layout("mistral", "params.json", ("consolidated.safetensors",))
HF_LAYOUT = mf.Layout("hf", "config.json", ("model.safetensors",))


def test_usable_layouts() -> None:
    files = {**TINY_FILES, "consolidated.safetensors": 1, "config.json": 1, "model.safetensors": 1}
    c = contents(files, valid={"consolidated.safetensors"}, stale={"model.safetensors"},
                 sources={"consolidated.safetensors": ("consolidated.00.pth",)})
    assert c.usable(PTH_LAYOUT) and c.usable(MISTRAL_LAYOUT) and not c.usable(HF_LAYOUT)
    loose = contents(files, release=None, stale={"model.safetensors"})
    assert loose.usable(PTH_LAYOUT) and loose.usable(MISTRAL_LAYOUT) and not loose.usable(HF_LAYOUT)
    assert contents(files, release=None).usable(HF_LAYOUT)
    no_tok = dict(files)
    del no_tok["tokenizer.model"]
    assert contents(no_tok, stale={"tokenizer.model"}).usable(PTH_LAYOUT)  # no tokenizer, nothing stale read
    assert not contents(files, stale={"tokenizer.model"}, release=None).usable(PTH_LAYOUT)
    assert not contents({**files, "tokenizer.model": 1}).usable(PTH_LAYOUT)
    assert contents(files).tokenizer == "tokenizer.model" and contents(no_tok).tokenizer is None


def test_choose_by_purpose_and_say_so() -> None:
    files = {**TINY_FILES, "consolidated.safetensors": 1, "config.json": 1, "model.safetensors": 1}
    c = contents(files, release=None, layouts_=[PTH_LAYOUT, MISTRAL_LAYOUT, HF_LAYOUT])
    notes: list[str] = []
    assert c.choose("run", notes.append) == MISTRAL_LAYOUT
    assert c.choose("digest", notes.append) == PTH_LAYOUT
    assert c.choose("convert") == PTH_LAYOUT
    assert notes == ["/m holds several layouts (hf, mistral, pth); run uses mistral (consolidated.safetensors)",
                     "/m holds several layouts (hf, mistral, pth); digest uses pth (consolidated.00.pth)"]
    c = contents(files, release=None, layouts_=[PTH_LAYOUT, HF_LAYOUT])
    assert c.choose("run") == HF_LAYOUT
    single = contents(files, release=None, layouts_=[HF_LAYOUT])
    single.choose("run", notes.append)
    assert len(notes) == 2  # one layout: nothing to say
    c = contents(files, release=None, layouts_=[MISTRAL_LAYOUT, PTH_LAYOUT], stale={"consolidated.safetensors"})
    assert c.choose("run") == PTH_LAYOUT


@pytest.mark.parametrize("other", ["params.json", "config.json", "model.safetensors.index.json", "tokenizer.model",
                                   ".mdist", "evil.safetensors", "sub/x.bin"])
def test_choose_refuses_linked_side_files_and_weights(other: str) -> None:
    c = contents(TINY_FILES, others=[other], layouts_=[PTH_LAYOUT])
    with pytest.raises(InputError, match="is a symbolic link or special file; mdist never follows") as info:
        c.choose("run")
    assert str(info.value).startswith(f"/m/{other} is a symbolic link")


def test_choose_ignores_other_links() -> None:
    c = contents(TINY_FILES, others=["notes.txt", "sub/params.json"], layouts_=[PTH_LAYOUT])
    assert c.choose("run") == PTH_LAYOUT


def test_choose_refuses_a_release_with_foreign_weights() -> None:
    c = contents({**TINY_FILES, "evil.safetensors": 1}, layouts_=[PTH_LAYOUT])
    with pytest.raises(UnsafeContentError) as info:
        c.choose("run")
    assert str(info.value).startswith("/m looks like tiny-mistral but also holds evil.safetensors, which is not part")


def test_nothing_usable_says_why() -> None:
    def message(c: mf.FolderContents, purpose: str = "run") -> str:
        with pytest.raises(InputError) as info:
            c.choose(purpose)
        assert not isinstance(info.value, UnsafeContentError)
        return str(info.value)

    c = contents({}, release=None)
    c.problems.extend(["first problem", "second"])
    assert message(c) == "/m: first problem"
    assert message(contents({}, release=None), "convert") == "/m holds no consolidated.00.pth checkpoint (nor Mistral-layout safetensors)"
    assert message(contents({}, release=None), "digest").startswith("/m holds no model weights: expected params")
    assert message(contents({}, release=None)).endswith("or config.json with model.safetensors / "
                                                         "model.safetensors.index.json")
    stale = contents(TINY_FILES, release=None, stale={"consolidated.00.pth"}, layouts_=[PTH_LAYOUT])
    assert message(stale) == "/m: consolidated.00.pth was derived by mdist from files that have changed since"
    untrusted = contents({**TINY_FILES, "params.json": 3}, layouts_=[PTH_LAYOUT])
    assert message(untrusted) == "/m: params.json is not part of tiny-mistral (name or size differs)"
    other_purpose = contents({**TINY_FILES, "params.json": 3}, layouts_=[HF_LAYOUT])
    assert message(other_purpose, "convert") == "/m holds no consolidated.00.pth checkpoint (nor Mistral-layout safetensors)"


# --- recognising a release ---------------------------------------------------------------------------------

def test_the_release_is_recognised_by_its_weights_and_published_content(tmp_path: Path) -> None:
    folder = tiny_release(tmp_path / "m")
    files = mf.scan(folder)[0]
    assert mf.recognise(files, folder) is TINY
    assert mf.recognise(files) is TINY
    assert mf.recognise({"tokenizer.model": TINY_FILES["tokenizer.model"]}) is None  # no weights: not it
    assert mf.recognise({"consolidated.00.pth": 1, "params.json": TINY_FILES["params.json"]}) is None
    assert mf.recognise({}) is None


def test_names_alone_are_not_evidence(tmp_path: Path) -> None:
    loose = Manifest("loose", "t", {"a.bin": FileEntry("a.bin"), "b": FileEntry("b")}, False)
    from mdist.verify import manifest as manifest_module
    original = manifest_module.load_registry
    manifest_module.load_registry = lambda: (loose,)
    try:
        assert mf.recognise({"a.bin": 5, "b": 1}) is None  # no size and no JSON content to compare
        json_release = Manifest("j", "t", {"a.bin": FileEntry("a.bin"), "c.json": FileEntry("c.json", json={})},
                                False)
        manifest_module.load_registry = lambda: (json_release,)
        sized(tmp_path / "c.json", 2, b"{}")
        assert mf.recognise({"a.bin": 5, "c.json": 2}, tmp_path) is json_release
        assert mf.recognise({"a.bin": 5, "c.json": 2}) is None  # JSON content not looked at
        (tmp_path / "c.json").write_text('{"x": 1}')
        assert mf.recognise({"a.bin": 5, "c.json": 8}, tmp_path) is None
        no_weights = Manifest("nw", "t", {"c.json": FileEntry("c.json", size=2)}, False)
        manifest_module.load_registry = lambda: (no_weights,)
        assert mf.recognise({"c.json": 2}) is no_weights
    finally:
        manifest_module.load_registry = original


def test_changed_published_json_means_another_release(tmp_path: Path) -> None:
    folder = tiny_release(tmp_path / "m")
    params = json.loads((folder / "params.json").read_text())
    assert mf._published_json_differs(folder, TINY, mf.scan(folder)[0]) is None
    entry = TINY.files["params.json"]
    with_json = Manifest("t", "t", {**TINY.files, "params.json": FileEntry("params.json", entry.size, None, None,
                                                                           params)}, True)
    assert mf._published_json_differs(folder, with_json, mf.scan(folder)[0]) is None
    assert mf._published_json_differs(None, with_json, mf.scan(folder)[0]) is None
    assert mf._published_json_differs(folder, with_json, {}) is None
    (folder / "params.json").write_text(json.dumps({**params, "dim": 1}))
    assert mf._published_json_differs(folder, with_json, mf.scan(folder)[0]) == "params.json"
    (folder / "params.json").write_text("{")
    assert mf._published_json_differs(folder, with_json, mf.scan(folder)[0]) == "params.json"


def test_closest_release_and_what_differs(tmp_path: Path) -> None:
    folder = tiny_release(tmp_path / "m")
    sized(folder / "consolidated.00.pth", 5)
    release, differences = mf.closest_release(folder, mf.scan(folder)[0])
    assert release is TINY
    assert differences == [f"consolidated.00.pth size 5, expected {TINY_FILES['consolidated.00.pth']}"]
    (folder / "params.json").unlink()
    assert mf.closest_release(folder, mf.scan(folder)[0])[1][-1] == "params.json missing"
    assert mf.closest_release(folder, {"nothing.txt": 1}) == (None, [])
    hf = {"config.json": 1, "tokenizer.model": TINY_FILES["tokenizer.model"], "model.safetensors.index.json": 1}
    assert mf.closest_release(tmp_path, hf)[0] is TINY_HF


def test_closest_release_names_changed_json(tmp_path: Path) -> None:
    params_entry = FileEntry("params.json", None, None, None, {"dim": 2})
    release = Manifest("j", "t", {"params.json": params_entry}, True)
    from mdist.verify import manifest as manifest_module
    original = manifest_module.load_registry
    manifest_module.load_registry = lambda: (release,)
    mf_original = mf.load_registry
    mf.load_registry = manifest_module.load_registry
    try:
        sized(tmp_path / "params.json", 10, b'{"dim": 1}')
        assert mf.closest_release(tmp_path, {"params.json": 10}) == (
            release, ["params.json content differs from the published one"])
    finally:
        manifest_module.load_registry = original
        mf.load_registry = mf_original


def test_inspect_folder(tmp_path: Path) -> None:
    folder = tiny_release(tmp_path / "m")
    found = mf.inspect_folder(folder)
    assert found.release is TINY and found.path == folder and found.others == [] and found.blobs == {}
    assert found.layouts == [mf.Layout("pth", "params.json", ("consolidated.00.pth",))]
    assert mf.inspect_folder(folder, recognise_release=False).release is None
    assert mf.inspect_folder(folder, TINY_HF).release is TINY_HF


def test_derived_files_do_not_decide_the_release(tmp_path: Path) -> None:
    folder = tiny_release(tmp_path / "m")
    index = folder / "model.safetensors.index.json"
    sized(index, TINY_HF.files["model.safetensors.index.json"].size)
    sized(folder / "config.json", TINY_HF.files["config.json"].size)
    hf_weights = "model-00001-of-00001.safetensors"
    sized(folder / hf_weights, TINY_HF.files[hf_weights].size)
    derived.record_derived(folder, [index, folder / "config.json", folder / hf_weights],
                           [folder / "consolidated.00.pth"])
    assert mf.inspect_folder(folder).release is TINY


def test_model_path(tmp_path: Path) -> None:
    pth = sized(tmp_path / "m" / "consolidated.00.pth", 1)
    st = sized(tmp_path / "m" / "w.safetensors", 1)
    other = sized(tmp_path / "m" / "params.json", 1)
    assert mf.model_path(pth) == tmp_path / "m"
    assert mf.model_path(st) == tmp_path / "m"
    assert mf.model_path(tmp_path / "m") == tmp_path / "m"
    with pytest.raises(InputError, match="is not a model folder"):
        mf.model_path(other)
    with pytest.raises(InputError, match="does not exist"):
        mf.model_path(tmp_path / "nothing.pth")
    (tmp_path / "m" / "x.pth").mkdir()
    assert mf.model_path(tmp_path / "m" / "x.pth") == tmp_path / "m" / "x.pth"


def test_read_config(tmp_path: Path) -> None:
    shutil.copy(FIXTURE / "params.json", tmp_path / "params.json")
    config = mf.read_config(tmp_path, PTH_LAYOUT)
    assert config.dim == 256 and config.n_layers == 6
    with pytest.raises(InputError, match="has no params.json next to consolidated.00.pth"):
        mf.read_config(tmp_path, mf.Layout("pth", None, ("consolidated.00.pth",)))
    hf_config = {"hidden_size": 256, "num_hidden_layers": 6, "num_attention_heads": 8, "num_key_value_heads": 2,
                 "intermediate_size": 768, "rms_norm_eps": 1e-5, "vocab_size": 2048, "head_dim": 32,
                 "architectures": ["MistralForCausalLM"], "model_type": "mistral"}
    (tmp_path / "config.json").write_text(json.dumps(hf_config))
    assert mf.read_config(tmp_path, HF_LAYOUT).dim == 256
    (tmp_path / "params.json").write_text(json.dumps(hf_config))
    with pytest.raises(InputError):
        mf.read_config(tmp_path, PTH_LAYOUT)  # params.json is read as params, never as an HF config


def test_nothing_usable_names_a_stale_or_foreign_tokenizer() -> None:
    stale_tokenizer = contents(TINY_FILES, release=None, stale={"tokenizer.model"}, layouts_=[PTH_LAYOUT])
    with pytest.raises(InputError) as info:
        stale_tokenizer.choose("run")
    assert str(info.value) == "/m: tokenizer.model was derived by mdist from files that have changed since"
    foreign_tokenizer = contents({**TINY_FILES, "tokenizer.model": 5}, layouts_=[PTH_LAYOUT])
    with pytest.raises(InputError) as info:
        foreign_tokenizer.choose("run")
    assert str(info.value) == "/m: tokenizer.model is not part of tiny-mistral (name or size differs)"


def test_closest_release_weighs_a_matching_size_as_two_names(monkeypatch: pytest.MonkeyPatch) -> None:
    names = Manifest("names", "n", {p: FileEntry(p, 9) for p in ("x", "y", "z")}, True)
    size = Manifest("size", "s", {"x": FileEntry("x", 1), "w": FileEntry("w", 5)}, True)
    present = {"x": 1, "y": 1, "z": 1}
    monkeypatch.setattr(mf, "load_registry", lambda: (names, size))
    assert mf.closest_release(None, present)[0] is names  # 3 names against 1 name + 1 size: a tie, the first
    monkeypatch.setattr(mf, "load_registry", lambda: (size, names))
    assert mf.closest_release(None, present)[0] is size
    assert mf.closest_release(None, {"x": 1, "y": 1, "q": 1})[0] is size  # 1 + 2 against 2


def test_choose_containing_a_named_weight_file() -> None:
    files = {**TINY_FILES, "consolidated.safetensors": 1, "config.json": 1, "model.safetensors": 1}
    c = contents(files, release=None, layouts_=[PTH_LAYOUT, MISTRAL_LAYOUT, HF_LAYOUT])
    assert c.choose_containing("model.safetensors", "run") == HF_LAYOUT
    assert c.choose_containing("consolidated.00.pth", "run") == PTH_LAYOUT
    assert c.choose_containing("consolidated.safetensors", "digest") == MISTRAL_LAYOUT
    assert c.choose_containing("consolidated.00.pth", "convert") == PTH_LAYOUT
    assert c.choose_containing("consolidated.safetensors", "convert") == MISTRAL_LAYOUT  # to --layout hf
    with pytest.raises(InputError) as info:
        c.choose_containing("model.safetensors", "convert")
    assert str(info.value) == ("/m/model.safetensors is not the weights of a layout mdist can convert "
                               "(give the folder to let mdist choose)")
    with pytest.raises(InputError, match="^/m/params.json is not the weights of a layout mdist can run "):
        c.choose_containing("params.json", "run")


def test_choose_containing_refuses_what_choose_refuses() -> None:
    foreign = contents({**TINY_FILES, "evil.safetensors": 1}, layouts_=[PTH_LAYOUT])
    with pytest.raises(UnsafeContentError, match="also holds evil.safetensors"):
        foreign.choose_containing("consolidated.00.pth", "run")
    linked = contents(TINY_FILES, others=["params.json"], layouts_=[PTH_LAYOUT])
    with pytest.raises(InputError, match="is a symbolic link or special file"):
        linked.choose_containing("consolidated.00.pth", "run")


def test_choose_containing_an_unusable_layout_says_why() -> None:
    # the release's pth is usable, the named safetensors is not part of the release
    files = {**TINY_FILES, "consolidated.safetensors": 1}
    c = contents(files, stale={"consolidated.safetensors"}, layouts_=[MISTRAL_LAYOUT, PTH_LAYOUT])
    assert c.choose("run") == PTH_LAYOUT
    with pytest.raises(InputError) as info:
        c.choose_containing("consolidated.safetensors", "run")
    assert str(info.value) == "/m: consolidated.safetensors was derived by mdist from files that have changed since"


def test_an_executable_file_is_still_a_regular_file(tmp_path: Path) -> None:
    file = sized(tmp_path / "f", 2, b"ab")
    for mode in (0o755, 0o701, 0o600, 0o444):
        file.chmod(mode)
        assert derived._identity(file) == [2, os.lstat(file).st_mtime_ns, os.lstat(file).st_ino], oct(mode)


def test_a_missing_output_does_not_stop_the_others_being_recorded(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    source = sized(folder / "a.pth", 1, b"a")
    made = sized(folder / "b.safetensors", 1, b"b")
    derived.record_derived(folder, [folder / "gone.json", made], [source])
    assert derived.derived_state(folder).valid == {"b.safetensors"}


def test_hf_index_problems_name_the_index(tmp_path: Path) -> None:
    _, problems = layouts(tmp_path / "a", {"config.json": b"{}", "model.safetensors.index.json": b"{"})
    assert problems[0].startswith("model.safetensors.index.json is not valid JSON"), problems
    _, problems = layouts(tmp_path / "b", {"config.json": b"{}",
                                           "model.safetensors.index.json": b'{"weight_map": {"a": ".."}}'})
    assert problems == ["model.safetensors.index.json: '..' leads outside the folder"]


def test_a_key_that_cannot_be_created_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(path, flags, mode=0o777):  # what a read-only or full disk does (root writes everywhere here)
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(derived.os, "open", refuse)
    with pytest.raises(InputError) as info:
        derived._load_key(create=True)
    assert str(info.value) == f"cannot create mdist's key {tmp_path / 'state' / 'mdist' / 'derived.key'}: " \
                              "Permission denied"


def test_the_note_lists_every_weight_file_of_the_choice() -> None:
    shards = mf.Layout("hf", "config.json", ("s1.safetensors", "s2.safetensors"), ("model.safetensors.index.json",))
    files = {**TINY_FILES, "config.json": 1, "s1.safetensors": 1, "s2.safetensors": 1,
             "model.safetensors.index.json": 1}
    notes: list[str] = []
    contents(files, release=None, layouts_=[PTH_LAYOUT, shards]).choose("run", notes.append)
    assert notes == ["/m holds several layouts (hf, pth); run uses hf (s1.safetensors, s2.safetensors)"]


def test_a_shared_name_is_no_evidence_even_with_the_folder_at_hand(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    loose = Manifest("loose", "t", {"a.bin": FileEntry("a.bin"), "b": FileEntry("b")}, False)
    monkeypatch.setattr(mf, "identify", lambda files, eligible: (loose if eligible(loose) else None, []))
    sized(tmp_path / "a.bin", 5)
    assert mf.recognise({"a.bin": 5, "b": 1}, tmp_path) is None
    assert mf.recognise({"a.bin": 5, "b": 1}) is None


def test_inspect_folder_reads_published_json_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mdist.verify import manifest as manifest_module

    release = Manifest("j", "j", {"w.bin": FileEntry("w.bin", 3), "params.json": FileEntry("params.json",
                                                                                          json={"dim": 2})}, True)
    monkeypatch.setattr(manifest_module, "load_registry", lambda: (release,))
    folder = tmp_path / "m"
    sized(folder / "w.bin", 3)
    (folder / "params.json").write_text('{"dim": 2}')
    assert mf.inspect_folder(folder).release is release
    (folder / "params.json").write_text('{"dim": 1}')  # the published content differs: another model
    assert mf.inspect_folder(folder).release is None


def test_inspect_folder_keeps_the_problems(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    sized(folder / "config.json", 2, b"{}")
    sized(folder / "model.safetensors.index.json", 2, b"{}")
    found = mf.inspect_folder(folder)
    assert found.problems == ["model.safetensors.index.json has no weight_map"]
    with pytest.raises(InputError) as info:
        found.choose("run")
    assert str(info.value) == f"{folder}: model.safetensors.index.json has no weight_map"


def test_an_entry_that_vanishes_while_scanned_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Vanished:
        name, path = "gone.bin", str(tmp_path / "gone.bin")

        def stat(self, follow_symlinks=True):
            raise FileNotFoundError(2, "No such file or directory", self.path)

    monkeypatch.setattr(mf, "walk", lambda directory, skip: iter([("sub", [Vanished()])]))
    with pytest.raises(InputError) as info:
        mf.scan(tmp_path)
    assert str(info.value) == "cannot read sub/gone.bin: No such file or directory"


# --- signed state (resume data, the saved torrent) ------------------------------------------------------------

def test_signed_bytes_verify_only_here_for_the_same_bytes_and_purpose(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    assert not (tmp_path / "state" / "mdist" / "derived.key").exists()
    assert derived.signed_by_us(b"data", "0" * 64, "p") is False  # no key yet: nothing is ours
    assert not (tmp_path / "state" / "mdist" / "derived.key").exists()  # checking never makes a key
    mac = derived.sign_bytes(b"data", "resume x")
    key = (tmp_path / "state" / "mdist" / "derived.key").read_bytes()
    assert mac == hmac.new(key, b"mdist signed bytes\0resume x\0data", hashlib.sha256).hexdigest()
    assert derived.signed_by_us(b"data", mac, "resume x") is True
    assert derived.signed_by_us(b"datb", mac, "resume x") is False
    assert derived.signed_by_us(b"data", mac, "resume y") is False
    assert derived.signed_by_us(b"data", mac.upper(), "resume x") is False
    assert derived.signed_by_us(b"data", None, "resume x") is False
    assert derived.signed_by_us(b"data", "é" * 64, "resume x") is False  # not ASCII: no exception either
    assert derived.sign_bytes(b"data", "resume x") == mac
    assert derived.sign_bytes(b"", "a\udcff") != derived.sign_bytes(b"", "a")  # any purpose text is signable
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "elsewhere"))
    assert derived.signed_by_us(b"data", mac, "resume x") is False  # another machine's key


def test_signed_bytes_cannot_pass_for_a_derived_record() -> None:
    assert derived._SIGNED_BYTES == b"mdist signed bytes\0"
    key = b"k" * 32
    assert derived._bytes_mac(key, b"x", "p") == hmac.new(key, b"mdist signed bytes\0p\0x",
                                                          hashlib.sha256).hexdigest()


def test_an_unreadable_key_means_nothing_is_signed_by_us(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mac = derived.sign_bytes(b"data", "p")

    def unreadable(create: bool):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(derived, "_load_key", unreadable)
    assert derived.signed_by_us(b"data", mac, "p") is False


# --- raw pieces, Mistral shards, GGUF files, orphaned derivations (8b6ffda and after) -------------------------

def pieces(names: list[str]) -> tuple[dict[str, tuple[str, ...]], list[str]]:
    problems: list[str] = []
    return mf.split_pieces({name: 1 for name in names}, problems), problems


def test_split_pieces_in_numeric_order() -> None:
    names = [f"consolidated.00.pth-split{i}" for i in range(12)]
    assert pieces(names) == ({"consolidated.00.pth": tuple(names)}, [])  # split10 after split9, not after split1
    assert pieces(["consolidated.00.pth-split0"]) == ({"consolidated.00.pth": ("consolidated.00.pth-split0",)}, [])
    both = ["consolidated.01.pth-split1", "consolidated.01.pth-split0", "consolidated.00.pth-split0", "other",
            "consolidated.00.pth"]
    assert pieces(both) == ({"consolidated.00.pth": ("consolidated.00.pth-split0",),
                             "consolidated.01.pth": ("consolidated.01.pth-split0", "consolidated.01.pth-split1")}, [])
    zero_padded = ["consolidated.00.pth-split00", "consolidated.00.pth-split01", "consolidated.00.pth-split0002"]
    assert pieces(zero_padded) == ({"consolidated.00.pth": tuple(zero_padded)}, [])
    for name in ("consolidated.00.pth-split", "consolidated.00.pth-split12345", "consolidated.00.pth-splitx",
                 "xconsolidated.00.pth-split0", "consolidated.00.pth-split0\n", "consolidated.0.pth-split0",
                 "consolidated.00.safetensors-split0", "consolidated.00.pth.split0", "sub/consolidated.00.pth-split0"):
        assert pieces([name]) == ({}, []), name
    assert pieces(["consolidated.00.pth-split9999"])[1] == [
        "piece 0 of consolidated.00.pth is missing: the pieces cannot be joined"]


def test_split_pieces_problems() -> None:
    assert pieces(["consolidated.00.pth-split0", "consolidated.00.pth-split2", "consolidated.00.pth-split3"]) == (
        {}, ["piece 1 of consolidated.00.pth is missing, after consolidated.00.pth-split0: the pieces cannot be joined"])
    assert pieces(["consolidated.00.pth-split1", "consolidated.00.pth-split2"]) == (
        {}, ["piece 0 of consolidated.00.pth is missing: the pieces cannot be joined"])
    assert pieces(["consolidated.00.pth-split0", "consolidated.00.pth-split1", "consolidated.00.pth-split3",
                   "consolidated.00.pth-split5"]) == (
        {}, ["piece 2 of consolidated.00.pth is missing, after consolidated.00.pth-split1: the pieces cannot be joined"])
    # one number twice: one problem, however many times, and no pieces; other checkpoints' pieces stand
    assert pieces(["consolidated.00.pth-split0", "consolidated.00.pth-split00", "consolidated.00.pth-split000",
                   "consolidated.00.pth-split1", "consolidated.00.pth-split01", "consolidated.01.pth-split0"]) == (
        {"consolidated.01.pth": ("consolidated.01.pth-split0",)},
        ["consolidated.00.pth-split00 and consolidated.00.pth-split0 are both piece 0 of consolidated.00.pth"])
    doubled_and_missing = pieces(["consolidated.00.pth-split0", "consolidated.00.pth-split00",
                                  "consolidated.00.pth-split5"])
    assert doubled_and_missing == ({}, ["consolidated.00.pth-split00 and consolidated.00.pth-split0 are both piece 0 "
                                        "of consolidated.00.pth"])
    two = pieces(["consolidated.00.pth-split1", "consolidated.01.pth-split1"])
    assert two == ({}, ["piece 0 of consolidated.00.pth is missing: the pieces cannot be joined",
                        "piece 0 of consolidated.01.pth is missing: the pieces cannot be joined"])


def shards(names: list[str]) -> tuple[tuple[str, ...], list[str]]:
    problems: list[str] = []
    return mf._mistral_shards({name: 1 for name in names}, problems), problems


def test_mistral_shards() -> None:
    three = [f"consolidated-0000{i}-of-00003.safetensors" for i in (3, 1, 2)]
    assert shards(three) == (tuple(sorted(three)), [])
    assert shards(["consolidated-00001-of-00001.safetensors", "x"]) == (("consolidated-00001-of-00001.safetensors",), [])
    assert shards([]) == ((), []) and shards(["consolidated.safetensors", "consolidated-1-of-1.safetensors"]) == ((), [])
    assert shards(three[:2]) == ((), ["consolidated-00002-of-00003.safetensors is missing"])
    assert shards(three[1:]) == ((), ["consolidated-00003-of-00003.safetensors is missing"])
    assert shards([three[0], three[2]]) == ((), ["consolidated-00001-of-00003.safetensors is missing"])
    assert shards([three[0]]) == ((), ["consolidated-00001-of-00003.safetensors is missing"])  # the first missing
    assert shards(three + ["consolidated-00004-of-00003.safetensors"]) == (
        (), ["the consolidated-*-of-*.safetensors shards disagree on their count"])
    assert shards(["consolidated-00001-of-00002.safetensors", "consolidated-00002-of-00002.safetensors",
                   "consolidated-00001-of-00001.safetensors"]) == (
        (), ["the consolidated-*-of-*.safetensors shards disagree on their count"])
    assert shards(["consolidated-00000-of-00001.safetensors", "consolidated-00001-of-00001.safetensors"]) == (
        (), ["the consolidated-*-of-*.safetensors shards disagree on their count"])


def test_find_layouts_of_pieces_shards_and_gguf(tmp_path: Path) -> None:
    found, problems = layouts(tmp_path / "a", {
        "params.json": b"{}", "consolidated.00.pth-split1": b"1", "consolidated.00.pth-split0": b"0",
        "consolidated-00002-of-00002.safetensors": b"2", "consolidated-00001-of-00002.safetensors": b"1",
        "consolidated.safetensors": b"s", "b.gguf": b"g", "a.gguf": b"g", "sub/c.gguf": b"g", "d.gguf.part": b""})
    pieces_, _ = pieces(["consolidated.00.pth-split0", "consolidated.00.pth-split1"])
    files, _, _ = mf.scan(tmp_path / "a")
    found = mf._find_layouts(tmp_path / "a", files, problems, pieces_)
    assert problems == []
    assert found == [mf.Layout("pth", "params.json", ("consolidated.00.pth-split0", "consolidated.00.pth-split1"),
                               joined="consolidated.00.pth"),
                     mf.Layout("mistral", "params.json", ("consolidated.safetensors",)),
                     mf.Layout("mistral", "params.json", ("consolidated-00001-of-00002.safetensors",
                                                          "consolidated-00002-of-00002.safetensors")),
                     mf.Layout("gguf", None, ("a.gguf",)), mf.Layout("gguf", None, ("b.gguf",))]
    # joined already (cat): the file itself is the layout, its pieces are not a second one
    files["consolidated.00.pth"] = 2
    assert mf._find_layouts(tmp_path / "a", files, [], pieces_)[0] == mf.Layout(
        "pth", "params.json", ("consolidated.00.pth",))
    assert [l.kind for l in mf._find_layouts(tmp_path / "a", files, [], pieces_)].count("pth") == 1
    # shards without params.json are no layout; a shard missing is a problem
    problems = []
    assert mf._find_layouts(tmp_path, {"consolidated-00001-of-00002.safetensors": 1}, problems) == []
    assert problems == []
    assert mf._find_layouts(tmp_path, {"params.json": 1, "consolidated-00001-of-00002.safetensors": 1}, problems) == []
    assert problems == ["consolidated-00002-of-00002.safetensors is missing"]


def piece_release(size: int | None = 30) -> Manifest:
    return Manifest("pieces", "t", {"consolidated.00.pth": FileEntry("consolidated.00.pth", size=size),
                                    "params.json": FileEntry("params.json", size=2)}, False)


def test_pieces_are_judged_as_the_file_they_join_into() -> None:
    files = {"consolidated.00.pth-split0": 10, "consolidated.00.pth-split1": 20, "params.json": 2, "x.pth-split0": 5}
    c = contents(files, release=piece_release())
    c.pieces = {"consolidated.00.pth": ("consolidated.00.pth-split0", "consolidated.00.pth-split1")}
    assert c.joined_name("consolidated.00.pth-split1") == "consolidated.00.pth"
    assert c.joined_name("consolidated.00.pth") is None and c.joined_name("x.pth-split0") is None
    assert c.in_release("consolidated.00.pth-split0") and c.in_release("consolidated.00.pth-split1")
    assert c.in_release("params.json") and not c.in_release("x.pth-split0")
    assert not c.in_release("consolidated.00.pth")  # not here: its size is not the pieces'
    assert c.foreign_weights() == ["x.pth-split0"]
    c.release = piece_release(31)
    assert not c.in_release("consolidated.00.pth-split0") and c.foreign_weights() == [
        "consolidated.00.pth-split0", "consolidated.00.pth-split1", "x.pth-split0"]
    c.release = piece_release(None)
    assert c.in_release("consolidated.00.pth-split1")
    c.release = None
    assert not c.in_release("consolidated.00.pth-split1")


def test_with_joined() -> None:
    files = {"consolidated.00.pth-split0": 10, "consolidated.00.pth-split1": 20, "params.json": 2}
    split = {"consolidated.00.pth": ("consolidated.00.pth-split0", "consolidated.00.pth-split1")}
    assert mf.with_joined(files, split) == {"params.json": 2, "consolidated.00.pth": 30}
    assert mf.with_joined(files, {}) is files
    assert mf.with_joined({**files, "consolidated.00.pth": 7}, split) == {"params.json": 2, "consolidated.00.pth": 7}
    # files without a piece (derived ones left out by the caller): no joined file
    assert mf.with_joined({"consolidated.00.pth-split0": 10, "params.json": 2}, split) == {"params.json": 2}


def test_a_release_is_recognised_through_its_pieces(tmp_path: Path) -> None:
    folder = tiny_release(tmp_path / "m")
    size = TINY.files["consolidated.00.pth"].size
    (folder / "consolidated.00.pth").unlink()
    sized(folder / "consolidated.00.pth-split0", 1000)
    sized(folder / "consolidated.00.pth-split1", size - 1000)
    c = mf.inspect_folder(folder)
    assert c.release is not None and c.release.name == "tiny-mistral"
    assert c.pieces == {"consolidated.00.pth": ("consolidated.00.pth-split0", "consolidated.00.pth-split1")}
    assert c.choose("digest") == mf.Layout("pth", "params.json", ("consolidated.00.pth-split0",
                                                                    "consolidated.00.pth-split1"),
                                           joined="consolidated.00.pth")
    sized(folder / "consolidated.00.pth-split1", size - 999)
    assert mf.inspect_folder(folder).release is None
    sized(folder / "consolidated.00.pth-split3", 1)
    c = mf.inspect_folder(folder)
    assert c.pieces == {} and c.problems == [
        "piece 2 of consolidated.00.pth is missing, after consolidated.00.pth-split1: the pieces cannot be joined"]


def test_a_file_beside_its_own_pieces_is_refused() -> None:
    files = {**TINY_FILES, "consolidated.00.pth-split0": 1}
    c = contents(files, release=None, layouts_=[PTH_LAYOUT])
    c.pieces = {"consolidated.00.pth": ("consolidated.00.pth-split0",)}
    with pytest.raises(InputError) as info:
        c.choose("run")
    assert str(info.value) == ("/m holds both consolidated.00.pth and its raw pieces (consolidated.00.pth-split0 ...): "
                               "mdist will not guess which to read; remove one")
    c.pieces = {"consolidated.01.pth": ("consolidated.00.pth-split0",)}
    assert c.choose("run") == PTH_LAYOUT


def test_links_below_the_top_level_matter_in_a_known_release_only() -> None:
    assert contents(TINY_FILES, release=None, others=["sub/x.bin", "sub/params.json"],
                    layouts_=[PTH_LAYOUT]).choose("run") == PTH_LAYOUT
    for other in ("x.bin", "params.json"):
        with pytest.raises(InputError) as info:
            contents(TINY_FILES, release=None, others=[other], layouts_=[PTH_LAYOUT]).choose("run")
        assert str(info.value) == (f"/m/{other} is a symbolic link or special file; mdist never follows those in a "
                                   "model folder (replace it by the file itself)")
    with pytest.raises(InputError) as info:
        contents(TINY_FILES, others=["notes.txt", "sub/x.bin"], layouts_=[PTH_LAYOUT]).choose("run")
    assert str(info.value).startswith("/m/sub/x.bin is a symbolic link or special file")
    assert contents(TINY_FILES, others=["sub/notes.txt"], layouts_=[PTH_LAYOUT]).choose("run") == PTH_LAYOUT


def test_no_note_when_the_other_layouts_are_the_sources_of_the_chosen_one() -> None:
    files = {**TINY_FILES, "consolidated.safetensors": 1, "config.json": 1, "model.safetensors": 1}
    made = {"consolidated.safetensors": ("consolidated.00.pth", "params.json")}
    notes: list[str] = []
    c = contents(files, release=None, layouts_=[PTH_LAYOUT, MISTRAL_LAYOUT], valid=made, sources=made)
    assert c.choose("run", notes.append) == MISTRAL_LAYOUT and notes == []  # the pth is what it was made from
    assert c.choose("digest", notes.append) == PTH_LAYOUT
    assert notes == ["/m holds several layouts (mistral, pth); digest uses pth (consolidated.00.pth)"]
    notes.clear()
    c = contents(files, release=None, layouts_=[PTH_LAYOUT, MISTRAL_LAYOUT, HF_LAYOUT], valid=made, sources=made)
    assert c.choose("run", notes.append) == MISTRAL_LAYOUT
    assert notes == ["/m holds several layouts (hf, mistral, pth); run uses mistral (consolidated.safetensors)"]
    notes.clear()
    # made from something else, or not (validly) derived: the pth is another layout
    for valid, sources in ((made, {"consolidated.safetensors": ("other.pth",)}), ({}, made)):
        c = contents(files, release=None, layouts_=[PTH_LAYOUT, MISTRAL_LAYOUT], valid=valid, sources=sources)
        c.choose("run", notes.append)
        assert notes == ["/m holds several layouts (mistral, pth); run uses mistral (consolidated.safetensors)"]
        notes.clear()
    only_weights = {"consolidated.safetensors": ("consolidated.00.pth",)}  # exactly the pth's weights
    c = contents(files, release=None, layouts_=[PTH_LAYOUT, MISTRAL_LAYOUT], valid=only_weights, sources=only_weights)
    assert c.choose("run", notes.append) == MISTRAL_LAYOUT and notes == []
    two_pth = mf.Layout("pth", "params.json", ("consolidated.00.pth", "consolidated.01.pth"))
    c = contents(files, release=None, layouts_=[two_pth, MISTRAL_LAYOUT], valid=made, sources=made)
    c.choose("run", notes.append)
    assert len(notes) == 1  # only one of its weight files is a source: another layout


def test_outdated_is_stale_but_not_orphaned() -> None:
    files = {**TINY_FILES, "consolidated.safetensors": 1}
    state = derived.DerivedState(frozenset(), frozenset({"consolidated.safetensors"}), {},
                                 frozenset({"consolidated.safetensors"}))
    c = mf.FolderContents(Path("/m"), files, [], [MISTRAL_LAYOUT], state, None)
    assert not c.outdated("consolidated.safetensors") and c.usable(MISTRAL_LAYOUT)
    assert c.choose("run") == MISTRAL_LAYOUT
    c.derived = derived.DerivedState(frozenset(), frozenset({"consolidated.safetensors"}), {})
    assert not c.outdated("consolidated.safetensors") and c.usable(MISTRAL_LAYOUT)  # copied here: a file like any
    c.derived = derived.DerivedState(frozenset(), frozenset({"consolidated.safetensors"}), {},
                                     remakeable=frozenset({"consolidated.safetensors"}))  # its source is here
    assert c.outdated("consolidated.safetensors") and not c.usable(MISTRAL_LAYOUT)
    assert not c.outdated("params.json")
    c.release = TINY  # a known release asks more: an orphan is neither in it nor derived from it
    c.derived = state
    assert not c.usable(MISTRAL_LAYOUT)


def test_nothing_to_convert_names_both_layouts() -> None:
    with pytest.raises(InputError) as info:
        contents({"config.json": 1, "model.safetensors": 1}, release=None, layouts_=[HF_LAYOUT]).choose("convert")
    assert str(info.value) == "/m holds no consolidated.00.pth checkpoint (nor Mistral-layout safetensors)"


def test_an_orphaned_derivation(tmp_path: Path) -> None:
    """Stale only because its sources were deleted (convert SRC --out DIR, SRC removed): orphaned; a source
    edited, replaced, or the output itself changed: stale only."""
    folder = tmp_path / "m"
    kept = sized(folder / "params.json", 2, b"{}")
    gone = sized(tmp_path / "src" / "consolidated.00.pth", 10, b"source")
    output = sized(folder / "consolidated.safetensors", 4, b"made")
    derived.record_derived(folder, [output], [kept, gone])
    assert derived.derived_state(folder).orphaned == frozenset()  # valid
    gone.unlink()
    state = derived.derived_state(folder)
    assert (state.valid, state.stale, state.orphaned) == (frozenset(), {"consolidated.safetensors"},
                                                          {"consolidated.safetensors"})
    kept.unlink()
    assert derived.derived_state(folder).orphaned == {"consolidated.safetensors"}  # every source gone
    sized(kept, 2, b"{}")  # back, but another file (inode, mtime)
    state = derived.derived_state(folder)
    assert state.stale == {"consolidated.safetensors"} and state.orphaned == frozenset()
    derived.record_derived(folder, [output], [kept, sized(gone, 10, b"source")])
    gone.unlink()
    sized(output, 5, b"made!")  # the output itself changed
    state = derived.derived_state(folder)
    assert state.stale == {"consolidated.safetensors"} and state.orphaned == frozenset()


def test_only_deleted(tmp_path: Path) -> None:
    present = sized(tmp_path / "a", 3, b"abc")
    identity = derived._identity(present)
    assert derived._only_deleted(tmp_path, {"a": identity, "gone": [1, 2, 3], str(tmp_path / "gone2"): [1, 2, 3]})
    assert derived._only_deleted(tmp_path, {str(present): identity}) and derived._only_deleted(tmp_path, {})
    assert not derived._only_deleted(tmp_path, {"gone": [1, 2, 3], "a": [3, 0, 0]})
    assert not derived._only_deleted(tmp_path, {str(present): [3, 0, 0]})  # absolute: that file, not one in tmp_path
    assert not derived._only_deleted(tmp_path, {"gone": [1], 5: [1]})  # a name that is not text: not ours
    (tmp_path / "sub").mkdir()
    assert derived._only_deleted(tmp_path, {"sub": [1, 2, 3]})  # not a regular file: no identity, as gone


# --- an unfinished torrent download, the remedy for a foreign file (after 46a061a) ---------------------------

def resume_data(have: list[bool], pieces: int | None = 3) -> bytes:
    import libtorrent as lt

    params = lt.add_torrent_params()
    if pieces is None:
        params.info_hashes = lt.info_hash_t(lt.sha1_hash(bytes(range(20))))
    else:
        info = {b"name": b"a", b"length": 16384 * pieces, b"piece length": 16384, b"pieces": b"\1" * 20 * pieces}
        params.ti = lt.torrent_info(lt.bencode({b"info": info}))
    params.have_pieces = have
    return lt.write_resume_data_buf(params)


def test_pieces_received(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    resume = tmp_path / "resume.fastresume"
    resume.write_bytes(resume_data([True, False, True]))
    assert mf._pieces_received(resume) == (2, 3)  # the torrent's pieces, not the padded bit field
    resume.write_bytes(resume_data([True, True, True]))
    assert mf._pieces_received(resume) == (3, 3)
    resume.write_bytes(resume_data([True, False, True], pieces=None))  # no torrent in it: the bit field's length
    assert mf._pieces_received(resume) == (2, 8)
    resume.write_bytes(resume_data([], pieces=None))
    assert mf._pieces_received(resume) is None  # nothing to count
    resume.write_bytes(b"not bencoded")
    assert mf._pieces_received(resume) is None
    assert mf._pieces_received(tmp_path / "missing") is None
    resume.write_bytes(resume_data([True, False, True]))
    monkeypatch.setattr(mf, "MAX_RESUME_READ", resume.stat().st_size)
    assert mf._pieces_received(resume) == (2, 3)  # at the limit: read
    monkeypatch.setattr(mf, "MAX_RESUME_READ", resume.stat().st_size - 1)
    assert mf._pieces_received(resume) is None


def test_unfinished_download(tmp_path: Path) -> None:
    folder = tmp_path / "my model"
    state = folder / ".mdist"
    state.mkdir(parents=True)
    assert mf.unfinished_download(folder) is None  # no resume data
    (state / "resume.fastresume").write_bytes(resume_data([True, False, False]))
    assert mf.unfinished_download(folder) == (
        f"{folder} holds a torrent download that has not finished (33 % received: 1 of 3 pieces; no .mdist/"
        "complete.json): its files are not whole yet. Resume it by running the same `mdist fetch` command again; it "
        "fetches only what is missing")
    (state / "release.torrent").write_bytes(b"d")
    assert mf.unfinished_download(folder).endswith(
        f"again (or `mdist fetch '{state / 'release.torrent'}' --out '{folder}'`); it fetches only what is missing")
    (state / "resume.fastresume").write_bytes(resume_data([True, True, False]))
    assert "(66 % received: 2 of 3 pieces;" in mf.unfinished_download(folder)  # rounded down
    (state / "resume.fastresume").write_bytes(b"x")
    assert "(not every piece received; no .mdist/complete.json)" in mf.unfinished_download(folder)
    (state / "resume.fastresume").write_bytes(resume_data([True, True, True]))
    assert mf.unfinished_download(folder) is None  # every piece: only the final check was missed
    (state / "resume.fastresume").write_bytes(resume_data([True, False, False]))
    (state / "complete.json").write_bytes(b"{}")
    assert mf.unfinished_download(folder) is None
    (state / "complete.json").unlink()
    (state / "complete.json").symlink_to(tmp_path / "nowhere")  # there, even as a dangling link
    assert mf.unfinished_download(folder) is None
    (state / "complete.json").unlink()
    (state / "resume.fastresume").unlink()
    (state / "resume.fastresume").mkdir()
    assert mf.unfinished_download(folder) is None


def test_the_remedy_for_a_foreign_weight_file() -> None:
    hf = mf.Layout("hf", "config.json", ("model.safetensors",))
    nested = mf.Layout("hf", "config.json", ("sub/model.safetensors",))
    c = contents(TINY_FILES, layouts_=[PTH_LAYOUT, MISTRAL_LAYOUT, hf, nested])
    assert c._remedy("consolidated.safetensors") == (
        "remove it, or make it again from the verified release: `mdist convert /m --force`")
    assert c._remedy("model.safetensors") == (
        "remove it, or make it again from the verified release: `mdist convert /m --layout hf --force`")
    for name in ("consolidated.00.pth", "sub/model.safetensors", "evil.bin"):
        assert c._remedy(name) == "remove it; `mdist verify /m` lists what the folder holds"
    assert c._kind_of("model.safetensors") == "hf" and c._kind_of("evil.bin") is None


def test_model_path_of_a_gguf_file_or_a_piece(tmp_path: Path) -> None:
    for name in ("m.gguf", "consolidated.00.pth-split3", "consolidated.safetensors", "consolidated.00.pth"):
        assert mf.model_path(sized(tmp_path / "f" / name, 1)) == tmp_path / "f", name
    with pytest.raises(InputError) as info:
        mf.model_path(sized(tmp_path / "f" / "m.GGUF", 1))
    assert str(info.value) == f"{tmp_path / 'f' / 'm.GGUF'} is not a model folder"


def test_choose_refuses_an_unfinished_download_first(tmp_path: Path) -> None:
    """A folder a torrent is still filling holds files of their full size with holes: every purpose is
    refused with the reason (how many pieces, how to resume) before its files are judged."""
    folder = tmp_path / "m"
    (folder / ".mdist").mkdir(parents=True)
    (folder / ".mdist" / "resume.fastresume").write_bytes(resume_data([True, False, False]))
    c = mf.FolderContents(folder, dict(TINY_FILES), ["params.json"], [PTH_LAYOUT, MISTRAL_LAYOUT],
                          derived.NONE, TINY)  # a link at params.json too: the download is named first
    for purpose in ("run", "convert", "digest"):
        with pytest.raises(InputError) as info:
            c.choose(purpose)
        assert str(info.value) == mf.unfinished_download(folder)
        assert "33 % received: 1 of 3 pieces" in str(info.value)
    (folder / ".mdist" / "complete.json").write_bytes(b"{}")
    with pytest.raises(InputError, match="params.json is a symbolic link"):
        c.choose("run")


def test_remakeable_only_from_a_source_still_in_the_folder(tmp_path: Path) -> None:
    """A stale derivation can be made again where a source it was made from is in the folder (named
    relative to it and present); one whose sources are elsewhere (absolute) or deleted cannot."""
    folder = tmp_path / "m"
    inside = sized(folder / "consolidated.00.pth", 10, b"source")
    outside = sized(tmp_path / "src" / "params.json", 2, b"{}")
    output = sized(folder / "consolidated.safetensors", 4, b"made")
    derived.record_derived(folder, [output], [inside, outside])
    assert derived.derived_state(folder).remakeable == frozenset()  # valid: nothing to remake
    sized(outside, 3, b"{ }")  # a source elsewhere changed; the one inside is still here
    state = derived.derived_state(folder)
    assert (state.stale, state.remakeable) == ({"consolidated.safetensors"}, {"consolidated.safetensors"})
    inside.unlink()  # the only source in the folder gone: stale, not remakeable here
    state = derived.derived_state(folder)
    assert (state.stale, state.remakeable) == ({"consolidated.safetensors"}, frozenset())
    derived.record_derived(folder, [output], [outside])  # made from elsewhere only
    sized(outside, 2, b"[]")
    sized(folder / str(outside).lstrip("/"), 2, b"[]")  # the absolute name, as if it were relative, is here
    state = derived.derived_state(folder)
    assert (state.stale, state.remakeable) == ({"consolidated.safetensors"}, frozenset())


def test_the_key_is_never_written_through_a_planted_link(tmp_path: Path, monkeypatch) -> None:
    """The key's private name is opened with O_EXCL | O_NOFOLLOW: a link planted there (its name
    guessed) never makes mdist write the key somewhere else."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setattr(derived.secrets, "token_hex", lambda n: "guessed")
    key_path = derived._key_path()
    key_path.parent.mkdir(parents=True)
    target = tmp_path / "elsewhere"
    (key_path.parent / f".{key_path.name}.{os.getpid()}.guessed").symlink_to(target)
    with pytest.raises(InputError, match="derived.key"):
        derived.signing_key()
    assert not os.path.lexists(target) and not os.path.lexists(key_path)


def test_the_private_key_file_gone_before_its_clean_up(tmp_path: Path, monkeypatch) -> None:
    """Removing the private name after the link is best effort: already gone (another process's
    clean-up) is no error, and the key linked into place is the one returned."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    real_link = os.link

    def link_then_lose(source, destination, *, follow_symlinks=True):
        real_link(source, destination, follow_symlinks=follow_symlinks)
        os.unlink(source)

    monkeypatch.setattr(derived.os, "link", link_then_lose)
    key = derived.signing_key()
    assert len(key) == 32 and derived._key_path().read_bytes() == key
    assert [p.name for p in derived._key_path().parent.iterdir()] == ["derived.key"]


def test_a_release_in_pieces_is_recognised_without_its_derived_files(tmp_path: Path) -> None:
    """Files mdist derived here are left out when the release is recognised (they may differ from the
    release's own), and the raw pieces count as the file they join into there too."""
    folder = tiny_release(tmp_path / "m")
    size = TINY.files["consolidated.00.pth"].size
    (folder / "consolidated.00.pth").unlink()
    sized(folder / "consolidated.00.pth-split0", 1000)
    sized(folder / "consolidated.00.pth-split1", size - 1000)
    tokenizer = sized(folder / "tokenizer.model", TINY.files["tokenizer.model"].size + 1, b"t")
    derived.record_derived(folder, [tokenizer], [folder / "params.json"])  # derived here, another size
    c = mf.inspect_folder(folder)
    assert c.release is not None and c.release.name == "tiny-mistral"


def test_a_named_stale_file_outside_a_release_says_why() -> None:
    """`mdist run DIR/consolidated.safetensors` where that file is a stale conversion (its .pth, still
    here, changed): the named layout's own reason, not the first layout's (was an internal IndexError)."""
    files = {**TINY_FILES, "consolidated.safetensors": 1}
    stale = frozenset({"consolidated.safetensors"})
    state = derived.DerivedState(frozenset(), stale, {}, remakeable=stale)
    c = mf.FolderContents(Path("/m"), files, [], [PTH_LAYOUT, MISTRAL_LAYOUT], state, None)
    with pytest.raises(InputError) as info:
        c.choose_containing("consolidated.safetensors", "run")
    assert str(info.value) == "/m: consolidated.safetensors was derived by mdist from files that have changed since"
    assert c.choose_containing("consolidated.00.pth", "run") == PTH_LAYOUT
    two = mf.Layout("pth", "params.json", ("consolidated.00.pth", "consolidated.01.pth"))
    c = mf.FolderContents(Path("/m"), {**files, "consolidated.01.pth": 1}, [], [two], state, None)
    c.usable = lambda layout: False  # no reason of either kind: the layout is named
    with pytest.raises(InputError) as info:
        c.choose_containing("consolidated.01.pth", "digest")
    assert str(info.value) == "/m: its pth layout (consolidated.00.pth, consolidated.01.pth) cannot be used"
