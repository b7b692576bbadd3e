"""What a model folder holds: the one answer that run, convert, digest, verify and seed all ask.

A folder can hold three layouts of the same model:
  pth      params.json + consolidated.00.pth            (Mistral's release, a pickle), or its raw
           byte pieces consolidated.00.pth-split0, -split1, ... (a hub mirror's `split` output)
  mistral  params.json + consolidated.safetensors       (what `mdist convert` writes by default),
           or consolidated-0000N-of-0000M.safetensors shards (Mixtral 8x22B)
  hf       config.json + model.safetensors.index.json and its shards, or model.safetensors

The rule (docs/trust-model.md): when the folder is a known release (recognised from its file
names and sizes), a layout is used only if each of its files is part of the release or was
derived by mdist on this machine (mdist.derived); a weight file that is neither makes every
command refuse the folder (exit 1), because `verify` cannot vouch for it. Among usable layouts,
`run` prefers mistral, then hf, then pth (converted once); `digest` and `convert` prefer the
release's own pth. When more than one layout is present, the choice is said on stderr. A folder
holding a torrent download that has not finished (resume data, no completion record, pieces
missing) is refused by all three, with how to resume it.
"""

from __future__ import annotations

import os
import re
import shlex
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from mdist.derived import DerivedState, derived_state
from mdist.errors import InputError, UnsafeContentError
from mdist.jsonio import read_json_file
from mdist.modelconfig import MistralConfig, read_json
from mdist.paths import check_component, walk
from mdist.tokenizer_files import TOKENIZER_NAMES, tokenizer_file
from mdist.verify.manifest import Manifest, identify, load_registry

STATE_DIR = ".mdist"  # mdist's own resume, status and derived-file records; never part of a release
RESUME_FILE = "resume.fastresume"  # libtorrent's resume data, kept while a torrent download runs
COMPLETE_FILE = "complete.json"  # written once every piece and file was verified (mdist.sources.torrent_fetch)
RELEASE_TORRENT = "release.torrent"  # the torrent fetched, so that `mdist seed` rejoins its swarm
MAX_RESUME_READ = 64 << 20  # resume data beyond this is not read to count pieces
HF_STATE_DIR = ".cache"  # huggingface_hub's download bookkeeping in a --local-dir (.cache/huggingface)

PTH, MISTRAL, HF = "pth", "mistral", "hf"
GGUF = "gguf"  # one top-level .gguf file (llama.cpp's format; mdist.convert.gguf_reader): run and digest last
PREFERENCE = {
    "run": (MISTRAL, HF, PTH, GGUF),
    "digest": (PTH, MISTRAL, HF, GGUF),
    "convert": (PTH, MISTRAL),  # a mistral layout only to --layout hf
}
MISTRAL_WEIGHTS = "consolidated.safetensors"
HF_INDEX = "model.safetensors.index.json"
HF_SINGLE = "model.safetensors"
TOKENIZER = "tokenizer.model"
SIDE_NAMES = ("params.json", "config.json", HF_INDEX, *TOKENIZER_NAMES, STATE_DIR)  # read (or written) by commands
_PTH_NAME = re.compile(r"consolidated\.[0-9]{2}\.pth")  # used with fullmatch: `$` would accept a final newline
# Anything a loader (ours, transformers, llama.cpp, torch) might pick up as weights.
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt", ".gguf", ".ggml", ".npz", ".h5",
                   ".msgpack", ".onnx", ".pkl", ".pickle")
_BLOB_NAME = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")  # git blob sha1 or LFS sha256
_GGUF_NAME = re.compile(r"[^/]+\.gguf")  # fullmatch
_SPLIT_PIECE = re.compile(r"\.(pth|safetensors|bin)-split[0-9]+\Z")
_PTH_PIECE = re.compile(r"(consolidated\.[0-9]{2}\.pth)-split([0-9]{1,4})")  # fullmatch
_MISTRAL_SHARD = re.compile(r"consolidated-([0-9]{5})-of-([0-9]{5})\.safetensors")  # fullmatch


def is_weight_file(name: str) -> bool:
    lowered = name.lower()
    return lowered.endswith(WEIGHT_SUFFIXES) or bool(_SPLIT_PIECE.search(lowered))


@dataclass(frozen=True)
class Layout:
    kind: str
    config: str | None  # params.json / config.json; a bare .pth can be converted without one
    weights: tuple[str, ...]
    extra: tuple[str, ...] = ()  # other files the loader reads (an HF index)
    joined: str | None = None  # the weights are raw byte pieces of this one file, in order

    def files(self, tokenizer: str | None) -> tuple[str, ...]:
        return (*((self.config,) if self.config else ()), *self.extra, *self.weights,
                *((tokenizer,) if tokenizer else ()))


