"""Which weights `mdist run` loads: asks mdist.model_folder, converting a raw .pth once if needed."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

from mdist.model_folder import MISTRAL_WEIGHTS, PTH, FolderContents, Layout, inspect_folder, model_path


def _note(text: str) -> None:
    print(f"mdist: {text}", file=sys.stderr)


def resolve_model(path: Path) -> tuple[Path, Layout]:
    """(folder, layout) to load. A pth layout is converted with the safe reader into the folder
    (or a per-user cache when the folder is read-only) and recorded as derived."""
    contents = inspect_folder(model_path(path))
    layout = contents.choose("run", note=_note)
    if layout.kind != PTH:
        return contents.path, layout
    return _converted(contents, layout)


def _converted(contents: FolderContents, layout: Layout) -> tuple[Path, Layout]:
    from mdist.convert import convert

    source = contents.path
    target = source if os.access(source, os.W_OK) else _cache_dir_for(source)
    converted = inspect_folder(target, release=contents.release) if target.is_dir() else None
    if converted is not None and target != source:
        try:
            return target, converted.choose("run")
        except Exception:  # stale or missing: convert again below
            pass
    _note(f"converting {source / layout.weights[0]} to safetensors with the safe reader (once) into {target}")
    own_output = target == source and (MISTRAL_WEIGHTS not in contents.files
                                       or contents.derived.known(MISTRAL_WEIGHTS))
    convert(source, target, force=own_output or target != source)
    return target, inspect_folder(target, release=contents.release).choose("run")


def _cache_dir_for(path: Path) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mdist" / "converted"
    return base / hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
