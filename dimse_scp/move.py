"""C-MOVE SCP (PS3.4 C.4.2): C-STORE sub-operations over a new association to a known AE.

Destinations come only from ``dimse.remote_aes``: a Move Destination is an AE title, and
sending patient data to whatever address a caller names would make the archive an open
relay.  Counts and the final status follow PS3.4 C.4.2.1.5 (pynetdicom keeps them):
Pending (FF00) after each sub-operation, Success (0000) when all completed, Warning
(B000) with the Failed SOP Instance UID List when some failed, A702 when all failed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.events import Event

from dicomweb_server.archive import ArchiveError
from dicomweb_server.archive.audit import Action

from . import datasets, retrieval, status, trail
from .requestor import responses_to_sender
from .runtime import Runtime
from .sockets import set_nodelay

log = logging.getLogger(__name__)

MoveReply = tuple[Any, ...] | int | tuple[int | Dataset, Dataset | None]


def _opened(event: Event, opened: list[Association]) -> None:
    """The sub-association to the destination: no Nagle, and its C-STORE-RSPs go to the
    sub-operation loop, never to its reactor thread (:mod:`.requestor`)."""
    set_nodelay(event)
    responses_to_sender(event.assoc)
    opened.append(event.assoc)


def handle_move(event: Event, runtime: Runtime) -> Iterator[MoveReply]:
    """Yield the destination, the number of sub-operations, then (Pending, instance)s.

    An unknown Move Destination is answered A801 (PS3.4 Table C.4-2), a bad Identifier
    A900, an unreadable index A701.
    """
    stats = runtime.activity.stats(event.assoc)
    stats.operations["C-MOVE"] += 1
    destination = (event.move_destination or "").strip()
    trail.begin(event, runtime, Action.RETRIEVE, destination or "(none)")
    remote = runtime.settings.dimse.remote_aes.get(destination)
    if remote is None:
        log.warning(
            "C-MOVE to %r refused (0x%04X): not a key of dimse.remote_aes",
            destination,
            status.MOVE_DESTINATION_UNKNOWN,
        )
        yield None, None
        return
    opened: list[Association] = []
    options: dict[str, Any] = {
        "max_pdu": runtime.settings.dimse.max_pdu_size,
        "evt_handlers": [(evt.EVT_CONN_OPEN, _opened, [opened])],
    }
    try:
        model = datasets.model_of(event.request.AffectedSOPClassUID)
        instances = retrieval.resolve(runtime.archive, event.identifier, model)
    except ArchiveError as exc:
        reply = status.for_retrieve(exc)
        log.warning("C-MOVE refused with 0x%04X: %s", reply.status, exc)
        # pynetdicom answers a C-MOVE failure only on an open sub-association, so one is
        # opened (for a context any Storage SCP accepts) and released unused.
        yield remote.host, remote.port, {**options, "contexts": retrieval.contexts_for([])}
        yield 1
        yield reply.dataset(), None
        return
    trail.resolved(event, runtime, instances)
    options["contexts"] = retrieval.contexts_for(instances)
    yield remote.host, remote.port, options
    yield len(instances)
    # pynetdicom has now associated with the destination (it does so only when there
    # is something to send); its negotiated contexts decide each instance's encoding.
    accepted = retrieval.accepted_syntaxes(opened[-1]) if opened else {}
    yield from retrieval.sub_operations(event, runtime, instances, accepted, stats)
    # Exhausting the generator lets pynetdicom send the final status from its counts:
    # Success, Warning B000 when some sub-operations failed, A702 when all did.
