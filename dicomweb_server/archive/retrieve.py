"""Finding stored instances for WADO-RS, C-GET and C-MOVE, from the index alone.

A :class:`StoredInstance` says where the file is and where its frames and bulk data lie
in it, so that serving streams bytes without parsing DICOM.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

from sqlalchemy import Select, select
from sqlalchemy.orm import Session, sessionmaker

from .errors import NotFound
from .frames import PixelLayout
from .index import Instance, Series, Study


@dataclass(frozen=True)
class StoredInstance:
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    storage_key: str
    size: int
    sha256: str
    number_of_frames: int
    pixels: PixelLayout | None
    bulk: dict[str, tuple[int, int]]


def _layout(text: str | None) -> PixelLayout | None:
    if not text:
        return None
    data = json.loads(text)
    fragments = data["fragments"]
    return PixelLayout(
        tag=data["tag"],
        vr=data["vr"],
        offset=data["offset"],
        length=data["length"],
        number_of_frames=data["frames"],
        frame_size=data["frame_size"],
        fragments=[[tuple(f) for f in frame] for frame in fragments] if fragments else None,
    )


def _scoped(
    statement: Select, study_uid: str, series_uid: str | None, sop_uid: str | None
) -> Select:
    statement = statement.join(Series, Series.id == Instance.series_pk).join(
        Study, Study.id == Instance.study_pk
    )
    statement = statement.where(Study.study_uid == study_uid)
    if series_uid is not None:
        statement = statement.where(Series.series_uid == series_uid)
    if sop_uid is not None:
        statement = statement.where(Instance.sop_uid == sop_uid)
    return statement.order_by(
        Series.series_number, Series.id, Instance.instance_number, Instance.id
    )


def _describe(study_uid: str, series_uid: str | None, sop_uid: str | None) -> str:
    if sop_uid:
        return f"instance {sop_uid} of series {series_uid} in study {study_uid}"
    if series_uid:
        return f"series {series_uid} in study {study_uid}"
    return f"study {study_uid}"


def find_instances(
    session: Session, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
) -> list[StoredInstance]:
    """Instances of a study, series or single instance, in series and instance order.

    Raises :class:`NotFound` when there are none.
    """
    statement = _scoped(
        select(
            Study.study_uid,
            Series.series_uid,
            Instance.sop_uid,
            Instance.sop_class_uid,
            Instance.transfer_syntax_uid,
            Instance.storage_key,
            Instance.size,
            Instance.sha256,
            Instance.number_of_frames,
            Instance.pixel_layout,
            Instance.bulk_ranges,
        ),
        study_uid,
        series_uid,
        sop_uid,
    )
    found = [
        StoredInstance(
            study_uid=row.study_uid,
            series_uid=row.series_uid,
            sop_uid=row.sop_uid,
            sop_class_uid=row.sop_class_uid,
            transfer_syntax_uid=row.transfer_syntax_uid,
            storage_key=row.storage_key,
            size=row.size,
            sha256=row.sha256,
            number_of_frames=row.number_of_frames,
            pixels=_layout(row.pixel_layout),
            bulk={k: (v[0], v[1]) for k, v in json.loads(row.bulk_ranges or "{}").items()},
        )
        for row in session.execute(statement)
    ]
    if not found:
        raise NotFound(f"no {_describe(study_uid, series_uid, sop_uid)} is stored")
    return found


def iter_metadata(
    sessions: sessionmaker[Session],
    study_uid: str,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    batch: int = 200,
) -> Iterator[str]:
    """The stored DICOM JSON text of each instance, streamed in batches.

    Raises :class:`NotFound` at once (before the first ``next``) when nothing matches, so
    a caller can still choose its status code; afterwards memory holds one batch.
    """
    statement = _scoped(select(Instance.metadata_json), study_uid, series_uid, sop_uid)
    session = sessions()
    try:
        result = session.execute(statement.execution_options(yield_per=batch)).scalars()
        first = next(result, None)
    except BaseException:
        session.close()
        raise
    if first is None:
        session.close()
        raise NotFound(f"no {_describe(study_uid, series_uid, sop_uid)} is stored")

    def rest() -> Iterator[str]:
        try:
            yield first
            yield from result
        finally:
            session.close()

    return rest()
