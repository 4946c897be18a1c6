"""Part 10 framing fixed on the way in: the one repair ingest makes to incoming bytes."""

from __future__ import annotations

from typing import BinaryIO


class Part10Stream:
    """``stream`` as a Part 10 file: the preamble and "DICM" prefix added when missing.

    Files without the 128-byte preamble and prefix of PS3.10 7.1 but with their File Meta
    Information are common: pydicom's ``dcmwrite`` of a data set without a ``preamble``
    writes them (dicomweb-client's ``store_instances`` sends such bodies), and so do some
    older tools whose files ``import`` meets.  When the body starts with a group 0002
    element, the missing 132 bytes are supplied, so the archive stores a conformant
    file; anything else passes through unchanged, and a data set without File Meta
    Information is still refused by the archive.
    """

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        head = b""
        while len(head) < 132:
            chunk = stream.read(132 - len(head))
            if not chunk:
                break
            head += chunk
        if head[128:132] != b"DICM" and head[:2] == b"\x02\x00" and head[4:6].isalpha():
            head = bytes(128) + b"DICM" + head
        self._head = head

    def readinto(self, buffer: bytearray | memoryview, /) -> int:
        """Into ``buffer``, without the copy a ``read`` makes, where the stream can."""
        if self._head or not hasattr(self._stream, "readinto"):
            data = self.read(len(buffer))
            buffer[: len(data)] = data
            return len(data)
        return self._stream.readinto(buffer) or 0

    def read(self, size: int = -1, /) -> bytes:
        if self._head:
            if size is None or size < 0 or size >= len(self._head):
                data, self._head = self._head, b""
                return data
            data, self._head = self._head[:size], self._head[size:]
            return data
        return self._stream.read(size)

    def readable(self) -> bool:
        return True