def list_files(directory: Path) -> tuple[dict[str, int], list[str]]:
    """Regular files under directory (relative path -> size), and other entries (links, FIFOs, devices).

    Symbolic links are never followed, except in a Hugging Face cache snapshot (see `scan`);
    mdist's state folder and huggingface_hub's download bookkeeping are not part of a model.
    """
    files, others, _ = scan(directory)
    return files, others


def hf_cache_repo(directory: Path) -> Path | None:
    """The repo folder (models--owner--name) when `directory` is one of its snapshots/<commit>."""
    resolved = Path(directory).resolve()
    repo = resolved.parent.parent
    if resolved.parent.name == "snapshots" and (repo / "blobs").is_dir() and not (repo / "blobs").is_symlink():
        return repo
    return None


def _blob_target(link: Path, blobs: Path) -> tuple[str, int] | None:
    """(blob name, size) when `link` resolves to a regular file directly inside `blobs`."""
    target = Path(os.path.realpath(link))
    if target.parent != blobs or not _BLOB_NAME.fullmatch(target.name):
        return None
    try:
        info = os.stat(target)
    except OSError:
        return None
    return (target.name, info.st_size) if stat.S_ISREG(info.st_mode) else None


def scan(directory: Path) -> tuple[dict[str, int], list[str], dict[str, str]]:
    """(regular files -> size, other entries, files that are links into the HF cache's blobs -> blob name).

    In a snapshot folder of the Hugging Face cache, a link that resolves to a file directly in the
    same repo's `blobs/` is followed: the cache is content-addressed, so the blob's name (LFS sha256
    or git blob sha1) is what the content must hash to. Any other link is never followed, and a
    plain file in a snapshot (huggingface_hub writes only links there) is never read.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(f"{directory} is not a folder")
    repo = hf_cache_repo(directory)
    blobs_dir = (repo / "blobs") if repo else None
    files: dict[str, int] = {}
    others: list[str] = []
    blobs: dict[str, str] = {}

    state = directory / STATE_DIR
    if state.is_symlink() or (state.exists() and not state.is_dir()):
        others.append(STATE_DIR)  # mdist would write its state through it: reported, refused

    def skip(rel: str) -> bool:  # mdist's state and huggingface_hub's bookkeeping are no model files
        return rel == STATE_DIR or (rel == HF_STATE_DIR and (directory / rel / "huggingface").is_dir())

    for rel_root, entries in walk(directory, skip):
        for entry in entries:
            rel = f"{rel_root}/{entry.name}" if rel_root else entry.name
            if rel == STATE_DIR and not rel_root:
                continue
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError as exc:
                raise InputError(f"cannot read {rel}: {exc.strerror}") from None
            if stat.S_ISDIR(info.st_mode):
                continue
            blob = _blob_target(Path(entry.path), blobs_dir) if blobs_dir and stat.S_ISLNK(info.st_mode) else None
            if stat.S_ISREG(info.st_mode) and blobs_dir is None:
                files[rel] = info.st_size
            elif blob is not None:
                blobs[rel], files[rel] = blob
            else:
                others.append(rel)
    return files, sorted(others), blobs


@dataclass
class FolderContents:
    """A folder's files, its complete layouts, its derived files and the release it looks like."""

    path: Path
    files: dict[str, int]
    others: list[str]  # symlinks, FIFOs, devices: never followed or read
    layouts: list[Layout]
    derived: DerivedState
    release: Manifest | None
    problems: list[str] = field(default_factory=list)
    blobs: dict[str, str] = field(default_factory=dict)  # HF cache snapshot: file -> blob name it must hash to
    pieces: dict[str, tuple[str, ...]] = field(default_factory=dict)  # joined name -> its pieces, in order

    @property
    def tokenizer(self) -> str | None:
        """The tokenizer `run` reads (mdist.tokenizer_files; None when ambiguous: `run` refuses those)."""
        return tokenizer_file(self.files, strict=False)

    def in_release(self, name: str) -> bool:
        joined = self.joined_name(name)
        if joined is not None:  # a piece: judged as the file the pieces join into
            return self._in_release(joined, sum(self.files[p] for p in self.pieces[joined]))
        return self._in_release(name, self.files.get(name))

    def _in_release(self, name: str, size: int | None) -> bool:
        if self.release is None or name not in self.release.files:
            return False
        published = self.release.files[name].size
        return published is None or published == size

    def joined_name(self, name: str) -> str | None:
        """The file a raw piece belongs to (consolidated.00.pth for consolidated.00.pth-split3)."""
        return next((joined for joined, pieces in self.pieces.items() if name in pieces), None)

    def derived_from_release(self, name: str, depth: int = 0) -> bool:
        """Validly derived here, and only from files of this folder that are part of the release."""
        sources = self.derived.sources.get(name)
        if name not in self.derived.valid or not sources or depth > 4:
            return False
        return all(not os.path.isabs(source) and (self.in_release(source) or
                                                  self.derived_from_release(source, depth + 1))
                   for source in sources)

    def trusted(self, name: str) -> bool:
        """Part of the release (by name and size; verify checks the hash) or derived here from it."""
        return self.in_release(name) or self.derived_from_release(name)

    def foreign_weights(self) -> list[str]:
        """Weight files of a known release that are neither part of it nor derived here from it
        (a stale derivation is not foreign: mdist may overwrite it, and never loads it)."""
        if self.release is None:
            return []
        return sorted(n for n in self.files if is_weight_file(n) and not self.in_release(n)
                      and not self.derived_from_release(n) and n not in self.derived.stale)

    def usable(self, layout: Layout) -> bool:
        files = layout.files(self.tokenizer)
        if any(self.outdated(name) for name in files):
            return False
        return self.release is None or all(self.trusted(name) for name in files)

    def outdated(self, name: str) -> bool:
        """A stale derivation that is never loaded (`run` converts again). In a known release: any
        but those stale only because their sources were deleted, and never a file of the release
        itself (the manifest vouches for it, not the record). Outside one: only where a file it was
        made from is still in this folder, so it can be made again here; one copied elsewhere
        (`cp -r`), or made from files elsewhere that changed or went (`convert SRC --out DIR`), is a
        file like any other there: nothing vouches for it, as for a folder without records."""
        if name not in self.derived.stale or self.in_release(name):
            return False
        if self.release is None:
            return name in self.derived.remakeable
        return name not in self.derived.orphaned

    def choose(self, purpose: str, note: Callable[[str], None] | None = None, replacing: str | None = None) -> Layout:
        """The layout `purpose` uses; refuses a known release that holds foreign weights, a config
        or tokenizer that is a link or special file (never followed), and an unfinished download."""
        unfinished = unfinished_download(self.path)
        if unfinished:
            raise InputError(unfinished)
        linked = [name for name in self.others  # where a layout reads (top level), or, in a known
                  if ("/" not in name or self.release is not None)  # release, any weights-like link
                  and (name in SIDE_NAMES or is_weight_file(name))]
        if linked:
            raise InputError(f"{self.path / linked[0]} is a symbolic link or special file; mdist never "
                             f"follows those in a model folder (replace it by the file itself)")
        doubled = [joined for joined in self.pieces if joined in self.files]
        if doubled:
            raise InputError(f"{self.path} holds both {doubled[0]} and its raw pieces ({self.pieces[doubled[0]][0]} "
                             f"...): mdist will not guess which to read; remove one")
        # `replacing`: the layout kind `convert --force` is about to write here; its foreign files
        # are never read (convert reads the release) and are overwritten
        foreign = [name for name in self.foreign_weights() if replacing is None or self._kind_of(name) != replacing]
        if foreign:
            raise UnsafeContentError(
                f"{self.path} looks like {self.release.name} but also holds {foreign[0]}, which is not part "  # type: ignore[union-attr]
                f"of that release and was not derived by mdist here (nor by this user: a folder copied from "
                f"another machine or account); refusing to load weights from this folder "
                f"({self._remedy(foreign[0])})")
        wanted = PREFERENCE[purpose]
        usable = [layout for kind in wanted for layout in self.layouts if layout.kind == kind and self.usable(layout)]
        if not usable:
            raise InputError(self._nothing_usable(purpose))
        chosen = usable[0]
        made_from = {source for name in chosen.weights if name in self.derived.valid
                     for source in self.derived.sources.get(name, ())}
        alternatives = [layout for layout in self.layouts
                        if layout != chosen and not set(layout.weights) <= made_from]  # not its own source
        if note is not None and alternatives:
            kinds = ", ".join(sorted({layout.kind for layout in self.layouts}))
            note(f"{self.path} holds several layouts ({kinds}); {purpose} uses {chosen.kind} "
                 f"({', '.join(chosen.weights)})")
        return chosen

    def _kind_of(self, name: str) -> str | None:
        """The kind of the layout that holds the weight file `name` (None if none does)."""
        return next((layout.kind for layout in self.layouts if name in layout.weights), None)

    def _remedy(self, name: str) -> str:
        """What the user can do about a foreign weight file: make it again here from the release
        where mdist writes that layout, else remove it."""
        flags = {MISTRAL: "", HF: " --layout hf"}
        kind = self._kind_of(name)
        if kind in flags and "/" not in name:
            return (f"remove it, or make it again from the verified release: "
                    f"`mdist convert {self.path}{flags[kind]} --force`")
        return f"remove it; `mdist verify {self.path}` lists what the folder holds"

    def choose_containing(self, name: str, purpose: str) -> Layout:
        """The usable layout that holds the weight file `name` (a file named on the command line):
        the same refusals as `choose`, and never another file than the one named."""
        self.choose(purpose)  # foreign weights, links: refused as for the folder
        for layout in self.layouts:
            if name in layout.weights and layout.kind in PREFERENCE[purpose]:
                if not self.usable(layout):
                    raise InputError(self._nothing_usable(purpose, [layout]))
                return layout
        raise InputError(f"{self.path / name} is not the weights of a layout mdist can {purpose} "
                         f"(give the folder to let mdist choose)")

    def _nothing_usable(self, purpose: str, candidates: list[Layout] | None = None) -> str:
        """Why no layout (or the one named on the command line, `candidates`) can be used."""
        if self.problems:
            return f"{self.path}: {self.problems[0]}"
        unusable = candidates or [layout for layout in self.layouts if layout.kind in PREFERENCE[purpose]]
        if unusable:
            layout = unusable[0]
            stale = [n for n in layout.files(self.tokenizer) if n in self.derived.stale]
            if stale:
                return f"{self.path}: {stale[0]} was derived by mdist from files that have changed since"
            untrusted = [n for n in layout.files(self.tokenizer) if not self.trusted(n)]
            if untrusted and self.release is not None:
                return f"{self.path}: {untrusted[0]} is not part of {self.release.name} (name or size differs)"
            return f"{self.path}: its {layout.kind} layout ({', '.join(layout.weights)}) cannot be used"
        if purpose == "convert":
            return f"{self.path} holds no consolidated.00.pth checkpoint (nor Mistral-layout safetensors)"
        return (f"{self.path} holds no model weights: expected params.json with consolidated.safetensors or "
                f"consolidated.00.pth, or config.json with model.safetensors / {HF_INDEX}")


