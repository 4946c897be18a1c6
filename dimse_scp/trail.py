"""What DIMSE operations leave in the audit trail (:mod:`dicomweb_server.archive.audit`).

One entry per:

* **C-STORE**: association and study, written when the association ends, with the
  number of instances stored (``instances``) and failed (``failed=`` in the path); a
  modality sending a 2,000-image study leaves one row, not 2,000.  Instances refused
  before their study was known (unparseable data) count under study ``""``.
* **C-FIND**: operation, with the Query/Retrieve Level and every match key given, as a
  query string after the calling AE title (``CT1?QueryRetrieveLevel=STUDY&PatientID=P1``),
  and the number of matches returned.
* **C-MOVE** and **C-GET**: operation and study retrieved, with the destination
  (``CT1 -> PACS``), the instances of that study delivered (completed or warning
  sub-operations) and the operation's sub-operation counts in the path.

``user`` is the calling AE title, ``address`` the peer's host and port, ``status`` the
final DIMSE status sent (for an association that ended mid-operation, the last one:
Pending, FF00).  The status and counts are taken from the responses themselves, as
pynetdicom sends them (``EVT_DIMSE_SENT``), so they are what the peer was told; C-FIND's
Pending responses, which bypass pynetdicom (:mod:`.pending`), are counted as they are
queued (:func:`matches_sent`).

Entries go to the archive's :class:`~dicomweb_server.archive.audit.AuditWriter`, whose
``submit`` logs the entry and queues its row without waiting for the index; a refused
insert is logged and retried by the writer.  Nothing here may fail or delay an
operation, so every call is guarded: an error is logged and the operation goes on.
With ``auth.audit`` off, entries go to the log only, as on the web side.
"""

from __future__ import annotations

import functools
import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ParamSpec
from urllib.parse import quote

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dicomweb_server.archive import StoredInstance, audit

from . import datasets, status

if TYPE_CHECKING:
    from pynetdicom.association import Association
    from pynetdicom.events import Event

    from .activity import AssociationStats
    from .runtime import Runtime

log = logging.getLogger(__name__)

P = ParamSpec("P")

#: Characters kept as they are in a match key value of the path (wildcards, name and
#: value separators); the rest of what a URL query treats specially is percent-encoded.
_SAFE = "*?^\\:/ "
#: Longest value of one match key kept in the path.
_MAX_VALUE = 128


def guarded(function: Callable[P, None]) -> Callable[P, None]:
    """Run ``function``; log and swallow whatever it raises (auditing never fails a
    DIMSE operation)."""

    @functools.wraps(function)
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            function(*args, **kwargs)
        except Exception:
            log.exception("audit: could not record a DIMSE operation")

    return run


@dataclass
class StudyStores:
    """C-STORE outcomes of one study on one association."""

    stored: int = 0
    failed: int = 0
    #: Status of the entry: the last failure, else the last warning, else Success.
    status: int = status.SUCCESS


@dataclass
class Operation:
    """A C-FIND, C-MOVE or C-GET between its request and its final response."""

    action: audit.Action
    method: str
    path: str
    #: The one StudyInstanceUID the Identifier names, ``""`` if none or several.
    study: str
    #: C-FIND: matches sent (Pending responses).
    matches: int = 0
    #: C-MOVE/C-GET: studies of the instances resolved, in order.
    studies: list[str] = field(default_factory=list)
    #: C-MOVE/C-GET: study of the sub-operation under way.
    current: str = ""
    #: C-MOVE/C-GET: instances delivered (completed or warning) per study.
    delivered: Counter[str] = field(default_factory=Counter)
    #: C-MOVE/C-GET: completed + warning sub-operations counted so far.
    done: int = 0
    #: C-MOVE/C-GET: the latest sub-operation counts, as query parameters for the path.
    counts: str = ""
    #: The status of the latest response sent (the final one once the operation ends).
    last_status: int = status.PENDING


def _identity(assoc: Association) -> tuple[str, str]:
    """Calling AE title and ``host:port`` of the peer."""
    requestor = assoc.requestor
    return (requestor.ae_title or "").strip(), f"{requestor.address}:{requestor.port}"


def _keys(identifier: Dataset) -> str:
    """The Identifier's Query/Retrieve Level and match keys as a query string.

    Return keys (empty values) and sequences are left out: they say what the caller
    wanted to see, not whom it looked for.
    """
    pairs: list[tuple[str, str]] = []
    for element in identifier:
        if element.tag == datasets.SPECIFIC_CHARACTER_SET or isinstance(element.value, Sequence):
            continue
        value = datasets.dicom_string(element).strip("\0 ")
        if value:
            name = element.keyword or f"{element.tag.group:04X}{element.tag.element:04X}"
            pairs.append((name, value[:_MAX_VALUE]))
    pairs.sort(key=lambda pair: pair[0] != "QueryRetrieveLevel")
    return "&".join(f"{name}={quote(value, safe=_SAFE)}" for name, value in pairs)


def _single_study(identifier: Dataset) -> str:
    text = str(identifier.get("StudyInstanceUID", "") or "").strip("\0 ")
    return text if text and "\\" not in text and len(text) <= 64 else ""


