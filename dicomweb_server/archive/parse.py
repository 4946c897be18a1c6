"""Reading an incoming instance once: header, validation, metadata JSON, frame layout.

Only the header is parsed (never the pixel data: its frames are located by a scan of item
headers), large values are deferred rather than read, and everything the archive will
ever need to answer a query or serve a frame is computed here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import config, dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, AllTransferSyntaxes, DeflatedExplicitVRLittleEndian
from pydicom.valuerep import VR

from . import dicomjson
from .attributes import LEVEL_KEYS, Level, first_int, parse_int
from .errors import ArchiveError, InvalidInstance, UnsupportedTransferSyntax
from .frames import PixelLayout, scan_pixel_data
from .storage import Received
from .uids import clean_uid

# pydicom checks each value it decodes against its VR's rules and, by default, only
# warns: a third of the time of parsing a CT header (0.6 of 1.7 ms) went into warnings
# nobody reads.  Ingest checks what it relies on itself (UIDs, VRs, decodability), and
# keeps malformed values as received (dicomjson._undecodable), so pydicom's checks are
# turned off for the whole process.
config.settings.reading_validation_mode = config.IGNORE

STORABLE_TRANSFER_SYNTAXES = frozenset(AllTransferSyntaxes)
_KNOWN_VRS = frozenset(vr.value for vr in VR)
_AVAILABLE_TS = "00083002"


@dataclass
class ParsedInstance:
    """What ingest learnt from one file; immutable once built."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    dataset: Dataset  # header only, large values deferred
    metadata: dict[str, Any]  # DICOM JSON, BulkDataURIs under dicomjson.BASE
    bulk: dicomjson.Bulk
    pixels: PixelLayout | None
    warnings: list[str] = dataclasses.field(default_factory=list)
    #: Attributes were changed from what the sender sent (de-identification): STOW-RS
    #: WarningReason B000 and C-STORE status B000, "coercion of data elements".
    coerced: bool = False

    def level_json(self, level: Level) -> dict[str, Any]:
        """The attributes of ``level`` present in this instance, as DICOM JSON."""
        return {k: self.metadata[k] for k in LEVEL_KEYS[level] if k in self.metadata}

    @property
    def number_of_frames(self) -> int:
        """Frames of pixel data (1 for a single-frame image, 0 for no image)."""
        if self.pixels is not None:
            return self.pixels.number_of_frames
        if "Rows" not in self.dataset:
            return 0
        return max(parse_int(self.dataset.get("NumberOfFrames", 1)) or 1, 1)


def parse_instance(source: Path | Received, bulk_threshold: int) -> ParsedInstance:
    """Parse and validate the Part 10 file at ``source`` (a path, or a file just received,
    whose header is then read from memory).

    Raises :class:`InvalidInstance` (or :class:`UnsupportedTransferSyntax`) with a message
    fit for a PS3.18 failure body or a DIMSE Error Comment.
    """
    try:
        return _parse_instance(source, bulk_threshold)
    except (ArchiveError, OSError):
        raise
    except Exception as exc:
        # pydicom decodes elements lazily, on first access, so corrupt input can raise
        # any kind (NotImplementedError for an unknown VR, ValueError, struct.error...)
        # well after dcmread; found by scripts/fuzz.py.
        raise InvalidInstance(f"the DICOM header cannot be parsed: {exc}") from exc


