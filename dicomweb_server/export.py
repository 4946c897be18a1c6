"""``export``: copy stored studies out of the archive, as received, with a manifest.

Layout, in a folder or a zip file::

    <PatientID>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm
    manifest.json

Each file is the stored Part 10 file byte for byte (never re-encoded), so its SHA-256 is
the one recorded at ingest; the copy is checked against it while it streams, and a
mismatch stops the export (run ``verify``).  UIDs name folders only after they pass
the PS3.5 9.1 check; the patient folder comes from PatientID, which is free text, so it
keeps only letters, digits, ``.``, ``_`` and ``-`` (anything else becomes ``_``) and
falls back to the study UID when nothing is left.

Zip files are written entry by entry with ZIP_STORED: DICOM pixel data is mostly
compressed already or compresses poorly and slowly (gzip of a 512 KB frame takes ~40
ms), and a stored entry streams with no buffering, so memory holds one 1 MiB chunk
whatever the study size.  Zip64 is used for large archives and entries.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol
from urllib.parse import parse_qsl

from .archive import Archive, ArchiveError, InvalidQuery, Level, Query, StoredInstance
from .archive.uids import is_valid_uid

CHUNK = 1 << 20
MANIFEST = "manifest.json"
_PATIENT_ID = "00100020"
_STUDY_UID = "0020000D"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


class ExportError(ArchiveError):
    """The export cannot go on: a bad selection, a corrupt stored file."""


def safe_component(text: str, fallback: str) -> str:
    """``text`` as one path component: safe characters only, no ``.``/``..``, at most
    64 characters; ``fallback`` when nothing usable is left."""
    cleaned = _UNSAFE.sub("_", text.strip())[:64].strip(".")
    return cleaned or fallback


def _uid(value: str, what: str) -> str:
    if not is_valid_uid(value):
        raise ExportError(f"{what} {value!r} is not a valid UID (PS3.5 9.1); not exported")
    return value


@dataclass(frozen=True)
class Selection:
    """What to export: studies (each with its patient folder), optionally one series."""

    studies: list[tuple[str, str]]  #: (study UID, patient folder)
    series_uid: str | None = None


def _patient_of(row: dict[str, Any]) -> str:
    values = row.get(_PATIENT_ID, {}).get("Value", [])
    return str(values[0]) if values else ""


def select_study(archive: Archive, study_uid: str, series_uid: str | None = None) -> Selection:
    """One study (or one of its series)."""
    _uid(study_uid, "study")
    if series_uid is not None:
        _uid(series_uid, "series")
    rows = archive.search(Query(Level.STUDY, filters={"StudyInstanceUID": study_uid}))
    if not rows:
        raise ExportError(f"study {study_uid} is not stored")
    patient = safe_component(_patient_of(rows[0]), study_uid)
    return Selection([(study_uid, patient)], series_uid)


def select_query(archive: Archive, query: str) -> Selection:
    """Every study matching a QIDO-RS style query (``PatientID=X&StudyDate=2024...``),
    with the study-level matching rules of PS3.4 C.2.2.2 (wildcards, ranges, lists)."""
    filters = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)))
    if not filters:
        raise InvalidQuery("--query has no key=value pair; give e.g. 'PatientID=X'")
    rows = archive.search(Query(Level.STUDY, filters=filters))
    studies = []
    for row in rows:
        uid = _uid(str(row[_STUDY_UID]["Value"][0]), "study")
        studies.append((uid, safe_component(_patient_of(row), uid)))
    return Selection(studies)


class Sink(Protocol):
    """Where exported files go: a folder or a zip file."""

    def write(self, name: str, source: BinaryIO, size: int) -> str: ...
    def write_bytes(self, name: str, data: bytes) -> None: ...
    def close(self) -> None: ...


def _copy(source: BinaryIO, out: BinaryIO) -> str:
    digest = hashlib.sha256()
    while chunk := source.read(CHUNK):
        digest.update(chunk)
        out.write(chunk)
    return digest.hexdigest()


class FolderSink:
    """Files under a folder; each written to ``.part`` and renamed when complete."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def write(self, name: str, source: BinaryIO, size: int) -> str:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".part")
        with open(partial, "wb") as out:
            sha256 = _copy(source, out)
        os.replace(partial, path)
        return sha256

    def write_bytes(self, name: str, data: bytes) -> None:
        (self.root / name).write_bytes(data)

    def close(self) -> None:
        pass


