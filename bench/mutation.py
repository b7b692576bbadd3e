#!/usr/bin/env python3
"""Mutation testing of mdist's trust-critical modules with mutmut 3 (not part of CI: too slow).

    .venv/bin/pip install -e '.[test,mutation]'
    .venv/bin/python bench/mutation.py                    # every module, in priority order
    .venv/bin/python bench/mutation.py paths manifest     # some modules
    .venv/bin/python bench/mutation.py --list             # the modules and their tests
    .venv/bin/python bench/mutation.py --ref HEAD --keep  # the last commit, keeping the scratch copies
    .venv/bin/python bench/mutation.py --ref HEAD --resume  # after --budget ran out: the rest, and the
                                                            # survivors again with the current tests

For each module this lays a scratch copy of the work tree (mdist/, checksums/ as mdist/checksums,
tests/, docs/, pyproject.toml with a [tool.mutmut] section naming the module and the fast tests
chosen for it) under --workdir, and runs `mutmut run --max-children 1` there, at nice 19 and under
`timeout` (--budget seconds per module). The repository's own mdist/ is never written.

Making every test see the mutated code:
- mutmut puts <scratch>/mutants first on sys.path of its own process; this script also puts it on
  PYTHONPATH, so the many tests that run `python -m mdist` in a subprocess import the mutated copy
  too (not the editable install in the repository), and MUTANT_UNDER_TEST reaches them through the
  environment.
- mutmut runs a mutant only against the tests that reached its function in a "stats" run, and it
  records those hits in memory: hits inside a CLI subprocess would be lost, leaving the mutants
  that only the CLI tests reach as "no tests". A sitecustomize.py (written to <scratch>/support,
  also on PYTHONPATH) records a subprocess's hits to a file at exit, and a pytest plugin
  (mutmut_hits, same folder) credits them to the test that ran the subprocess.

mutmut's fork server runs the mutants (a mutant forked from the threaded stats process could hang and
count as a false timeout), and pytest's temporary folders are private to the run.

The result: per module, killed / total, the equivalent mutants (EQUIVALENT below, each with the
reason and a fragment of the mutated source that must still match), and the diff of every other
survivor. --json writes the same as JSON. docs/testing.md holds the last report and the reasons.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# test_fuzzed_manifests fails whenever Hypothesis finds a manifest with "tensor_digest": null (mdist accepts
# it, the published schema does not; reported). Once found, the example is replayed from Hypothesis's
# database by every later run, which would then "kill" every mutant it reaches: it is left out here.
NOT_FLAKY = "not test_fuzzed_manifests"

# The functions of mdist/sources/hub.py that verify what the hub sends (module hub_verify).
HUB_VERIFICATION = ["git_blob_sha1", "_check_commit", "_remote_file", "_present", "_download_verified",
                    "_hash_regular", "_digests", "_mismatch", "_own_blob", "_release_files", "_check_manifest",
                    "_hash_all", "_discard"]

# The zip reader of mdist/convert/checkpoint.py (module checkpoint), and the constructor that runs it.
ZIP_READER = ["read_zip_members", "_pread", "_read_end_records", "_read_central_directory", "_decode_name",
              "_extra_fields", "_zip64_values", "_check_layout", "_check_local_header", "_descriptor_length",
              "Checkpoint.__init__"]

# Modules in priority order: (key, files to mutate, pytest arguments choosing the fast tests, more
# [tool.mutmut] settings; and "skip_functions" / "keep_functions": {file: [function or Class.method names]},
# the functions of a file left out / the only ones mutated, see no_mutate(); "fast_tests_only": {file: [names]},
# the functions whose mutants run against the selection's first test file only, see write_support()). Each
# module's own tests/test_mutants_*.py comes first: fast, in process.
MODULES: list[tuple[str, list[str], list[str], dict]] = [
    ("paths", ["mdist/paths.py"], [
        "tests/test_mutants_paths.py", "tests/test_documents_hostile.py", "tests/test_hub_attacks.py",
        "tests/test_torrent_attacks.py", "-k", f"(not test_torrent_attacks or path or forged or linear_time"
        f" or more_files or hostile_magnet) and {NOT_FLAKY}"], {}),
    ("derived", ["mdist/derived.py"], [
        "tests/test_mutants_model_folder.py", "tests/test_model_folder.py", "tests/test_hf_cache.py",
        "tests/test_verify.py"], {}),
    ("model_folder", ["mdist/model_folder.py"], [
        "tests/test_mutants_model_folder.py", "tests/test_model_folder.py", "tests/test_hf_cache.py",
        "tests/test_verify.py"], {}),
    ("verify_folder", ["mdist/verify/hashing.py", "mdist/verify/folder.py"], [
        "tests/test_mutants_verify_folder.py", "tests/test_verify.py", "tests/test_interrupts.py"], {}),
    ("manifest", ["mdist/verify/manifest.py"], [
        "tests/test_mutants_manifest.py", "tests/test_documents_hostile.py", "tests/test_verify.py", "-k", NOT_FLAKY],
     {}),
    # The strict zip reader is reached by every test that opens a checkpoint, most of them CLI tests under
    # resource limits (~95 s for the selection): its mutants are tested by the in-process tests only
    # (fast_tests_only), which pin each of its checks and messages; the rest of the module keeps them all.
    ("checkpoint", ["mdist/convert/pickle_reader.py", "mdist/convert/checkpoint.py"], [
        "tests/test_mutants_checkpoint.py", "tests/test_hostile.py", "tests/test_checkpoint_attacks.py",
        "tests/test_convert.py"],
     {"fast_tests_only": {"mdist/convert/checkpoint.py": ZIP_READER}}),
    ("safetensors", ["mdist/convert/safetensors_reader.py"], [
        "tests/test_mutants_safetensors.py", "tests/test_documents_hostile.py", "-k", NOT_FLAKY], {}),
    # The checks of torrents from outside and of what mdist shares; the libtorrent glue that only
    # formats (magnet links, folder mapping, re-sharing the fetched .torrent) is left out: its tests
    # are end to end with real swarms (tests/test_torrent.py, tests/test_reshare.py), too slow here.
    ("torrent_meta", ["mdist/sources/torrent_meta.py"], [
        "tests/test_mutants_torrent_meta.py", "tests/test_torrent_attacks.py", "-k",
        "not test_torrent_attacks or malformed_info_dict or forged_state_and_unsafe or accepted_paths"
        " or linear_time or more_files_than or never_shares"],
     {"skip_functions": {"mdist/sources/torrent_meta.py": [
         "InfoHashes.of", "magnet_link", "folder_mapping", "_bencode_key", "release_torrent_bytes", "magnet_peers"]}}),
    ("atomic", ["mdist/atomic.py"], ["tests/test_mutants_atomic.py", "tests/test_interrupts.py"], {}),
    # the writer, and the kernel copy it hands stored tensors to (shared with the GGUF writer)
    ("safetensors_writer", ["mdist/convert/safetensors_writer.py", "mdist/convert/kernel_copy.py"], [
        "tests/test_mutants_safetensors_writer.py", "tests/test_documents_hostile.py", "tests/test_convert.py",
        "-k", "not test_documents_hostile or writer or round_trip"], {}),
    # digest.py, and the chunking it shares with conversion (convert/sources.py array_chunks)
    ("digest", ["mdist/verify/digest.py", "mdist/convert/sources.py"], [
        "tests/test_mutants_digest.py", "tests/test_verify.py", "tests/test_convert.py", "tests/test_hf_cache.py",
        "-k", "digest or over_one_chunk"], {"keep_functions": {"mdist/convert/sources.py": ["array_chunks"]}}),
    # Hub verification: mdist's own check of the HF cache (verify/hub_cache.py, whole), and in
    # sources/hub.py only the functions that check what the hub sends (the commit, the listing's
    # hashes, each file's sha256 / git blob sha1 before it is kept, the release check): the rest of
    # hub.py (downloads, resuming, locks, placing files) is left out, its tests are end to end.
    ("hub_verify", ["mdist/verify/hub_cache.py", "mdist/sources/hub.py"], [
        "tests/test_mutants_hub_verify.py", "tests/test_hf_cache.py", "tests/test_hub_attacks.py",
        "tests/test_hub.py", "tests/test_hub_interrupt.py", "-k",
        "not test_hub.py or tampered or clear_errors or pinning"],
     {"keep_functions": {"mdist/sources/hub.py": HUB_VERIFICATION}}),
]

# Surviving mutants that no test can kill: mutant name -> (why, a fragment of the mutated source that
# must still be in its diff; when the source moves and the name points elsewhere, the entry is
# reported as stale and the mutant counts as a survivor again).
EQUIVALENT: dict[str, tuple[str, str]] = {
    # mdist/paths.py
    "mdist.paths.x__printable__mutmut_11": ("codec names are case-insensitive", '"UTF-8"'),
    "mdist.paths.x__printable__mutmut_15": ("codec names are case-insensitive", '"ASCII"'),
    "mdist.paths.x_check_component__mutmut_14": ("codec names are case-insensitive", '"UTF-8"'),
    "mdist.paths.x_check_path_set__mutmut_24": (
        "i = 0 adds the folder '' to the set, and '' is never a checked path, so it never clashes",
        "for i in range(len(parts))"),
    "mdist.paths.x_walk__mutmut_7": ("Path(root) / '' is Path(root)", "if (rel) or True else"),
    "mdist.paths.x_walk__mutmut_24": ("DirEntry.is_dir takes follow_symlinks=None as false",
                                      "follow_symlinks=None"),
    # mdist/derived.py
    "mdist.derived.x__source_identities__mutmut_6": (
        "directory / name is Path(name) when name is absolute (pathlib drops the left side)",
        "if (os.path.isabs(name)) and False else"),
    "mdist.derived.x__load_key__mutmut_16": ("secrets.token_bytes(None) draws 32 bytes, as _KEY_BYTES",
                                             "secrets.token_bytes(None)"),
    "mdist.derived.x__load_key__mutmut_19": (
        "the private name the new key is written under, before it is linked into place, gets 32 random hex "
        "digits instead of 8: still a name of its own", "secrets.token_hex(None)"),
    "mdist.derived.x__only_deleted__mutmut_5": (
        "directory / name is Path(name) when name is absolute (pathlib drops the left side)",
        "if (os.path.isabs(name)) and False else"),
    "mdist.derived.x__mac__mutmut_8": (
        "the MAC's message is a JSON array of strings, integers and arrays: no key separator appears",
        'separators=(",", "XX:XX")'),
    "mdist.model_folder.xǁFolderContentsǁchoose_containing__mutmut_8": (
        "with the named layout given as the candidate, _nothing_usable never reads the purpose (it only picks "
        "the layouts of that purpose when none is given)", "self._nothing_usable(None, [layout])"),
    "mdist.model_folder.x_unfinished_download__mutmut_28": (
        "max(2, n) differs from max(1, n) only for a torrent of 0 or 1 pieces, where an unfinished download "
        "has received 0: 0 % either way", "max(2, pieces[1])"),
    **{f"mdist.model_folder.xǁFolderContentsǁchoose__mutmut_{n}": (
        "derived_state records the sources of every valid file (made_from with valid): the default is never "
        "used", fragment) for n, fragment in ((44, "self.derived.sources.get(name, None)"),
                                              (46, "self.derived.sources.get(name, )"))},
    "mdist.derived.x__load_key__mutmut_49": ("create=None is false, as create=False", "_load_key(create=None)"),
    "mdist.derived.x__load_key__mutmut_20": (
        "the private name the new key is written under gets 10 random hex digits instead of 8: still a name of "
        "its own", "secrets.token_hex(5)"),
    **{f"mdist.derived.x__load_key__mutmut_{n}": (
        "the private file linked into place is the regular file this process has just created (O_EXCL | "
        "O_NOFOLLOW, in the user's own state folder): following a link or not links the same file", fragment)
       for n, fragment in ((42, "follow_symlinks=None"), (45, "os.link(temporary, path, )"),
                           (46, "follow_symlinks=True"))},
    "mdist.derived.x_derived_state__mutmut_7": (
        "with no records the loop adds nothing: an empty DerivedState equal to NONE (the key is only read)",
        "if (records) or True else None"),
    "mdist.derived.x_derived_state__mutmut_8": ("create=None is false, as create=False",
                                                "_load_key(create=None) if records"),
    "mdist.derived.x__records__mutmut_6": ("the name only words the InputError, which is caught: {} either way",
                                           "_MAX_RECORD_BYTES), None)"),
    "mdist.derived.x__records__mutmut_13": ("the name only words the InputError, which is caught: {} either way",
                                            "_MAX_RECORD_BYTES), str(None))"),
    # mdist/verify/hashing.py, mdist/verify/folder.py
    "mdist.verify.hashing.x_hash_files__mutmut_44": ("wait=True is shutdown's default", "pool.shutdown(cancel_futures=True)"),
    "mdist.verify.folder.x__judge__mutmut_40": ("the name only words the InputError, which is caught: mismatch either way",
                                                "read_json_file(path, None)"),
    "mdist.verify.folder.x__judge__mutmut_42": ("the name only words the InputError, which is caught: mismatch either way",
                                                "read_json_file(path, )"),
    "mdist.verify.hashing.x__hash_fds__mutmut_11": (
        "a buffered reader's readinto fills the same bytes (one more copy)", 'os.fdopen(fd, "rb", )'),
    "mdist.verify.hashing.x__hash_fds__mutmut_14": (
        "binary files ignore line buffering (Python warns and buffers as by default): same bytes",
        'os.fdopen(fd, "rb", buffering=1)'),
    "mdist.verify.folder.x_verify_folder__mutmut_254": (
        "an unhashed file is judged without its digests: listed ones have no hash (or were judged on size), "
        "extras never read them, and cache files are always hashed", "digests.get(directory / path, None)"),
    "mdist.verify.folder.x_verify_folder__mutmut_256": (
        "an unhashed file is judged without its digests: listed ones have no hash (or were judged on size), "
        "extras never read them, and cache files are always hashed", "digests.get(directory / path, )"),
    **{f"mdist.verify.folder.x_verify_folder__mutmut_{n}": (
        "pieces are judged only when their key is among the jobs, and hash_files returns a result for every job: "
        "the default is never used", fragment) for n, fragment in ((233, "digests.get(key, None)"),
                                                                   (235, "digests.get(key, )"))},
    **{f"mdist.verify.folder.x__label__mutmut_{n}": (
        "the part after the last '/' is the same whatever the number of splits", fragment)
       for n, fragment in ((4, "rsplit('/', )"), (7, "rsplit('/', 2)"))},
    "mdist.verify.folder.x__with_record__mutmut_37": (
        "with nothing recorded, merged is a copy of the manifest's files: replace() gives an equal manifest",
        "if (recorded) or True else manifest"),
    **{f"mdist.verify.folder.x__judge_extra__mutmut_{n}": (
        "derived_state records the sources of every valid file (made_from with valid): the default is never used",
        fragment) for n, fragment in ((16, "sources.get(path, None)"), (18, "sources.get(path, )"))},
    # mdist/verify/manifest.py
    "mdist.verify.manifest.x_safe_relative_path__mutmut_4": ('"path" is the default', "check_relative_path(text, )"),
    "mdist.verify.manifest.x__registry_files__mutmut_15": (
        "encoding=None is the locale's, UTF-8 here and in CI (a C-locale machine would differ on non-ASCII text)",
        "read_text(encoding=None)"),
    "mdist.verify.manifest.x_find_manifest__mutmut_13": ("read_small_file names the path itself when not told",
                                                         "MAX_JSON_BYTES, None)"),
    "mdist.verify.manifest.x_find_manifest__mutmut_16": ("read_small_file names the path itself when not told",
                                                         "MAX_JSON_BYTES, )"),
    "mdist.verify.manifest.x_find_by_infohash__mutmut_6": ('"XXXX"[4:] is "", as ""[4:]', '(manifest.btmh or "XXXX")[4:]'),
    "mdist.verify.manifest.x_parse_manifest_bytes__mutmut_8": ("codec names are case-insensitive", 'data.decode("UTF-8")'),
    "mdist.verify.manifest.x__registry_files__mutmut_17": ("codec names are case-insensitive",
                                                           'read_text(encoding="UTF-8")'),
    "mdist.verify.manifest.x__show__mutmut_9": ("codec names are case-insensitive", '.encode("ASCII", "backslashreplace")'),
    "mdist.verify.manifest.x__show__mutmut_13": ("codec names are case-insensitive", '.decode("ASCII")'),
    "mdist.verify.manifest.x__text__mutmut_13": ("codec names are case-insensitive", 'value.encode("UTF-8")'),
    "mdist.verify.manifest.x_identify__mutmut_9": ("None is false, as False", "contradicted = None"),
    # mdist/convert/safetensors_reader.py
    "mdist.convert.safetensors_reader.x_parse_header_json__mutmut_5": ("codec names are case-insensitive",
                                                                       'raw.decode("UTF-8")'),
    "mdist.convert.safetensors_reader.x__check_text__mutmut_8": ("codec names are case-insensitive",
                                                                 'text.encode("UTF-8")'),
    "mdist.convert.safetensors_reader.x__check_coverage__mutmut_14": (
        "inside `if entry.begin != position`, begin == position never holds: < and <= agree",
        "if entry.begin <= position else"),
    "mdist.convert.safetensors_reader.x__read_exact__mutmut_3": (
        "one more loop reads 0 bytes (pread of 0), gets b'' and stops: the same bytes", "while done <= count:"),
    "mdist.convert.safetensors_reader.x__read_exact__mutmut_17": (
        "reads at most 2 MiB at a time instead of 1 MiB: the same bytes (the header itself is bounded)",
        "min(count - done, 2 << 20)"),
    "mdist.convert.safetensors_reader.x__read_exact__mutmut_18": (
        "reads at most 2 MiB at a time instead of 1 MiB: the same bytes (the header itself is bounded)",
        "min(count - done, 1 << 21)"),
    "mdist.convert.safetensors_reader.x_read_header__mutmut_5": ("open_regular names the path itself when not told",
                                                                 "open_regular(path, None)"),
    "mdist.convert.safetensors_reader.x_read_header__mutmut_6": ("open_regular names the path itself when not told",
                                                                 "open_regular(str(path))"),
    "mdist.convert.safetensors_reader.x_read_header__mutmut_7": ("open_regular names the path itself when not told",
                                                                 "open_regular(path, )"),
    "mdist.convert.safetensors_reader.x_open_safetensors__mutmut_5": (
        "open_regular names the path itself when not told", "open_regular(path, None)"),
    "mdist.convert.safetensors_reader.x_open_safetensors__mutmut_6": (
        "open_regular names the path itself when not told", "open_regular(str(path))"),
    "mdist.convert.safetensors_reader.x_open_safetensors__mutmut_7": (
        "open_regular names the path itself when not told", "open_regular(path, )"),
    "mdist.convert.safetensors_reader.x_open_safetensors__mutmut_12": (
        "the file object only lends numpy its descriptor and size (seek/tell), which text mode does not change "
        "when nothing is decoded", "os.fdopen(fd, )"),
    "mdist.convert.safetensors_reader.x_open_safetensors__mutmut_27": ("uint8 is np.memmap's default dtype",
                                                                       'np.memmap(handle, mode="r")'),
    # mdist/atomic.py
    "mdist.atomic.x__umask__mutmut_3": (
        "the umask set for an instant to read the current one is restored at once; 19 is 0o023", "os.umask(19)"),
    "mdist.atomic.x_refuse_links_on_the_way__mutmut_12": (
        "the set only saves checking a folder twice: without it each component is checked again, same verdict",
        "checked.add(None)"),
    "mdist.derived.x__bytes_mac__mutmut_15": ("codec names are case-insensitive", 'purpose.encode("UTF-8"'),
    "mdist.derived.x_signed_by_us__mutmut_2": ("create=None is false, as create=False", "_load_key(create=None)"),
    # mdist/model_folder.py
    "mdist.model_folder.x_scan__mutmut_42": ("DirEntry.stat takes follow_symlinks=None as false",
                                             "entry.stat(follow_symlinks=None)"),
    "mdist.model_folder.x_scan__mutmut_49": (
        "asks _blob_target of every entry: outside a snapshot (no blobs folder) and for a plain file in one it "
        "answers None, so the entry is judged as before", "stat.S_ISLNK(info.st_mode)) or True else None"),
    "mdist.model_folder.x_scan__mutmut_55": (
        "asks _blob_target of plain files in a snapshot too (their real path is never in blobs/: None) and of "
        "links outside one (no blobs folder: None)", "if blobs_dir or stat.S_ISLNK(info.st_mode)"),
    "mdist.model_folder.x_recognise__mutmut_15": (
        "counts a listed size that differs as evidence, but identify() then drops that release for the "
        "contradicted size: recognise() returns the same", "entry.size is not None or entry.size =="),
    "mdist.model_folder.x__published_json_differs__mutmut_7": (
        "the name only words the InputError, which is caught: either way the path is returned",
        "read_json_file(directory / path, None)"),
    "mdist.model_folder.x__published_json_differs__mutmut_9": (
        "the name only words the InputError, which is caught: either way the path is returned",
        "read_json_file(directory / path, )"),
    # mdist/sources/torrent_meta.py
    "mdist.sources.torrent_meta.x_create_torrent__mutmut_40": (
        "flag 1 is libtorrent's optimize_alignment, deprecated and without effect in libtorrent 2 (the same "
        "bytes, checked)", '{"hybrid": 1, "v1"'),
    "mdist.sources.torrent_meta.x__refuse_unshareable__mutmut_13": (
        "at the top, child becomes '/NAME': check_not_state(['', NAME]) judges as check_not_state([NAME]) "
        "(no state folder or prefix begins with '')", 'if (rel) or True else entry.name'),
    "mdist.sources.torrent_meta.x__refuse_unshareable__mutmut_19": ("DirEntry.stat takes follow_symlinks=None "
                                                                    "as false", "entry.stat(follow_symlinks=None)"),
    "mdist.sources.torrent_meta.x__is_tool_state__mutmut_9": (
        "['.'] is only the folder itself, and _is_state(['.']) is false", 'parts != ["XX.XX"]'),
    "mdist.sources.torrent_meta.x__check_shareable__mutmut_10": ('"file list" is check_path_set\'s default',
                                                                 'for path in paths], )'),
    "mdist.sources.torrent_meta.x__check_pieces__mutmut_18": (
        "for a length of at least 2, length & (length - 2) is 0 exactly when length & (length - 1) is (an odd "
        "length shares bit 0 with length - 2; an even one that is no power of two keeps its top bit); the "
        "length is at least 16 KiB here", "length & (length - 2)"),
    "mdist.sources.torrent_meta.x__name_text__mutmut_8": ("codec names are case-insensitive", '.decode("UTF-8")'),
    "mdist.sources.torrent_meta.x__refuse_symlink__mutmut_12": (
        "the default attr is only asked whether it holds b'l' or b'p': b'XXXX' does not, as b'' does not",
        'entry.get(b"attr", b"XXXX")'),
    # mdist/convert/safetensors_writer.py
    "mdist.convert.safetensors_writer.x_build_header__mutmut_39": ("-(n - 8) and -(n + 8) are equal modulo 8",
                                                                   "-(len(raw) - 8) % _ALIGN"),
    "mdist.convert.safetensors_writer.x_build_header__mutmut_47": (
        "a header held in memory is far shorter than 2^63 bytes: signed and unsigned 64-bit give the same bytes",
        'struct.pack("<q", len(raw))'),
    # mdist/verify/digest.py, mdist/convert/sources.py (array_chunks)
    "mdist.verify.digest.x__array_chunks__mutmut_4": ("array_chunks' default chunk is CHUNK_BYTES, 16 MiB, as _CHUNK",
                                                      "array_chunks(array, )"),
    "mdist.convert.sources.x_array_chunks__mutmut_12": (
        "numpy (2.3) takes any negative size in reshape as the one to infer, as -1", "array.shape[0], -2)"),
    "mdist.convert.sources.x_array_chunks__mutmut_20": (
        "numpy (2.3) takes any negative size in reshape as the one to infer, as -1", "array.reshape(-2, 1)"),
    "mdist.convert.sources.x_array_chunks__mutmut_13": (
        "a one-dimensional array reshaped to (n, -1) is (n, 1), as reshape(-1, 1)", "if array.ndim >= 1 else"),
    "mdist.convert.sources.x_array_chunks__mutmut_18": (
        "a one-dimensional array sliced as it is yields the same chunks as its (n, 1) reshape (a row's nbytes is "
        "the item size either way)", "else array.reshape(-1, )"),
    # mdist/verify/hub_cache.py, mdist/sources/hub.py
    "mdist.verify.hub_cache.x_cached_snapshot__mutmut_39": ("codec names are case-insensitive",
                                                            '.decode("ASCII", "replace")'),
    "mdist.sources.hub.x__hash_all__mutmut_36": ("wait=True is shutdown's default",
                                                 "pool.shutdown(cancel_futures=True)"),
    "mdist.sources.hub.x__download_verified__mutmut_45": (
        "_digests has just read p.partial: it is there to remove (only a deletion in between would tell)",
        "p.partial.unlink(missing_ok=None)"),
    "mdist.sources.hub.x__download_verified__mutmut_46": (
        "_digests has just read p.partial: it is there to remove (only a deletion in between would tell)",
        "p.partial.unlink(missing_ok=False)"),
    # mdist/convert/checkpoint.py
    "mdist.convert.checkpoint.xǁCheckpointǁiter_bytes__mutmut_31": (
        "a one-dimensional view reshaped to (n, -1) is (n, 1), as reshape(-1, 1) (0-d views are contiguous: "
        "never here)", "if (view.ndim > 1) or True else"),
    "mdist.convert.checkpoint.xǁCheckpointǁiter_bytes__mutmut_39": (
        "a one-dimensional view reshaped to (n, -1) is (n, 1), as reshape(-1, 1)", "if view.ndim >= 1 else"),
    "mdist.convert.checkpoint.xǁCheckpointǁiter_bytes__mutmut_38": (
        "numpy (2.3) takes any negative size in reshape as the one to infer, as -1", "view.shape[0], -2)"),
    "mdist.convert.checkpoint.xǁCheckpointǁiter_bytes__mutmut_46": (
        "numpy (2.3) takes any negative size in reshape as the one to infer, as -1", "view.reshape(-2, 1)"),
    **{f"mdist.convert.pickle_reader.xǁ_Interpreterǁrun__mutmut_{n}": (
        "unreachable: run returns at STOP, and pickletools.genops raises ValueError (refused by the caller) on a "
        "pickle that ends before one", fragment) for n, fragment in (
            (27, "raise CheckpointError(None)"), (28, "XXpickle has no STOP opcodeXX"),
            (29, "pickle has no stop opcode"), (30, "PICKLE HAS NO STOP OPCODE"))},
    "mdist.convert.checkpoint.xǁCheckpointǁ_read_small__mutmut_6": (
        "the small entries (data.pkl, byteorder) are at most 16 MiB, CHUNK_BYTES: stored, one read; deflated, "
        "one inflate step unless the compressed bytes exceed 16 MiB, which a pickle that parses up to there "
        "cannot (its opcodes add known bytes: it compresses): nothing is joined", 'b"XXXX".join('),
    "mdist.convert.checkpoint.xǁCheckpointǁarray__mutmut_46": ("as_strided takes writeable=None as false",
                                                              "writeable=None"),
    # _check_layout: an entry never starts before `expected` (the one before it ends, with its descriptor, at or
    # before the next header: checked), so the "overlaps" branch is never taken; what overlaps "runs into" it
    "mdist.convert.checkpoint.x__check_layout__mutmut_12": (
        "the 'overlaps' branch is never taken (an entry running into the next is refused first)",
        "if (member.header_offset < expected) and False else"),
    "mdist.convert.checkpoint.x__check_layout__mutmut_14": (
        "the 'overlaps' branch is never taken (an entry running into the next is refused first)",
        '"XXoverlaps the entry before itXX"'),
    "mdist.convert.checkpoint.x__check_layout__mutmut_15": (
        "the 'overlaps' branch is never taken (an entry running into the next is refused first)",
        '"OVERLAPS THE ENTRY BEFORE IT"'),
    # _read_end_records, when the end record is not at the end: the tail read is at least 22 bytes, so a
    # signature at its byte 0 never has a cut record; one at len(tail) - 22 would be at the end, already read
    "mdist.convert.checkpoint.x__read_end_records__mutmut_44": (
        "found = 0 is never a cut record (the tail is at least 22 bytes): > 0 and >= 0 agree",
        "if found > 0 and found + _END.size > len(tail)"),
    "mdist.convert.checkpoint.x__read_end_records__mutmut_45": (
        "found = 0 is never a cut record (the tail is at least 22 bytes): >= 1 and >= 0 agree",
        "if found >= 1 and found + _END.size > len(tail)"),
    "mdist.convert.checkpoint.x__read_end_records__mutmut_47": (
        "a signature exactly 22 bytes before the end is the end record, read first: never here",
        "found + _END.size >= len(tail)"),
    # JoinedFile.pread (8b6ffda) returns b"" only at or past the size the file had when opened (a piece that
    # shrank raises InputError instead), and entries end before the central directory: never empty here
    "mdist.convert.checkpoint.xǁCheckpointǁ_inflate__mutmut_26": (
        "unreachable since reads go through JoinedFile: a file cut short while open is its InputError",
        "raise CheckpointError(None)"),
    "mdist.convert.checkpoint.xǁCheckpointǁ_iter_member__mutmut_26": (
        "unreachable since reads go through JoinedFile: a file cut short while open is its InputError",
        "raise CheckpointError(None)"),
    "mdist.convert.checkpoint.xǁCheckpointǁ_check_entry_crc__mutmut_13": (
        "the loop only drives the CRC check: the bytes it hands out (none either way) are discarded",
        "_checked_stream(member, 1, 0, CHUNK_BYTES)"),
    "mdist.convert.checkpoint.xǁCheckpointǁ_check_entry_crc__mutmut_14": (
        "the loop only drives the CRC check: the bytes it hands out (one byte instead of none) are discarded",
        "_checked_stream(member, 0, 1, CHUNK_BYTES)"),
    "mdist.convert.checkpoint.x__decode_name__mutmut_7": ("codec names are case-insensitive", 'raw.decode("UTF-8")'),
    "mdist.convert.checkpoint.x__decode_name__mutmut_12": ("codec names are case-insensitive", 'raw.decode("ASCII")'),
    "mdist.convert.checkpoint.x__check_layout__mutmut_16": (
        "inside `if member.header_offset != expected`, < and <= agree (and the branch is never taken)",
        "if member.header_offset <= expected else"),
    "mdist.convert.checkpoint.x__check_local_header__mutmut_58": (
        "bit 0 (encryption) is refused by _read_central_directory first, and the local flags equal the central "
        "ones (checked just before): flags & 9 is flags & 8 here", "not (flags & 9 and local == 0)"),
    "mdist.convert.checkpoint.x__descriptor_length__mutmut_3": (
        "bit 0 (encryption) is refused by _read_central_directory first: flags & 9 is flags & 8 here",
        "if not member.flags & 9:"),
    "mdist.convert.checkpoint.x__descriptor_length__mutmut_11": (
        "without a layout for the length the entry is refused whatever the bytes read (they lie before the next "
        "entry, inside the file)", "if (layout) or True else"),
    "mdist.convert.checkpoint.x__descriptor_length__mutmut_18": (
        "without a layout for the length the entry is refused whatever the bytes", 'if layout else b"XXXX"'),
}

STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped", 36: "timeout",
          -24: "timeout", 24: "timeout", 152: "timeout", 255: "timeout", None: "not checked",
          -11: "crash", -9: "crash"}  # the test run died of SIGSEGV (numpy's as_strided handed None) or SIGKILL
                                      # (a read loop made endless, killed): detected, as a timeout is

SITECUSTOMIZE = '''\
"""bench/mutation.py: in a subprocess of a mutmut stats run, record trampoline hits to a file at exit."""
import os

if os.environ.get("MUTANT_UNDER_TEST") == "stats" and os.environ.get("MDIST_MUTMUT_HITS"):
    try:
        import atexit
        import json

        import mutmut.mutation.trampoline as _trampoline

        _hits = set()

        def _record(name, caller=None):  # mutmut's own recorder needs its config, found from the cwd
            _hits.add(name)

        def _dump():
            if _hits:
                folder = os.environ["MDIST_MUTMUT_HITS"]
                tmp = os.path.join(folder, ".%d.tmp" % os.getpid())
                with open(tmp, "w") as f:
                    json.dump(sorted(_hits), f)
                os.replace(tmp, os.path.join(folder, "%d.json" % os.getpid()))

        _trampoline.record_trampoline_hit = _record
        atexit.register(_dump)
    except Exception:  # never break the program under test
        pass
'''

HITS_PLUGIN = '''\
"""bench/mutation.py: credit a test with the functions its subprocesses reached (see sitecustomize.py)."""
import json
import os
from pathlib import Path

import pytest


def _collect():
    folder = os.environ.get("MDIST_MUTMUT_HITS")
    if not folder or os.environ.get("MUTANT_UNDER_TEST") != "stats":
        return
    from mutmut.state import state

    for path in sorted(Path(folder).glob("*.json")):
        try:
            names = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        state()._stats.update(names)
        path.unlink()


def pytest_sessionstart(session):
    """Refuse to run against any mdist but the mutated copy in mutants/ (the cwd of mutmut's runs)."""
    import mdist

    here = Path.cwd().resolve()
    if here.name == "mutants" and here not in Path(mdist.__file__).resolve().parents:
        raise pytest.UsageError(f"mdist imported from {mdist.__file__}, not from {here}: no mutant would be seen")


@pytest.hookimpl(tryfirst=True)  # before mutmut's own hook files this test's hits
def pytest_runtest_teardown(item, nextitem):
    _collect()


def pytest_sessionfinish(session, exitstatus):
    """After a stats run (before mutmut saves it): the functions named in fast_only.json keep only the tests
    of the file named there, so their mutants never wait for the slow tests that also reach them."""
    fast = Path(__file__).with_name("fast_only.json")
    if os.environ.get("MUTANT_UNDER_TEST") != "stats" or not fast.exists():
        return
    from mutmut.state import state

    wanted = json.loads(fast.read_text())
    for key, tests in state().tests_by_mangled_function_name.items():
        if key.rpartition(".")[0] in wanted["modules"] and _function(key) in wanted["functions"]:
            tests.intersection_update({t for t in tests if t.split("::")[0].endswith(wanted["tests"])})


def _function(key):
    """x_f -> f, xǁCǁm -> C.m (as bench/mutation.py function_of)."""
    mangled = key.rpartition(".")[2]
    return mangled[2:] if mangled.startswith("x_") else ".".join(mangled.split("ǁ")[1:])


def pytest_collection_modifyitems(session, config, items):
    """In the fast tier (fast_tier.json), only the selection's first test file exists for mutmut: the
    clean run, the stats, every mutant. Otherwise, when a mutant is tested, run its fastest tests first
    (mutmut stops at the first failure)."""
    tier = Path(__file__).with_name("fast_tier.json")
    if tier.exists():
        first = json.loads(tier.read_text())["tests"]
        dropped = [item for item in items if not item.nodeid.split("::")[0].endswith(first)]
        if dropped:
            items[:] = [item for item in items if item not in dropped]
            config.hook.pytest_deselected(items=dropped)
    if os.environ.get("MUTANT_UNDER_TEST", "") in ("", "stats", "fail", "mutant_generation"):
        return
    from mutmut.state import state

    seconds = state().duration_by_test
    items.sort(key=lambda item: seconds.get(item.nodeid, 1e9))
'''


def no_mutate(code: str, skip: set[str] | None = None, keep: set[str] | None = None) -> str:
    """The source with `# pragma: no mutate block` on the functions left out (mutmut 3.8 then makes no
    mutant of them; its do_not_mutate_patterns only guard lines against removal): the top-level functions
    and methods named in `skip`, or all but those named in `keep` (a class is kept when one of its methods
    is). Only the scratch copy is changed."""
    import libcst as cst

    class Mark(cst.CSTTransformer):
        def __init__(self) -> None:
            self.names: list[str] = []
            self.marked: set[str] = set()

        def visit_ClassDef(self, node: cst.ClassDef) -> bool:
            self.names.append(node.name.value)
            return True

        def leave_ClassDef(self, original: cst.ClassDef, node: cst.ClassDef) -> cst.ClassDef:
            name = self.names.pop()
            if keep is not None and not self.names and not any(k.startswith(name + ".") for k in keep):
                return self.mark(node, name)
            return node

        def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
            self.names.append(node.name.value)
            return False

        def leave_FunctionDef(self, original: cst.FunctionDef, node: cst.FunctionDef) -> cst.FunctionDef:
            name = ".".join(self.names)
            self.names.pop()
            if len(self.names) > 1 or (keep is not None and len(self.names) == 1):
                return node  # nested, or a method of a class left out (or kept) as a whole
            if (skip is not None and name in skip) or (keep is not None and name not in keep):
                return self.mark(node, name)
            return node

        def mark(self, node, name: str):
            header = node.body.header
            if header.comment is not None:
                raise ValueError(f"{name}: a comment after its colon, no room for the pragma")
            self.marked.add(name)
            return node.with_changes(body=node.body.with_changes(header=header.with_changes(
                whitespace=cst.SimpleWhitespace("  "), comment=cst.Comment("# pragma: no mutate block"))))

    marker = Mark()
    result = cst.parse_module(code).visit(marker).code
    missing = (skip or set()) - marker.marked
    if missing:
        raise ValueError(f"no such function to leave out: {', '.join(sorted(missing))}")
    return result


def toml_list(values: list[str]) -> str:
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


def prepare(work: Path, files: list[str], tests: list[str], settings: dict, ref: str | None,
            fast_first: bool = False) -> None:
    """A scratch copy of the work tree (or of commit `ref`) with mutmut's config for this module."""
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis", ".pytest_cache")
    if ref:  # a commit: what others are editing meanwhile in the work tree stays out of the run...
        archive = subprocess.run(["git", "archive", ref, "mdist", "checksums", "tests", "docs", "README.md"],
                                 cwd=REPO, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(work)], input=archive, check=True)
        for test in (REPO / "tests").glob("test_mutants_*.py"):  # ...but not these tests, being written
            shutil.copy2(test, work / "tests" / test.name)
    else:
        shutil.copytree(REPO / "mdist", work / "mdist", ignore=ignore, symlinks=True)
        shutil.copytree(REPO / "tests", work / "tests", ignore=ignore, symlinks=True)
        shutil.copytree(REPO / "docs", work / "docs", ignore=ignore)
        shutil.copytree(REPO / "checksums", work / "checksums", ignore=ignore)
        shutil.copy2(REPO / "README.md", work / "README.md")
    shutil.copytree(work / "checksums", work / "mdist" / "checksums", ignore=ignore, dirs_exist_ok=True)
    settings = dict(settings)
    fast_only = settings.pop("fast_tests_only", {})
    for key in ("skip_functions", "keep_functions"):
        for file, names in settings.pop(key, {}).items():
            target = work / file
            target.write_text(no_mutate(target.read_text(), **{key.split("_")[0]: set(names)}))
    head = subprocess.run(["git", "rev-parse", "--short", ref or "HEAD"], cwd=REPO, capture_output=True,
                          text=True).stdout.strip()
    (work / "SOURCE").write_text(f"commit {head}\n" if ref else f"work tree (HEAD {head} and uncommitted changes)\n")
    selection = [t for t in tests if not t.startswith("tests/") or (REPO / t).exists()]
    config = (REPO / "pyproject.toml").read_text() + f"""
[tool.mutmut]
source_paths = ["mdist"]
also_copy = ["checksums", "docs", "README.md"]
only_mutate = {toml_list(files)}
pytest_add_cli_args_test_selection = {toml_list(selection)}
pytest_add_cli_args = ["-p", "mutmut_hits", "-p", "no:cacheprovider", "-p", "no:randomly"]
use_setproctitle = false
# The stats run leaves threads behind (test servers, libtorrent, thread pools): a mutant forked from
# that process can hang on a lock held at fork, and would then be counted as a (false) timeout.
# A fork server only collects the tests before it forks the mutants.
process_isolation = "forkserver"
# A mutant gets (its tests' time in the stats run + 2 s) x 5 before it is stopped as a timeout.
timeout_multiplier = 5.0
timeout_constant = 2.0
""" + "".join(f"{key} = {toml_list(value)}\n" for key, value in settings.items())
    (work / "pyproject.toml").write_text(config)
    support = work / "support"
    support.mkdir()
    write_support(support, tests, fast_only)
    set_fast_tier(support, tests, fast_first)
    (work / "hits").mkdir()
    (work / "tmp").mkdir()
    # On PYTHONPATH before mutmut fills it: a folder missing at start-up is cached by the import
    # system as "nothing here", and mdist would be imported from the repository instead.
    (work / "mutants").mkdir()


def set_fast_tier(support: Path, tests: list[str], on: bool) -> None:
    """The fast tier: every mutant against the module's in-process tests (the selection's first file)
    alone. A later --resume without --fast-first brings the other tests back: mutmut sees them as new,
    learns what they reach, and the survivors are tested again against the whole selection (the
    selection in pyproject.toml never changes: mutmut would then drop every verdict)."""
    tier = support / "fast_tier.json"
    if on:
        tier.write_text(json.dumps({"tests": tests[0].rpartition("/")[2]}))
    else:
        tier.unlink(missing_ok=True)


def write_support(support: Path, tests: list[str], fast_only: dict[str, list[str]]) -> None:
    """sitecustomize.py, the pytest plugin, and fast_only.json: which functions are tested by the first test
    file of the selection only (their modules, their names as function_of() gives them, that file)."""
    (support / "sitecustomize.py").write_text(SITECUSTOMIZE)
    (support / "mutmut_hits.py").write_text(HITS_PLUGIN)
    target = support / "fast_only.json"
    if fast_only:
        modules = [file[:-len(".py")].replace("/", ".") for file in fast_only]
        target.write_text(json.dumps({"modules": modules, "functions": sorted({f for names in fast_only.values()
                                                                               for f in names}),
                                      "tests": tests[0].rpartition("/")[2]}))
    elif target.exists():
        target.unlink()


def resume(work: Path, files: list[str], ref: str | None, tests: list[str] | None = None,
           settings: dict | None = None, fast_first: bool = False) -> None:
    """Take the repository's current tests, and have the survivors tested again with them (but those
    listed in EQUIVALENT, whose fragment still matches: the slow tests that reach them change nothing).

    mutmut keeps every other verdict (their functions are unchanged) and runs the tests that are
    new since the stopped run once to learn what they reach.
    """
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    (work / "tmp").mkdir(exist_ok=True)
    if ref:
        advance(work, ref, settings or {})
    if tests is not None:  # today's plugin and fast-test choice
        write_support(work / "support", tests, (settings or {}).get("fast_tests_only", {}))
        set_fast_tier(work / "support", tests, fast_first)
    shutil.rmtree(work / "mutants" / ".hypothesis", ignore_errors=True)  # no example replayed from before
    if ref:
        for test in (REPO / "tests").glob("test_mutants_*.py"):
            shutil.copy2(test, work / "tests" / test.name)
    else:
        shutil.copytree(REPO / "tests", work / "tests", ignore=ignore, dirs_exist_ok=True)
    for file in files:
        meta = work / "mutants" / (file + ".meta")
        if meta.exists():
            data = json.loads(meta.read_text())
            codes = data["exit_code_by_key"]
            # a survivor listed as equivalent keeps its verdict (no test can kill it; one whose source moved
            # is tested again); the report checks its fragment again
            data["exit_code_by_key"] = {k: None if STATUS.get(v) in ("survived", "no tests") and not (
                k in EQUIVALENT and STATUS.get(v) == "survived" and EQUIVALENT[k][1] in mutant_diff(work, k)) else v
                for k, v in codes.items()}
            meta.write_text(json.dumps(data, indent=4))


def advance(work: Path, ref: str, settings: dict) -> None:
    """Bring a kept scratch copy made at an older commit to `ref`: its mdist/, tests and data are replaced
    by ref's (touched, so mutmut makes the mutants again). mutmut keeps the verdict of every function whose
    source is unchanged (it compares a hash of each function) and tests the mutants of the changed ones
    afresh, so a long run goes on at the new commit instead of starting over."""
    head = subprocess.run(["git", "rev-parse", "--short", ref], cwd=REPO, capture_output=True, text=True,
                          check=True).stdout.strip()
    source = (work / "SOURCE").read_text() if (work / "SOURCE").exists() else ""
    if source.startswith(f"commit {head}"):
        return
    for name in ("mdist", "tests", "docs", "checksums"):
        shutil.rmtree(work / name, ignore_errors=True)
    archive = subprocess.run(["git", "archive", ref, "mdist", "checksums", "tests", "docs", "README.md"],
                             cwd=REPO, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-m", "-C", str(work)], input=archive, check=True)  # -m: mtime now
    shutil.copytree(work / "checksums", work / "mdist" / "checksums", dirs_exist_ok=True)
    # which tests reach which function is learnt again (a changed or new function must not be "no tests")
    (work / "mutants" / "mutmut-stats.json").unlink(missing_ok=True)
    for key in ("skip_functions", "keep_functions"):
        for file, names in settings.get(key, {}).items():
            target = work / file
            target.write_text(no_mutate(target.read_text(), **{key.split("_")[0]: set(names)}))
    before = source.strip().removeprefix("commit ").split(" ")[0] or "?"
    (work / "SOURCE").write_text(f"commit {head} (resumed from a run at {before}: unchanged functions keep "
                                 f"their verdicts)\n")


def environment(work: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(work / "mutants"), str(work / "support")])
    env["MDIST_MUTMUT_HITS"] = str(work / "hits")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    # pytest's own temporary folders, away from the shared /tmp/pytest-of-USER: other runs there clean
    # up (and could delete a folder a mutant's test is using, or crash on a tree a test left behind)
    env["PYTEST_DEBUG_TEMPROOT"] = str(work / "tmp")
    env.pop("MUTANT_UNDER_TEST", None)
    return env


def run_mutmut(work: Path, budget: float, log) -> int:
    """`mutmut run` with one worker, at nice 19, bounded by timeout; its whole process group ends with it."""
    command = ["nice", "-n", "19", "timeout", "--kill-after=20", str(int(budget)), sys.executable, "-m", "mutmut",
               "run", "--max-children", "1"]
    proc = subprocess.Popen(command, cwd=work, env=environment(work), stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        return proc.wait()
    finally:
        try:  # a mutant's CLI subprocess can outlive a worker that was stopped for a timeout
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def mutant_diff(work: Path, name: str) -> str:
    result = subprocess.run([sys.executable, "-m", "mutmut", "show", name], cwd=work, env=environment(work),
                            capture_output=True, text=True, timeout=120)
    lines = [line for line in result.stdout.splitlines() if line.startswith(("-", "+")) and
             not line.startswith(("---", "+++"))]
    return "\n".join(lines) or result.stdout.strip()


def function_of(name: str) -> str:
    """The function (or Class.method) a mutant's name points at: x_f__mutmut_3 -> f, xǁCǁm__mutmut_1 -> C.m."""
    mangled = name.rpartition("__mutmut_")[0].rpartition(".")[2]
    return mangled[2:] if mangled.startswith("x_") else ".".join(mangled.split("ǁ")[1:])


def left_out(file: str, name: str, settings: dict) -> bool:
    """Whether the module's settings leave this mutant's function out (a run prepared before they did
    still lists its mutants, as "no tests")."""
    function = function_of(name)
    skip = settings.get("skip_functions", {}).get(file)
    keep = settings.get("keep_functions", {}).get(file)
    return bool((skip and function in skip) or (keep is not None and function not in keep))


def report(key: str, work: Path, files: list[str], seconds: float, exit_code: int, settings: dict | None = None) -> dict:
    statuses: dict[str, str] = {}
    for file in files:
        meta = work / "mutants" / (file + ".meta")
        if meta.exists():
            for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
                if not left_out(file, name, settings or {}):
                    statuses[name] = STATUS.get(code, f"exit {code}")
    counts: dict[str, int] = {}
    for status in statuses.values():
        counts[status] = counts.get(status, 0) + 1
    equivalent, survivors, stale = {}, {}, []
    for name, status in sorted(statuses.items()):
        if status in ("killed", "timeout", "crash", "not checked"):  # not checked: the budget ran out first
            continue
        diff = mutant_diff(work, name)
        if name in EQUIVALENT:
            reason, fragment = EQUIVALENT[name]
            if fragment in diff:
                equivalent[name] = {"status": status, "reason": reason, "diff": diff}
                continue
            stale.append(name)
        survivors[name] = {"status": status, "diff": diff}
    killed = counts.get("killed", 0) + counts.get("timeout", 0) + counts.get("crash", 0)
    total = len(statuses)
    non_equivalent = total - len(equivalent)
    return {"module": key, "files": files, "seconds": round(seconds), "mutmut_exit": exit_code, "total": total,
            "killed": killed, "equivalent": len(equivalent), "counts": counts,
            "kill_rate": round(100 * killed / non_equivalent, 1) if non_equivalent else 100.0,
            "equivalent_mutants": equivalent, "survivors": survivors, "stale_equivalent_entries": stale}


def confirm(work: Path, files: list[str], settings: dict, per_mutant: float, log) -> dict[str, int]:
    """The second tier, after --fast-first: each survivor (not listed as equivalent) is run against the
    module's whole selection, directly with pytest -x (the mutant chosen by MUTANT_UNDER_TEST, as mutmut's
    own trampoline reads it), bounded by `per_mutant` seconds. A failing test is a kill, recorded in
    mutmut's verdicts; a pass, or running out of time, leaves it a survivor."""
    import tomllib

    set_fast_tier(work / "support", [""], False)
    config = tomllib.loads((work / "pyproject.toml").read_text())["tool"]["mutmut"]
    selection = config["pytest_add_cli_args_test_selection"]
    outcome: dict[str, int] = {}
    for file in files:
        meta = work / "mutants" / (file + ".meta")
        if not meta.exists():
            continue
        data = json.loads(meta.read_text())
        for name, code in sorted(data["exit_code_by_key"].items()):
            if STATUS.get(code) not in ("survived", "no tests") or left_out(file, name, settings):
                continue
            if name in EQUIVALENT and EQUIVALENT[name][1] in mutant_diff(work, name):
                continue
            env = environment(work) | {"MUTANT_UNDER_TEST": name}
            command = ["nice", "-n", "19", "timeout", "--kill-after=20", str(int(per_mutant)), sys.executable, "-m",
                       "pytest", "-x", "-q", "-p", "mutmut_hits", "-p", "no:cacheprovider", "-p", "no:randomly",
                       *selection]
            start = time.monotonic()
            proc = subprocess.run(command, cwd=work / "mutants", env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)
            outcome[name] = proc.returncode
            log.write(f"{name}: pytest exit {proc.returncode} in {time.monotonic() - start:.0f} s\n"
                      + "\n".join(proc.stdout.splitlines()[-3:]) + "\n")
            log.flush()
            if proc.returncode == 1:  # a test failed: killed
                data = json.loads(meta.read_text())
                data["exit_code_by_key"][name] = 1
                meta.write_text(json.dumps(data, indent=4))
    return outcome


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", help="module keys (default: all, in priority order)")
    parser.add_argument("--budget", type=float, default=1800, help="seconds per module (default 1800)")
    parser.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "mdist-mutation")
    parser.add_argument("--json", type=Path, help="write the results here as JSON")
    parser.add_argument("--list", action="store_true", help="list the modules and their tests")
    parser.add_argument("--keep", action="store_true", help="keep the scratch copies")
    parser.add_argument("--ref", help="mutate this commit's mdist/ and run its tests (plus the work tree's "
                                      "tests/test_mutants_*.py) instead of the work tree's, e.g. HEAD")
    parser.add_argument("--resume", action="store_true",
                        help="go on in the scratch copies a stopped run kept (--keep), with the repository's "
                             "current tests: the mutants not yet tested, and the survivors again")
    parser.add_argument("--fast-first", action="store_true",
                        help="the fast tier: mutants against each module's in-process tests only (its first test "
                             "file); then --resume without it tests the survivors against the whole selection")
    parser.add_argument("--confirm", action="store_true",
                        help="the second tier, in the kept scratch copies of a --fast-first run: each survivor "
                             "against the whole selection (pytest -x), at most --budget seconds each")
    parser.add_argument("--report", action="store_true",
                        help="only report on the kept scratch copies (--keep) as they are: no mutant is run")
    args = parser.parse_args()
    if args.list:
        for key, files, tests, _ in MODULES:
            print(f"{key:14} {' '.join(files)}\n{'':14} tests: {' '.join(tests)}")
        return 0
    chosen = [m for m in MODULES if not args.modules or m[0] in args.modules]
    unknown = set(args.modules) - {m[0] for m in MODULES}
    if unknown:
        parser.error(f"unknown module(s): {', '.join(sorted(unknown))}")
    results = []
    for key, files, tests, settings in chosen:
        work = args.workdir / key
        print(f"== {key}: {' '.join(files)}", flush=True)
        start = time.monotonic()
        if args.report or args.confirm:
            if not (work / "mutants").is_dir():
                parser.error(f"no kept scratch copy of {key} in {work}")
            code = 0
            if args.confirm:
                with open(args.workdir / f"{key}.confirm.log", "a") as log:
                    confirm(work, files, settings, args.budget, log)
        else:
            if not (args.resume and (work / "mutants").is_dir()):
                prepare(work, files, tests, settings, args.ref, args.fast_first)
            else:
                resume(work, files, args.ref, tests, settings, args.fast_first)
            with open(args.workdir / f"{key}.log", "a" if args.resume else "w") as log:
                code = run_mutmut(work, args.budget, log)
        seconds = time.monotonic() - start
        result = report(key, work, files, seconds, code, settings)
        result["source"] = (work / "SOURCE").read_text().strip() if (work / "SOURCE").exists() else "?"
        results.append(result)
        note = " (budget reached: unfinished)" if code == 124 or result["counts"].get("not checked") else ""
        print(f"   {result['killed']} killed / {result['total']} mutants / {result['equivalent']} equivalent: "
              f"{result['kill_rate']} % of non-equivalent killed, {result['seconds']} s{note}; "
              f"statuses {result['counts']}", flush=True)
        for name in result["stale_equivalent_entries"]:
            print(f"   stale EQUIVALENT entry (source moved?): {name}")
        for name, survivor in result["survivors"].items():
            print(f"   {survivor['status']}: {name}\n" + "\n".join("      " + l for l in survivor["diff"].splitlines()))
        if not (args.keep or args.report or args.confirm):
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0 if all(r["kill_rate"] >= 90 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
