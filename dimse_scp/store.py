"""C-STORE SCP (PS3.4 Annex B): hand the received file to ``archive.store``.

pynetdicom writes the incoming data set to a temporary Part 10 file without decoding it
(``STORE_RECV_CHUNKED_DATASET``; see :func:`dimse_scp.server.configure_pynetdicom`): a
128-byte preamble, ``DICM``, File Meta Information built from the request (Affected SOP
Class and Instance UIDs) and the accepted presentation context's transfer syntax, then
the data set bytes exactly as received.  That file is what the archive ingests, so the
instance is parsed once, by the archive, and never held in memory here.
"""

from __future__ import annotations

import logging

from pydicom.dataset import Dataset
from pynetdicom.events import Event

from dicomweb_server.archive import ArchiveError, Origin, StoreResult

from . import status, trail
from .runtime import Runtime

log = logging.getLogger(__name__)


def origin_of(event: Event) -> Origin:
    """Provenance of what arrives on this association: calling AE and peer address."""
    requestor = event.assoc.requestor
    return Origin(
        "DIMSE",
        ae_title=(requestor.ae_title or "").strip(),
        address=f"{requestor.address}:{requestor.port}",
    )


def handle_store(event: Event, runtime: Runtime) -> int | Dataset:
    """Store one instance and answer with the PS3.4 Table B.2-1 status.

    Success (0000) also answers a copy already stored and kept under the ``keep``
    duplicate policy: the SCU's instance *is* in the archive, which is what Success
    promises.  When the stored Data Set names another SOP Class than the request, the
    answer is Warning B007 (the instance was stored nevertheless).
    """
    stats = runtime.activity.stats(event.assoc)
    stats.operations["C-STORE"] += 1
    request = event.request
    try:
        result = runtime.archive.store(event.dataset_path, origin_of(event))
    except ArchiveError as exc:
        failure = status.for_store(exc)
        stats.store_failed += 1
        log.warning(
            "C-STORE of %s refused with 0x%04X: %s",
            request.AffectedSOPInstanceUID,
            failure.status,
            exc,
        )
        trail.stored(stats, "", failure.status)
        return failure.dataset()
    stats.stored += 1
    warning = _warning(result, str(request.AffectedSOPClassUID or "").rstrip("\0 "))
    trail.stored(stats, result.study_uid, warning.status if warning else status.SUCCESS)
    return warning.dataset() if warning else status.SUCCESS


def _warning(result: StoreResult, requested_class: str) -> status.Reply | None:
    """The warning a stored instance is answered with, if any (PS3.4 Table B.2-1)."""
    if result.coerced:
        return status.Reply(
            status.STORE_WARNING_COERCION, f"stored de-identified as {result.sop_uid}"
        )
    if requested_class and requested_class != result.sop_class_uid:
        return status.Reply(
            status.STORE_WARNING_NOT_MATCHING_SOP_CLASS,
            f"stored as SOP Class {result.sop_class_uid}",
        )
    return None
