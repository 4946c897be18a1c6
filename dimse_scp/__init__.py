"""The DIMSE front: a pynetdicom listener over the archive core (placeholder)."""

from dicomweb_server.config import Settings


def serve_forever(settings: Settings) -> None:
    raise NotImplementedError
