"""What each association did, logged as one structured line when it closes.

A site admin reading the log sees, per peer connection, who called, from where, which
operations ran, how many instances came in or went out and how long it took, without
pynetdicom's per-PDU chatter.

Each association also gets an id, bound to the logging context of its thread
(:meth:`Activity.bind`), so that every line logged while it is handled carries
``association_id``; and the metrics count associations (total and open).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dicomweb_server import logs, metrics

from .trail import Operation, StudyStores

if TYPE_CHECKING:
    from pynetdicom.association import Association

log = logging.getLogger(__name__)


@dataclass
class AssociationStats:
    """Counters of one association; only its own thread updates them."""

    address: str
    started: float = field(default_factory=time.monotonic)
    operations: Counter[str] = field(default_factory=Counter)
    stored: int = 0
    store_failed: int = 0
    sent: int = 0
    association_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    #: C-STORE outcomes per study, for the audit trail (:mod:`.trail`).
    stores: dict[str, StudyStores] = field(default_factory=dict)
    #: C-FIND/C-MOVE/C-GET awaiting their final response, by Message ID.
    under_way: dict[int, Operation] = field(default_factory=dict)


class Activity:
    """The statistics of every open association of one server, keyed by association."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[int, AssociationStats] = {}

    def opened(self, assoc: Association, address: str) -> None:
        with self._lock:
            self._open[id(assoc)] = AssociationStats(address)
        metrics.association_opened()

    def bind(self, assoc: Association) -> None:
        """Tag this thread's log records with the association's id (in its own thread)."""
        logs.bind_association(self.stats(assoc).association_id)

    def stats(self, assoc: Association) -> AssociationStats:
        """The counters of ``assoc`` (a fresh, unregistered set if it is unknown)."""
        with self._lock:
            found = self._open.get(id(assoc))
        return found if found is not None else AssociationStats(address="")

    def closed(self, assoc: Association) -> AssociationStats | None:
        """Log the association's one summary line, forget it and return its counters
        (``None`` if it was not known)."""
        with self._lock:
            stats = self._open.pop(id(assoc), None)
        if stats is None:
            return None
        metrics.association_closed()
        requestor = assoc.requestor
        log.info(
            "association",
            extra={
                "calling_ae": (requestor.ae_title or "").strip(),
                "called_ae": (assoc.acceptor.ae_title or "").strip(),
                "address": stats.address,
                "outcome": _outcome(assoc),
                "operations": dict(stats.operations),
                "stored": stats.stored,
                "store_failed": stats.store_failed,
                "sent": stats.sent,
                "duration_ms": round((time.monotonic() - stats.started) * 1000, 1),
                "association_id": stats.association_id,
            },
        )
        return stats


def _outcome(assoc: Association) -> str:
    if assoc.is_rejected:
        return "rejected"
    if assoc.is_aborted:
        return "aborted"
    if assoc.is_released:
        return "released"
    return "closed"
