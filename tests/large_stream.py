"""A large multi-frame Part 10 instance produced lazily, never held in memory.

Used by the memory tests of ingest, STOW-RS and retrieval: the header comes from pydicom,
the Pixel Data value is generated chunk by chunk.
"""

from __future__ import annotations

import io
import struct

from tests.factory import make_instance, to_bytes

CHUNK = 1 << 20


class LargeInstance(io.RawIOBase):
    """A readable stream of a native multi-frame CT with ``frames`` 512x512x16-bit frames."""

    def __init__(self, frames: int, **attributes: object) -> None:
        ds = make_instance(rows=8, columns=8, **attributes)  # tiny pixels, then resized
        del ds.PixelData
        ds.Rows, ds.Columns, ds.NumberOfFrames = 512, 512, frames
        self.dataset = ds
        self.pixel_length = 512 * 512 * 2 * frames
        header = to_bytes(ds) + struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OW", 0, self.pixel_length)
        self._header = header
        self.size = len(header) + self.pixel_length
        self._position = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        if self._position >= self.size:
            return 0
        n = min(len(buffer), CHUNK, self.size - self._position)
        if self._position < len(self._header):
            piece = self._header[self._position : self._position + n]
        else:  # each frame filled with its number, whatever frames the read spans
            frame_size = 512 * 512 * 2
            offset = self._position - len(self._header)
            pieces = []
            while n > 0:
                frame, within = divmod(offset, frame_size)
                take = min(n, frame_size - within)
                pieces.append(bytes([frame % 251]) * take)
                offset, n = offset + take, n - take
            piece = b"".join(pieces)
        buffer[: len(piece)] = piece
        self._position += len(piece)
        return len(piece)
