"""mdist.verify.manifest, in process: each check of a manifest at its edges, with its message.

Written for mutation testing (bench/mutation.py, docs/testing.md): tests/test_documents_hostile.py
checks hostile manifests against the JSON schema; these pin each bound, pattern and lookup.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from mdist.errors import InputError, UnsafeContentError
from mdist.jsonio import MAX_JSON_BYTES
from mdist.paths import UnsafePathError
from mdist.verify import manifest as mm

SHA = "a" * 64
MD5 = "b" * 32
BASE = {"schema": "mdist-manifest/1", "name": "m", "files": {"a": {"size": 1, "sha256": SHA}}}


def parse(**changes) -> mm.Manifest:
    data = copy.deepcopy(BASE)
    for key, value in changes.items():
        if value is DROP:
            data.pop(key, None)
        else:
            data[key] = value
    return mm.parse_manifest(data, "doc")


DROP = object()


def refused(match: str, **changes) -> str:
    with pytest.raises(InputError) as info:
        parse(**changes)
    assert not isinstance(info.value, UnsafeContentError)
    assert match in str(info.value), str(info.value)
    return str(info.value)


def test_constants() -> None:
    assert mm.SCHEMA_ID == "mdist-manifest/1"
    assert (mm.MAX_NAME_CHARS, mm.MAX_TEXT_CHARS, mm.MAX_FILE_SIZE, mm.MAX_TRACKERS) == (100, 65536, 2**63 - 1, 256)


def test_a_minimal_manifest() -> None:
    m = mm.parse_manifest({"schema": "mdist-manifest/1", "name": "x"})
    assert (m.name, m.title, m.files, m.files_complete, m.sources, m.tensor_digest, m.origin) == (
        "x", "x", {}, False, {}, None, "")
    assert m.raw == {"schema": "mdist-manifest/1", "name": "x"}
    assert m.btih is None and m.btmh is None


def test_a_full_manifest() -> None:
    data = {
        "schema": "mdist-manifest/1", "name": "full-1.0_x", "title": "Full", "publisher": "p", "license": "l",
        "released": "2024-01-31", "notes": "line one\nline\ttwo", "files_complete": True,
        "files": {"a/b.json": {"size": 0, "sha256": SHA, "md5": MD5, "json": {"k": [1]}}, "c": {}},
        "archives": [{"name": "x.tar", "md5": MD5, "sha256": SHA, "note": "n\nm"}],
        "tensor_digest": "c" * 64,
        "sources": {"magnet": "magnet:?xt=urn:btih:" + "d" * 40, "btih": "d" * 40, "btmh": "1220" + "e" * 64,
                    "display_name": "D", "trackers": ["udp://t:1/announce", "https://t/a", "http://t", "ws://t",
                                                       "wss://t"],
                    "hub": {"repo": "owner/name", "revision": "refs/pr/1"}, "hub_alternative": "other"},
        "provenance": [{"fields": ["files", "sources"], "source": "s\nt"}],
    }
    m = mm.parse_manifest(data, "origin.json")
    assert m.name == "full-1.0_x" and m.title == "Full" and m.files_complete is True and m.origin == "origin.json"
    assert m.files == {"a/b.json": mm.FileEntry("a/b.json", 0, SHA, MD5, {"k": [1]}), "c": mm.FileEntry("c")}
    assert m.tensor_digest == "c" * 64 and m.btih == "d" * 40 and m.btmh == "1220" + "e" * 64
    assert m.sources is data["sources"] and m.raw is data


def test_file_entry_checkable() -> None:
    assert not mm.FileEntry("a").checkable
    assert mm.FileEntry("a", size=0).checkable
    assert mm.FileEntry("a", sha256=SHA).checkable
    assert mm.FileEntry("a", md5=MD5).checkable
    assert mm.FileEntry("a", json=0).checkable
    assert mm.FileEntry("a", json=False).checkable
    assert not mm.FileEntry("a", sha256="", md5="").checkable


@pytest.mark.parametrize("data", [None, [], "x", {"name": "m"}, {"schema": "mdist-manifest/2", "name": "m"},
                                  {"schema": "mdist-manifest/1 ", "name": "m"}])
def test_not_a_manifest(data) -> None:
    with pytest.raises(InputError) as info:
        mm.parse_manifest(data)
    assert str(info.value) == "manifest: not an mdist-manifest/1 manifest"
    with pytest.raises(InputError, match="^x.json: not an"):
        mm.parse_manifest(data, "x.json")


@pytest.mark.parametrize("name", ["a", "0", "a" * 100, "a.b_c-d", "mistral-7b-v0.1", "1a"])
def test_release_names_accepted(name: str) -> None:
    assert mm.check_release_name(name) == name
    assert parse(name=name).name == name


@pytest.mark.parametrize("name", ["", "a" * 101, "A", "aB", "-a", ".a", "_a", "a b", "a/b", "a\n", "é", None, 1,
                                  "a\u0130"])
def test_release_names_refused(name) -> None:
    with pytest.raises(InputError) as info:
        mm.check_release_name(name)
    assert str(info.value).startswith(f"invalid release name {mm._show(name)}: use at most 100 lowercase letters, "
                                      "digits, '.', '_' or '-', starting with a letter or digit")
    refused(f"doc: name: invalid release name {mm._show(name)}", name=name)


def test_show_is_repr_cut_and_ascii() -> None:
    assert mm._show("a") == "'a'"
    assert mm._show("é" * 100) == "'" + "\\xe9" * 79
    assert mm._show(None) == "None"
    assert len(mm._show("x" * 200)) == 80


def test_safe_relative_path_is_the_paths_rule() -> None:
    assert mm.safe_relative_path("a/b") == "a/b"
    with pytest.raises(UnsafePathError, match="^path: '..' leads outside"):
        mm.safe_relative_path("../x")


def test_title() -> None:
    assert parse(title="T").title == "T"
    assert parse(title="x" * 65536).title == "x" * 65536
    refused("doc: title must be text of at most 65536 characters without control characters", title="x" * 65537)
    for bad in ["a\nb", "a\tb", "\x00", "\x1f", "\x7f", "\x9f", 1, None]:
        refused("doc: title must be text", title=bad)
    assert parse(title="\xa0 ok \x20").title == "\xa0 ok \x20"
    refused("doc: title is not valid Unicode", title="\ud800")


def test_lines_allow_newline_and_tab_only() -> None:
    assert parse(notes="a\nb\tc").raw["notes"] == "a\nb\tc"
    for bad in ["a\rb", "\x0b", "\x0c", "\x08", "\x00", "\x7f", "\x85"]:
        refused("doc: notes must be text", notes=bad)
    refused("doc: notes must be text", notes="x" * 65537)


@pytest.mark.parametrize("key", ["publisher", "license"])
def test_descriptive_text(key: str) -> None:
    parse(**{key: "x"})
    refused(f"doc: {key} must be text", **{key: "a\nb"})
    refused(f"doc: {key} must be text", **{key: 1})


def test_released_is_a_date() -> None:
    parse(released="2024-12-31")
    for bad in ["2024-1-31", "24-12-31", "2024-12-31x", " 2024-12-31", "2024/12/31"]:
        refused(f"doc: released has an invalid form: {mm._show(bad)}", released=bad)


def test_files_complete_is_a_boolean() -> None:
    assert parse(files_complete=True).files_complete is True
    assert parse(files_complete=False).files_complete is False
    for bad in [1, 0, "true", None]:
        refused("doc: files_complete must be true or false", files_complete=bad)


def test_tensor_digest() -> None:
    assert parse(tensor_digest=SHA).tensor_digest == SHA
    for bad in ["a" * 63, "a" * 65, "A" * 64, "g" * 64, 1]:
        refused(f"doc: tensor_digest must be 64 lowercase hex digits, got {mm._show(bad)}", tensor_digest=bad)


def test_unknown_keys_are_refused() -> None:
    refused("doc has unknown key 'sha265'", sha265="x", zzz=1)
    refused("doc: entry for 'a' has unknown key 'sha265'", files={"a": {"sha265": SHA}})
    refused("doc: sources has unknown key 'x'", sources={"x": 1})
    refused("doc: sources.hub has unknown key 'branch'", sources={"hub": {"repo": "o/n", "branch": "b"}})
    refused("doc: archives[0] has unknown key 'mirror'", archives=[{"name": "a", "mirror": "u"}])
    refused("doc: provenance[1] has unknown key 'by'", provenance=[{"fields": ["a"], "source": "s"},
                                                                   {"fields": ["a"], "source": "s", "by": 1}])


def test_files() -> None:
    refused("doc: files must be an object of path -> entry", files=[])
    refused("doc: files must be an object of path -> entry", files=None)
    refused("doc: entry for 'a' must be an object", files={"a": []})
    assert refused("", files={"../x": {}}) == "doc: files: '..' leads outside the folder"
    refused("doc: files: 'A' and 'a' name the same file", files={"a": {}, "A": {}})
    refused("is inside a tool-state folder", files={".git/config": {}})
    assert parse(files={}).files == {}


def test_sizes() -> None:
    assert parse(files={"a": {"size": 0}}).files["a"].size == 0
    assert parse(files={"a": {"size": 2**63 - 1}}).files["a"].size == 2**63 - 1
    for bad in [-1, 2**63, 1.0, True, False, "1", None]:
        refused(f"doc: size of 'a' must be an integer in 0..{2**63 - 1}", files={"a": {"size": bad}})


def test_hashes() -> None:
    entry = parse(files={"a": {"sha256": SHA, "md5": MD5}}).files["a"]
    assert (entry.sha256, entry.md5, entry.size, entry.json) == (SHA, MD5, None, None)
    refused("doc: sha256 of 'a' must be 64 lowercase hex digits, got 'aa'", files={"a": {"sha256": "aa"}})
    refused("doc: md5 of 'a' must be 32 lowercase hex digits, got " + mm._show(SHA), files={"a": {"md5": SHA}})
    refused("doc: md5 of 'a' must be 32 lowercase hex digits, got None", files={"a": {"md5": None}})
    refused("doc: sha256 of 'a' must be 64", files={"a": {"sha256": "A" * 64}})
    refused("doc: sha256 of 'a' must be 64", files={"a": {"sha256": SHA + "\n"}})


def test_hex() -> None:
    assert mm._hex("0123456789abcdef", 16, "w") == "0123456789abcdef"
    with pytest.raises(InputError, match="^w must be 3 lowercase hex digits, got 'abcd'$"):
        mm._hex("abcd", 3, "w")


def test_lists() -> None:
    assert mm._list([1, 2], "w", 2) == [1, 2]
    with pytest.raises(InputError, match="^w must be a list of at most 2 items$"):
        mm._list([1, 2, 3], "w", 2)
    with pytest.raises(InputError, match="^w must be a list of at most 2 items$"):
        mm._list((1,), "w", 2)


def test_sources_magnet_and_hashes() -> None:
    assert parse(sources={"magnet": "magnet:?"}).sources == {"magnet": "magnet:?"}
    for bad in ["magnet:x", "http://x", "magnet:? x", "magnet:?\u00e9", " magnet:?"]:
        refused("doc: sources.magnet has an invalid form", sources={"magnet": bad})
    refused("doc: sources.btih must be 40 lowercase hex digits", sources={"btih": "a" * 64})
    assert parse(sources={"btmh": "1220" + SHA}).btmh == "1220" + SHA
    for bad in ["1221" + SHA, SHA + "1220", "1220" + "a" * 63, "1220" + "A" * 64, 1220, None]:
        with pytest.raises(InputError, match="^doc: sources.btmh must be"):
            parse(sources={"btmh": bad})
    assert mm._check_btmh("1220" + SHA, "w") == "1220" + SHA
    with pytest.raises(InputError, match="^w must be '1220' followed by 64 lowercase hex digits$"):
        mm._check_btmh("12", "w")


def test_sources_text_and_trackers() -> None:
    parse(sources={"display_name": "x y"})
    refused("doc: sources.display_name must be text", sources={"display_name": "x\ny"})
    parse(sources={"trackers": ["udp://x"] * 256})
    refused("doc: sources.trackers must be a list of at most 256 items", sources={"trackers": ["udp://x"] * 257})
    refused("doc: sources.trackers must be a list", sources={"trackers": "udp://x"})
    for bad in ["ftp://x", "udp://", "udp:// x", "xudp://x", "httpss://x", "udp://x\u00e9"]:
        refused("doc: sources.trackers[] has an invalid form", sources={"trackers": [bad]})


def test_sources_hub() -> None:
    parse(sources={"hub": {"repo": "a/b"}})
    longest = "a" * 96 + "/" + "b" * 96
    parse(sources={"hub": {"repo": longest}})
    refused("doc: sources.hub must be an object", sources={"hub": "a/b"})
    refused("doc: sources.hub lacks repo", sources={"hub": {}})
    refused("doc: sources.hub lacks repo", sources={"hub": {"revision": "main"}})
    for bad in ["a", "a/b/c", "-a/b", "a/.b", "a" * 97 + "/b", "a/" + "b" * 97, "a/b c", "é/b", 1]:
        with pytest.raises(InputError, match="^doc: sources.hub.repo "):
            parse(sources={"hub": {"repo": bad}})
    for good in ["main", "refs/pr/1", "café", "v1.0", "a" * 40, "a" * 255, "x-y"]:
        parse(sources={"hub": {"repo": "a/b", "revision": good}})
    for bad in ["", "a..b", "-x", "/x", ".x", "a b", "a\\b", "a" * 256, "a\tb"]:
        with pytest.raises(InputError, match="^doc: sources.hub.revision "):
            parse(sources={"hub": {"repo": "a/b", "revision": bad}})


def test_sources_hub_alternative() -> None:
    assert parse(sources={"hub_alternative": "x"}).sources["hub_alternative"] == "x"
    refused("doc: sources.hub_alternative: invalid release name 'X'", sources={"hub_alternative": "X"})
    refused("doc: sources must be an object", sources=[])


def test_archives() -> None:
    parse(archives=[])
    parse(archives=[{"name": "a"}] * 1000)
    refused("doc: archives must be a list of at most 1000 items", archives=[{"name": "a"}] * 1001)
    refused("doc: archives[0] must be an object", archives=["a"])
    refused("doc: archives[1].name must be text", archives=[{"name": "a"}, {}])
    refused("doc: archives[0].md5 must be 32 lowercase hex digits", archives=[{"name": "a", "md5": SHA}])
    refused("doc: archives[0].sha256 must be 64 lowercase hex digits", archives=[{"name": "a", "sha256": MD5}])
    parse(archives=[{"name": "a", "note": "x\ny"}])
    refused("doc: archives[0].note must be text", archives=[{"name": "a", "note": "x\ry"}])
    refused("doc: archives[0].name must be text", archives=[{"name": "a\nb"}])


def test_archive_sources() -> None:
    """An archive with a URL and an md5 is a source `mdist fetch NAME` downloads; an older value the
    publisher replaced (current: false), or one without a URL, never is."""
    url = "https://cdn.example/a/x.tar"
    assert parse(archives=[{"name": "x.tar", "url": url, "md5": MD5, "size": 0}]).archive["url"] == url
    top = mm.MAX_FILE_SIZE
    assert parse(archives=[{"name": "x.tar", "url": url, "md5": MD5, "size": top}]).archive["size"] == top
    assert parse(archives=[{"name": "x.tar", "url": url, "md5": MD5, "current": False}]).archive is None
    assert parse(archives=[{"name": "x.tar", "md5": MD5}]).archive is None
    assert parse(archives=[{"name": "x.tar", "url": url}]).archive is None
    later = parse(archives=[{"name": "x", "url": url, "md5": MD5, "current": False},
                            {"name": "y", "url": url + "2", "md5": MD5, "current": True}])
    assert later.archive["name"] == "y"
    refused("doc: archives[0].url has an invalid form", archives=[{"name": "a", "url": "ftp://h/x.tar"}])
    refused("doc: archives[0].url must be text", archives=[{"name": "a", "url": "http://h/a b\n"}])
    refused("doc: archives[0].size must be an integer", archives=[{"name": "a", "size": -1}])
    refused("doc: archives[0].size must be an integer", archives=[{"name": "a", "size": True}])
    refused("doc: archives[0].current must be true or false", archives=[{"name": "a", "current": 1}])


def test_provenance() -> None:
    parse(provenance=[{"fields": ["a"], "source": "s\nt"}])
    parse(provenance=[{"fields": ["a"] * 1000, "source": "s"}] * 1000)
    refused("doc: provenance is empty", provenance=[])
    refused("doc: provenance must be a list of at most 1000 items", provenance={"fields": []})
    refused("doc: provenance must be a list of at most 1000 items",
            provenance=[{"fields": ["a"], "source": "s"}] * 1001)
    refused("doc: provenance[0] must be an object", provenance=[1])
    refused("doc: provenance[0].fields is empty", provenance=[{"fields": [], "source": "s"}])
    refused("doc: provenance[0].fields must be a list", provenance=[{"source": "s"}])
    refused("doc: provenance[0].fields must be a list of at most 1000 items",
            provenance=[{"fields": ["a"] * 1001, "source": "s"}])
    refused("doc: provenance[0].fields[] must be text", provenance=[{"fields": ["a", 1], "source": "s"}])
    refused("doc: provenance[0].fields[] must be text", provenance=[{"fields": ["a\nb"], "source": "s"}])
    refused("doc: provenance[0].source must be text", provenance=[{"fields": ["a"]}])
    refused("doc: provenance[0].source must be text", provenance=[{"fields": ["a"], "source": "\x00"}])


def test_each_text_field_is_checked_even_when_others_are_fine() -> None:
    # the checks run in order: a bad later field is still found after good earlier ones
    refused("doc: license must be text", publisher="p", license=1)
    refused("doc: released has an invalid form", notes="n", released="x")


def manifest_bytes(**changes) -> bytes:
    data = copy.deepcopy(BASE)
    data.update(changes)
    return json.dumps(data).encode()


def test_parse_manifest_bytes() -> None:
    assert mm.parse_manifest_bytes(manifest_bytes(), "w").name == "m"
    assert mm.parse_manifest_bytes(manifest_bytes().decode(), "w").origin == "w"
    padded = manifest_bytes()[:-1] + b" " * (MAX_JSON_BYTES - len(manifest_bytes())) + b"}"
    assert len(padded) == MAX_JSON_BYTES and mm.parse_manifest_bytes(padded, "w").name == "m"
    with pytest.raises(InputError, match=f"^w is larger than {MAX_JSON_BYTES} bytes$"):
        mm.parse_manifest_bytes(padded + b" ", "w")
    with pytest.raises(InputError, match="^w is not valid JSON: nested too deeply$"):
        mm.parse_manifest_bytes(b"[" * 100_000 + b"]" * 100_000, "w")
    with pytest.raises(InputError, match="^w is not valid JSON: "):
        mm.parse_manifest_bytes(b"\xff", "w")
    with pytest.raises(InputError, match="^w is not valid JSON: .*duplicate key"):
        mm.parse_manifest_bytes(b'{"name": "a", "name": "b"}', "w")
    with pytest.raises(InputError, match="^w is not valid JSON: .*NaN"):
        mm.parse_manifest_bytes(b'{"x": NaN}', "w")
    with pytest.raises(InputError) as info:
        mm.parse_manifest_bytes(b"{" + b"x" * 500, "w")
    assert len(str(info.value)) < 120 and str(info.value).isascii()
    with pytest.raises(InputError, match="^w: not an mdist-manifest/1 manifest$"):
        mm.parse_manifest_bytes(b"{}", "w")


def test_the_registry() -> None:
    names = [m.name for m in mm.load_registry()]
    files = [name for name, _ in mm._registry_files()]
    assert files == sorted(files) and all(f.endswith(".json") and not f.endswith(".schema.json") for f in files)
    assert names == [f[:-5] for f in files]
    assert "tiny-mistral" in names and "mistral-7b-v0.1" in names
    assert mm.load_registry() is mm.load_registry()
    assert all(m.origin == f"checksums/{m.name}.json" for m in mm.load_registry())


def test_find_manifest(tmp_path: Path) -> None:
    assert mm.find_manifest("tiny-mistral").name == "tiny-mistral"
    path = tmp_path / "mine.json"
    path.write_bytes(manifest_bytes(name="mine"))
    found = mm.find_manifest(str(path))
    assert found.name == "mine" and found.origin == str(path)
    with pytest.raises(InputError) as info:
        mm.find_manifest("nothing")
    known = ", ".join(m.name for m in mm.load_registry())
    assert str(info.value) == f"no known release 'nothing' (known: {known})"
    with pytest.raises(InputError, match="no known release"):
        mm.find_manifest(str(tmp_path / "missing.json"))
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(InputError, match="no known release"):
        mm.find_manifest(str(tmp_path / "dir.json"))
    other = tmp_path / "mine.txt"
    other.write_bytes(manifest_bytes(name="mine"))
    with pytest.raises(InputError, match="no known release"):
        mm.find_manifest(str(other))
    path.write_bytes(b"[]")
    with pytest.raises(InputError, match=f"^{path}: not an"):
        mm.find_manifest(str(path))


def test_find_by_infohash() -> None:
    tiny = mm.find_manifest("tiny-mistral")
    assert mm.find_by_infohash(tiny.btih) is tiny
    assert mm.find_by_infohash(tiny.btih.upper()) is tiny
    assert mm.find_by_infohash(tiny.btmh) is tiny
    assert mm.find_by_infohash(tiny.btmh[4:]) is tiny
    assert mm.find_by_infohash(tiny.btmh[4:].upper()) is tiny
    assert mm.find_by_infohash("") is None
    assert mm.find_by_infohash("0" * 40) is None
    assert mm.find_by_infohash(tiny.btih[:-1]) is None


def registry(monkeypatch: pytest.MonkeyPatch, *manifests: mm.Manifest) -> None:
    monkeypatch.setattr(mm, "load_registry", lambda: manifests)


def release(name: str, **files: int | None) -> mm.Manifest:
    return mm.Manifest(name, name, {p: mm.FileEntry(p, size) for p, size in files.items()}, True)


def test_find_by_infohash_skips_releases_without_v2(monkeypatch: pytest.MonkeyPatch) -> None:
    plain = release("plain")
    v1 = mm.Manifest("v1", "v1", {}, True, sources={"btih": "1" * 40})
    registry(monkeypatch, plain, v1)
    assert mm.find_by_infohash("1" * 40) is v1
    assert mm.find_by_infohash("1220") is None


def test_identify_scores_names_and_sizes(monkeypatch: pytest.MonkeyPatch) -> None:
    a = release("a", x=1, y=2)
    b = release("b", x=None, y=None, z=None)
    c = release("c", x=5)
    registry(monkeypatch, a, b, c)
    assert mm.identify({"x": 1, "y": 2}) == (a, [a])  # 4 against 2
    assert mm.identify({"x": 1, "y": 3, "z": 0}) == (b, [b])  # a contradicted; b's 3 names
    assert mm.identify({"x": 1}) == (a, [a])  # 2 against 1
    assert mm.identify({"x": 5}) == (c, [c])  # a contradicted, b 1, c 2
    assert mm.identify({"q": 1}) == (None, [])
    assert mm.identify({}) == (None, [])
    assert mm.identify({"x": 1, "y": 2}, eligible=lambda m: m.name != "a") == (b, [b])
    assert mm.identify({"x": 1, "y": 2}, eligible=lambda m: False) == (None, [])
    d = release("d", x=None, q=None)
    registry(monkeypatch, a, d)
    assert mm.identify({"x": 1, "q": 0}) == (None, [a, d])  # 2 and 2: a tie


def test_identify_sorts_by_score(monkeypatch: pytest.MonkeyPatch) -> None:
    low = release("low", x=None)
    high = release("high", x=None, y=None, z=1)
    mid = release("mid", x=None, y=None)
    registry(monkeypatch, low, high, mid)
    assert mm.identify({"x": 0, "y": 0, "z": 1}) == (high, [high])
    registry(monkeypatch, low, mid, high, release("high2", x=None, y=None, z=1))
    winner, tied = mm.identify({"x": 0, "y": 0, "z": 1})
    assert winner is None and [m.name for m in tied] == ["high", "high2"]


def test_identify_a_contradiction_after_a_match(monkeypatch: pytest.MonkeyPatch) -> None:
    a = release("a", x=1, y=2, z=3)
    registry(monkeypatch, a)
    assert mm.identify({"x": 1, "y": 9}) == (None, [])
    assert mm.identify({"x": 1, "z": 3}) == (a, [a])


def test_identify_counts_files_after_an_absent_one(monkeypatch: pytest.MonkeyPatch) -> None:
    a = release("a", x=1, y=2, z=3)
    registry(monkeypatch, a)
    assert mm.identify({"z": 3}) == (a, [a])


def test_registry_files_are_the_json_manifests_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "b.json").write_text("{}")
    (tmp_path / "a.json").write_text('{"é": 1}', encoding="utf-8")
    (tmp_path / "manifest.schema.json").write_text("{}")
    (tmp_path / "M.SCHEMA.JSON").write_text("{}")  # not .json in lower case: not a manifest either
    (tmp_path / "notes.md").write_text("x")
    (tmp_path / "__init__.py").write_text("")
    monkeypatch.setattr(mm.resources, "files", lambda package: tmp_path)
    assert mm._registry_files() == [("a.json", '{"é": 1}'), ("b.json", "{}")]


def test_an_oversized_manifest_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "big.json"
    with open(path, "wb") as handle:
        handle.truncate(MAX_JSON_BYTES + 1)
    with pytest.raises(InputError) as info:
        mm.find_manifest(str(path))
    assert str(info.value).startswith(str(path)) and "None" not in str(info.value)


def test_a_manifest_must_be_utf_8(tmp_path: Path) -> None:
    text = manifest_bytes().decode()
    for encoded in (text.encode("utf-16"), text.encode("utf-16-le"), text.encode("utf-32")):
        with pytest.raises(InputError, match="^w is not valid JSON: "):
            mm.parse_manifest_bytes(encoded, "w")
    assert mm.parse_manifest_bytes(text, "w").name == "m"
