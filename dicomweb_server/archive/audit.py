"""The audit trail: who stored, searched, retrieved or deleted which study, when, from where.

Both fronts describe each request as an :class:`Entry` and hand it over here; the entry
goes to the ``dicomweb_server.audit`` log at once (structured fields, so a log collector
keeps the trail even if the index is lost) and into the ``audit_events`` table of the
index (:class:`.index.AuditEvent`), where an administrator queries it with :func:`query`.

Writing one row per request in the request's own transaction would cost every WADO-RS
frame a write lock and, on SQLite with ``synchronous=FULL``, a WAL fsync (about 0.7 ms,
and it waits behind any ingest holding the lock).  :class:`AuditWriter` therefore queues
entries and a background thread inserts them in batches, at most ``interval`` seconds
late; :func:`record` is the synchronous form for callers that write rarely.

The rows are this archive's own shape, not the DICOM Audit Message of PS3.15 A.5
(RFC 3881 XML over syslog); a future exporter can build those messages from them.
Like the rest of the core, this module knows nothing of HTTP or DIMSE.
"""

from __future__ import annotations

import atexit
import datetime as dt
import enum
import logging
import queue
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from dataclasses import fields as dataclass_fields
from typing import Any
from urllib.parse import unquote_plus

from sqlalchemy import insert, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from .index import AuditEvent

log = logging.getLogger("dicomweb_server.audit")
_own_log = logging.getLogger(__name__)


class Action(enum.StrEnum):
    """What a request did, as the audit trail names it."""

    STORE = "store"  #: STOW-RS, C-STORE
    SEARCH = "search"  #: QIDO-RS, C-FIND
    RETRIEVE = "retrieve"  #: WADO-RS, C-GET, C-MOVE
    DELETE = "delete"  #: DELETE
    AUDIT = "audit"  #: reading this trail
    OTHER = "other"  #: anything else (an unknown route, a refused request)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class Entry:
    """One audited request.

    Parameters
    ----------
    user
        Authenticated user or API key name; ``"anonymous"`` with authentication off,
        ``""`` when the credentials were missing or refused.
    action
        What the request did.
    protocol
        ``"DICOMweb"`` or ``"DIMSE"``.
    method
        HTTP method, or DIMSE command (``"C-STORE"``, ``"C-FIND"``, ``"C-MOVE"``, ``"C-GET"``).
    path
        HTTP path with query string, or for DIMSE the calling AE title (and the move
        destination, e.g. ``"CT1 -> PACS"``) followed, in the same query string form,
        by the Query/Retrieve Level and match keys of a C-FIND/C-MOVE/C-GET and the
        sub-operation counts of a retrieve (``"CT1 -> PACS?QueryRetrieveLevel=STUDY&"
        "StudyInstanceUID=1.2.3&completed=12&failed=0&warning=0"``), or the failures of
        a C-STORE association (``"CT1?failed=2"``).
    study_uid
        Study Instance UID the request named, ``""`` when none.
    address
        Client address (``"10.0.0.5"`` or ``"10.0.0.5:40312"``).
    status
        HTTP status, or the DIMSE status (``0x0000`` success).
    instances
        Number of instances stored, returned or deleted, when known.
    at
        When; defaults to now (UTC).
    """

    user: str
    action: Action
    protocol: str
    method: str
    path: str = ""
    study_uid: str = ""
    address: str = ""
    status: int = 0
    instances: int | None = None
    at: dt.datetime = field(default_factory=_now)

    def row(self) -> dict[str, object]:
        """Column values of :class:`.index.AuditEvent`, cut to the column sizes."""
        return {
            "at": self.at,
            "user": self.user[:256],
            "action": str(self.action),
            "protocol": self.protocol[:16],
            "method": self.method[:16],
            "path": self.path[:2048],
            "study_uid": self.study_uid[:64],
            "address": self.address[:256],
            "status": self.status,
            "instances": self.instances,
        }


# fmt: off
#: Query parameters whose values the audit *log* keeps: paging and return keys, UIDs,
#: modality and rendering options, none of which identifies a patient.  Every other value
#: (PatientName, PatientID, 00100010, AccessionNumber, dates...) is logged as
#: :data:`REDACTED`; the audit *table* keeps the full query, which is what an
#: investigation of "who searched for this patient" needs, behind the admin role.
LOGGED_QUERY_VALUES = frozenset(
    {
        "limit", "offset", "includefield", "fuzzymatching", "accept", "charset",
        "quality", "viewport", "window", "annotation", "iccprofile",
        "studyinstanceuid", "seriesinstanceuid", "sopinstanceuid", "sopclassuid",
        "modality", "modalitiesinstudy",
        "0020000d", "0020000e", "00080018", "00080016", "00080060", "00080061",
        # DIMSE paths (dimse_scp/trail.py): the level and the sub-operation counts.
        "queryretrievelevel", "completed", "failed", "warning",
    }
)
# fmt: on
REDACTED = "(redacted)"


def redact_query(path: str) -> str:
    """``path`` with the values of its query parameters redacted unless listed in
    :data:`LOGGED_QUERY_VALUES`; parameter names stay, so the log still says what kind
    of search ran."""
    base, sep, query = path.partition("?")
    if not sep:
        return path
    parts = []
    for pair in query.split("&"):
        name, eq, value = pair.partition("=")
        if eq and unquote_plus(name).strip().lower() not in LOGGED_QUERY_VALUES:
            value = REDACTED
        parts.append(name + eq + value)
    return base + "?" + "&".join(parts)


