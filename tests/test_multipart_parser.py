"""The streaming multipart/related reader, on plain bytes split at every position."""

from __future__ import annotations

import io

import pytest

from dicomweb_server.web.multipart_parser import (
    MultipartError,
    MultipartReader,
    TruncatedBody,
)

BOUNDARY = "b0undary-123"


def body(
    *parts: bytes,
    boundary: str = BOUNDARY,
    preamble: bytes = b"",
    epilogue: bytes = b"",
    headers: bytes = b"Content-Type: application/dicom\r\n",
) -> bytes:
    out = bytearray(preamble)
    for part in parts:
        out += b"--" + boundary.encode() + b"\r\n" + headers + b"\r\n" + part + b"\r\n"
    out += b"--" + boundary.encode() + b"--\r\n" + epilogue
    return bytes(out)


class Trickle(io.RawIOBase):
    """A stream that returns at most ``step`` bytes per read, like a slow socket."""

    def __init__(self, data: bytes, step: int) -> None:
        self.data = data
        self.step = step
        self.position = 0

    def read(self, size: int = -1, /) -> bytes:
        size = self.step if size < 0 else min(size, self.step)
        chunk = self.data[self.position : self.position + size]
        self.position += len(chunk)
        return chunk


def read_all(
    stream: io.RawIOBase, chunk_size: int = 1 << 20, read_size: int = 7, into: bool = False
) -> list[tuple[dict[str, str], bytes]]:
    """Every part; read with ``read`` or, ``into``, with ``readinto`` (as ingest reads)."""
    out = []
    for part in MultipartReader(stream, BOUNDARY, chunk_size=chunk_size):
        data = bytearray()
        if into:
            buffer = bytearray(read_size)
            while count := part.stream.readinto(buffer):
                data += buffer[:count]
        else:
            while chunk := part.stream.read(read_size):
                data += chunk
        out.append((part.headers, bytes(data)))
    return out


def read_part(stream) -> bytes:  # type: ignore[no-untyped-def]
    data = b""
    while chunk := stream.read(100):  # a read may return less, as raw I/O does
        data += chunk
    return data


# Contents chosen to look like the delimiter: a CR LF, dashes, a prefix of the boundary.
TRICKY = [
    b"",
    b"\r\n",
    b"--" + BOUNDARY.encode()[:-1],
    b"\r\n--" + BOUNDARY.encode()[:5] + b"\r\n-",
    bytes(range(256)) * 3,
]


@pytest.mark.parametrize("into", [False, True], ids=["read", "readinto"])
def test_every_split_position_gives_the_same_parts(into: bool) -> None:
    data = body(*TRICKY, preamble=b"ignored preamble\r\n", epilogue=b"ignored epilogue")
    for chunk_size in (1, 2, 3, 5, 13, 64):
        for step in (1, 7, len(data)):
            for read_size in (1, 7, 1000):
                parts = read_all(Trickle(data, step), chunk_size, read_size, into)
                assert [p[1] for p in parts] == TRICKY, (chunk_size, step, read_size)
                assert all(p[0] == {"content-type": "application/dicom"} for p in parts)


@pytest.mark.parametrize("split", range(1, 200))
def test_two_chunk_split_anywhere(split: int) -> None:
    data = body(b"first part", b"second\r\n--part")
    split = min(split, len(data))

    class Two(io.RawIOBase):
        chunks = [data[:split], data[split:]]

        def read(self, size: int = -1, /) -> bytes:
            return self.chunks.pop(0) if self.chunks else b""

    parts = read_all(Two(), chunk_size=len(data))
    assert [p[1] for p in parts] == [b"first part", b"second\r\n--part"]


def test_headers_are_parsed_case_insensitively_with_folding() -> None:
    data = body(
        b"x",
        headers=b"CONTENT-TYPE: application/dicom+json\r\nContent-Location:\r\n  http://x/1\r\n",
    )
    [(headers, content)] = read_all(io.BytesIO(data))
    assert headers == {"content-type": "application/dicom+json", "content-location": "http://x/1"}
    assert content == b"x"


def test_part_without_headers_and_transport_padding() -> None:
    data = b"--" + BOUNDARY.encode() + b"  \t\r\n\r\nabc\r\n--" + BOUNDARY.encode() + b"--"
    [(headers, content)] = read_all(io.BytesIO(data))
    assert headers == {} and content == b"abc"


def test_unread_parts_are_skipped() -> None:
    data = body(b"a" * 5000, b"b" * 10)
    reader = MultipartReader(io.BytesIO(data), BOUNDARY, chunk_size=64)
    parts = iter(reader)
    first = next(parts)
    assert first.stream.read(3) == b"aaa"
    second = next(parts)
    assert read_part(second.stream) == b"b" * 10
    assert list(parts) == []
    assert reader.finished


def test_truncated_part_returns_its_bytes_then_raises() -> None:
    b = BOUNDARY.encode()
    data = b"--" + b + b"\r\n\r\ncomplete\r\n--" + b + b"\r\n\r\npartial data"
    reader = iter(MultipartReader(io.BytesIO(data), BOUNDARY, chunk_size=4))
    first = next(reader)
    assert read_part(first.stream) == b"complete"
    second = next(reader)
    received = bytearray()
    with pytest.raises(TruncatedBody):
        while chunk := second.stream.read(3):
            received += chunk
    assert bytes(received) == b"partial data"


def test_body_without_boundary_is_refused() -> None:
    with pytest.raises(MultipartError, match="no boundary delimiter"):
        list(MultipartReader(io.BytesIO(b"just some bytes"), BOUNDARY))
    with pytest.raises(MultipartError, match="no boundary delimiter"):
        list(MultipartReader(io.BytesIO(b""), BOUNDARY))


def test_garbage_after_delimiter_and_oversized_headers_are_refused() -> None:
    bad = b"--" + BOUNDARY.encode() + b"garbage\r\n\r\nx\r\n--" + BOUNDARY.encode() + b"--"
    with pytest.raises(MultipartError, match="unexpected characters"):
        list(MultipartReader(io.BytesIO(bad), BOUNDARY))
    huge = body(b"x", headers=b"X-Big: " + b"a" * 20000 + b"\r\n")
    with pytest.raises(MultipartError, match="exceed"):
        list(MultipartReader(io.BytesIO(huge), BOUNDARY))


def test_boundary_length_is_checked() -> None:
    with pytest.raises(MultipartError):
        MultipartReader(io.BytesIO(b""), "")
    with pytest.raises(MultipartError):
        MultipartReader(io.BytesIO(b""), "x" * 71)


def test_memory_stays_at_one_chunk_for_a_large_part() -> None:
    size = 50 * (1 << 20)

    class Zeros(io.RawIOBase):
        sent = 0
        tail = b"\r\n--" + BOUNDARY.encode() + b"--"
        head = b"--" + BOUNDARY.encode() + b"\r\n\r\n"

        def read(self, n: int = -1, /) -> bytes:
            if self.head:
                out, self.head = self.head, b""
                return out
            if self.sent < size:
                k = min(n, size - self.sent)
                self.sent += k
                return bytes(k)
            out, self.tail = self.tail, b""
            return out

    reader = MultipartReader(Zeros(), BOUNDARY, chunk_size=1 << 16)
    [part] = list(_sizes(reader))
    assert part == size
    assert len(reader._buffer) < 2 * (1 << 16)


def _sizes(reader: MultipartReader):  # type: ignore[no-untyped-def]
    for part in reader:
        total = 0
        while chunk := part.stream.read(1 << 16):
            total += len(chunk)
        yield total
