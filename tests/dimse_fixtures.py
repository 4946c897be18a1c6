"""DIMSE test helpers: our listener on a free port, a Storage SCP to move to, SCU calls.

Imported by the DIMSE test modules (conftest.py stays shared).  Everything talks over
real TCP sockets on 127.0.0.1 with pynetdicom, as a modality or PACS would.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_role, evt
from pynetdicom.association import Association
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

import dimse_scp
from dicomweb_server.archive import Archive, Level, Query
from dicomweb_server.config import Settings
from dimse_scp.server import STORAGE_TRANSFER_SYNTAXES

QR_CLASSES = [
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
]
UNCOMPRESSED = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]


def with_dimse(settings: Settings, **dimse: Any) -> Settings:
    """``settings`` with some ``dimse`` options replaced (settings are frozen)."""
    section = settings.dimse.model_validate({**settings.dimse.model_dump(), **dimse})
    return settings.model_copy(update={"dimse": section})


def running_server(settings: Settings, archive: Archive) -> Iterator[dimse_scp.ServerHandle]:
    """Our DIMSE listener over ``archive`` on a free port, for a test module's fixture::

    @pytest.fixture
    def dimse_server(settings, archive):
        yield from running_server(settings, archive)
    """
    handle = dimse_scp.start(settings, archive)
    try:
        yield handle
    finally:
        handle.shutdown()


@dataclass
class Received:
    """What a test Storage SCP was sent: per instance, the transfer syntax and Dataset."""

    datasets: list[Dataset] = field(default_factory=list)
    syntaxes: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class StorageSCP:
    """A Storage SCP of the test's own (the C-MOVE destination), on a free port."""

    def __init__(self, aet: str = "DEST", syntaxes: list[str] | None = None) -> None:
        self.aet = aet
        self.received = Received()
        self.on_store: list[Any] = []
        ae = AE(ae_title=aet)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, syntaxes or STORAGE_TRANSFER_SYNTAXES)
        self.server = ae.start_server(
            ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )
        self.port = self.server.server_address[1]

    def _store(self, event: evt.Event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        with self.received.lock:
            self.received.datasets.append(ds)
            self.received.syntaxes.append(str(event.context.transfer_syntax))
        for callback in self.on_store:
            callback(event)
        return 0x0000

    def shutdown(self) -> None:
        self.server.shutdown()


def associate(
    port: int,
    classes: list[str] | None = None,
    *,
    ae_title: str = "TESTSCU",
    syntaxes: list[str] | None = None,
    storage_roles: list[tuple[str, list[str]]] | None = None,
    acse_timeout: float = 30,
    **kwargs: Any,
) -> Association:
    """An association from a pynetdicom SCU to our listener.

    ``storage_roles``: (SOP Class, transfer syntaxes) we accept C-STOREs for, as SCP
    (C-GET); their C-STOREs land in ``kwargs["evt_handlers"]``.
    """
    ae = AE(ae_title=ae_title)
    ae.acse_timeout = acse_timeout
    for uid in classes or [Verification]:
        for ts in syntaxes or UNCOMPRESSED:  # one context each: the acceptor picks one
            ae.add_requested_context(uid, ts)
    roles = []
    for uid, syntaxes_for_uid in storage_roles or []:
        for ts in syntaxes_for_uid:
            ae.add_requested_context(uid, ts)
        roles.append(build_role(uid, scp_role=True))
    return ae.associate("127.0.0.1", port, ae_title="DICOMWEB", ext_neg=roles or None, **kwargs)


def require_search(archive: Archive) -> None:
    """Skip when ``archive.search`` is not implemented yet in this tree."""
    try:
        archive.search(Query(Level.STUDY, filters={"StudyInstanceUID": "1.2.3"}))
    except NotImplementedError:
        pytest.skip(
            "archive.search (archive/query.py) is not implemented yet in this tree; "
            "C-FIND and relational retrieve need it"
        )