def unfinished_download(directory: Path) -> str | None:
    """Why the folder's files are not whole yet, when a torrent download into it has not finished
    (interrupted, or still running): its resume data is there, its completion record is not, and
    the resume data does not list every piece. Its files then have their full size but holes
    (sparse), so reading them would give a misleading error (a .pth that is "not a zip archive")."""
    state = Path(directory) / STATE_DIR
    if os.path.lexists(state / COMPLETE_FILE) or not (state / RESUME_FILE).is_file():
        return None
    pieces = _pieces_received(state / RESUME_FILE)
    if pieces is not None and pieces[0] == pieces[1]:
        return None  # every piece is there: only the final check was missed; verify says the rest
    have = (f"{100 * pieces[0] // max(1, pieces[1])} % received: {pieces[0]} of {pieces[1]} pieces" if pieces
            else "not every piece received")
    torrent = state / RELEASE_TORRENT
    command = shlex.join(["mdist", "fetch", str(torrent), "--out", str(directory)])
    again = f" (or `{command}`)" if torrent.is_file() else ""
    return (f"{directory} holds a torrent download that has not finished ({have}; no {STATE_DIR}/"
            f"{COMPLETE_FILE}): its files are not whole yet. Resume it by running the same `mdist fetch` "
            f"command again{again}; it fetches only what is missing")


