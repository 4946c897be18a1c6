"""The DIMSE front: a pynetdicom listener over the archive core.

A thin adapter, like ``dicomweb_server/web``: every service (C-ECHO, C-STORE, C-FIND,
C-MOVE, C-GET) translates its request into one archive call and the archive's answer or
error into a PS3.4 status (:mod:`.status`).
"""

from .server import ServerHandle, serve_forever, start

__all__ = ["ServerHandle", "serve_forever", "start"]
