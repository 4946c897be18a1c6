"""What every DIMSE handler is given: the archive, the settings, the activity log.

pynetdicom binds extra handler arguments (``(evt.EVT_C_STORE, handle_store, [runtime])``),
so the handlers reach no global; two servers over two archives can run side by side.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dicomweb_server.archive import Archive
from dicomweb_server.config import Settings

from .activity import Activity


@dataclass(frozen=True)
class Runtime:
    archive: Archive
    settings: Settings
    activity: Activity = field(default_factory=Activity)
