"""Quarantine: de-identified instances that may still show identifying burned-in text.

Table E.1-1 cleans the header only; text burned into pixels (ultrasound, secondary
capture, anything flagged Burned In Annotation YES, PS3.3 C.7.6.1.1.7) needs the Clean
Pixel Data option (PS3.15 E.3.1), which this archive performs only for configured device
signatures (:mod:`.pixels`).  Other such instances are therefore kept under
``<data_dir>/quarantine`` with a ``deid_quarantine`` row, out of
every query and retrieval, until an admin releases them into the archive or rejects them.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydicom.dataset import Dataset
from sqlalchemy import delete, insert, select
from sqlalchemy.engine import Engine

from ...config import DeidSettings
from ..errors import NotFound
from ..index import DeidQuarantine
from ..parse import ParsedInstance
from ..storage import Received

if TYPE_CHECKING:
    from ..core import Archive
    from ..ingest import Origin, StoreResult

#: Origins with this protocol carry instances de-identified already (released from
#: quarantine, or written by :mod:`.batch`); ingest stores them as they are.
DEIDENTIFIED = "DEID"


@dataclass(frozen=True)
class Quarantined:
    sop_uid: str
    study_uid: str
    series_uid: str
    sop_class_uid: str
    reason: str
    path: Path
    received_at: dt.datetime


def reason_to_hold(ds: Dataset, settings: DeidSettings) -> str | None:
    """Why ``ds`` may carry burned-in identifying text, or ``None``."""
    if settings.quarantine_burned_in and str(ds.get("BurnedInAnnotation", "")).upper() == "YES":
        return "Burned In Annotation (0028,0301) is YES"
    modality = str(ds.get("Modality", ""))
    if modality in settings.quarantine_modalities:
        return f"modality {modality} is listed in deid.quarantine_modalities"
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class in settings.quarantine_sop_classes:
        return f"SOP class {sop_class} is listed in deid.quarantine_sop_classes"
    return None


def folder(data_dir: Path) -> Path:
    return data_dir.resolve() / "quarantine"


def hold(
    engine: Engine,
    data_dir: Path,
    received: Received,
    parsed: ParsedInstance,
    origin: Origin,
    reason: str,
) -> None:
    """Move a de-identified file into quarantine and record it."""
    name = f"{parsed.sop_uid}.dcm"  # a validated UID (parse.clean_uid): safe as a name
    target = folder(data_dir) / name
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(received.ready(), target)
    with engine.begin() as connection:
        connection.execute(delete(DeidQuarantine).where(DeidQuarantine.sop_uid == parsed.sop_uid))
        connection.execute(
            insert(DeidQuarantine).values(
                sop_uid=parsed.sop_uid,
                study_uid=parsed.study_uid,
                series_uid=parsed.series_uid,
                sop_class_uid=parsed.sop_class_uid,
                reason=reason[:256],
                path=name,
                origin_protocol=origin.protocol[:16],
                origin_ae=origin.ae_title[:64],
                origin_source=getattr(origin, "source", "")[:64],
                received_at=dt.datetime.now(dt.UTC),
            )
        )


def listing(archive: Archive) -> list[Quarantined]:
    """Every quarantined instance, oldest first."""
    base = folder(archive.settings.storage.data_dir)
    with archive.reader() as session:
        rows = session.scalars(select(DeidQuarantine).order_by(DeidQuarantine.id)).all()
    return [
        Quarantined(
            r.sop_uid,
            r.study_uid,
            r.series_uid,
            r.sop_class_uid,
            r.reason,
            base / r.path,
            r.received_at,
        )
        for r in rows
    ]


def _find(archive: Archive, sop_uid: str) -> Quarantined:
    for item in listing(archive):
        if item.sop_uid == sop_uid:
            return item
    raise NotFound(f"no quarantined instance {sop_uid}")


def release(archive: Archive, sop_uid: str, user: str = "") -> StoreResult:
    """Publish a quarantined instance (after its pixels were checked or cleaned)."""
    from ..ingest import Origin

    item = _find(archive, sop_uid)
    result = archive.store(item.path, Origin(DEIDENTIFIED, address="quarantine", user=user))
    _forget(archive, item)
    return result


def reject(archive: Archive, sop_uid: str) -> None:
    """Delete a quarantined instance for good."""
    _forget(archive, _find(archive, sop_uid))


def _forget(archive: Archive, item: Quarantined) -> None:
    with archive.writer_engine.begin() as connection:
        connection.execute(delete(DeidQuarantine).where(DeidQuarantine.sop_uid == item.sop_uid))
    item.path.unlink(missing_ok=True)


__all__ = ["DEIDENTIFIED", "Quarantined", "hold", "listing", "reason_to_hold", "reject", "release"]
