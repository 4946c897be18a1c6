"""What C-MOVE and C-GET share: which stored instances an Identifier names, and how each
is loaded for a C-STORE sub-operation in a transfer syntax the peer accepted.

The twin of ``dicomweb_server/web/wado.py``: both resolve UIDs to the archive's
:class:`~dicomweb_server.archive.StoredInstance` rows and read the stored files.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping

from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.sop_class import SecondaryCaptureImageStorage, Verification

from dicomweb_server import metrics
from dicomweb_server.archive import (
    Archive,
    InvalidQuery,
    Level,
    NotFound,
    Query,
    StoredInstance,
    transcode,
)
from dicomweb_server.archive.attributes import json_key
from dicomweb_server.archive.uids import clean_uid

from . import datasets, status, trail
from .activity import AssociationStats
from .runtime import Runtime

log = logging.getLogger(__name__)

#: A requestor may propose at most 128 presentation contexts (PS3.8 9.3.2.2: context
#: IDs are odd numbers 1-255).
MAX_CONTEXTS = 128
_UNCOMPRESSED: tuple[str, ...] = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


def _uids(identifier: Dataset, keyword: str, required: bool) -> list[str]:
    """The UIDs of a unique key (PS3.4 C.4.2.2.1: a single value or a list of UIDs)."""
    text = datasets.dicom_string(identifier[keyword]) if keyword in identifier else ""
    text = text.strip("\0 ")
    if not text:
        if required:
            raise InvalidQuery(f"the retrieve Identifier has no {keyword}, required at its level")
        return []
    return [clean_uid(value, keyword) for value in text.split("\\")]


def _search_pairs(archive: Archive, query: Query, *keys: str) -> list[tuple[str, ...]]:
    """Parent UIDs of matches, from the index, when the Identifier omits them."""
    tags = [json_key(k) for k in keys]
    found = []
    for match in archive.search(query):
        values = [str(((match.get(t) or {}).get("Value") or [""])[0]) for t in tags]
        if all(values):
            found.append(tuple(values))
    return found


def resolve(archive: Archive, identifier: Dataset, model: str) -> list[StoredInstance]:
    """The stored instances a C-MOVE or C-GET Identifier asks for (PS3.4 C.4.2.2.1).

    Unique keys of the levels above the requested one are used when present and looked
    up in the index otherwise (relational retrieve), so that ``movescu`` with only a
    SOPInstanceUID still works.  Raises :class:`InvalidQuery` (A900) for a missing or
    malformed unique key.
    """
    level = datasets.level_of(identifier, model)
    scopes: list[tuple[str, str | None, str | None]] = []
    if level is Level.PATIENT:
        for patient_id in _patient_ids(identifier):
            query = Query(
                Level.STUDY, filters={"PatientID": patient_id}, return_keys=["StudyInstanceUID"]
            )
            studies = _search_pairs(archive, query, "StudyInstanceUID")
            scopes += [(study, None, None) for (study,) in studies]
    elif level is Level.STUDY:
        scopes = [(study, None, None) for study in _uids(identifier, "StudyInstanceUID", True)]
    elif level is Level.SERIES:
        series = _uids(identifier, "SeriesInstanceUID", True)
        studies = _uids(identifier, "StudyInstanceUID", False)
        if len(studies) == 1:
            scopes = [(studies[0], s, None) for s in series]
        else:
            query = Query(
                Level.SERIES,
                filters={"SeriesInstanceUID": "\\".join(series)},
                return_keys=["StudyInstanceUID", "SeriesInstanceUID"],
            )
            pairs = _search_pairs(archive, query, "StudyInstanceUID", "SeriesInstanceUID")
            scopes = [(study, s, None) for study, s in pairs]
    else:
        sops = _uids(identifier, "SOPInstanceUID", True)
        studies = _uids(identifier, "StudyInstanceUID", False)
        series = _uids(identifier, "SeriesInstanceUID", False)
        if len(studies) == 1 and len(series) == 1:
            scopes = [(studies[0], series[0], sop) for sop in sops]
        else:
            query = Query(
                Level.IMAGE,
                filters={"SOPInstanceUID": "\\".join(sops)},
                return_keys=["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"],
            )
            triples = _search_pairs(
                archive, query, "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"
            )
            scopes = [(study, s, sop) for study, s, sop in triples]
    found: list[StoredInstance] = []
    seen: set[str] = set()
    for study, series_uid, sop in scopes:
        try:
            instances = archive.instances(study, series_uid, sop)
        except NotFound:
            continue  # PS3.4 C.4.2.3.1: no match is zero sub-operations, not a failure
        for instance in instances:
            if instance.sop_uid not in seen:
                seen.add(instance.sop_uid)
                found.append(instance)
    return found


def _patient_ids(identifier: Dataset) -> list[str]:
    text = str(identifier.get("PatientID", "") or "").strip()
    if not text:
        raise InvalidQuery("the retrieve Identifier has no PatientID, required at PATIENT level")
    return [text]


def accepted_syntaxes(assoc: Association) -> dict[str, set[str]]:
    """Transfer syntaxes per SOP Class in which we may send C-STOREs on ``assoc``.

    For C-GET the peer must have proposed the storage contexts with the SCP role
    (PS3.4 C.4.3.1.3, SCP/SCU Role Selection of PS3.7 D.3.3.4); pynetdicom records the
    negotiated roles in ``as_scu``.
    """
    syntaxes: dict[str, set[str]] = {}
    for context in assoc.accepted_contexts:
        if context.as_scu:
            syntaxes.setdefault(str(context.abstract_syntax), set()).update(
                str(ts) for ts in context.transfer_syntax
            )
    return syntaxes


def contexts_for(instances: Iterable[StoredInstance]) -> list[PresentationContext]:
    """Presentation contexts to propose to a C-MOVE destination.

    Each SOP Class is offered in every stored transfer syntax (so compressed data goes out
    as stored, not recoded) and, in a context of its own, uncompressed as a fallback that
    every Storage SCP must accept (PS3.5 10.1).  Past 128 contexts the stored compressed
    syntaxes are dropped first.
    """
    by_class: dict[str, set[str]] = {}
    for instance in instances:
        by_class.setdefault(instance.sop_class_uid, set()).add(instance.transfer_syntax_uid)
    fallback = [build_context(sop, list(_UNCOMPRESSED)) for sop in sorted(by_class)]
    stored = [
        build_context(sop, [ts])
        for sop in sorted(by_class)
        for ts in sorted(by_class[sop] - set(_UNCOMPRESSED))
    ]
    contexts = fallback + stored[: max(MAX_CONTEXTS - len(fallback), 0)]
    # Without instances (a failure to report), a context every image archive accepts.
    return contexts[:MAX_CONTEXTS] or [
        build_context(SecondaryCaptureImageStorage, list(_UNCOMPRESSED)),
        build_context(Verification),
    ]


def _target(syntaxes: set[str]) -> str | None:
    """The syntax to convert to: uncompressed, so nothing is lost (PS3.5 A.1-A.2)."""
    for ts in (*_UNCOMPRESSED, DeflatedExplicitVRLittleEndian):
        if ts in syntaxes:
            return ts
    return None


def load(archive: Archive, instance: StoredInstance, accepted: Mapping[str, set[str]]) -> Dataset:
    """The stored instance as a Dataset in a transfer syntax ``accepted`` allows.

    Sent as stored when the peer accepted that syntax; otherwise converted to an
    uncompressed syntax the peer accepted (:mod:`dicomweb_server.archive.transcode`;
    never to a lossy one).

    Whatever goes wrong here fails this one sub-operation, not the whole retrieve: the
    peer gets a Dataset without File Meta, which pynetdicom refuses to send and counts
    as a failed sub-operation with its SOP Instance UID in the Failed SOP Instance UID
    List (PS3.4 C.4.2.1.5).
    """
    syntaxes = accepted.get(instance.sop_class_uid, set())
    stored = instance.transfer_syntax_uid
    path = archive.path(instance)
    try:
        target = _target(syntaxes)
        if stored in syntaxes or target is None:
            return transcode.read(path)  # as stored; pynetdicom fails it if not accepted
        if stored in _UNCOMPRESSED and target in _UNCOMPRESSED:
            return transcode.read(path)  # pynetdicom re-encodes between these two
        return transcode.transcode_dataset(path, target)
    except Exception as exc:  # one unreadable or undecodable file fails one sub-operation
        log.error("cannot send %s (stored as %s): %s", instance.sop_uid, stored, exc)
        failed = Dataset()
        failed.SOPClassUID = instance.sop_class_uid
        failed.SOPInstanceUID = instance.sop_uid
        return failed


def sub_operations(
    event: Event,
    runtime: Runtime,
    instances: Iterable[StoredInstance],
    accepted: Mapping[str, set[str]],
    stats: AssociationStats,
) -> Iterator[tuple[int, Dataset | None]]:
    """The C-STORE sub-operations of a C-GET or C-MOVE, as pynetdicom's handlers yield
    them: Pending with each data set, or Cancel when the SCU sent C-CANCEL."""
    for instance in instances:
        if event.is_cancelled:
            yield status.CANCEL, None
            return
        trail.sending(event, runtime, instance)
        yield status.PENDING, load(runtime.archive, instance, accepted)
        stats.sent += 1
        metrics.instance_sent("DIMSE")
