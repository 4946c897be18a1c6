"""Associations we request only to send C-STOREs on (C-MOVE sub-operations, the load
script): their responses must reach the thread that waits for them.

pynetdicom 3.0.4 runs a reactor thread for every association, requestor or acceptor,
which takes any complete DIMSE message off the association's queue and serves it as a
request; a ``send_c_store`` on another thread pauses that reactor before sending and then
waits on the same queue for the C-STORE-RSP.  The pause is a handshake on a flag that the
reactor sets *before* it waits on the checkpoint event and clears *after* the wait
returns (``Association._run_reactor``): a sender that clears the event just after the
reactor has passed it still reads the flag as "paused", sends, and waits, while the
reactor goes on to ``dimse.get_msg(block=False)``.  When the reactor thread is
descheduled long enough for the peer's answer to arrive (a busy machine, many threads),
the reactor takes the C-STORE-RSP, logs "Received unexpected C-STORE service message"
and drops it; the sender gets nothing and gives up after its DIMSE timeout.

That is the stall the load test showed (one C-STORE in ~1000 without an answer for the
client's 30 s): ``py-spy dump`` of the DIMSE process during the stall showed the
association idle in its reactor with no request pending (the answer had been sent), the
client's sender thread in ``get_msg`` and the client's reactor having logged the warning
at the moment the stall began.  Isolated from the archive (8 pynetdicom SCU threads
sending to a bare pynetdicom Storage SCP in another process, two busy threads beside
them, 60 s): 12 of 3,497 and 15 of 3,542 C-STOREs lost their response, each with that
warning; with :func:`responses_to_sender`, 0 of 3,700 and 0 of 4,360.  See
docs/reliability.md, "Load".

On an association that only sends (no peer request can ever arrive on it: a Storage SCP
answers, it does not ask), the reactor need never take a message, so the fix is to let
only the blocking caller, the one waiting for a response, take one.
"""

from __future__ import annotations

from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider

__all__ = ["responses_to_sender"]


def responses_to_sender(assoc: Association) -> None:
    """Let only the thread waiting for a response take DIMSE messages off ``assoc``.

    The reactor polls with ``get_msg(block=False)``; every ``send_*`` method waits with
    ``block=True``.  Call before the association is used (e.g. from ``EVT_CONN_OPEN``),
    and only on associations over which the peer sends no requests.
    """
    dimse: DIMSEServiceProvider = assoc.dimse
    take = dimse.get_msg

    def get_msg(block: bool = False) -> tuple[int | None, object | None]:
        return take(block) if block else (None, None)

    dimse.get_msg = get_msg  # type: ignore[method-assign]
