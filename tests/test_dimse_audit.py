"""DIMSE operations in the audit trail: real associations (pynetdicom SCU) against our
listener, the trail read back through the admin endpoint of a web server over the same
index, on SQLite and PostgreSQL (the ``settings`` fixture)."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest
import requests
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import evt
from pynetdicom.sop_class import (
    CTImageStorage,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)
from sqlalchemy import text

import dimse_scp
from dicomweb_server.archive import Archive
from tests.conftest import WebServer
from tests.dimse_fixtures import QR_CLASSES, StorageSCP, associate
from tests.factory import make_instance, make_series


def events(web: WebServer, **filters: str) -> list[dict[str, Any]]:
    response = requests.get(web.root + "/admin/audit", params=filters, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["events"]


def wait_for_events(web: WebServer, count: int, **filters: str) -> list[dict[str, Any]]:
    """The events once ``count`` of them are there: C-STORE rows are written when the
    association ends, which our listener sees just after the SCU's release returns."""
    deadline = time.monotonic() + 20
    found = events(web, **filters)
    while len(found) < count and time.monotonic() < deadline:
        time.sleep(0.1)
        found = events(web, **filters)
    return found


def store(port: int, datasets: list[Dataset], ae_title: str = "MODALITY1") -> list[int]:
    assoc = associate(port, [CTImageStorage], ae_title=ae_title)
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def identifier(level: str, **keys: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def test_c_store_leaves_one_row_per_association_and_study(
    dimse_server: dimse_scp.ServerHandle, web: WebServer
) -> None:
    first = make_series(3, PatientID="P1")
    second = make_series(2, PatientID="P2")
    bad = make_instance()
    bad.StudyInstanceUID = "../../x"  # refused by ingest, C000, before its study is known
    statuses = store(dimse_server.port, [*first, bad, *second])
    assert statuses == [0, 0, 0, 0xC000, 0, 0]

    trail = wait_for_events(web, 3, action="store")
    assert len(trail) == 3
    by_study = {e["study"]: e for e in trail}
    one, two, unknown = (
        by_study[first[0].StudyInstanceUID],
        by_study[second[0].StudyInstanceUID],
        by_study[""],
    )
    assert (one["instances"], one["status"], one["path"]) == (3, 0, "MODALITY1")
    assert (two["instances"], two["status"]) == (2, 0)
    assert (unknown["instances"], unknown["status"], unknown["path"]) == (
        0,
        0xC000,
        "MODALITY1?failed=1",
    )
    for entry in trail:
        assert entry["user"] == "MODALITY1"
        assert (entry["protocol"], entry["method"]) == ("DIMSE", "C-STORE")
        assert entry["address"].startswith("127.0.0.1:")
    # Queryable by study, like the web side's rows.
    assert [e["instances"] for e in events(web, study=first[0].StudyInstanceUID)] == [3]


def test_c_find_records_level_keys_and_matches(
    dimse_server: dimse_scp.ServerHandle, web: WebServer
) -> None:
    series = make_series(2, PatientID="PFIND")
    study = series[0].StudyInstanceUID
    assert store(dimse_server.port, series) == [0, 0]
    assoc = associate(dimse_server.port, QR_CLASSES, ae_title="VIEWER")
    assert assoc.is_established
    try:
        query = identifier("STUDY", PatientID="PFIND", StudyInstanceUID=study, PatientName="")
        found = list(assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind))
        bad = list(
            assoc.send_c_find(identifier("FRAME"), StudyRootQueryRetrieveInformationModelFind)
        )
    finally:
        assoc.release()
    assert [s.Status for s, _ in found] == [0xFF00, 0x0000]
    assert bad[-1][0].Status == 0xA900

    trail = events(web, user="VIEWER", action="search")
    assert [(e["method"], e["status"]) for e in trail] == [("C-FIND", 0xA900), ("C-FIND", 0)]
    failed, answered = trail
    # The level first, then the match keys given; PatientName was a return key only.
    assert (
        answered["path"]
        == f"VIEWER?QueryRetrieveLevel=STUDY&PatientID=PFIND&StudyInstanceUID={study}"
    )
    assert (answered["study"], answered["instances"], answered["protocol"]) == (study, 1, "DIMSE")
    assert answered["address"].startswith("127.0.0.1:")
    assert (failed["path"], failed["study"], failed["instances"]) == (
        "VIEWER?QueryRetrieveLevel=FRAME",
        "",
        0,
    )


def _move(port: int, query: Dataset, destination: str, model: str) -> list[int]:
    assoc = associate(port, QR_CLASSES, ae_title="WORKSTATION")
    assert assoc.is_established
    try:
        return [int(s.Status) for s, _ in assoc.send_c_move(query, destination, model)]
    finally:
        assoc.release()


