"""dimse_scp.requestor: on an association that only sends, a DIMSE message waits for the
thread that sends and waits, whatever pynetdicom's reactor thread polls meanwhile.

The race itself depends on thread scheduling (docs/reliability.md, "The 30-second
C-STORE stall"); what is checked here is the property that closes it, over a real
association to our listener, with its reactor thread running.
"""

from __future__ import annotations

from pynetdicom import evt
from pynetdicom.sop_class import CTImageStorage

import dimse_scp
from dimse_scp.requestor import responses_to_sender
from tests.dimse_fixtures import associate
from tests.factory import make_instance


def test_a_message_waits_for_the_sender_not_the_reactor(
    dimse_server: dimse_scp.ServerHandle,
) -> None:
    assoc = associate(
        dimse_server.port,
        [CTImageStorage],
        evt_handlers=[(evt.EVT_CONN_OPEN, lambda event: responses_to_sender(event.assoc))],
    )
    assert assoc.is_established
    try:
        # A response that has arrived while the reactor is not paused, as in the race.
        marker = object()
        assoc.dimse.msg_queue.put((1, marker))
        assert assoc.dimse.get_msg(block=False) == (None, None)  # the reactor's poll
        assert assoc.dimse.get_msg(block=True) == (1, marker)  # the sender's wait
        # And the association still does its work.
        assert assoc.send_c_store(make_instance()).Status == 0x0000
    finally:
        assoc.release()
