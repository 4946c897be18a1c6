"""C-ECHO SCP: the Verification Service Class (PS3.4 Annex A)."""

from __future__ import annotations

from pynetdicom.events import Event

from . import status
from .runtime import Runtime


def handle_echo(event: Event, runtime: Runtime) -> int:
    """Answer Success (PS3.4 A.4: the only status of a C-ECHO besides failures)."""
    runtime.activity.stats(event.assoc).operations["C-ECHO"] += 1
    return status.SUCCESS
