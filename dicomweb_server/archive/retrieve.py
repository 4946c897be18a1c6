"""Finding stored instances for WADO-RS, C-GET and C-MOVE, from the index alone.

A :class:`StoredInstance` says where the file is and where its frames and bulk data lie
in it, so that serving streams bytes without parsing DICOM.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, Result, Select, bindparam, select
from sqlalchemy.orm import Session

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


#: What each kind of lookup selects: a :class:`StoredInstance`, or the metadata JSON.
_COLUMNS = {
    "stored": (
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
    "metadata": (Instance.metadata_json,),
}


@functools.cache
def _scoped(what: str, series: bool, sop: bool) -> Select[Any]:
    """The SELECT of ``what`` for the instances of a study, a series or one instance,
    its UIDs bound at execution (``study``, ``series``, ``sop``): built once for each of
    the few shapes, as building it took longer than running it."""
    statement = (
        select(*_COLUMNS[what])
        .join(Series, Series.id == Instance.series_pk)
        .join(Study, Study.id == Instance.study_pk)
        .where(Study.study_uid == bindparam("study"))
    )
    if series:
        statement = statement.where(Series.series_uid == bindparam("series"))
    if sop:
        statement = statement.where(Instance.sop_uid == bindparam("sop"))
    return statement.order_by(
        Series.series_number, Series.id, Instance.instance_number, Instance.id
    )


def _execute(
    connection: Connection | Session,
    what: str,
    study_uid: str,
    series_uid: str | None,
    sop_uid: str | None,
    **options: Any,
) -> Result[Any]:
    statement = _scoped(what, series_uid is not None, sop_uid is not None)
    values = {"study": study_uid, "series": series_uid, "sop": sop_uid}
    return connection.execute(
        statement, {k: v for k, v in values.items() if v is not None}, execution_options=options
    )


def _describe(study_uid: str, series_uid: str | None, sop_uid: str | None) -> str:
    if sop_uid:
        return f"instance {sop_uid} of series {series_uid} in study {study_uid}"
    if series_uid:
        return f"series {series_uid} in study {study_uid}"
    return f"study {study_uid}"


def find_instances(
    connection: Connection | Session,
    study_uid: str,
    series_uid: str | None = None,
    sop_uid: str | None = None,
) -> list[StoredInstance]:
    """Instances of a study, series or single instance, in series and instance order.

    Raises :class:`NotFound` when there are none.
    """
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
        for row in _execute(connection, "stored", study_uid, series_uid, sop_uid)
    ]
    if not found:
        raise NotFound(f"no {_describe(study_uid, series_uid, sop_uid)} is stored")
    return found


def iter_metadata(
    engine: Engine,
    study_uid: str,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    batch: int = 200,
) -> Iterator[str]:
    """The stored DICOM JSON text of each instance, streamed in batches.

    Raises :class:`NotFound` at once (before the first ``next``) when nothing matches, so
    a caller can still choose its status code; afterwards memory holds one batch.
    """
    connection = engine.connect()
    try:
        result = _execute(
            connection, "metadata", study_uid, series_uid, sop_uid, yield_per=batch
        ).scalars()
        first = next(result, None)
    except BaseException:
        connection.close()
        raise
    if first is None:
        connection.close()
        raise NotFound(f"no {_describe(study_uid, series_uid, sop_uid)} is stored")

    def rest() -> Iterator[str]:
        try:
            yield first
            yield from result
        finally:
            connection.close()

    return rest()
