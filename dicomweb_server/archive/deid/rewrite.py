"""Write a de-identified copy of a received file without loading its pixel data.

The new file is the new header (File Meta Information and every element before Pixel
Data, encoded by pydicom in the original transfer syntax) followed by the original bytes
of the Pixel Data element, copied unchanged.  Nothing after Pixel Data is copied: only
Digital Signatures (FFFA,FFFA; X in PS3.15 Table E.1-1) and Data Set Trailing Padding
(FFFC,FFFC) may follow it.  Deflated files (PS3.5 A.5) have no byte offsets to copy from
and are read and written whole.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import DeflatedExplicitVRLittleEndian

from ..frames import PixelLayout
from ..storage import CHUNK
from .pixels import Cleaner

_ITEM = 0xFFFEE000
_SEQ_END = 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
#: File Meta elements that identify the sender's devices, or carry private data
#: (PS3.10 7.1): removed from the de-identified copy.
_META_REMOVED = (
    "SourceApplicationEntityTitle",
    "SendingApplicationEntityTitle",
    "ReceivingApplicationEntityTitle",
    "PrivateInformationCreatorUID",
    "PrivateInformation",
)


def pixel_element_range(fp: BinaryIO, pixels: PixelLayout, implicit_vr: bool) -> tuple[int, int]:
    """``(start, end)`` file offsets of the whole Pixel Data element, header included."""
    # OB, OW, OF and OD all have the 12-byte explicit VR header (PS3.5 7.1.2).
    start = pixels.offset - (8 if implicit_vr else 12)
    if pixels.length is not None:
        return start, pixels.offset + pixels.length
    # Encapsulated (PS3.5 A.4): items up to the Sequence Delimitation Item, little endian.
    fp.seek(pixels.offset)
    while True:
        head = fp.read(8)
        if len(head) < 8:
            return start, fp.tell()  # truncated: copy what there is
        tag, length = struct.unpack("<LL", head)
        tag = (tag & 0xFFFF) << 16 | tag >> 16
        if tag == _SEQ_END:
            return start, fp.tell()
        if tag != _ITEM or length == _UNDEFINED:
            raise ValueError(f"unexpected item {tag:08X} in encapsulated Pixel Data")
        fp.seek(length, 1)


class _Joined(io.RawIOBase):
    """A read-only stream of a header in memory and then a byte range of a file."""

    def __init__(self, header: bytes, source: Path, start: int, end: int) -> None:
        self._header = io.BytesIO(header)
        self._source = open(source, "rb")  # noqa: SIM115 - closed in close()
        self._source.seek(start)
        self._left = end - start

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = self._header.readinto(buffer)
        if n:
            return n
        if self._left <= 0:
            return 0
        chunk = self._source.read(min(len(buffer), self._left, CHUNK))
        buffer[: len(chunk)] = chunk
        self._left -= len(chunk)
        return len(chunk)

    def close(self) -> None:
        self._source.close()
        super().close()


class _Chunks(io.RawIOBase):
    """A read-only stream over an iterator of byte strings (one frame at a time)."""

    def __init__(self, chunks: Iterator[bytes | bytearray]) -> None:
        self._chunks = chunks
        self._current = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while not self._current:
            self._current = memoryview(b"")  # let go of the chunk read before
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._current = memoryview(chunk)
        n = min(len(buffer), len(self._current))
        buffer[:n] = self._current[:n]
        self._current = self._current[n:]
        return n

    def close(self) -> None:
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()  # a generator: closes the source file it holds open
        super().close()


def _cleaned(header: bytes, source: Path, start: int, cleaner: Cleaner) -> Iterator[bytes]:
    """The new header, the Pixel Data element's own header, then the cleaned frames."""
    yield header
    with open(source, "rb") as fp:
        fp.seek(start)
        yield fp.read(cleaner.layout.offset - start)
        yield from cleaner.frames(fp)


def encode_header(meta: FileMetaDataset, ds: Dataset) -> bytes:
    """Part 10 preamble, File Meta Information and ``ds`` (no pixel data), encoded."""
    out = io.BytesIO()
    ds.file_meta = meta
    dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


def new_meta(ds: Dataset) -> FileMetaDataset:
    """File Meta Information for the de-identified ``ds`` (PS3.10 7.1)."""
    meta = FileMetaDataset(ds.file_meta)
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for keyword in _META_REMOVED:
        if keyword in meta:
            delattr(meta, keyword)
    if 0x00020000 in meta:
        del meta[0x00020000]  # recomputed by pydicom
    return meta


def rewrite(
    source: Path,
    header: Dataset,
    pixels: PixelLayout | None,
    transfer_syntax: str,
    transform: Callable[[Dataset], None],
    receive: Callable[[BinaryIO], object],
    cleaner: Cleaner | None = None,
) -> object:
    """Apply ``transform`` to the header and hand the new file to ``receive`` as a stream.

    ``header`` is the dataset as parsed without pixels; ``receive`` is typically
    ``Storage.receive``, which writes, hashes and syncs the stream.  With ``cleaner``
    (native Pixel Data only, see :func:`.pixels.plan`), the frames are blanked on the way,
    one at a time.
    """
    if transfer_syntax == DeflatedExplicitVRLittleEndian and cleaner is not None:
        raise ValueError("pixel cleaning needs native (not deflated) Pixel Data")
    if transfer_syntax == DeflatedExplicitVRLittleEndian:
        full = dcmread(source)
        transform(full)
        full.file_meta = new_meta(full)
        out = io.BytesIO()
        dcmwrite(out, full, enforce_file_format=True)
        out.seek(0)
        return receive(out)
    transform(header)
    encoded = encode_header(new_meta(header), header)
    start = end = 0
    if pixels is not None:
        with open(source, "rb") as fp:
            implicit = header.file_meta.TransferSyntaxUID.is_implicit_VR
            start, end = pixel_element_range(fp, pixels, implicit)
    if cleaner is not None and pixels is not None:
        with _Chunks(_cleaned(encoded, source, start, cleaner)) as chunks:
            return receive(io.BufferedReader(chunks, CHUNK))
    with _Joined(encoded, source, start, end) as stream:
        return receive(io.BufferedReader(stream, CHUNK))