def _parse_instance(source: Path | Received, bulk_threshold: int) -> ParsedInstance:
    with source.open() if isinstance(source, Received) else open(source, "rb") as fp:
        try:
            dataset = dcmread(fp, stop_before_pixels=True, defer_size=max(bulk_threshold, 1))
        except InvalidDicomError as exc:
            raise InvalidInstance(
                "not a DICOM Part 10 file: the 128-byte preamble, 'DICM' prefix or File Meta "
                "Information (PS3.10 7.1) is missing"
            ) from exc
        except Exception as exc:  # pydicom raises many kinds on corrupt input
            raise InvalidInstance(f"the DICOM header cannot be parsed: {exc}") from exc
        meta = dataset.file_meta
        ts = str(meta.get("TransferSyntaxUID", "") or "").rstrip("\0 ")
        if not ts:
            raise InvalidInstance("the File Meta Information has no TransferSyntaxUID (0002,0010)")
        if ts not in STORABLE_TRANSFER_SYNTAXES:
            raise UnsupportedTransferSyntax(
                f"transfer syntax {ts} is not supported by this archive"
            )
        try:
            study = clean_uid(_uid(dataset, 0x0020000D), "StudyInstanceUID")
            series = clean_uid(_uid(dataset, 0x0020000E), "SeriesInstanceUID")
            sop = clean_uid(_uid(dataset, 0x00080018), "SOPInstanceUID")
            sop_class = clean_uid(_uid(dataset, 0x00080016), "SOPClassUID")
        except InvalidInstance:
            raise
        except Exception as exc:  # a value that pydicom cannot even decode
            raise InvalidInstance(f"an identifying attribute cannot be read: {exc}") from exc
        warnings = []
        media_sop = str(meta.get("MediaStorageSOPInstanceUID", "") or "").rstrip("\0 ")
        if media_sop and media_sop != sop:
            warnings.append(
                f"MediaStorageSOPInstanceUID {media_sop} differs from SOPInstanceUID {sop}"
            )

        deflated = ts == DeflatedExplicitVRLittleEndian
        pixel_position = fp.tell()  # dcmread stopped at the Pixel Data element
        try:
            decoded: set[int] = set()
            metadata, bulk = dicomjson.to_json(
                dataset,
                dicomjson.instance_uri(study, series, sop),
                bulk_threshold,
                not deflated,
                decoded,
            )
        except Exception as exc:
            raise InvalidInstance(f"the header cannot be converted to DICOM JSON: {exc}") from exc
        pixels = None
        if not deflated:
            fp.seek(pixel_position)
            pixels = _scan_pixels(fp, dataset, metadata, UID(ts))
    if pixels is not None or (deflated and "Rows" in dataset):
        # Pixel Data is always bulk data, even when its frames could not be located.
        tag, vr = (pixels.tag, pixels.vr) if pixels else (0x7FE00010, "OW")
        metadata[f"{tag:08X}"] = {
            "vr": vr,
            "BulkDataURI": dicomjson.instance_uri(study, series, sop) + f"/bulkdata/{tag:08X}",
        }
    metadata[_AVAILABLE_TS] = {"vr": "UI", "Value": [ts]}
    _decode_header(dataset, decoded)
    return ParsedInstance(
        study_uid=study,
        series_uid=series,
        sop_uid=sop,
        sop_class_uid=sop_class,
        transfer_syntax_uid=ts,
        dataset=dataset,
        metadata=dict(sorted(metadata.items())),
        bulk=bulk,
        pixels=pixels,
        warnings=warnings,
    )


def _uid(dataset: Dataset, tag: int) -> object:
    """A UID as sent, read from its bytes: asking pydicom would build its DataElement,
    which the DICOM JSON conversion would then convert the slow way."""
    raw = dataset.get_item(tag, keep_deferred=True)
    if isinstance(raw, RawDataElement) and type(raw.value) is bytes:
        return raw.value.decode("latin-1").strip(" \0")  # pydicom strips UIDs both ends
    return dataset.get(tag).value if tag in dataset else None


def _decode_header(dataset: Dataset, decoded: set[int]) -> None:
    """Decode every top-level value that was read (not deferred) now, so that a value
    pydicom cannot decode (an unknown VR) refuses the instance here rather than failing
    later inside the index transaction (found by scripts/fuzz.py).  ``decoded``: tags
    whose values :func:`.dicomjson.to_json` decoded already, and pydicom will too."""
    for tag in list(dataset.keys()):
        if tag in decoded:
            continue
        raw = dataset.get_item(tag, keep_deferred=True)
        if isinstance(raw, RawDataElement) and raw.value is None and raw.length:
            # Deferred (a large value, read only if someone asks for it): check its VR.
            if raw.VR is not None and raw.VR not in _KNOWN_VRS:
                raise InvalidInstance(f"unknown Value Representation {raw.VR!r} in {raw.tag}")
            continue
        dataset[tag]


def _scan_pixels(fp, dataset: Dataset, metadata: dict[str, Any], ts: UID) -> PixelLayout | None:  # type: ignore[no-untyped-def]
    def number(key: str, default: int = 0) -> int:
        value = first_int(metadata, key)
        return default if value is None else value

    rows, columns, samples, bits = ("00280010", "00280011", "00280002", "00280100")
    frame_bits = number(rows) * number(columns) * number(samples, 1) * number(bits)
    extended = None
    raw = dataset.get_item(0x7FE00001, keep_deferred=True)  # Extended Offset Table
    if raw is not None:
        if isinstance(raw, RawDataElement) and raw.value is None:
            position = fp.tell()
            fp.seek(raw.value_tell)
            extended = fp.read(raw.length)
            fp.seek(position)
        else:
            extended = bytes(dataset[0x7FE00001].value or b"")
    return scan_pixel_data(
        fp,
        little_endian=ts.is_little_endian,
        implicit_vr=ts.is_implicit_VR,
        number_of_frames=number("00280008", 1),
        frame_bits=frame_bits,
        extended_offsets=extended,
    )
