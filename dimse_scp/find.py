"""C-FIND SCP (PS3.4 C.4.1): Patient Root and Study Root, answered by ``archive.search``.

The twin of ``dicomweb_server/web/qido.py``: both turn their request into the same
:class:`~dicomweb_server.archive.Query` and answer from the index, never from files.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from pydicom.dataset import Dataset
from pynetdicom.events import Event

from dicomweb_server.archive import ArchiveError
from dicomweb_server.archive.audit import Action

from . import datasets, status, trail
from .pending import PendingResponses
from .runtime import Runtime

log = logging.getLogger(__name__)

FindReply = tuple[int | Dataset, Dataset | None]


def handle_find(event: Event, runtime: Runtime) -> Iterator[FindReply]:
    """Send one Pending (FF00) per match, then yield Success; Cancel (FE00) on C-CANCEL.

    The Pending responses go to the association directly, as bytes
    (:mod:`.pending`); pynetdicom sends the final one.

    Failures (PS3.4 Table C.4-1): A900 when the Identifier is not a valid query for the
    information model (bad level, malformed key value), A700 when the index cannot be
    read, C000 for anything else the archive cannot process.
    """
    runtime.activity.stats(event.assoc).operations["C-FIND"] += 1
    trail.begin(event, runtime, Action.SEARCH)
    try:
        identifier = event.identifier
        model = datasets.model_of(event.request.AffectedSOPClassUID)
        query = datasets.to_query(identifier, model)
    except ArchiveError as exc:
        yield _refused(exc)
        return
    # PS3.4 C.4.1.1.3.2 / C.6.1.1.5: where the matches can be retrieved from (this AE)
    # and that everything stored is on line.
    known = {"RetrieveAETitle": runtime.settings.dimse.aet, "InstanceAvailability": "ONLINE"}
    syntax = event.context.transfer_syntax
    request = event.request
    pending = PendingResponses(
        event.assoc, event.context.context_id, request.MessageID, request.AffectedSOPClassUID
    )
    final: FindReply = (status.SUCCESS, None)
    matches = runtime.archive.search_iter(query)
    try:
        for match in matches:
            if event.is_cancelled:
                final = (status.CANCEL, None)
                break
            if not event.assoc.is_established:
                break  # pynetdicom sends nothing more on it
            pending.send(datasets.to_response(match, identifier, query, known, syntax))
    except ArchiveError as exc:  # the index lost, before the first match or later
        final = _refused(exc)
    finally:
        # Before the final response, whose sending writes the audit entry.
        matches.close()
        trail.matches_sent(event, runtime, pending.sent)
    yield final


def _refused(exc: ArchiveError) -> FindReply:
    reply = status.for_find(exc)
    log.warning("C-FIND refused with 0x%04X: %s", reply.status, exc)
    return reply.dataset(), None