@guarded
def begin(event: Event, runtime: Runtime, action: audit.Action, destination: str = "") -> None:
    """Note a C-FIND, C-MOVE or C-GET request; its entry is written at its final response."""
    stats = runtime.activity.stats(event.assoc)
    calling, _ = _identity(event.assoc)
    method = type(event.request).__name__.replace("_", "-")
    path, study = calling + (f" -> {destination}" if destination else ""), ""
    try:
        identifier = event.identifier
        keys = _keys(identifier)
        study = _single_study(identifier)
    except Exception as exc:  # an Identifier pynetdicom cannot decode: the handler answers
        log.debug("audit: undecodable %s Identifier: %s", method, exc)
        keys = ""
    stats.under_way[int(event.request.MessageID)] = Operation(
        action, method, path + (f"?{keys}" if keys else ""), study
    )


def _operation(event: Event, runtime: Runtime) -> Operation | None:
    return runtime.activity.stats(event.assoc).under_way.get(int(event.request.MessageID))


@guarded
def resolved(event: Event, runtime: Runtime, instances: Iterable[StoredInstance]) -> None:
    """The instances a C-MOVE or C-GET will send (one entry per study among them)."""
    operation = _operation(event, runtime)
    if operation is not None:
        operation.studies = list(dict.fromkeys(i.study_uid for i in instances))


@guarded
def sending(event: Event, runtime: Runtime, instance: StoredInstance) -> None:
    """The next sub-operation sends ``instance``."""
    operation = _operation(event, runtime)
    if operation is not None:
        operation.current = instance.study_uid


@guarded
def matches_sent(event: Event, runtime: Runtime, count: int) -> None:
    """A C-FIND has sent ``count`` Pending responses, which go to the association
    without pynetdicom (:mod:`.pending`) and so without ``EVT_DIMSE_SENT``."""
    operation = _operation(event, runtime)
    if operation is not None and count:
        operation.matches += count
        operation.last_status = status.PENDING


@guarded
def stored(stats: AssociationStats, study_uid: str, code: int) -> None:
    """Count one C-STORE answered ``code`` for ``study_uid`` (``""``: unknown)."""
    study = stats.stores.setdefault(study_uid, StudyStores())
    category = _category(code)
    if category == "failure":
        study.failed += 1
        study.status = code
    else:
        study.stored += 1
        if category == "warning" and _category(study.status) != "failure":
            study.status = code


def _category(code: int) -> str:
    if code == status.SUCCESS:
        return "success"
    if code in (status.PENDING, 0xFF01):
        return "pending"
    if code == status.CANCEL:
        return "cancel"
    if (code & 0xF000) == 0xB000:
        return "warning"
    return "failure"


_RESPONSES = {"C_FIND_RSP", "C_MOVE_RSP", "C_GET_RSP"}


@guarded
def response_sent(event: Event, runtime: Runtime) -> None:
    """Follow a C-FIND/C-MOVE/C-GET through its responses; write its entries at the
    final one (``EVT_DIMSE_SENT``, in the association's thread, before the send)."""
    if type(event.message).__name__ not in _RESPONSES:
        return
    command = event.message.command_set
    stats = runtime.activity.stats(event.assoc)
    operation = stats.under_way.get(int(command.MessageIDBeingRespondedTo))
    if operation is None:
        return
    code = int(command.Status)
    operation.last_status = code
    # A C-FIND's Pending responses do not come through here (see matches_sent).
    if operation.method != "C-FIND":
        completed = int(command.get("NumberOfCompletedSuboperations") or 0)
        warning = int(command.get("NumberOfWarningSuboperations") or 0)
        failed = int(command.get("NumberOfFailedSuboperations") or 0)
        if completed + warning > operation.done:
            operation.delivered[operation.current] += completed + warning - operation.done
            operation.done = completed + warning
        operation.counts = f"completed={completed}&failed={failed}&warning={warning}"
        if _category(code) == "pending":
            return
    del stats.under_way[int(command.MessageIDBeingRespondedTo)]
    _submit(runtime, _entries(event.assoc, operation))


def _entries(assoc: Association, operation: Operation) -> list[audit.Entry]:
    calling, address = _identity(assoc)
    path = operation.path
    if operation.counts:
        path += ("&" if "?" in path else "?") + operation.counts
    common = {
        "user": calling,
        "action": operation.action,
        "protocol": "DIMSE",
        "method": operation.method,
        "path": path,
        "address": address,
        "status": operation.last_status,
    }
    if operation.method == "C-FIND":
        return [audit.Entry(**common, study_uid=operation.study, instances=operation.matches)]
    studies = operation.studies or [operation.study]
    return [
        audit.Entry(**common, study_uid=study, instances=operation.delivered[study])
        for study in studies
    ]


@guarded
def association_ended(runtime: Runtime, assoc: Association, stats: AssociationStats) -> None:
    """Write the association's C-STORE entries (one per study), and those of any
    operation it left unfinished."""
    calling, address = _identity(assoc)
    entries = [
        audit.Entry(
            user=calling,
            action=audit.Action.STORE,
            protocol="DIMSE",
            method="C-STORE",
            path=calling + (f"?failed={study.failed}" if study.failed else ""),
            study_uid=study_uid,
            address=address,
            status=study.status,
            instances=study.stored,
        )
        for study_uid, study in stats.stores.items()
    ]
    for operation in stats.under_way.values():
        entries += _entries(assoc, operation)
    stats.under_way.clear()
    _submit(runtime, entries)


def _submit(runtime: Runtime, entries: list[audit.Entry]) -> None:
    """Log each entry and queue its row; never waits for the index."""
    for entry in entries:
        if runtime.settings.auth.audit:
            runtime.archive.audit_writer().submit(entry)
        else:
            audit.log_entry(entry)
