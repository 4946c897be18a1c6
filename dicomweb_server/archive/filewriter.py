"""How a received file's bytes reach the disk: around the page cache when they must be durable.

A file that ingest fsyncs before it answers gains nothing from passing through the page
cache: the copy into the cache is the largest single cost of writing it (a quarter of the
server's CPU per CT slice in STOW-RS profiles here, more where fresh cache pages are
expensive, as in virtual machines), and a backlog of studies written through the cache
evicts the index and the studies being viewed.  So durable writes use ``O_DIRECT``: the
disk reads the bytes straight from a page-aligned buffer, the fsync that follows has only
the file's metadata left to write, and the cache keeps what is read.

``O_DIRECT`` needs the buffer, the length and the file offset aligned to the device's
block size: whole buffers are written directly, the last partial block through the
cache.  A file system that refuses ``O_DIRECT`` gets plain writes (:attr:`FileWriter.refused`
tells the caller, so that it stops asking).
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
from types import TracebackType

#: Alignment of direct writes: the page size, a multiple of any disk's logical block.
ALIGN = mmap.PAGESIZE
#: Bytes collected before each direct write.
BUFFER = 1 << 20


class BufferPool:
    """Page-aligned buffers for direct writes, reused; as many as writes run at once."""

    def __init__(self, size: int = BUFFER) -> None:
        self.size = size
        self._free: list[mmap.mmap] = []

    def acquire(self) -> mmap.mmap:
        try:
            return self._free.pop()  # atomic: several threads share the pool
        except IndexError:
            return mmap.mmap(-1, self.size)  # anonymous memory is page-aligned

    def release(self, buffer: mmap.mmap) -> None:
        self._free.append(buffer)


class FileWriter:
    """Writes a new file's bytes to ``fd``, directly through a buffer of ``pool`` if given.

    Use as a context manager: leaving it without an error writes what is still
    buffered; leaving it in any case returns the buffer to the pool.  ``fd`` stays open
    (the caller fsyncs and closes it).
    """

    def __init__(self, fd: int, pool: BufferPool | None) -> None:
        self._fd = fd
        self._pool = pool
        self._buffer = pool.acquire() if pool is not None else None
        self._view = memoryview(self._buffer) if self._buffer is not None else None
        self._filled = 0
        self._direct = False
        #: The file system refused O_DIRECT; the file was written through the cache.
        self.refused = False

    def __enter__(self) -> FileWriter:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            if kind is None:
                self._finish()
        finally:
            self._view = None
            if self._pool is not None and self._buffer is not None:
                self._pool.release(self._buffer)
                self._buffer = None

    def write(self, data: bytes) -> None:
        view = self._view
        if view is None:
            _write_all(self._fd, data)
            return
        size = len(view)
        rest = memoryview(data)
        while rest:
            take = min(len(rest), size - self._filled)
            view[self._filled : self._filled + take] = rest[:take]
            self._filled += take
            rest = rest[take:]
            if self._filled == size:
                self._write_direct(view)
                self._filled = 0

    def _finish(self) -> None:
        if self._view is None or not self._filled:
            return
        whole = self._filled - self._filled % ALIGN
        if whole:
            self._write_direct(self._view[:whole])
        if whole < self._filled:  # the last partial block: through the cache
            self._set_direct(False)
            _write_all(self._fd, self._view[whole : self._filled])
        self._filled = 0

    def _write_direct(self, data: memoryview) -> None:
        if not self._direct and not self.refused:
            self._set_direct(True)
        try:
            written = os.write(self._fd, data)
        except OSError as exc:
            if exc.errno != errno.EINVAL or not self._direct:
                raise
            self._refuse()  # an alignment this device does not take: nothing was written
            written = 0
        if written < len(data):  # a short write: the rest would not be aligned
            self._set_direct(False)
            _write_all(self._fd, data[written:])

    def _set_direct(self, on: bool) -> None:
        if on == self._direct:
            return
        flags = fcntl.fcntl(self._fd, fcntl.F_GETFL)
        try:
            fcntl.fcntl(
                self._fd, fcntl.F_SETFL, flags | os.O_DIRECT if on else flags & ~os.O_DIRECT
            )
        except OSError as exc:
            if not on or exc.errno != errno.EINVAL:
                raise
            self.refused = True
            return
        self._direct = on

    def _refuse(self) -> None:
        self._set_direct(False)
        self.refused = True


def _write_all(fd: int, data: bytes | memoryview) -> None:
    rest = memoryview(data)
    while rest:
        rest = rest[os.write(fd, rest) :]
