"""archive/filewriter.py: durable files written around the page cache, byte for byte."""

from __future__ import annotations

import io
import os
import socket
import threading
from pathlib import Path

import pytest

from dicomweb_server.archive.filewriter import ALIGN, BUFFER, BufferPool, FileWriter

SIZES = [0, 1, ALIGN - 1, ALIGN, ALIGN + 1, BUFFER - 1, BUFFER, BUFFER + 1, 3 * BUFFER + 5]


class Trickle:
    """A source that hands out at most ``piece`` bytes a call, as a socket does."""

    def __init__(self, data: bytes, piece: int, readinto: bool) -> None:
        self._data = memoryview(data)
        self._piece = piece
        if readinto:
            self.readinto = self._readinto

    def read(self, size: int) -> bytes:
        data = self._data[: min(size, self._piece)]
        self._data = self._data[len(data) :]
        return bytes(data)

    def _readinto(self, buffer: memoryview) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _write(
    path: Path, data: bytes, pool: BufferPool, piece: int, *, direct: bool, readinto: bool = True
) -> FileWriter:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        writer = FileWriter(fd, pool, direct=direct)
        source, seen = Trickle(data, piece, readinto), bytearray()
        while chunk := writer.readfrom(source):
            seen += chunk  # what the caller hashes: the bytes just read
        writer.finish()
    finally:
        os.close(fd)
    assert seen == data
    return writer


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("piece", [1000, 65536, 1 << 20])
def test_direct_and_buffered_files_hold_the_same_bytes(
    tmp_path: Path, size: int, piece: int
) -> None:
    data = os.urandom(size)
    pool = BufferPool()
    direct = _write(tmp_path / "direct", data, pool, piece, direct=True)
    _write(tmp_path / "buffered", data, pool, piece, direct=False)
    _write(tmp_path / "read", data, pool, piece, direct=True, readinto=False)
    assert (tmp_path / "direct").read_bytes() == data
    assert (tmp_path / "buffered").read_bytes() == data
    assert (tmp_path / "read").read_bytes() == data
    if direct.refused:
        pytest.skip(f"{tmp_path} does not take O_DIRECT: only the fallback was exercised")


def test_buffers_are_reused_not_multiplied(tmp_path: Path) -> None:
    pool = BufferPool()
    for n in range(5):
        _write(tmp_path / str(n), os.urandom(BUFFER + ALIGN + 7), pool, 1 << 20, direct=True)
    assert len(pool._free) == 1


def test_an_abandoned_write_returns_its_buffer(tmp_path: Path) -> None:
    pool = BufferPool()
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o644)
    writer = FileWriter(fd, pool, direct=True)
    writer.readfrom(io.BytesIO(b"x" * 10))
    writer.abandon()  # the sender went away
    os.close(fd)
    assert len(pool._free) == 1
    assert (tmp_path / "f").read_bytes() == b""  # nothing half-buffered was written


def test_a_file_that_refuses_o_direct_is_written_through_the_cache() -> None:
    # A socket is a real file descriptor the kernel will not open for direct I/O.
    ours, theirs = socket.socketpair()
    data = os.urandom(2 * BUFFER + 123)
    received = bytearray()

    def drain() -> None:
        while chunk := theirs.recv(1 << 16):
            received.extend(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        writer = FileWriter(ours.fileno(), BufferPool(), direct=True)
        source = io.BytesIO(data)
        while writer.readfrom(source):
            pass
        writer.finish()
    finally:
        ours.shutdown(socket.SHUT_WR)
        reader.join(10)
        ours.close()
        theirs.close()
    assert writer.refused
    assert bytes(received) == data
