"""Part 10 files from DICOM JSON metadata and bulk data, for the JSON form of STOW-RS.

PS3.18 10.5.1.2 lets a client send ``multipart/related; type="application/dicom+json"``:
one part holds an array of instances in DICOM JSON (PS3.18 Annex F) whose large values
are BulkDataURIs, further parts hold those values, each named by its Content-Location.
The archive stores Part 10 files only, so each instance is written as one here and then
goes through the one ingest path (:meth:`Archive.store`) like any other.

The File Meta Information comes from the instance's own group 0002 attributes when the
JSON has them, else it is made up: Explicit VR Little Endian, or the ``transfer-syntax``
parameter of the Pixel Data part's media type (PS3.18 8.7.3.5) for compressed pixel
data, which is then encapsulated (PS3.5 A.4) as a single frame unless the part already
holds encapsulated items.

Memory: the bulk values of one instance are held while its file is written, nothing of
the other instances.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, BinaryIO

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian

from .errors import InvalidInstance, UnsupportedTransferSyntax
from .parse import STORABLE_TRANSFER_SYNTAXES

PIXEL_DATA = 0x7FE00010
_ITEM_TAG = b"\xfe\xff\x00\xe0"  # (FFFE,E000) little endian: an encapsulated item

#: Resolves a BulkDataURI to its bytes and the ``transfer-syntax`` of its part, if any;
#: raises KeyError when no part of the request has that Content-Location.
BulkResolver = Callable[[str], tuple[bytes, str | None]]


def build_part10(metadata: dict[str, Any], resolve: BulkResolver, out: BinaryIO) -> Dataset:
    """Write one instance given as DICOM JSON to ``out`` as a Part 10 file.

    Returns the data set (without its bulk values' bytes being freed; the caller drops
    it).  Raises :class:`InvalidInstance` when the JSON cannot be decoded or names bulk
    data that was not sent, :class:`UnsupportedTransferSyntax` for an unknown syntax.
    """
    if not isinstance(metadata, dict):
        raise InvalidInstance("each item of the DICOM JSON array must be an object (PS3.18 F.2)")
    meta_json = {k: v for k, v in metadata.items() if k.upper().startswith("0002")}
    body_json = {k: v for k, v in metadata.items() if not k.upper().startswith("0002")}
    syntaxes: dict[int, str] = {}

    def handler(tag: str, vr: str, uri: str) -> bytes:
        try:
            data, syntax = resolve(uri)
        except KeyError:
            raise InvalidInstance(
                f"BulkDataURI {uri!r} of ({tag[:4]},{tag[4:]}) matches no part's "
                "Content-Location in the request (PS3.18 10.5.1.2)"
            ) from None
        if syntax:
            syntaxes[int(tag, 16)] = syntax
        return data

    try:
        dataset = Dataset.from_json(body_json, bulk_data_uri_handler=handler)
        meta = FileMetaDataset(Dataset.from_json(meta_json)) if meta_json else FileMetaDataset()
    except InvalidInstance:
        raise
    except Exception as exc:  # pydicom raises many kinds on malformed JSON values
        raise InvalidInstance(f"the DICOM JSON cannot be decoded: {exc}") from exc

    syntax = UID(
        syntaxes.get(PIXEL_DATA)
        or str(meta.get("TransferSyntaxUID", "") or "")
        or ExplicitVRLittleEndian
    )
    if syntax not in STORABLE_TRANSFER_SYNTAXES:
        raise UnsupportedTransferSyntax(
            f"transfer syntax {syntax} is not supported by this archive"
        )
    if syntax.is_compressed and "PixelData" in dataset:
        value = dataset.PixelData
        if value[:4] != _ITEM_TAG:  # one frame's bit stream, as WADO-RS frames are sent
            dataset.PixelData = encapsulate([value])
        dataset["PixelData"].VR = "OB"
    meta.TransferSyntaxUID = syntax
    for keyword, source in (
        ("MediaStorageSOPClassUID", "SOPClassUID"),
        ("MediaStorageSOPInstanceUID", "SOPInstanceUID"),
    ):
        if keyword not in meta and source in dataset:
            setattr(meta, keyword, dataset[source].value)
    if "ImplementationClassUID" not in meta:
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    dataset.file_meta = meta
    try:
        dataset.save_as(out, enforce_file_format=True)
    except Exception as exc:
        raise InvalidInstance(f"the instance cannot be encoded as a Part 10 file: {exc}") from exc
    return dataset
