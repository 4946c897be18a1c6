"""C-FIND Pending responses handed to the association as bytes.

A search for a month of studies answers with one Pending response per match, hundreds
of them, which differ only in their Identifier.  Given a data set, pynetdicom encodes
it, builds a command set for the response and encodes that twice (once to learn its
group length), then frames each part as its own P-DATA: about 0.4 ms of CPU a match,
more than the search and the Identifier together.  Here the command set of a Pending
response to one request is built once, by pynetdicom's own message class, and every
match goes to the association's DUL provider as one P-DATA primitive holding both
parts, already encoded (PS3.8 9.3.5: a P-DATA-TF PDU holds one or more PDV items;
PS3.8 Annex E: the command fragment is sent before the data set's, and no other
message's fragments come between them).  The final response still goes through
pynetdicom, after these in the same queue.

That queue is pynetdicom's, unbounded, and the DUL provider drains it only as fast as
the peer reads: past :data:`QUEUED` responses waiting in it, :meth:`send` waits too, so
that a slow peer asking for every study holds a bounded part of them in memory.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from io import BytesIO

from pynetdicom.association import Association
from pynetdicom.dimse_messages import C_FIND_RSP
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.dsutils import encode
from pynetdicom.pdu_primitives import P_DATA

from .status import PENDING

#: Message Control Header of a PDV (PS3.8 E.2): bit 0 command, bit 1 last fragment.
_DATA, _LAST_DATA, _COMMAND, _LAST_COMMAND = 0, 2, 1, 3
#: A PDV item's Item Length (4 bytes) and Presentation Context ID (1), within a PDU.
_ITEM = 5
#: P-DATA primitives waiting for the DUL provider beyond which :meth:`send` waits.
QUEUED = 100


class PendingResponses:
    """Send C-FIND Pending (FF00) responses to one request on one presentation context."""

    def __init__(self, assoc: Association, context_id: int, message_id: int, sop_class: str):
        primitive = C_FIND()
        primitive.MessageIDBeingRespondedTo = message_id
        primitive.AffectedSOPClassUID = sop_class
        primitive.Status = PENDING
        primitive.Identifier = BytesIO(b"\0")  # any: it marks the data set as present
        message = C_FIND_RSP()
        message.primitive_to_message(primitive)
        command = encode(message.command_set, True, True)  # PS3.7 6.3.1: always implicit LE
        if command is None:
            raise ValueError("pynetdicom could not encode a C-FIND response command set")
        self._assoc = assoc
        self._context_id = context_id
        #: The peer's Maximum Length Received (PS3.8 D.1), 0 for no limit: the most a
        #: PDU's PDV items may hold between them.
        self._max_pdu = assoc.dimse.maximum_pdu_size
        self._command = list(self._fragments(command, _COMMAND, _LAST_COMMAND))
        self.sent = 0

    def send(self, identifier: bytes) -> None:
        """Queue one Pending response whose Identifier is ``identifier`` (encoded in
        the context's transfer syntax) for the association's DUL provider: in one
        P-DATA when it fits the peer's maximum PDU length, else in as few as it takes."""
        items: list[list[int | bytes]] = []
        used = 0
        for pdv in [*self._command, *self._fragments(identifier, _DATA, _LAST_DATA)]:
            size = _ITEM + len(pdv)
            if items and self._max_pdu and used + size > self._max_pdu:
                self._put(items)
                items, used = [], 0
            items.append([self._context_id, pdv])
            used += size
        self._put(items)
        self.sent += 1

    def _fragments(self, data: bytes, more: int, last: int) -> Iterator[bytes]:
        """PDV values (control header and fragment) that each fit in one PDU."""
        step = self._max_pdu - _ITEM - 1 if self._max_pdu else len(data) or 1
        for start in range(0, len(data) or 1, step):
            end = start + step
            yield bytes((last if end >= len(data) else more,)) + data[start:end]

    def _put(self, items: list[list[int | bytes]]) -> None:
        dul = self._assoc.dul
        while dul.to_provider_queue.qsize() >= QUEUED and self._assoc.is_established:
            time.sleep(0.001)
        primitive = P_DATA()
        primitive.presentation_data_value_list = items  # type: ignore[assignment]
        dul.send_pdu(primitive)
