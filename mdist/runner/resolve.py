"""Find runnable weights in a folder; convert a raw .pth with the safe converter when needed."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

from mdist.errors import InputError


def resolve_model_dir(path: Path) -> Path:
    """Return a folder holding consolidated.safetensors or an HF layout, converting once if needed."""
    if path.is_file() and path.suffix == ".pth":
        path = path.parent
    if not path.is_dir():
        raise InputError(f"{path} is not a model folder")
    if (path / "consolidated.safetensors").is_file() or (path / "config.json").is_file():
        return path
    if not list(path.glob("consolidated.*.pth")):
        raise InputError(f"{path} holds no consolidated.safetensors, config.json or consolidated.00.pth")
    from mdist.convert import convert

    target = path if os.access(path, os.W_OK) else _cache_dir_for(path)
    if not (target / "consolidated.safetensors").is_file():
        print(f"mdist: converting {path} to safetensors with the safe reader (once) into {target}", file=sys.stderr)
        convert(path, target, force=target != path)
    return target


def _cache_dir_for(path: Path) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mdist" / "converted"
    return base / hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