class ZipSink:
    """Entries of a zip file, stored uncompressed, streamed one at a time."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.zip = zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True)
        self.when = dt.datetime.now().timetuple()[:6]

    def _info(self, name: str, size: int) -> zipfile.ZipInfo:
        info = zipfile.ZipInfo(name, date_time=self.when)
        info.compress_type = zipfile.ZIP_STORED
        info.file_size = size  # lets zipfile choose Zip64 for entries over 4 GiB
        return info

    def write(self, name: str, source: BinaryIO, size: int) -> str:
        with self.zip.open(self._info(name, size), "w") as out:
            return _copy(source, out)  # type: ignore[arg-type]

    def write_bytes(self, name: str, data: bytes) -> None:
        self.zip.writestr(self._info(name, len(data)), data)

    def close(self) -> None:
        self.zip.close()


@dataclass
class ExportSummary:
    studies: int = 0
    series: int = 0
    instances: int = 0
    bytes: int = 0
    entries: list[dict[str, Any]] = field(default_factory=list)

    def report(self) -> str:
        return (
            f"exported {self.instances} instances ({self.bytes:,} bytes) of "
            f"{self.series} series in {self.studies} studies"
        )


def _instances(archive: Archive, selection: Selection) -> Iterator[tuple[str, StoredInstance]]:
    for study_uid, patient in selection.studies:
        for instance in archive.instances(study_uid, selection.series_uid):
            yield patient, instance


def count(archive: Archive, selection: Selection) -> int:
    """How many instances :func:`export` will write (for the progress bar)."""
    return sum(len(archive.instances(uid, selection.series_uid)) for uid, _ in selection.studies)


def export(
    archive: Archive,
    selection: Selection,
    destination: Path,
    progress: Callable[[int], object] = lambda _n: None,
) -> ExportSummary:
    """Write the selected instances and ``manifest.json`` to ``destination``: a zip file
    when its name ends in ``.zip``, else a folder."""
    sink: Sink = (
        ZipSink(destination) if destination.suffix.lower() == ".zip" else FolderSink(destination)
    )
    summary = ExportSummary()
    series: set[str] = set()
    try:
        for patient, instance in _instances(archive, selection):
            name = "/".join(
                [
                    patient,
                    _uid(instance.study_uid, "study"),
                    _uid(instance.series_uid, "series"),
                    _uid(instance.sop_uid, "SOP instance") + ".dcm",
                ]
            )
            with archive.open(instance) as source:
                sha256 = sink.write(name, source, instance.size)
            if instance.sha256 and sha256 != instance.sha256:
                raise ExportError(
                    f"stored file of {instance.sop_uid} does not match its SHA-256 at "
                    "ingest; run `dicomweb-server verify`"
                )
            summary.entries.append(
                {
                    "path": name,
                    "study_uid": instance.study_uid,
                    "series_uid": instance.series_uid,
                    "sop_instance_uid": instance.sop_uid,
                    "sop_class_uid": instance.sop_class_uid,
                    "transfer_syntax_uid": instance.transfer_syntax_uid,
                    "size": instance.size,
                    "sha256": sha256,
                }
            )
            series.add(instance.series_uid)
            summary.instances += 1
            summary.bytes += instance.size
            progress(1)
        summary.studies = len({e["study_uid"] for e in summary.entries})
        summary.series = len(series)
        manifest = {
            "exported_at": dt.datetime.now(dt.UTC).isoformat(),
            "studies": summary.studies,
            "series": summary.series,
            "instances": summary.instances,
            "bytes": summary.bytes,
            "files": summary.entries,
        }
        sink.write_bytes(MANIFEST, json.dumps(manifest, indent=1).encode())
    finally:
        sink.close()
    return summary