def _pieces_received(resume: Path) -> tuple[int, int] | None:
    """(pieces received, pieces in the torrent) from libtorrent's resume data; None if unreadable."""
    from mdist.sources.bt_session import lt

    try:
        if resume.stat().st_size > MAX_RESUME_READ:
            return None
        params = lt().read_resume_data(resume.read_bytes())
    except (OSError, RuntimeError):
        return None
    have = list(params.have_pieces)
    total = params.ti.num_pieces() if params.ti is not None else len(have)
    return (sum(1 for piece in have if piece), total) if total else None


def _hf_layout(directory: Path, files: dict[str, int], problems: list[str]) -> Layout | None:
    if HF_INDEX in files:
        try:
            index = read_json_file(directory / HF_INDEX, HF_INDEX)
            weight_map = index.get("weight_map") if isinstance(index, dict) else None
            if not isinstance(weight_map, dict) or not weight_map:
                raise InputError(f"{HF_INDEX} has no weight_map")
            shards = sorted({check_component(v, HF_INDEX) for v in weight_map.values() if isinstance(v, str)})
            if len(shards) == 0 or not all(isinstance(v, str) for v in weight_map.values()):
                raise InputError(f"{HF_INDEX} maps tensors to something other than file names")
        except (InputError, UnsafeContentError) as exc:
            problems.append(str(exc))
            return None
        missing = [s for s in shards if s not in files or not s.endswith(".safetensors")]
        if missing:
            problems.append(f"{HF_INDEX} names {missing[0]}, which is not a safetensors file in the folder")
            return None
        return Layout(HF, "config.json", tuple(shards), (HF_INDEX,))
    if HF_SINGLE in files:
        return Layout(HF, "config.json", (HF_SINGLE,))
    return None


