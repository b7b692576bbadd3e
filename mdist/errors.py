"""Typed errors. Each carries the process exit code the CLI maps it to.

0 success, 1 verification failure (hash mismatch, refused content), 2 usage error or unreadable input.
"""

from __future__ import annotations


class MdistError(Exception):
    """Base class of every error mdist raises on purpose."""

    exit_code = 2


class InputError(MdistError):
    """Bad arguments, missing or unreadable input, unreachable servers: exit 2."""

    exit_code = 2


class VerificationError(MdistError):
    """Content did not match what it must be (hash mismatch, missing file): exit 1."""

    exit_code = 1


class UnsafeContentError(VerificationError):
    """A file tried something the safe reader refuses (code execution, out-of-bounds data): exit 1."""


class CheckpointError(UnsafeContentError):
    """The PyTorch checkpoint reader refused the file's content (exit 1); input that is not a
    torch.save archive at all is an InputError (exit 2)."""