def log_entry(entry: Entry) -> None:
    """Write ``entry`` to the ``dicomweb_server.audit`` log, fields in ``extra``.

    The log line is written at INFO, where nothing may identify a patient: query values
    are redacted (:func:`redact_query`).
    """
    # Every field is a plain value: a shallow copy (asdict deep-copies each one, which
    # was a fifth of a small QIDO-RS request's own work).
    fields = {f.name: getattr(entry, f.name) for f in dataclass_fields(entry)}
    fields["action"] = str(entry.action)
    fields["at"] = entry.at.isoformat()
    fields["study"] = fields.pop("study_uid")
    fields["path"] = redact_query(entry.path)
    log.info(
        "%s %s %s by %r from %s -> %s",
        entry.action,
        entry.method,
        fields["path"],
        entry.user,
        entry.address,
        entry.status,
        extra={"audit": fields},
    )


def record(engine: Engine, *entries: Entry) -> None:
    """Log ``entries`` and insert them at once, in one transaction.

    For callers that write rarely, such as one row per DIMSE association or command.
    Raises :class:`sqlalchemy.exc.SQLAlchemyError` if the index refuses the write.

    Examples
    --------
    >>> audit.record(archive.writer_engine, audit.Entry(
    ...     user="CT1", action=audit.Action.STORE, protocol="DIMSE", method="C-STORE",
    ...     path="CT1", study_uid=study, address="10.0.0.5:40312", status=0, instances=12))
    """
    for entry in entries:
        log_entry(entry)
    _insert(engine, [e.row() for e in entries])


def _insert(engine: Engine, rows: list[dict[str, object]]) -> None:
    if rows:
        with engine.begin() as connection:
            connection.execute(insert(AuditEvent), rows)


class AuditWriter:
    """Queues entries and inserts them in batches from one background thread.

    One per process (the thread does not survive a fork: create it after forking).
    Entries are logged at :meth:`submit` time, so a crash loses at most the last
    ``interval`` seconds of rows, never the log lines.

    Parameters
    ----------
    engine
        The index's writer engine.
    interval
        Longest delay, in seconds, between :meth:`submit` and the row being written;
        entries arriving within it share one transaction.
    max_pending
        Entries held while the index is unreachable; beyond that the oldest are dropped
        (each was logged already), with an error in the log.
    """

    def __init__(
        self, engine: Engine, *, interval: float = 0.5, max_pending: int = 100_000
    ) -> None:
        self.engine = engine
        self.interval = interval
        self.max_pending = max_pending
        self._queue: queue.SimpleQueue[Entry] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._progress = threading.Condition()
        self._submitted = 0
        self._written = 0
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    def submit(self, entry: Entry) -> None:
        """Log ``entry`` now and queue its row; never waits for the index."""
        log_entry(entry)
        with self._progress:
            self._submitted += 1
        self._queue.put(entry)

    def flush(self, timeout: float = 10.0) -> bool:
        """Write every entry submitted so far now; False if that took over ``timeout``."""
        with self._progress:
            target = self._submitted
            self._wake.set()
            return self._progress.wait_for(lambda: self._written >= target, timeout)

    def close(self) -> None:
        """Write what is queued and stop the thread."""
        self._stopping.set()
        self._wake.set()
        self._thread.join(10)
        atexit.unregister(self.close)

    def _run(self) -> None:
        pending: list[Entry] = []
        while True:
            if not pending:
                try:
                    pending.append(self._queue.get(timeout=self.interval))
                except queue.Empty:
                    if self._stopping.is_set():
                        return
                    continue
            # Let a burst gather so that one transaction carries it.
            self._wake.wait(self.interval)
            self._wake.clear()
            while True:
                try:
                    pending.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            pending = self._write(pending)
            if self._stopping.is_set() and self._queue.empty():
                return

    def _write(self, pending: list[Entry]) -> list[Entry]:
        """Insert ``pending``; return what must be retried."""
        try:
            _insert(self.engine, [e.row() for e in pending])
        except SQLAlchemyError as exc:
            dropped = max(0, len(pending) - self.max_pending)
            _own_log.error(
                "audit: the index refused %d rows, retrying in %.1f s (%d dropped; they "
                "are in the dicomweb_server.audit log only): %s",
                len(pending),
                self.interval,
                dropped,
                exc,
            )
            self._done(dropped)
            return pending[dropped:]
        self._done(len(pending))
        return []

    def _done(self, count: int) -> None:
        with self._progress:
            self._written += count
            self._progress.notify_all()


def query(
    engine: Engine,
    *,
    user: str | None = None,
    study_uid: str | None = None,
    action: Action | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[Entry]:
    """The audit entries matching every given filter, newest first.

    ``since`` is inclusive, ``until`` exclusive; naive datetimes are taken as UTC.
    """
    stmt = select(*AuditEvent.__table__.columns).order_by(
        AuditEvent.at.desc(), AuditEvent.id.desc()
    )
    if user is not None:
        stmt = stmt.where(AuditEvent.user == user)
    if study_uid is not None:
        stmt = stmt.where(AuditEvent.study_uid == study_uid)
    if action is not None:
        stmt = stmt.where(AuditEvent.action == str(action))
    if since is not None:
        stmt = stmt.where(AuditEvent.at >= _aware(since))
    if until is not None:
        stmt = stmt.where(AuditEvent.at < _aware(until))
    stmt = stmt.limit(limit).offset(offset)
    with engine.connect() as connection:
        return [_entry(row._mapping) for row in connection.execute(stmt)]


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def _entry(row: Mapping[str, Any]) -> Entry:
    values = {k: v for k, v in row.items() if k != "id"}
    values["action"] = Action(values["action"])
    values["at"] = _aware(values["at"])
    return Entry(**values)
