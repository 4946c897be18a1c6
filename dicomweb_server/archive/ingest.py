"""The one ingest path: STOW-RS, C-STORE and ``import`` all store through :func:`store`.

Order of operations, chosen so that a crash at any point leaves the whole instance or
none of it visible:

1. copy the incoming bytes to a temporary file (bounded memory, SHA-256 on the way) and
   fsync it;
2. parse the header once and validate it (:mod:`.parse`);
3. move the file to its final name, which never overwrites another file;
4. write patient, study, series and instance rows and aggregates in one transaction.

A crash after 3 and before 4 leaves an unindexed file (``verify`` reports it), never an
index row without its file.  Replacing a duplicate writes the new copy beside the old,
switches the row, and removes the old file only after the commit.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from ..config import DuplicatePolicy, IngestSettings
from . import dicomjson
from .attributes import (
    Level,
    first_int,
    name_key,
    name_words,
    normalise_time,
    parse_date,
    parse_int,
)
from .errors import ArchiveError, DuplicateInstance, OutOfResources, StudyMismatch
from .index import Instance, Patient, Series, Study
from .parse import ParsedInstance, parse_instance
from .part10 import Part10Stream
from .storage import Received, Storage, instance_key

if TYPE_CHECKING:
    from .deid.deidentifier import Deidentifier

log = logging.getLogger(__name__)

_RETRIES = 5


@dataclass(frozen=True)
class Origin:
    """Where an instance came from; recorded with it for provenance and audit."""

    protocol: str  #: "DIMSE", "STOW-RS" or "IMPORT"
    ae_title: str = ""  #: calling AE title (DIMSE)
    address: str = ""  #: remote address ("10.0.0.5:40312") or file path (import)
    user: str = ""  #: HTTP client or authenticated user
    source: str = ""  #: route-given source name (STOW-RS /sources/{name}); selects deid


class StoreStatus(enum.StrEnum):
    STORED = "stored"
    DUPLICATE = "duplicate"  #: already stored; the new copy was dropped (policy "keep")
    REPLACED = "replaced"  #: already stored; the new copy replaced it (policy "replace")
    QUARANTINED = "quarantined"  #: de-identified but held for review (archive/deid/quarantine)


@dataclass(frozen=True)
class StoreResult:
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    status: StoreStatus
    warnings: tuple[str, ...] = ()
    #: Stored with attributes changed (de-identified): the protocols' "coercion" warning.
    coerced: bool = False


class Ingest:
    """Stores instances; one per process, shared by every thread of a front."""

    def __init__(
        self,
        storage: Storage,
        writer: Engine,
        reader: sessionmaker[Session],
        settings: IngestSettings,
        deid: Deidentifier | None = None,
    ) -> None:
        self.storage = storage
        self.writer = writer
        self.reader = reader
        self.settings = settings
        self.deid = deid  #: de-identification on ingest (archive/deid), None when off

    def store(
        self,
        source: BinaryIO | Path,
        origin: Origin,
        *,
        expected_study_uid: str | None = None,
    ) -> StoreResult:
        """Store one Part 10 instance from a stream or a file path.

        Raises an :class:`~.errors.ArchiveError` subclass when the instance is refused;
        nothing of it is then stored.
        """
        ready = self.prepare(source, origin, expected_study_uid=expected_study_uid)
        if isinstance(ready, StoreResult):
            return ready
        [outcome] = self.index([ready])
        if isinstance(outcome, ArchiveError):
            raise outcome
        return outcome

    def prepare(
        self,
        source: BinaryIO | Path,
        origin: Origin,
        *,
        expected_study_uid: str | None = None,
        precheck: bool = True,
    ) -> Prepared | StoreResult:
        """Steps 1-3 of ingest: receive, parse, validate and put the file in place.

        Returns a :class:`Prepared` instance for :meth:`index`, or the final result when
        nothing is left to index (a duplicate kept, an instance quarantined).  Raises an
        :class:`~.errors.ArchiveError` when the instance is refused.  ``precheck``
        looks the SOP Instance UID up first, so that a duplicate is settled before its
        file is placed: worth a query when instances come one at a time (C-STORE), not
        in a batch, whose transaction settles duplicates anyway.
        """
        if isinstance(source, Path):
            with open(source, "rb") as stream:
                received = self.storage.receive(
                    Part10Stream(stream), self.settings.max_instance_size
                )
        else:
            received = self.storage.receive(Part10Stream(source), self.settings.max_instance_size)
        parsed = None
        try:
            parsed = parse_instance(received, self.settings.bulk_data_threshold)
            if expected_study_uid is not None and parsed.study_uid != expected_study_uid:
                raise StudyMismatch(
                    f"StudyInstanceUID {parsed.study_uid} differs from the study "
                    f"{expected_study_uid} in the request URL"
                )
            if self.deid is not None:  # -- deid hook: swap in the de-identified copy
                applied = self.deid.apply(received, parsed, origin)
                received, parsed = applied.received, applied.parsed
                if applied.quarantined:
                    return _result(parsed, StoreStatus.QUARANTINED)
            received = received.without_head()  # parsed: a batch need not hold it
            early = self._check_duplicate(parsed) if precheck else None
            if early is not None:
                self.storage.discard(received)
                return early
            return Prepared(parsed, received, self._place(parsed, received), origin)
        except BaseException as exc:
            self.storage.discard(received)
            if isinstance(exc, ArchiveError) and parsed is not None:
                _name(exc, parsed)
            raise

    def index(self, batch: Sequence[Prepared]) -> list[StoreResult | ArchiveError]:
        """Step 4 of ingest: the index rows of prepared instances, one outcome each.

        All rows go into one transaction, so a STOW-RS request of ten instances takes
        the index's write lock once instead of ten times (on SQLite the lock, not the
        work, is what several clients queue for).  If that transaction fails, each
        instance is indexed alone, so one refusal does not sink the others.  A refused
        instance's file is removed; nothing is left half-stored.
        """
        if not batch:
            return []
        try:
            written: list[tuple[StoreStatus, str | None] | ArchiveError] = list(
                self._transaction(batch)
            )
        except ArchiveError as exc:
            written = [self._index_alone(p) for p in batch] if len(batch) > 1 else [exc]
        except BaseException:
            self.discard(batch)
            raise
        return [self._finish(p, w) for p, w in zip(batch, written, strict=True)]

    def discard(self, batch: Sequence[Prepared]) -> None:
        """Remove the files of prepared instances that will not be indexed."""
        for prepared in batch:
            self.storage.remove(prepared.key)

    def _index_alone(self, prepared: Prepared) -> tuple[StoreStatus, str | None] | ArchiveError:
        try:
            [written] = self._transaction([prepared])
        except ArchiveError as exc:
            return exc
        except BaseException:
            self.storage.remove(prepared.key)
            raise
        return written

    def _finish(
        self, prepared: Prepared, written: tuple[StoreStatus, str | None] | ArchiveError
    ) -> StoreResult | ArchiveError:
        if isinstance(written, ArchiveError):
            self.storage.remove(prepared.key)
            return _name(written, prepared.parsed)
        status, old_key = written
        if status is StoreStatus.DUPLICATE:
            self.storage.remove(prepared.key)
        if old_key is not None and old_key != prepared.key:
            self.storage.remove(old_key)
        return _result(prepared.parsed, status)

    def _check_duplicate(self, parsed: ParsedInstance) -> StoreResult | None:
        """Settle the common duplicate cases before any file is moved."""
        policy = self.settings.duplicate_policy
        if policy is DuplicatePolicy.REPLACE:
            return None
        with self.reader() as session:
            exists = session.scalar(select(Instance.id).where(Instance.sop_uid == parsed.sop_uid))
        if exists is None:
            return None
        if policy is DuplicatePolicy.REJECT:
            raise DuplicateInstance(f"SOP Instance {parsed.sop_uid} is stored already")
        return _result(parsed, StoreStatus.DUPLICATE)

    def _place(self, parsed: ParsedInstance, received: Received) -> str:
        """Give the received file its final name; returns the storage key."""
        key = instance_key(parsed.study_uid, parsed.series_uid, parsed.sop_uid)
        try:
            self.storage.commit(received, key)
        except FileExistsError:
            # A copy being replaced, or a file left by a crash: never overwrite it.
            key = instance_key(
                parsed.study_uid, parsed.series_uid, parsed.sop_uid, uuid.uuid4().hex[:12]
            )
            self.storage.commit(received, key)
        return key

    def _transaction(self, batch: Sequence[Prepared]) -> list[tuple[StoreStatus, str | None]]:
        self.storage.sync([(p.received, p.key) for p in batch])
        for attempt in range(_RETRIES):
            try:
                # Core statements on a plain connection: the ORM's unit of work adds
                # nothing here and costs ~0.1 ms a statement.
                with self.writer.begin() as connection:
                    uids = [p.parsed.sop_uid for p in batch]
                    writer = IndexWriter(connection, self.settings, uids)
                    written = [writer.add(p.parsed, p.received, p.key, p.origin) for p in batch]
                    writer.flush()
                    return written
            except IntegrityError:
                # Another process inserted the same patient/study/series/instance between
                # our look-up and our insert: the retry will find its row.
                if attempt == _RETRIES - 1:
                    raise
            except OperationalError as exc:
                if _is_transient(exc) and attempt < _RETRIES - 1:
                    time.sleep(0.05 * (attempt + 1))
                    continue
                raise OutOfResources(f"the index cannot be written: {exc.orig}") from exc
        raise AssertionError("unreachable")


@dataclass(frozen=True)
class Prepared:
    """An instance received, parsed and in its final place, waiting for its index rows."""

    parsed: ParsedInstance
    received: Received
    key: str
    origin: Origin


def _result(parsed: ParsedInstance, status: StoreStatus) -> StoreResult:
    return StoreResult(
        parsed.study_uid,
        parsed.series_uid,
        parsed.sop_uid,
        parsed.sop_class_uid,
        parsed.transfer_syntax_uid,
        status,
        tuple(parsed.warnings),
        parsed.coerced,
    )


def _name(exc: ArchiveError, parsed: ParsedInstance) -> ArchiveError:
    """Attach the refused instance's UIDs, which STOW-RS reports in FailedSOPSequence."""
    exc.sop_class_uid, exc.sop_uid = parsed.sop_class_uid, parsed.sop_uid
    return exc