def split_pieces(files: dict[str, int], problems: list[str]) -> dict[str, tuple[str, ...]]:
    """Raw pieces of a checkpoint (`split` output: NAME-split0, NAME-split1, ...), in numeric order
    (split10 after split9). A gap or two names for one number is a problem, and no pieces."""
    numbered: dict[str, dict[int, str]] = {}
    doubled: set[str] = set()
    for name in sorted(files):
        match = _PTH_PIECE.fullmatch(name)
        if match:
            joined, number = match.group(1), int(match.group(2))
            if number in numbered.setdefault(joined, {}):
                if joined not in doubled:
                    problems.append(f"{name} and {numbered[joined][number]} are both piece {number} of {joined}")
                doubled.add(joined)
                continue
            numbered[joined][number] = name
    result = {}
    for joined, by_number in sorted(numbered.items()):
        if joined in doubled:
            continue
        missing = [n for n in range(max(by_number) + 1) if n not in by_number]
        if missing:
            after = f", after {by_number[missing[0] - 1]}" if missing[0] else ""
            problems.append(f"piece {missing[0]} of {joined} is missing{after}: the pieces cannot be joined")
            continue
        result[joined] = tuple(by_number[n] for n in sorted(by_number))
    return result


def _mistral_shards(files: dict[str, int], problems: list[str]) -> tuple[str, ...]:
    """consolidated-0000N-of-0000M.safetensors, all M of them (Mistral's sharded safetensors)."""
    shards = sorted(n for n in files if _MISTRAL_SHARD.fullmatch(n))
    if not shards:
        return ()
    totals = {int(_MISTRAL_SHARD.fullmatch(n).group(2)) for n in shards}  # type: ignore[union-attr]
    expected = {f"consolidated-{i:05d}-of-{t:05d}.safetensors" for t in totals for i in range(1, t + 1)}
    if len(totals) != 1 or set(shards) != expected:
        missing = sorted(expected - set(shards))
        problems.append(f"{missing[0]} is missing" if missing else
                        "the consolidated-*-of-*.safetensors shards disagree on their count")
        return ()
    return tuple(shards)


def _find_layouts(directory: Path, files: dict[str, int], problems: list[str],
                  pieces: dict[str, tuple[str, ...]] | None = None) -> list[Layout]:
    layouts = []
    params = "params.json" if "params.json" in files else None
    checkpoints = sorted(n for n in files if _PTH_NAME.fullmatch(n))
    if checkpoints:
        layouts.append(Layout(PTH, params, tuple(checkpoints)))
    for joined, names in (pieces or {}).items():
        if joined not in files:  # joined already (cat): the file itself is the layout
            layouts.append(Layout(PTH, params, names, joined=joined))
    if params:
        if MISTRAL_WEIGHTS in files:
            layouts.append(Layout(MISTRAL, "params.json", (MISTRAL_WEIGHTS,)))
        shards = _mistral_shards(files, problems)
        if shards:
            layouts.append(Layout(MISTRAL, "params.json", shards))
    if "config.json" in files:
        hf = _hf_layout(directory, files, problems)
        if hf is not None:
            layouts.append(hf)
    layouts += [Layout(GGUF, None, (name,)) for name in sorted(files) if _GGUF_NAME.fullmatch(name)]
    return layouts


