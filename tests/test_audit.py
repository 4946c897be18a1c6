"""The audit trail: recorded for every DICOMweb request, queried by admins over HTTP."""

from __future__ import annotations

import datetime as dt
import logging

import pytest
import requests

from dicomweb_server.archive import Archive, audit
from tests.auth_fixtures import Keys, start, stop
from tests.conftest import WebServer, make_settings
from tests.test_auth import bearer, get, stow


@pytest.fixture
def auth_db(database_url: str) -> str:
    """The audit trail lives in the index: run on SQLite and PostgreSQL."""
    return database_url


def events(web: WebServer, key: str, **filters: str) -> list[dict]:
    response = requests.get(
        web.root + "/admin/audit", params=filters, headers=bearer(key), timeout=30
    )
    assert response.status_code == 200, response.text
    return response.json()["events"]


def test_store_search_retrieve_delete_are_recorded(secured: WebServer, keys: Keys) -> None:
    from tests.factory import make_series

    series = make_series(2)
    study = series[0].StudyInstanceUID
    assert stow(secured, series, **bearer(keys.writer)).status_code == 200
    assert get(secured, f"/studies/{study}/series", **bearer(keys.reader)).status_code == 200
    assert get(secured, f"/studies/{study}/metadata", **bearer(keys.reader)).status_code == 200
    path = f"{secured.url}/studies/{study}"
    assert requests.delete(path, headers=bearer(keys.deleter), timeout=30).status_code == 204

    trail = events(secured, keys.admin, study=study)
    assert [(e["action"], e["user"], e["method"], e["status"]) for e in reversed(trail)] == [
        ("store", "apikey:writer", "POST", 200),
        ("search", "apikey:reader", "GET", 200),
        ("retrieve", "apikey:reader", "GET", 200),
        ("delete", "apikey:deleter", "DELETE", 204),
    ]
    stored = trail[-1]
    assert stored["instances"] == 2  # from the STOW-RS response's Referenced SOP Sequence
    assert stored["path"] == "/dicom-web/studies"
    assert stored["address"] == "127.0.0.1"
    assert stored["protocol"] == "DICOMweb"
    assert all(e["study"] == study for e in trail)
    assert dt.datetime.fromisoformat(stored["at"]).tzinfo is not None


def test_filters_and_limits(secured: WebServer, keys: Keys) -> None:
    before = dt.datetime.now(dt.UTC)
    for _ in range(3):
        get(secured, "/studies?PatientID=P1", **bearer(keys.reader))
    get(secured, "/studies", **bearer(keys.writer))
    mine = events(secured, keys.admin, user="apikey:reader", action="search")
    assert len(mine) == 3
    assert mine[0]["path"] == "/dicom-web/studies?PatientID=P1"
    assert len(events(secured, keys.admin, user="apikey:reader", limit="2")) == 2
    assert len(events(secured, keys.admin, user="apikey:reader", offset="2")) == 1
    assert len(events(secured, keys.admin, since=before.isoformat(), action="search")) == 4
    assert events(secured, keys.admin, until=before.isoformat(), action="search") == []
    # The admin's own queries are in the trail too.
    assert events(secured, keys.admin, action="audit", user="apikey:auditor")
    for bad in (
        {"limit": "0"},
        {"limit": "x"},
        {"since": "yesterday"},
        {"action": "steal"},
        {"study": "not-a-uid"},
    ):
        response = requests.get(
            secured.root + "/admin/audit", params=bad, headers=bearer(keys.admin), timeout=30
        )
        assert response.status_code == 400, bad


def test_refusals_are_recorded_but_probes_and_preflight_are_not(
    secured: WebServer, keys: Keys
) -> None:
    before = dt.datetime.now(dt.UTC).isoformat()
    requests.get(secured.root + "/health", timeout=10)
    requests.get(secured.root + "/ready", timeout=10)
    requests.options(
        secured.url + "/studies",
        headers={"Origin": "https://v.example", "Access-Control-Request-Method": "GET"},
        timeout=10,
    )
    get(secured, "/studies")  # no credentials: 401
    stow(secured, [], **bearer(keys.reader))  # lacks write: 403
    trail = events(secured, keys.admin, since=before)
    seen = [(e["user"], e["action"], e["status"]) for e in reversed(trail)]
    assert seen[:2] == [("", "search", 401), ("apikey:reader", "store", 403)]
    assert not any("/health" in e["path"] or "/ready" in e["path"] for e in trail)
    assert not any(e["method"] == "OPTIONS" for e in trail)


def test_entries_go_to_the_structured_log(
    secured: WebServer, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="dicomweb_server.audit"):
        get(secured, "/studies", **bearer(keys.reader))
    records = [r for r in caplog.records if r.name == "dicomweb_server.audit"]
    assert records, "no audit log record"
    fields = records[-1].audit  # type: ignore[attr-defined]
    assert fields["user"] == "apikey:reader"
    assert fields["action"] == "search"
    assert fields["status"] == 200


def test_audit_table_can_be_turned_off(tmp_path, database_url: str) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(tmp_path / "d", database_url, auth={"audit": False})
    server, archive = start(settings)
    try:
        assert get(server, "/studies").status_code in (200, 204)
        assert requests.get(server.root + "/admin/audit", timeout=10).json()["events"] == []
    finally:
        stop(server, archive)


# -- the core API the DIMSE front calls -------------------------------------------------


def test_record_and_query_in_the_core(archive: Archive) -> None:
    study = "1.2.3.4"
    at = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    audit.record(
        archive.writer_engine,
        audit.Entry(
            user="CT1",
            action=audit.Action.STORE,
            protocol="DIMSE",
            method="C-STORE",
            path="CT1",
            study_uid=study,
            address="10.0.0.5:40312",
            status=0,
            instances=12,
            at=at,
        ),
        audit.Entry("CT1", audit.Action.SEARCH, "DIMSE", "C-FIND", at=at + dt.timedelta(1)),
    )
    found = audit.query(archive.reader_engine, study_uid=study)
    assert len(found) == 1 and found[0].instances == 12 and found[0].at == at
    assert [e.method for e in audit.query(archive.reader_engine, user="CT1")] == [
        "C-FIND",
        "C-STORE",
    ]
    assert audit.query(archive.reader_engine, since=at + dt.timedelta(hours=1))[0].method == (
        "C-FIND"
    )


def test_writer_batches_and_flushes(archive: Archive) -> None:
    writer = audit.AuditWriter(archive.writer_engine, interval=0.2)
    try:
        for i in range(300):
            writer.submit(audit.Entry(f"u{i % 3}", audit.Action.RETRIEVE, "DICOMweb", "GET"))
        assert writer.flush()
        assert len(audit.query(archive.reader_engine, limit=1000)) == 300
        assert len(audit.query(archive.reader_engine, user="u1", limit=1000)) == 100
    finally:
        writer.close()
    # close() writes what is still queued.
    writer = audit.AuditWriter(archive.writer_engine, interval=5)
    writer.submit(audit.Entry("late", audit.Action.OTHER, "DICOMweb", "GET"))
    writer.close()
    assert len(audit.query(archive.reader_engine, user="late")) == 1