def _is_transient(exc: DBAPIError) -> bool:
    text = str(exc.orig).lower()
    return any(s in text for s in ("locked", "deadlock", "could not serialize", "busy"))


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


@dataclass
class _StudyDelta:
    """What a batch adds to one study's aggregates."""

    instances: int = 0
    series: int = 0
    modalities: set[str] = field(default_factory=set)
    sop_classes: set[str] = field(default_factory=set)


class IndexWriter:
    """Writes the index rows of a batch of instances inside one transaction.

    Instance rows are inserted together (one ``executemany``) and each series' and
    study's aggregates updated once, when the batch is :meth:`flush`-ed, rather than a
    handful of statements per instance: per 525 KB CT slice, statement building alone had
    cost ~1.5 ms of Python.  Patient, study and series ids are looked up once per batch.
    """

    def __init__(
        self, connection: Connection, settings: IngestSettings, sop_uids: Sequence[str]
    ) -> None:
        """``sop_uids``: the instances the batch will add, looked up here in one query."""
        self.connection = connection
        self.settings = settings
        self.now = _now()
        self._ids: dict[tuple[Any, ...], int] = {}
        self._rows: list[dict[str, Any]] = []
        self._series: dict[int, int] = {}
        self._studies: dict[int, _StudyDelta] = {}
        #: SOP Instance UIDs indexed already, or added by this batch.
        self._indexed: set[str] = set()
        for start in range(0, len(sop_uids), 500):
            self._indexed.update(
                self.connection.scalars(
                    select(Instance.sop_uid)
                    .where(Instance.sop_uid.in_(sop_uids[start : start + 500]))
                    .with_for_update()
                )
            )

    def add(
        self, parsed: ParsedInstance, received: Received, key: str, origin: Origin
    ) -> tuple[StoreStatus, str | None]:
        """Index one instance; returns its status and the key of a copy it replaced."""
        old_key = None
        status = StoreStatus.STORED
        if parsed.sop_uid in self._indexed:
            if self.settings.duplicate_policy is DuplicatePolicy.KEEP:
                return StoreStatus.DUPLICATE, None
            if self.settings.duplicate_policy is DuplicatePolicy.REJECT:
                raise DuplicateInstance(f"SOP Instance {parsed.sop_uid} is stored already")
            old_key = self._remove(parsed.sop_uid)
            status = StoreStatus.REPLACED
        self._indexed.add(parsed.sop_uid)
        ds = parsed.dataset
        series_pk, study_pk, new_series = self._parents(parsed)
        self._series[series_pk] = self._series.get(series_pk, 0) + 1
        study = self._studies.setdefault(study_pk, _StudyDelta())
        study.instances += 1
        study.sop_classes.add(parsed.sop_class_uid)
        if new_series:
            study.series += 1
            study.modalities.add(_text(ds.get("Modality"))[:16])
        self._rows.append(
            {
                "sop_uid": parsed.sop_uid,
                "series_pk": series_pk,
                "study_pk": study_pk,
                "sop_class_uid": parsed.sop_class_uid,
                "instance_number": first_int(parsed.metadata, "00200013"),
                "transfer_syntax_uid": parsed.transfer_syntax_uid,
                "number_of_frames": parsed.number_of_frames,
                "storage_key": key,
                "size": received.size,
                "sha256": received.sha256,
                "attributes": dicomjson.dumps(parsed.level_json(Level.IMAGE)),
                "metadata_json": dicomjson.dumps(parsed.metadata),
                "pixel_layout": _layout(parsed),
                "bulk_ranges": dicomjson.dumps(parsed.bulk),
                "origin_protocol": origin.protocol[:16],
                "origin_ae": origin.ae_title[:64],
                "origin_address": origin.address[:256],
                "origin_user": origin.user[:256],
                "received_at": self.now,
            }
        )
        return status, old_key

    def flush(self) -> None:
        """Insert the pending instance rows and bring the aggregates up to date."""
        if self._rows:
            self.connection.execute(insert(Instance), self._rows)
        for series_pk, count in self._series.items():
            self.connection.execute(
                update(Series)
                .where(Series.id == series_pk)
                .values(num_instances=Series.num_instances + count)
            )
        for study_pk, delta in self._studies.items():
            current = self.connection.execute(
                select(Study.modalities, Study.sop_classes).where(Study.id == study_pk)
            ).one()
            values: dict[str, Any] = {
                "num_instances": Study.num_instances + delta.instances,
                "updated_at": self.now,
                "sop_classes": _add_to_set(current.sop_classes, delta.sop_classes),
            }
            if delta.series:
                values["num_series"] = Study.num_series + delta.series
                values["modalities"] = _add_to_set(current.modalities, delta.modalities)
            self.connection.execute(update(Study).where(Study.id == study_pk).values(**values))
        self._rows, self._series, self._studies = [], {}, {}

    def _remove(self, sop_uid: str) -> str:
        """Remove the indexed copy of ``sop_uid`` (policy "replace"); returns its key."""
        self.flush()  # the copy may be one of this batch's own pending rows
        instance_id = self.connection.scalar(select(Instance.id).where(Instance.sop_uid == sop_uid))
        [key] = remove_instances(self.connection, [instance_id])
        self._ids.clear()  # the removal may have deleted a series, study or patient
        return key

    def _parents(self, parsed: ParsedInstance) -> tuple[int, int, bool]:
        """Ids of the instance's series and study (created if new), and whether the
        series is new in this batch."""
        ds = parsed.dataset
        series_key = (Series.__tablename__, parsed.series_uid)
        if series_key in self._ids:
            return self._ids[series_key], self._ids[(Study.__tablename__, parsed.study_uid)], False
        patient_name = _text(ds.get("PatientName"))
        patient_pk, _ = self._find_or_insert(
            Patient,
            {
                "patient_id": _text(ds.get("PatientID")),
                "issuer": _text(ds.get("IssuerOfPatientID")),
                "name_key": name_key(patient_name),
            },
            lambda: {
                "name_words": name_words(patient_name),
                "birth_date": parse_date(ds.get("PatientBirthDate")),
                "sex": _text(ds.get("PatientSex"))[:16],
                "attributes": dicomjson.dumps(parsed.level_json(Level.PATIENT)),
            },
        )
        referring = _text(ds.get("ReferringPhysicianName"))
        study_pk, _ = self._find_or_insert(
            Study,
            {"study_uid": parsed.study_uid},
            lambda: {
                "patient_pk": patient_pk,
                "study_date": parse_date(ds.get("StudyDate")),
                "study_time": normalise_time(ds.get("StudyTime")),
                "accession_number": _text(ds.get("AccessionNumber"))[:64],
                "study_id": _text(ds.get("StudyID"))[:64],
                "description": _text(ds.get("StudyDescription"))[:256],
                "referring_name_key": name_key(referring),
                "referring_name_words": name_words(referring),
                "attributes": dicomjson.dumps(parsed.level_json(Level.STUDY)),
                "created_at": self.now,
                "updated_at": self.now,
            },
        )
        request = ds.get("RequestAttributesSequence") or []
        first_request = request[0] if len(request) else {}
        series_pk, new_series = self._find_or_insert(
            Series,
            {"series_uid": parsed.series_uid},
            lambda: {
                "study_pk": study_pk,
                "modality": _text(ds.get("Modality"))[:16],
                "series_number": parse_int(ds.get("SeriesNumber")),
                "description": _text(ds.get("SeriesDescription"))[:256],
                "performed_date": parse_date(ds.get("PerformedProcedureStepStartDate")),
                "performed_time": normalise_time(ds.get("PerformedProcedureStepStartTime")),
                "scheduled_step_id": _text(first_request.get("ScheduledProcedureStepID"))[:64],
                "requested_procedure_id": _text(first_request.get("RequestedProcedureID"))[:64],
                "attributes": dicomjson.dumps(parsed.level_json(Level.SERIES)),
            },
        )
        return series_pk, study_pk, new_series

    def _find_or_insert(
        self, model: type, where: dict[str, Any], values: Callable[[], dict[str, Any]]
    ) -> tuple[int, bool]:
        """``(id, created)`` of the row matching ``where``, inserted if absent.

        A concurrent insert of the same key raises IntegrityError; Ingest retries the
        transaction, which then finds the other writer's row.
        """
        cache_key = (model.__tablename__, *where.values())
        if cache_key in self._ids:
            return self._ids[cache_key], False
        clause = [getattr(model, k) == v for k, v in where.items()]
        found = self.connection.scalar(select(model.id).where(*clause).with_for_update())
        created = found is None
        if created:
            found = self.connection.scalar(
                insert(model).values(**where, **values()).returning(model.id)
            )
        self._ids[cache_key] = found
        return found, created


