"""Raw byte pieces read as one file, never joined on disk.

A hub mirror of Mixtral 8x7B stores its 87 GiB `consolidated.00.pth` cut with `split` into
`consolidated.00.pth-split0` ... `-split10`, to be joined with `cat`. Joining would need 87 GiB
more disk; instead the checkpoint reader reads through this class, which maps an offset of the
joined file to (piece, offset in piece). A single file is the one-piece case.
"""

from __future__ import annotations

import bisect
import os
from pathlib import Path

import numpy as np

from mdist.errors import InputError
from mdist.jsonio import open_regular

MAX_PIECES = 256  # the Mixtral mirror has 11; each piece holds a descriptor open (the default limit is 1024)
MAX_STRADDLING_COPY = 1 << 30  # a view across a piece boundary is copied; a storage is far smaller


class JoinedFile:
    """Read-only random access to the concatenation of regular files (pieces), in order."""

    def __init__(self, paths: list[Path] | tuple[Path, ...]) -> None:
        if not paths or len(paths) > MAX_PIECES:
            raise InputError(f"between 1 and {MAX_PIECES} pieces are needed, got {len(paths)}")
        self.paths = [Path(p) for p in paths]
        self.fds: list[int] = []
        try:
            for path in self.paths:
                self.fds.append(open_regular(path))
            self.sizes = [os.fstat(fd).st_size for fd in self.fds]
        except BaseException:
            self.close()
            raise
        self.starts = [0]
        for size in self.sizes:
            self.starts.append(self.starts[-1] + size)
        self.size = self.starts[-1]
        self.name = self.paths[0].name if len(self.paths) == 1 else f"{self.paths[0].name} (+{len(self.paths) - 1} pieces)"

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []

    def __enter__(self) -> "JoinedFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _piece_at(self, offset: int) -> int:
        return bisect.bisect_right(self.starts, offset) - 1

    def pread(self, length: int, offset: int) -> bytes:
        """Up to `length` bytes at `offset` (fewer only at the end of the joined file)."""
        if offset < 0 or length < 0:
            raise ValueError("negative offset or length")
        parts = []
        end = min(self.size, offset + length)
        while offset < end:
            index = self._piece_at(offset)
            local = offset - self.starts[index]
            data = os.pread(self.fds[index], min(end - offset, self.sizes[index] - local), local)
            if not data:  # the piece shrank since it was opened
                raise InputError(f"{self.paths[index]} changed while being read")
            parts.append(data)
            offset += len(data)
        return b"".join(parts)

    def locate(self, offset: int, length: int) -> tuple[int, int] | None:
        """(fd, offset in that piece) when bytes [offset, offset + length) lie in one piece."""
        index = self._piece_at(offset)
        if 0 <= index < len(self.fds) and offset + length <= self.starts[index + 1]:
            return self.fds[index], offset - self.starts[index]
        return None

    def array(self, dtype: np.dtype, offset: int, count: int) -> np.ndarray:
        """`count` items at `offset`: memory-mapped inside one piece, copied across a boundary."""
        itemsize = np.dtype(dtype).itemsize
        place = self.locate(offset, count * itemsize)
        if place is not None:
            index = self._piece_at(offset)
            handle = os.fdopen(os.dup(self.fds[index]), "rb")
            try:
                return np.memmap(handle, dtype=dtype, mode="r", offset=place[1], shape=(count,))
            finally:
                handle.close()  # the map keeps its own reference to the file
        if count * itemsize > MAX_STRADDLING_COPY:
            raise InputError(f"{self.name}: a tensor of {count * itemsize} bytes spans two pieces; "
                             f"join the pieces (cat) to read it")
        return np.frombuffer(self.pread(count * itemsize, offset), dtype=dtype)
