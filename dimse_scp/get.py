"""C-GET SCP (PS3.4 C.4.3): C-STORE sub-operations over the requesting association.

The peer must have proposed the storage SOP Classes it wants with the SCP role (PS3.4
C.4.3.1.3); pynetdicom negotiates the roles and counts the sub-operations, answering
Pending (FF00) after each with Remaining/Completed/Failed/Warning counts and finally
Success (0000), Warning (B000) with the Failed SOP Instance UID List when some failed,
or A702 (unable to perform sub-operations) when all failed (PS3.4 Table C.4-3).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from pydicom.dataset import Dataset
from pynetdicom.events import Event

from dicomweb_server.archive import ArchiveError
from dicomweb_server.archive.audit import Action

from . import datasets, retrieval, status, trail
from .runtime import Runtime

log = logging.getLogger(__name__)

GetReply = int | tuple[int | Dataset, Dataset | None]


def handle_get(event: Event, runtime: Runtime) -> Iterator[GetReply]:
    """Yield the number of sub-operations, then one (Pending, instance) per instance.

    A bad Identifier is answered A900, an unreadable index A701 (PS3.4 Table C.4-3).
    pynetdicom needs the count before any status, so a failure is announced as one
    sub-operation followed by the failure status.
    """
    stats = runtime.activity.stats(event.assoc)
    stats.operations["C-GET"] += 1
    trail.begin(event, runtime, Action.RETRIEVE)
    try:
        model = datasets.model_of(event.request.AffectedSOPClassUID)
        instances = retrieval.resolve(runtime.archive, event.identifier, model)
    except ArchiveError as exc:
        reply = status.for_retrieve(exc)
        log.warning("C-GET refused with 0x%04X: %s", reply.status, exc)
        yield 1
        yield reply.dataset(), None
        return
    trail.resolved(event, runtime, instances)
    yield len(instances)
    accepted = retrieval.accepted_syntaxes(event.assoc)
    yield from retrieval.sub_operations(event, runtime, instances, accepted, stats)
    # Exhausting the generator lets pynetdicom send the final status from its counts:
    # Success, Warning B000 when some sub-operations failed, A702 when all did.
