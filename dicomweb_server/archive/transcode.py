"""Transfer syntax conversion of stored instances and frames, for WADO-RS, C-GET and C-MOVE.

Stored files are served as received whenever the client accepts their transfer syntax;
this module is the exception path, used only when it does not (PS3.18 8.7.3.5, PS3.4
C.4.2.3 / C.4.3.3 presentation contexts).  It works on one instance at a time, so memory
is bounded by the largest instance, never by a study.

Decoding uses pydicom's pixel handlers (pylibjpeg-libjpeg, -openjpeg, -rle and pyjpegls
are installed); encoding uses pydicom's encoders where one is available.  Lossy targets
are produced only when asked for by UID; nothing here chooses a lossy syntax by itself.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
from pydicom import dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileDataset
from pydicom.pixels import get_decoder, get_encoder
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGLSNearLossless,
)

from .errors import ArchiveError
from .storage import CHUNK

log = logging.getLogger(__name__)

#: Uncompressed (native) transfer syntaxes we read and write (PS3.5 A.1, A.2, A.5).
#: Explicit VR Big Endian (retired) is read but never produced.
NATIVE = frozenset({ImplicitVRLittleEndian, ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian})
_READ_NATIVE = NATIVE | {ExplicitVRBigEndian}

#: Word size of the binary VRs whose bytes change order with the endianness (PS3.5 7.3).
_SWAP = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}

Source = Path | str | BinaryIO


class TranscodeError(ArchiveError):
    """The instance cannot be converted to the requested transfer syntax.

    Raised when a codec refuses the pixel data (for example a JPEG-LS encoder given
    signed 32-bit samples) even though :func:`can_transcode` allowed the pair of syntaxes.
    """


def _decodable(ts: UID) -> bool:
    if ts in _READ_NATIVE:
        return True
    try:
        return get_decoder(ts).is_available
    except NotImplementedError:
        return False


def _encodable(ts: UID) -> bool:
    if ts in NATIVE:
        return True
    try:
        return get_encoder(ts).is_available
    except NotImplementedError:
        return False


def can_transcode(src_ts: str, dst_ts: str) -> bool:
    """Whether an instance stored in ``src_ts`` can be sent in ``dst_ts``.

    Decided from the two UIDs alone (no file is opened), so a caller can check a whole
    study before it starts streaming.  Identical syntaxes are always possible.  Video
    (MPEG) and other syntaxes without an installed decoder convert to nothing else.
    """
    src, dst = UID(src_ts), UID(dst_ts)
    if src == dst:
        return True
    if not dst.is_transfer_syntax or not src.is_transfer_syntax:
        return False
    return _decodable(src) and _encodable(dst)


def read(source: Source) -> FileDataset:
    """The full dataset of a stored instance (one instance in memory)."""
    return dcmread(source, force=True)


def transcode_dataset(source: Source | Dataset, target_ts: str) -> Dataset:
    """The instance as a dataset whose pixel data and file meta use ``target_ts``.

    For C-STORE sub-operations (pynetdicom sends a :class:`~pydicom.dataset.Dataset`)
    and for :func:`transcode`.  Raises :class:`TranscodeError` when impossible.
    """
    ds = source if isinstance(source, Dataset) else read(source)
    target = UID(target_ts)
    current = UID(ds.file_meta.get("TransferSyntaxUID", ImplicitVRLittleEndian))
    if current == target:
        return ds
    if not can_transcode(current, target):
        raise TranscodeError(
            f"cannot convert {ds.get('SOPInstanceUID', '?')} from {current.name} to "
            f"{target.name}: no codec installed for that pair"
        )
    try:
        if not current.is_little_endian:
            ds = _to_little_endian(ds)
            current = ExplicitVRLittleEndian
        if current.is_compressed and "PixelData" in ds:
            # A transfer syntax change keeps the instance's identity (PS3.5 10), so the
            # SOP Instance UID stays; pydicom would otherwise generate a new one.
            ds.decompress(generate_instance_uid=False)  # to Explicit VR LE; YBR -> RGB
        if target.is_compressed:
            ds.compress(target, generate_instance_uid=False, **_encoder_options(target))
        else:
            ds.file_meta.TransferSyntaxUID = target
    except (ValueError, RuntimeError, NotImplementedError, AttributeError) as exc:
        raise TranscodeError(
            f"cannot convert {ds.get('SOPInstanceUID', '?')} from {current.name} to "
            f"{target.name}: {exc}"
        ) from exc
    return ds


def transcode(source: Source | Dataset, target_ts: str) -> Iterator[bytes]:
    """The instance as a Part 10 file in ``target_ts``, in chunks of about 1 MiB.

    ``source`` is a stored file's path or open binary file (or a dataset).  The
    conversion happens before the first chunk is yielded, so a :class:`TranscodeError`
    surfaces before anything has been sent.
    """
    ds = transcode_dataset(source, target_ts)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    view = buffer.getbuffer()
    return _chunks(view)


def _chunks(view: memoryview) -> Iterator[bytes]:
    for start in range(0, len(view), CHUNK):
        yield bytes(view[start : start + CHUNK])


def _encoder_options(target: UID) -> dict[str, object]:
    # Lossy encoders need a target quality; a compression ratio of 10 (J2K) and an
    # error bound of 2 (JPEG-LS near-lossless) are conventional diagnostic settings.
    if target == JPEG2000:
        return {"j2k_cr": [10]}
    if target == JPEGLSNearLossless:
        return {"jls_error": 2}
    return {}


def _to_little_endian(ds: Dataset) -> Dataset:
    """A copy of a big endian dataset with its binary values in little endian order.

    pydicom refuses to change endianness on write (its values of VR OW/OF/... are raw
    bytes), so the copy swaps them and starts with no original encoding.
    """
    out = FileDataset(
        getattr(ds, "filename", None) or "", _swap(ds), file_meta=ds.file_meta, preamble=b"\0" * 128
    )
    out.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return out


def _swap(ds: Dataset) -> Dataset:
    out = Dataset()
    for element in ds:
        if element.VR == "SQ":
            value: object = [_swap(item) for item in element.value]
        elif element.VR in _SWAP and isinstance(element.value, bytes | bytearray):
            width = _SWAP[element.VR]
            data = bytes(element.value)
            usable = len(data) - len(data) % width
            value = (
                np.frombuffer(data[:usable], dtype=f">u{width}").astype(f"<u{width}").tobytes()
                + data[usable:]
            )
        else:
            value = element.value
        out.add(DataElement(element.tag, element.VR, value))
    return out


# -- frames ----------------------------------------------------------------------------


def decode_frame(source: Source | Dataset, number: int) -> bytes:
    """Frame ``number`` (1-based) as native little endian bytes, decoding if needed.

    The fallback when the index holds no frame offsets (deflated files, unusual layouts)
    or when a client asks for ``application/octet-stream`` of compressed data
    (PS3.18 8.7.3.3.1).  Colour is returned as RGB, samples interleaved, as pydicom
    decodes it.
    """
    ds = source if isinstance(source, Dataset) else read(source)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if not 1 <= number <= frames:
        raise IndexError(number)
    try:
        array = ds.pixel_array
    except Exception as exc:  # codecs raise many kinds; all mean "cannot decode"
        raise TranscodeError(
            f"cannot decode the pixel data of {ds.get('SOPInstanceUID', '?')}: {exc}"
        ) from exc
    frame = array[number - 1] if frames > 1 else array
    return np.ascontiguousarray(frame).astype(frame.dtype.newbyteorder("<"), copy=False).tobytes()


def encode_frames(source: Source | Dataset, numbers: list[int], target_ts: str) -> list[bytes]:
    """Frames ``numbers`` compressed as ``target_ts`` (one codestream each).

    Used when a client asks for a compressed frame media type the file is not stored in
    (PS3.18 Table 8.7.3-5).  Raises :class:`TranscodeError` when impossible.
    """
    ds = source if isinstance(source, Dataset) else read(source)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    for number in numbers:
        if not 1 <= number <= frames:
            raise IndexError(number)
    ds = transcode_dataset(ds, target_ts)
    from pydicom.encaps import generate_frames

    encoded = list(generate_frames(ds.PixelData, number_of_frames=frames))
    return [encoded[n - 1] for n in numbers]


__all__ = [
    "NATIVE",
    "TranscodeError",
    "can_transcode",
    "decode_frame",
    "encode_frames",
    "transcode",
    "transcode_dataset",
]
