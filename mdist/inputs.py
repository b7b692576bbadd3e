"""The path a command is given, checked the same way by every command before any work: a path that
is not there, and one that is there but of the wrong kind, each get one message whatever the command
(verify said "is not a folder" for a mistyped path where run said "does not exist")."""

from __future__ import annotations

import os
from pathlib import Path

from mdist.errors import InputError
from mdist.model_folder import _PTH_PIECE

WEIGHT_SUFFIXES = (".pth", ".safetensors", ".gguf")


def existing(path: Path) -> Path:
    """`path` when something is there; else why not: nothing, or a link to nothing."""
    path = Path(path)
    if not path.exists():
        if os.path.lexists(path):
            raise InputError(f"{path} does not exist (a symbolic link to {os.readlink(path)}, which does not exist)")
        raise InputError(f"{path} does not exist")
    return path


def folder_argument(path: Path) -> Path:
    """A command that reads a folder (verify, manifest, sign, seed)."""
    if not existing(path).is_dir():
        raise InputError(f"{path} is not a folder")
    return Path(path)


def model_argument(path: Path) -> Path:
    """A command that reads a model folder or one weight file (run, convert, digest)."""
    path = existing(path)
    if not path.is_dir() and path.suffix not in WEIGHT_SUFFIXES and not _PTH_PIECE.fullmatch(path.name):
        raise InputError(f"{path} is not a model folder, nor a .pth, .safetensors or .gguf file")
    return path
