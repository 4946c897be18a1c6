"""Where each frame of an instance lies in its file, found once at ingest.

Serving a frame is then a seek and a read.  For native (uncompressed) Pixel Data the
frames are consecutive slices of one value; for encapsulated Pixel Data (PS3.5 A.4) each
frame is one or more fragments, located by the Basic Offset Table, the Extended Offset
Table, a one-to-one fragment count, or the start-of-image markers of JPEG-family codestreams.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

log = logging.getLogger(__name__)

PIXEL_TAGS = {
    0x7FE00010: "PixelData",
    0x7FE00008: "FloatPixelData",
    0x7FE00009: "DoubleFloatPixelData",
}
_ITEM = 0xFFFEE000
_SEQ_END = 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_LONG_VRS = {
    b"OB",
    b"OW",
    b"OF",
    b"OD",
    b"OL",
    b"OV",
    b"SQ",
    b"UC",
    b"UN",
    b"UR",
    b"UT",
    b"SV",
    b"UV",
}
# JPEG SOI and JPEG 2000 SOC/SIZ markers start a codestream, hence a frame.
_FRAME_STARTS = (b"\xff\xd8", b"\xff\x4f\xff\x51")

Fragment = tuple[int, int]  # absolute file offset, length


@dataclass(frozen=True)
class PixelLayout:
    """The Pixel Data element of a stored file.

    ``frame_size`` is set for native data (frame *n* starts at
    ``offset + (n - 1) * frame_size``); ``fragments`` for encapsulated data (frame *n* is
    ``fragments[n - 1]``, a list of byte ranges).  Both ``None`` means the frames could
    not be located without decoding, and serving falls back to parsing the file.
    """

    tag: int
    vr: str
    offset: int
    length: int | None
    number_of_frames: int
    frame_size: int | None = None
    fragments: list[list[Fragment]] | None = None

    def frame_ranges(self, number: int) -> list[Fragment]:
        """Byte ranges of frame ``number`` (1-based)."""
        if not 1 <= number <= self.number_of_frames:
            raise IndexError(number)
        if self.frame_size is not None:
            return [(self.offset + (number - 1) * self.frame_size, self.frame_size)]
        if self.fragments is not None:
            return self.fragments[number - 1]
        raise LookupError("frame offsets unknown")


def scan_pixel_data(
    fp: BinaryIO,
    *,
    little_endian: bool,
    implicit_vr: bool,
    number_of_frames: int,
    frame_bits: int,
    extended_offsets: bytes | None = None,
) -> PixelLayout | None:
    """Locate the frames of the Pixel Data element that starts at ``fp``'s position.

    ``frame_bits`` is Rows x Columns x SamplesPerPixel x BitsAllocated.  Returns ``None``
    when ``fp`` is not at a pixel data element.
    """
    start = fp.tell()
    head = fp.read(8)
    if len(head) < 8:
        return None
    order = "<" if little_endian else ">"
    group, element = struct.unpack(order + "HH", head[:4])
    tag = group << 16 | element
    if tag not in PIXEL_TAGS:
        return None
    if implicit_vr:
        vr = "OW"
        (length,) = struct.unpack(order + "L", head[4:8])
        offset = start + 8
    else:
        vr_bytes = head[4:6]
        vr = vr_bytes.decode("ascii", "replace")
        if vr_bytes in _LONG_VRS:
            (length,) = struct.unpack(order + "L", fp.read(4))
            offset = start + 12
        else:
            (length,) = struct.unpack(order + "H", head[6:8])
            offset = start + 8
    frames = max(number_of_frames, 1)
    if length != _UNDEFINED:
        frame_size = frame_bits // 8 if frame_bits % 8 == 0 and frame_bits else None
        if frame_size is not None and frame_size * frames > length:
            log.warning(
                "Pixel Data holds %d bytes, less than %d frames of %d", length, frames, frame_size
            )
            frame_size = None
        return PixelLayout(tag, vr, offset, length, frames, frame_size=frame_size)
    fp.seek(offset)
    return _scan_encapsulated(fp, tag, offset, frames, extended_offsets)


def _scan_encapsulated(
    fp: BinaryIO, tag: int, offset: int, frames: int, extended_offsets: bytes | None
) -> PixelLayout:
    # PS3.5 A.4: items are always little endian; the first is the Basic Offset Table.
    items: list[Fragment] = []
    while True:
        head = fp.read(8)
        if len(head) < 8:
            break  # truncated: keep what we found
        item_tag, length = struct.unpack("<LL", head)
        item_tag = (item_tag & 0xFFFF) << 16 | item_tag >> 16
        if item_tag == _SEQ_END or item_tag != _ITEM or length == _UNDEFINED:
            break
        items.append((fp.tell(), length))
        fp.seek(length, 1)
    layout = PixelLayout(tag, "OB", offset, None, frames)
    if not items:
        return layout
    bot, fragments = items[0], items[1:]
    grouped = _group_fragments(fp, fragments, frames, bot, extended_offsets)
    if grouped is None:
        log.warning(
            "cannot tell which of %d fragments form each of %d frames", len(fragments), frames
        )
        return layout
    return PixelLayout(tag, "OB", offset, None, frames, fragments=grouped)


def _group_fragments(
    fp: BinaryIO,
    fragments: list[Fragment],
    frames: int,
    bot: Fragment,
    extended_offsets: bytes | None,
) -> list[list[Fragment]] | None:
    if frames == 1:
        return [fragments]
    if len(fragments) == frames:
        return [[f] for f in fragments]
    starts: list[int] | None = None
    if extended_offsets and len(extended_offsets) == 8 * frames:
        starts = list(struct.unpack(f"<{frames}Q", extended_offsets))
    elif bot[1] == 4 * frames:
        fp.seek(bot[0])
        starts = list(struct.unpack(f"<{frames}L", fp.read(4 * frames)))
    if starts is not None and starts[0] == 0:
        # Offsets count from the first byte of the first fragment's item tag.
        base = fragments[0][0] - 8
        boundaries = {base + s for s in starts}
        return _split_at(fragments, lambda f: f[0] - 8 in boundaries, frames)

    # No table: JPEG-family codestreams announce their own start.
    def opens_frame(fragment: Fragment) -> bool:
        fp.seek(fragment[0])
        head = fp.read(4)
        return any(head.startswith(marker) for marker in _FRAME_STARTS)

    return _split_at(fragments, opens_frame, frames)


def _split_at(
    fragments: list[Fragment], starts_frame: Callable[[Fragment], bool], frames: int
) -> list[list[Fragment]] | None:
    grouped: list[list[Fragment]] = []
    for fragment in fragments:
        if not grouped or starts_frame(fragment):
            grouped.append([fragment])
        else:
            grouped[-1].append(fragment)
    return grouped if len(grouped) == frames else None
