"""How a received file's bytes reach the disk: around the page cache when they must be durable.

A file that ingest fsyncs before it answers gains nothing from passing through the page
cache: the copy into the cache is the largest single cost of writing it (a quarter of the
server's CPU per CT slice in STOW-RS profiles here, more where fresh cache pages are
expensive, as in virtual machines), and a backlog of studies written through the cache
evicts the index and the studies being viewed.  So durable writes use ``O_DIRECT``: the
disk reads the bytes straight from a page-aligned buffer, the fsync that follows has only
the file's metadata left to write, and the cache keeps what is read.

The incoming bytes are read straight into that buffer (``readinto``), so the one copy the
interpreter makes of them is the one the disk needs.  ``O_DIRECT`` needs the buffer, the
length and the file offset aligned to the device's block size: whole buffers are written
directly, the last partial block through the cache.  A file system that refuses
``O_DIRECT`` gets plain writes (:attr:`FileWriter.refused` tells the caller, so that it
stops asking).
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
from typing import Any

#: Alignment of direct writes: the page size, a multiple of any disk's logical block.
ALIGN = mmap.PAGESIZE
#: Bytes collected before each write.
BUFFER = 1 << 20


class BufferPool:
    """Page-aligned buffers, reused; as many as files are written at once."""

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
    """Writes a new file's bytes to ``fd`` through a buffer of ``pool``; with ``direct``,
    around the page cache.

    :meth:`readfrom` reads the source into the buffer and sends each full buffer to the
    disk; :meth:`finish` writes the rest (it may run in another thread: the caller need
    not wait for the last write) and :meth:`abandon` drops it; either returns the buffer
    to the pool.  ``fd`` stays open (the caller fsyncs and closes it).
    """

    def __init__(self, fd: int, pool: BufferPool, *, direct: bool) -> None:
        self._fd = fd
        self._pool = pool
        self._buffer: mmap.mmap | None = pool.acquire()
        self._view: memoryview | None = memoryview(self._buffer)
        self._filled = 0
        self._want_direct = direct
        self._direct = False
        #: The file system refused O_DIRECT; the file was written through the cache.
        self.refused = False

    def readfrom(self, source: Any) -> memoryview:
        """Read the next bytes of ``source`` (``readinto``, else ``read``) into the buffer.

        Returns them, valid until the next call; empty at the end of ``source``.
        """
        view = self._view
        assert view is not None, "finished"
        window = view[self._filled :]
        readinto = getattr(source, "readinto", None)
        if readinto is not None:
            count = readinto(window) or 0
        else:
            data = source.read(len(window))
            count = len(data)
            window[:count] = data
        self._filled += count
        if self._filled == len(view):
            self._write_whole(view)
            self._filled = 0
        return window[:count]

    def finish(self) -> None:
        """Write what is still buffered, then give the buffer back."""
        try:
            if self._view is not None and self._filled:
                whole = self._filled - self._filled % ALIGN
                if whole:
                    self._write_whole(self._view[:whole])
                if whole < self._filled:  # the last partial block: through the cache
                    self._set_direct(False)
                    _write_all(self._fd, self._view[whole : self._filled])
        finally:
            self.abandon()

    def abandon(self) -> None:
        """Give the buffer back without writing what it holds."""
        self._view = None
        self._filled = 0
        if self._buffer is not None:
            self._pool.release(self._buffer)
            self._buffer = None

    def _write_whole(self, data: memoryview) -> None:
        """Write aligned bytes: directly if wanted and the file system takes it."""
        if self._want_direct and not self._direct and not self.refused:
            self._set_direct(True)
        try:
            written = os.write(self._fd, data)
        except OSError as exc:
            if exc.errno != errno.EINVAL or not self._direct:
                raise
            self._set_direct(False)  # an alignment this device does not take:
            self.refused = True  # nothing was written
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


def _write_all(fd: int, data: memoryview) -> None:
    rest = data
    while rest:
        rest = rest[os.write(fd, rest) :]
