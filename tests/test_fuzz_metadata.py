"""Fuzzing of the metadata mdist reads before anything else: bencoded torrent info dicts (as a
peer or a .torrent file delivers them) and file names shown to a person.

Only mdist's own errors may come out, and whatever check_info_dict accepts must be paths that
mdist.paths accepts as one set (the same rule the hub and manifests use).
"""

from __future__ import annotations

import json
from pathlib import Path

import libtorrent as lt
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import FIXTURE, run_mdist
from mdist.errors import MdistError
from mdist.paths import check_path_set
from mdist.sources.torrent_meta import check_info_dict

NAMES = st.one_of(
    st.sampled_from([b"a", b"..", b".", b"", b".git", b".mdist", b"A", b"a/b", b"\x00", b"\xff", b"con:",
                     b"config", b"x\xcc\x81", b"\xc3\xa9", b".cache", b"huggingface"]),
    st.binary(max_size=12),
)
SCALARS = st.one_of(st.integers(min_value=-2**70, max_value=2**70), NAMES, st.just([]), st.just({}))


def bencodable(depth: int = 3):
    if depth == 0:
        return SCALARS
    inner = bencodable(depth - 1)
    return st.one_of(SCALARS, st.lists(inner, max_size=4), st.dictionaries(NAMES, inner, max_size=4))


def info_dicts():
    files = st.lists(st.fixed_dictionaries({b"length": st.integers(-5, 2**40), b"path": st.lists(NAMES, max_size=4)},
                                           optional={b"attr": NAMES, b"path.utf-8": st.lists(NAMES, max_size=3)}),
                     max_size=5)
    tree = st.recursive(st.fixed_dictionaries({b"": st.fixed_dictionaries(
        {b"length": st.integers(-5, 2**40)}, optional={b"attr": NAMES})}),
        lambda children: st.dictionaries(NAMES, children, max_size=3), max_leaves=6)
    base = st.fixed_dictionaries({b"name": NAMES, b"piece length": st.sampled_from([0, 3, 16384, 1 << 18, -1])},
                                 optional={b"pieces": st.binary(max_size=40), b"meta version": st.sampled_from([1, 2]),
                                           b"name.utf-8": NAMES})
    return st.one_of(
        st.tuples(base, files).map(lambda t: {**t[0], b"files": t[1]}),
        st.tuples(base, tree).map(lambda t: {**t[0], b"file tree": t[1]}),
        st.tuples(base, st.integers(-5, 2**40)).map(lambda t: {**t[0], b"length": t[1]}),
        bencodable(),
    )


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(info_dicts())
def test_info_dicts_raise_only_mdist_errors(info) -> None:
    try:
        paths = check_info_dict(info)
    except MdistError:
        return
    assert check_path_set(paths) == paths  # accepted paths obey the one path rule


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.binary(max_size=200))
def test_bdecoded_garbage_raises_only_mdist_errors(data: bytes) -> None:
    try:
        decoded = lt.bdecode(data)
    except RuntimeError:
        return
    try:
        check_info_dict(decoded)
    except MdistError:
        pass


def test_markup_in_a_file_name_is_shown_as_text(fixture_copy: Path) -> None:
    """rich markup in a name must neither restyle the table nor break it."""
    (fixture_copy / "a[").mkdir()
    (fixture_copy / "a[" / "x]").write_text("x")  # shown as the path a[/x]
    (fixture_copy / "[bold red]ok").write_text("x")
    result = run_mdist("verify", str(fixture_copy))
    assert result.returncode == 0, result.stderr
    assert "a[/x]" in result.stdout and "[bold red]ok" in result.stdout
    payload = json.loads(run_mdist("verify", str(fixture_copy), "--json").stdout)
    assert {r["path"] for r in payload["report"]["files"]} >= {"a[/x]", "[bold red]ok"}
