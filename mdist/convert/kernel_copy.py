"""Copying stored bytes from a source file into an output in the kernel (`copy_file_range`).

Tensors whose bytes are already what the output holds (a .pth's bf16 storage going into
safetensors or a BF16 GGUF) need no trip through user space: the kernel copies them, as `cp`
does, or shares the blocks where the file system can (a reflink). Both writers use this one
function so that a short copy is followed and a copy that stops midway is an error, never a
shorter tensor.
"""

from __future__ import annotations

import os
from typing import BinaryIO, Callable

STEP_BYTES = 64 << 20  # bounded steps, so that progress is reported while a big tensor copies


def copy_into(handle: BinaryIO, source: tuple[int, int], nbytes: int, on_bytes: Callable[[int], None] | None,
              name: str) -> int:
    """Copy `nbytes` from `source` (fd, offset) to `handle`'s position, which is moved past them.
    Returns 0, having written nothing, where the kernel cannot (another file system, a pipe), so the
    caller streams instead; raises OSError naming `name` when a copy stops after it started."""
    source_fd, offset = source
    handle.flush()
    start = handle.tell()
    copied = 0
    while copied < nbytes:
        try:
            n = os.copy_file_range(source_fd, handle.fileno(), min(STEP_BYTES, nbytes - copied), offset + copied)
        except OSError:
            n = 0
        if n == 0:
            if copied == 0:
                return 0
            raise OSError(f"{name}: copy stopped after {copied} of {nbytes} bytes")
        copied += n
        if on_bytes:
            on_bytes(n)
    handle.seek(start + copied)  # the kernel moved the descriptor; the buffered handle learns it here
    return copied
