"""Which weights `mdist run` loads: asks mdist.model_folder, converting a raw .pth once if needed."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

from mdist.errors import InputError
from mdist.locks import derivation_lock
from mdist.model_folder import GGUF, MISTRAL, MISTRAL_WEIGHTS, PTH, FolderContents, Layout, inspect_folder, model_path
from mdist.tokenizer_files import tokenizer_file
from mdist.xdg import user_dir


def _note(text: str) -> None:
    print(f"mdist: {text}", file=sys.stderr)


def resolve_model(path: Path) -> tuple[Path, Layout]:
    """(folder, layout) to load. A pth layout is converted with the safe reader into the folder
    (or a per-user cache when the folder is read-only) and recorded as derived."""
    folder = model_path(path)
    contents = inspect_folder(folder)
    if Path(path).is_file():  # a weight file named on the command line: its own layout, or nothing
        layout = contents.choose_containing(Path(path).name, "run")
    else:
        layout = contents.choose("run", note=_note)
    if layout.kind == GGUF and tokenizer_file(os.listdir(contents.path)) is None:
        layout = _tokenizer_beside(contents, layout)
    if layout.kind != PTH:
        return contents.path, layout
    _require_tokenizer(contents.path)
    return _converted(contents, layout)


def _tokenizer_beside(contents: FolderContents, layout: Layout) -> Layout:
    """Write the lone GGUF's tokenizer.model from its vocabulary (under the folder's lock: another
    `run` of the same GGUF may have written it meanwhile), then the layout with it."""
    from mdist.runner.gguf_tokenizer import write_tokenizer_beside

    if not _writable(contents.path):
        raise InputError(f"{contents.path} holds no tokenizer.model and cannot be written; copy "
                         f"{layout.weights[0]} to a folder you can write, where mdist makes one from the "
                         f"GGUF's own vocabulary")
    with derivation_lock(contents.path):
        if tokenizer_file(os.listdir(contents.path)) is None:
            made = write_tokenizer_beside(contents.path / layout.weights[0])
            _note(f"{contents.path} had no tokenizer: wrote {made.name} from {layout.weights[0]}'s own vocabulary")
        return inspect_folder(contents.path).choose_containing(layout.weights[0], "run")


def _require_tokenizer(folder: Path) -> None:
    """The tokenizer `run` will read, loaded before converting: a damaged or missing one is said
    now, not after minutes of writing a 14 GB conversion that cannot be used."""
    from mdist.runner.tokenizer import Tokenizer

    Tokenizer.of_folder(folder)


def _converted(contents: FolderContents, layout: Layout) -> tuple[Path, Layout]:
    """Convert the release's .pth into its own folder (derived from the release), or, when that is
    read-only, into a per-user cache whose every file must be mdist's valid derivation."""
    source = contents.path
    in_place = _writable(source)
    target = source if in_place else _cache_dir_for(source)
    with derivation_lock(target):  # another `run` converting it too: wait, then use its conversion
        return _convert_once(inspect_folder(source), layout, target, in_place)


def _convert_once(contents: FolderContents, layout: Layout, target: Path, in_place: bool) -> tuple[Path, Layout]:
    """_converted, under the folder's lock, with the folder as it is now."""
    from mdist.convert import convert

    source = contents.path
    for done in contents.layouts:  # converted before, from this very file, and unchanged since
        if (done.kind == MISTRAL and contents.usable(done) and MISTRAL_WEIGHTS in contents.derived.valid
                and layout.weights[0] in contents.derived.sources.get(MISTRAL_WEIGHTS, ())):
            return source, done
    if not in_place:
        cached = _cached_layout(target)
        if cached is not None:
            return target, cached
    what = source / (layout.joined or layout.weights[0])
    pieces = f" (from its {len(layout.weights)} pieces, read in place)" if layout.joined else ""
    _note(f"converting {what}{pieces} to safetensors with the safe reader (once) into {target}")
    own_output = (MISTRAL_WEIGHTS not in contents.files or contents.derived.known(MISTRAL_WEIGHTS))
    convert(source if layout.joined else source / layout.weights[0], target, force=own_output or not in_place)
    if in_place:
        chosen = inspect_folder(target, release=contents.release).choose("run")
        if chosen.kind != PTH:  # never the .pth itself, which the caller would read as safetensors
            return target, chosen
        raise InputError(f"the conversion in {target} did not produce a loadable model")
    cached = _cached_layout(target)
    if cached is None:
        raise InputError(f"the conversion in {target} did not produce a loadable model")
    return target, cached


def _cached_layout(target: Path) -> Layout | None:
    """The cache's mistral layout when every file of it is mdist's valid derivation (sources unchanged)."""
    if not target.is_dir():
        return None
    cached = inspect_folder(target, recognise_release=False)
    for candidate in cached.layouts:
        if candidate.kind == MISTRAL and all(name in cached.derived.valid
                                             for name in candidate.files(cached.tokenizer)):
            return candidate
    return None


def _cache_dir_for(path: Path) -> Path:
    base = user_dir("XDG_CACHE_HOME") / "mdist" / "converted"
    return base / hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]


def _writable(folder: Path) -> bool:
    """Writable by this user and not marked read-only: root may write anywhere (os.access says
    yes), but a folder without write bits (a shared fixture, a read-only copy) is left alone."""
    return os.access(folder, os.W_OK) and bool(os.stat(folder).st_mode & 0o222)
