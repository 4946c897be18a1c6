"""TCP_NODELAY on every DIMSE socket, accepted or opened.

pynetdicom 3.0 leaves Nagle's algorithm on.  A DIMSE exchange is a short message
answered by a short message, so with Nagle plus the peer's delayed ACK each message can
wait ~40 ms (design.md, "Figures"): a study of 500 C-STOREs loses 20 s.  The hook is the
``EVT_CONN_OPEN`` notification, which pynetdicom fires for both the sockets its server
accepts and those it connects (C-MOVE sub-associations), before any PDU is exchanged.
"""

from __future__ import annotations

import socket

from pynetdicom.events import Event


def set_nodelay(event: Event) -> None:
    """Turn Nagle's algorithm off on the association's socket."""
    sock = event.assoc.dul.socket.socket if event.assoc.dul.socket else None
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