def _layout(parsed: ParsedInstance) -> str | None:
    pixels = parsed.pixels
    if pixels is None:
        return None
    return dicomjson.dumps(
        {
            "tag": pixels.tag,
            "vr": pixels.vr,
            "offset": pixels.offset,
            "length": pixels.length,
            "frames": pixels.number_of_frames,
            "frame_size": pixels.frame_size,
            "fragments": pixels.fragments,
        }
    )


def _add_to_set(joined: str, values: set[str]) -> str:
    members = set(filter(None, joined.split("\\"))) | set(filter(None, values))
    return "\\".join(sorted(members))


def remove_instances(session: Connection | Session, instance_ids: list[int]) -> list[str]:
    """Delete instance rows and bring their series, studies and patients up to date.

    Series, studies and patients left empty are deleted too.  Returns the storage keys
    of the removed instances, for the caller to unlink after the commit.
    """
    if not instance_ids:
        return []
    rows = session.execute(
        select(Instance.storage_key, Instance.series_pk, Instance.study_pk).where(
            Instance.id.in_(instance_ids)
        )
    ).all()
    session.execute(delete(Instance).where(Instance.id.in_(instance_ids)))
    series_pks = {r.series_pk for r in rows}
    study_pks = {r.study_pk for r in rows}
    for series_pk in series_pks:
        count = session.scalar(select(func.count()).where(Instance.series_pk == series_pk))
        if count:
            session.execute(
                update(Series).where(Series.id == series_pk).values(num_instances=count)
            )
        else:
            session.execute(delete(Series).where(Series.id == series_pk))
    for study_pk in study_pks:
        patient_pk = session.scalar(select(Study.patient_pk).where(Study.id == study_pk))
        if not session.scalar(select(func.count()).where(Series.study_pk == study_pk)):
            session.execute(delete(Study).where(Study.id == study_pk))
            if not session.scalar(select(func.count()).where(Study.patient_pk == patient_pk)):
                session.execute(delete(Patient).where(Patient.id == patient_pk))
            continue
        modalities = session.scalars(
            select(Series.modality).where(Series.study_pk == study_pk).distinct()
        ).all()
        classes = session.scalars(
            select(Instance.sop_class_uid).where(Instance.study_pk == study_pk).distinct()
        ).all()
        session.execute(
            update(Study)
            .where(Study.id == study_pk)
            .values(
                num_series=select(func.count())
                .where(Series.study_pk == study_pk)
                .scalar_subquery(),
                num_instances=select(func.count())
                .where(Instance.study_pk == study_pk)
                .scalar_subquery(),
                modalities="\\".join(sorted(filter(None, modalities))),
                sop_classes="\\".join(sorted(classes)),
                updated_at=_now(),
            )
        )
    return [r.storage_key for r in rows]