def _published_json_differs(directory: Path | None, release: Manifest, files: dict[str, int]) -> str | None:
    """The first file whose published parsed JSON (e.g. Mistral 7B's params.json) differs, if any."""
    if directory is None:
        return None
    for path, entry in release.files.items():
        if entry.json is None or path not in files:
            continue
        try:
            if read_json_file(directory / path, path) != entry.json:
                return path
        except InputError:
            return path
    return None


def recognise(files: dict[str, int], directory: Path | None = None) -> Manifest | None:
    """The release these files (name -> size) belong to, by names, sizes and published JSON content.

    Only releases with at least one of their weight files present (at the published size), at
    least one file matching a published size or JSON content (a shared name is not enough), and no
    published JSON content contradicted compete: sharing a tokenizer or a few small JSON files with
    a release does not make a folder that release, nor can such files hide the release the
    weights do belong to.
    """
    def eligible(release: Manifest) -> bool:
        weights = [path for path in release.files if is_weight_file(path)]
        present = not weights or any(path in files and release.files[path].size in (None, files[path])
                                     for path in weights)
        evidence = any(path in files and ((entry.size is not None and entry.size == files[path])
                                          or (entry.json is not None and directory is not None))
                       for path, entry in release.files.items())  # more than a shared name
        return present and evidence and _published_json_differs(directory, release, files) is None

    return identify(files, eligible=eligible)[0]


def closest_release(directory: Path, files: dict[str, int]) -> tuple[Manifest | None, list[str]]:
    """For a folder no release matches: the release sharing most file names, and what differs."""
    best: tuple[int, Manifest] | None = None
    for release in load_registry():
        shared = [path for path in release.files if path in files]
        sizes = sum(1 for path in shared if release.files[path].size == files[path])
        score = len(shared) + 2 * sizes  # a matching size says more than a shared name
        if shared and (best is None or score > best[0]):
            best = (score, release)
    if best is None:
        return None, []
    release = best[1]
    differences = []
    for path, entry in release.files.items():
        if path not in files:
            differences.append(f"{path} missing")
        elif entry.size is not None and entry.size != files[path]:
            differences.append(f"{path} size {files[path]}, expected {entry.size}")
    odd_json = _published_json_differs(directory, release, files)
    if odd_json:
        differences.append(f"{odd_json} content differs from the published one")
    return release, differences


def inspect_folder(directory: Path, release: Manifest | None = None, *, recognise_release: bool = True,
                   ) -> FolderContents:
    """Look at a folder without reading any weights: files, layouts, derived files, likely release
    (the one given, else recognised from names and sizes unless `recognise_release` is False)."""
    directory = Path(directory)
    files, others, blobs = scan(directory)
    derived = derived_state(directory)
    problems: list[str] = []
    pieces = split_pieces(files, problems)
    layouts = _find_layouts(directory, files, problems, pieces)
    if release is None and recognise_release:  # judged by the files mdist did not derive itself first
        own = {name: size for name, size in files.items() if not derived.known(name)}
        release = recognise(with_joined(own, pieces), directory) or recognise(with_joined(files, pieces), directory)
    return FolderContents(directory, files, others, layouts, derived, release, problems, blobs, pieces)


def with_joined(files: dict[str, int], pieces: dict[str, tuple[str, ...]]) -> dict[str, int]:
    """The files as a release sees them: pieces replaced by the file they join into."""
    if not pieces:
        return files
    joined = {name: size for name, size in files.items() if not any(name in p for p in pieces.values())}
    for name, parts in pieces.items():
        if all(p in files for p in parts):
            joined.setdefault(name, sum(files[p] for p in parts))
    return joined


def model_path(path: Path) -> Path:
    """A folder given directly, or the folder of a weight file given by name."""
    path = Path(path)
    if path.is_file() and (path.suffix in (".pth", ".safetensors", ".gguf") or _PTH_PIECE.fullmatch(path.name)):
        return path.parent
    if not path.exists():
        raise InputError(f"{path} does not exist")
    if not path.is_dir():
        raise InputError(f"{path} is not a model folder")
    return path


def read_config(directory: Path, layout: Layout) -> MistralConfig:
    """The hyper-parameters from the layout's own config file (params.json or config.json)."""
    if layout.config is None:
        raise InputError(f"{directory} has no params.json next to {layout.weights[0]}")
    data = read_json(Path(directory) / layout.config)
    return MistralConfig.from_hf_config(data) if layout.config == "config.json" else MistralConfig.from_params(data)