def test_c_move_records_destination_count_and_status_per_study(
    mover: dimse_scp.ServerHandle, destination: StorageSCP, web: WebServer
) -> None:
    first = make_series(3, PatientID="PMOVE")
    second = make_series(2, PatientID="PMOVE")
    assert store(mover.port, [*first, *second]) == [0] * 5
    study = first[0].StudyInstanceUID

    statuses = _move(
        mover.port,
        identifier("STUDY", StudyInstanceUID=study),
        "DEST",
        StudyRootQueryRetrieveInformationModelMove,
    )
    assert statuses[-1] == 0
    unknown = _move(
        mover.port,
        identifier("STUDY", StudyInstanceUID=study),
        "NOWHERE",
        StudyRootQueryRetrieveInformationModelMove,
    )
    assert unknown[-1] == 0xA801
    # PATIENT level: both studies move, one row each with its own count.
    patient = _move(
        mover.port,
        identifier("PATIENT", PatientID="PMOVE"),
        "DEST",
        PatientRootQueryRetrieveInformationModelMove,
    )
    assert patient[-1] == 0
    assert len(destination.received.datasets) == 3 + 5

    trail = list(reversed(events(web, user="WORKSTATION", action="retrieve")))
    assert [(e["method"], e["study"], e["instances"], e["status"]) for e in trail] == [
        ("C-MOVE", study, 3, 0),
        ("C-MOVE", study, 0, 0xA801),
        ("C-MOVE", study, 3, 0),
        ("C-MOVE", second[0].StudyInstanceUID, 2, 0),
    ]
    assert trail[0]["path"] == (
        f"WORKSTATION -> DEST?QueryRetrieveLevel=STUDY&StudyInstanceUID={study}"
        "&completed=3&failed=0&warning=0"
    )
    assert trail[1]["path"].startswith("WORKSTATION -> NOWHERE?")
    assert trail[2]["path"] == (
        "WORKSTATION -> DEST?QueryRetrieveLevel=PATIENT&PatientID=PMOVE"
        "&completed=5&failed=0&warning=0"
    )
    assert all(e["address"].startswith("127.0.0.1:") for e in trail)


def test_c_get_records_count_and_status(
    dimse_server: dimse_scp.ServerHandle, web: WebServer
) -> None:
    series = make_series(2, PatientID="PGET")
    study = series[0].StudyInstanceUID
    assert store(dimse_server.port, series) == [0, 0]
    received: list[Dataset] = []

    def on_store(event: evt.Event) -> int:
        received.append(event.dataset)
        return 0

    assoc = associate(
        dimse_server.port,
        QR_CLASSES,
        ae_title="GETTER",
        storage_roles=[(CTImageStorage, [ExplicitVRLittleEndian])],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    try:
        query = identifier("STUDY", StudyInstanceUID=study)
        statuses = [
            s.Status for s, _ in assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet)
        ]
    finally:
        assoc.release()
    assert statuses[-1] == 0 and len(received) == 2

    (entry,) = events(web, user="GETTER")
    assert (entry["action"], entry["method"], entry["study"], entry["instances"]) == (
        "retrieve",
        "C-GET",
        study,
        2,
    )
    assert entry["status"] == 0
    assert entry["path"] == (
        f"GETTER?QueryRetrieveLevel=STUDY&StudyInstanceUID={study}&completed=2&failed=0&warning=0"
    )


def test_an_index_refusing_the_trail_fails_no_operation(
    dimse_server: dimse_scp.ServerHandle, archive: Archive, caplog: pytest.LogCaptureFixture
) -> None:
    """The audit table gone: C-STORE and C-FIND still answer Success, the refusal is
    logged, and the entries are still in the ``dicomweb_server.audit`` log."""
    with archive.writer_engine.begin() as connection:
        connection.execute(text("ALTER TABLE audit_events RENAME TO audit_events_away"))
    try:
        _operate_without_trail(dimse_server, caplog)
    finally:
        with archive.writer_engine.begin() as connection:
            connection.execute(text("ALTER TABLE audit_events_away RENAME TO audit_events"))
    assert archive.count_instances() == 2


def _operate_without_trail(
    dimse_server: dimse_scp.ServerHandle, caplog: pytest.LogCaptureFixture
) -> None:
    series = make_series(2, PatientID="PNOAUDIT")
    with caplog.at_level(logging.INFO):
        assert store(dimse_server.port, series) == [0, 0]
        assoc = associate(dimse_server.port, QR_CLASSES)
        assert assoc.is_established
        try:
            query = identifier("STUDY", PatientID="PNOAUDIT")
            found = list(assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind))
        finally:
            assoc.release()
        assert [s.Status for s, _ in found] == [0xFF00, 0x0000]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any(
            "index refused" in r.getMessage() for r in caplog.records
        ):
            time.sleep(0.1)
    assert any("index refused" in r.getMessage() for r in caplog.records)
    logged = [r.audit for r in caplog.records if r.name == "dicomweb_server.audit"]  # type: ignore[attr-defined]
    assert {e["method"] for e in logged} >= {"C-STORE", "C-FIND"}
