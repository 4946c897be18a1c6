"""Hostile and oversized input over real sockets: refused with the right status, harmless.

* UIDs in URLs that try to leave the data folder (``..``, ``%2F``, NUL, control
  characters, 65+ characters) are answered 400 (or 404 when the path no longer matches a
  route) and touch nothing on disk;
* QIDO values full of SQL and LIKE metacharacters match literally;
* a data set whose UIDs are ``../../x`` is refused by ingest through STOW-RS and C-STORE;
* ``http.max_request_size`` and ``http.max_parts`` give 413 (RFC 9110 15.5.14), with
  Content-Length and with chunked transfer coding; ``ingest.max_instance_size`` gives
  A700 over DIMSE too; a QIDO ``limit`` over ``http.qido_max_limit`` is reduced to it
  (PS3.18 8.3.4.4.1);
* DIMSE: association number ``max_associations + 1`` is rejected (A-ASSOCIATE-RJ) and an
  idle association is aborted after ``network_timeout``.
"""

from __future__ import annotations

import http.client
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from pydicom.uid import CTImageStorage
from pynetdicom import AE
from pynetdicom.sop_class import Verification

import dimse_scp
from dicomweb_server.archive import Archive
from dicomweb_server.config import Settings
from tests.conftest import WebServer, make_settings
from tests.dimse_fixtures import UNCOMPRESSED, associate, with_dimse
from tests.factory import make_instance, make_series, to_bytes, uid
from tests.test_stow import content_type, failures, multipart, stored_uids

DICOM_JSON = "application/dicom+json"


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


def snapshot(root: Path) -> set[tuple[str, int]]:
    """Every file under ``root`` with its size (the index may grow; files must not)."""
    return {
        (str(p.relative_to(root)), p.stat().st_size)
        for p in root.rglob("*")
        if p.is_file() and "index.sqlite" not in p.name
    }


@pytest.fixture
def served(tmp_path: Path, database_url: str) -> Iterator[tuple[Settings, Archive, WebServer]]:
    settings = make_settings(tmp_path / "data", database_url)
    archive = Archive(settings)
    web = WebServer(settings, archive)
    yield settings, archive, web
    web.stop()
    archive.close()


def limited(
    tmp_path: Path, database_url: str = "", **sections: dict
) -> tuple[Settings, Archive, WebServer]:
    settings = make_settings(tmp_path / f"data-{uuid.uuid4().hex[:6]}", database_url, **sections)
    archive = Archive(settings)
    return settings, archive, WebServer(settings, archive)


# -- bad identifiers in URLs --------------------------------------------------------------

GOOD = "1.2.3.4"
BAD_UIDS = [
    "..%2F..%2Fetc",  # decoded to slashes: another path, no route (404) or 400
    "..",
    "1.2.3%00",
    "1.2.3%00.dcm",
    "1.2.%0A3",
    "1.2%0D%0A.3",
    "1.2.%013",
    "1" + ".1" * 32,  # 65 characters
    "9" * 65,
    "1.2.-3",
    "1.2.3%20",
    "%2E%2E",
    "1.02.3",
    "%E2%80%AE1.2",
]
RESOURCES = [
    ("GET", "/studies/{u}"),
    ("GET", "/studies/{u}/metadata"),
    ("GET", "/studies/{g}/series/{u}"),
    ("GET", "/studies/{g}/series/{g}/instances/{u}"),
    ("GET", "/studies/{g}/series/{g}/instances/{u}/frames/1"),
    ("GET", "/studies/{u}/series"),
    ("GET", "/studies/{g}/series/{u}/instances"),
    ("POST", "/studies/{u}"),
    ("DELETE", "/studies/{u}"),
    ("DELETE", "/studies/{g}/series/{g}/instances/{u}"),
]


def test_malformed_uids_in_urls_are_refused_and_touch_nothing(served, tmp_path: Path) -> None:
    _settings, archive, web = served
    stored = make_instance()
    assert (
        requests.post(
            web.url + "/studies",
            data=multipart([to_bytes(stored)]),
            headers={"Content-Type": content_type()},
            timeout=30,
        ).status_code
        == 200
    )
    sentinel = tmp_path / "etc" / "passwd"
    sentinel.parent.mkdir()
    sentinel.write_text("keep me")
    before = snapshot(tmp_path)
    body = multipart([to_bytes(make_instance())])
    for method, template in RESOURCES:
        for bad in BAD_UIDS:
            path = "/dicom-web" + template.format(u=bad, g=GOOD)
            # http.client sends the path as given (requests would remove dot segments).
            connection = http.client.HTTPConnection("127.0.0.1", web.port, timeout=30)
            try:
                connection.request(
                    method,
                    path,
                    body=body if method == "POST" else None,
                    headers={"Content-Type": content_type()} if method == "POST" else {},
                )
                status = connection.getresponse().status
            finally:
                connection.close()
            # A UID that decodes to path separators makes another path that matches no
            # route (404); every UID that reaches a route is checked (400).
            allowed = {400, 404} if "%2F" in bad else {400}
            assert status in allowed, (method, path, status)
    assert snapshot(tmp_path) == before
    assert sentinel.read_text() == "keep me"
    assert archive.count_instances() == 1


# -- QIDO values are literal -------------------------------------------------------------

NASTY_IDS = ["A%B", "A_B", "O'Brien", 'Q"uote', "x;--", "x' OR '1'='1", "50%", "a\\b"]


def test_qido_values_with_sql_and_like_metacharacters_match_literally(served) -> None:
    _settings, _archive, web = served
    studies = {}
    for value in [*NASTY_IDS, "AXB", "AxxB", "OBrien", "500"]:
        ds = make_instance(PatientID=value.replace("\\", "/"))
        studies[value] = ds.StudyInstanceUID
        response = requests.post(
            web.url + "/studies",
            data=multipart([to_bytes(ds)]),
            headers={"Content-Type": content_type()},
            timeout=30,
        )
        assert response.status_code == 200, response.text
    for value in NASTY_IDS:
        response = requests.get(web.url + "/studies", params={"PatientID": value}, timeout=30)
        if "\\" in value:
            # A backslash separates values (PS3.5 6.2); never a server error.
            assert response.status_code in (200, 400)
            continue
        assert response.status_code == 200, (value, response.text)
        found = {s["0020000D"]["Value"][0] for s in response.json()}
        assert found == {studies[value]}, value
    # Table still there, nothing dropped or widened.
    everything = requests.get(web.url + "/studies", timeout=30).json()
    assert len(everything) == len(studies)
    keys = ("PatientName", "StudyDescription", "AccessionNumber", "00100020", "ModalitiesInStudy")
    for key in keys:
        for value in [*NASTY_IDS, "%", "_", "*%*", "\0", "\x01", "é", "😀" * 40]:
            response = requests.get(web.url + "/studies", params={key: value}, timeout=30)
            assert response.status_code in (200, 400), (key, value, response.text)


BAD_COUNTS = ["1.5", "-1", "\u00b2", "\uff11", "1e3", "9" * 30, "9" * 5000, " 1"]


@pytest.mark.parametrize("value", BAD_COUNTS)
def test_qido_bad_limit_and_offset_are_400(served, value: str) -> None:
    _settings, _archive, web = served
    for name in ("limit", "offset"):
        response = requests.get(web.url + "/studies", params={name: value}, timeout=30)
        assert response.status_code == 400, (name, value, response.text)


# -- UIDs that are paths, inside the data set ---------------------------------------------


def traversal_instance() -> bytes:
    ds = make_instance()
    ds.StudyInstanceUID = "../../x"
    ds.SeriesInstanceUID = "../../../y"
    return to_bytes(ds)


def test_dataset_with_path_uids_is_refused_by_stow(served, tmp_path: Path) -> None:
    settings, archive, web = served
    response = requests.post(
        web.url + "/studies",
        data=multipart([traversal_instance()]),
        headers={"Content-Type": content_type()},
        timeout=30,
    )
    # Every instance refused as not understood: 400 (PS3.18 Table 10.5.3-1).
    assert response.status_code == 400, response.text
    assert [reason for _, reason in failures(response.json())] == [0xC000]
    assert not any(p.name in ("x", "y") for p in tmp_path.rglob("*"))
    assert list((settings.storage.data_dir / ".tmp").iterdir()) == []
    assert archive.count_instances() == 0


def test_dataset_with_path_uids_is_refused_by_c_store(settings: Settings, tmp_path: Path) -> None:
    archive = Archive(settings)
    handle = dimse_scp.start(settings, archive)
    try:
        ds = make_instance()
        ds.StudyInstanceUID = "../../x"
        ds.SeriesInstanceUID = "../../../y"
        assoc = associate(handle.port, [CTImageStorage])
        assert assoc.is_established
        try:
            status = assoc.send_c_store(ds)
        finally:
            assoc.release()
        assert status.Status == 0xC000
        assert not any(p.name in ("x", "y") for p in tmp_path.rglob("*"))
        assert list((settings.storage.data_dir / ".tmp").iterdir()) == []
        assert archive.count_instances() == 0
    finally:
        handle.shutdown()
        archive.close()


# -- request size and parts ------------------------------------------------------------------


def test_body_over_max_request_size_with_content_length_is_413(tmp_path: Path) -> None:
    _settings, archive, web = limited(tmp_path, http={"max_request_size": 20_000})
    try:
        series = make_series(4, rows=64, columns=64)  # ~8.7 kB each
        body = multipart([to_bytes(d) for d in series])
        assert len(body) > 20_000
        response = requests.post(
            web.url + "/studies", data=body, headers={"Content-Type": content_type()}, timeout=30
        )
        assert response.status_code == 413
        assert "http.max_request_size" in response.json()["error"]
        assert archive.count_instances() == 0
        # A body within the limit still works.
        small = multipart([to_bytes(series[0])])
        ok = requests.post(
            web.url + "/studies", data=small, headers={"Content-Type": content_type()}, timeout=30
        )
        assert ok.status_code == 200
    finally:
        web.stop()
        archive.close()


def test_chunked_body_over_max_request_size_stops_at_the_limit(tmp_path: Path) -> None:
    """The size of a chunked body is known only while reading: reading stops at the
    limit; what was stored before stays stored and is listed; nothing partial remains."""
    settings, archive, web = limited(tmp_path, http={"max_request_size": 20_000})
    try:
        series = make_series(6, rows=64, columns=64)
        body = multipart([to_bytes(d) for d in series])
        chunks = (body[i : i + 4096] for i in range(0, len(body), 4096))
        response = requests.post(
            web.url + "/studies", data=chunks, headers={"Content-Type": content_type()}, timeout=30
        )
        assert response.request.headers.get("Transfer-Encoding") == "chunked"
        assert response.status_code == 413
        stored = stored_uids(archive, series[0].StudyInstanceUID)
        assert stored == {d.SOPInstanceUID for d in series[: len(stored)]}
        assert 1 <= len(stored) < len(series)
        listed = {i["00081155"]["Value"][0] for i in response.json()["00081199"]["Value"]}
        assert listed == stored
        assert "max_request_size" in response.headers["Warning"]
        assert list((settings.storage.data_dir / ".tmp").iterdir()) == []
    finally:
        web.stop()
        archive.close()


def test_bare_chunked_dicom_body_over_the_limit_is_413(tmp_path: Path) -> None:
    _settings, archive, web = limited(tmp_path, http={"max_request_size": 5_000})
    try:
        data = to_bytes(make_instance(rows=64, columns=64))
        chunks = (data[i : i + 1000] for i in range(0, len(data), 1000))
        response = requests.post(
            web.url + "/studies",
            data=chunks,
            headers={"Content-Type": "application/dicom"},
            timeout=30,
        )
        assert response.status_code == 413
        assert archive.count_instances() == 0
    finally:
        web.stop()
        archive.close()


def test_parts_over_max_parts_is_413_and_earlier_parts_are_kept(tmp_path: Path) -> None:
    _settings, archive, web = limited(tmp_path, http={"max_parts": 3})
    try:
        series = make_series(5)
        response = requests.post(
            web.url + "/studies",
            data=multipart([to_bytes(d) for d in series]),
            headers={"Content-Type": content_type()},
            timeout=30,
        )
        assert response.status_code == 413
        assert "max_parts" in response.headers["Warning"]
        assert stored_uids(archive, series[0].StudyInstanceUID) == {
            d.SOPInstanceUID for d in series[:3]
        }
        exact = make_series(3)
        ok = requests.post(
            web.url + "/studies",
            data=multipart([to_bytes(d) for d in exact]),
            headers={"Content-Type": content_type()},
            timeout=30,
        )
        assert ok.status_code == 200
    finally:
        web.stop()
        archive.close()


def test_many_empty_parts_do_not_hang_or_crash(tmp_path: Path) -> None:
    _settings, archive, web = limited(tmp_path, http={"max_parts": 1000})
    try:
        body = b"".join(b"--b\r\n\r\n\r\n" for _ in range(5000)) + b"--b--\r\n"
        start = time.monotonic()
        response = requests.post(
            web.url + "/studies", data=body, headers={"Content-Type": content_type("b")}, timeout=30
        )
        assert response.status_code == 413
        assert time.monotonic() - start < 10
    finally:
        web.stop()
        archive.close()


def test_instance_over_max_instance_size_is_a700_over_dimse(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "d", "", ingest={"max_instance_size": 4000})
    archive = Archive(settings)
    handle = dimse_scp.start(settings, archive)
    try:
        assoc = associate(handle.port, [CTImageStorage])
        try:
            big = assoc.send_c_store(make_instance(rows=64, columns=64))
            small = assoc.send_c_store(make_instance(rows=4, columns=4))
        finally:
            assoc.release()
        assert big.Status == 0xA700
        assert small.Status == 0x0000
        assert archive.count_instances() == 1
    finally:
        handle.shutdown()
        archive.close()


# -- QIDO limit ceiling ---------------------------------------------------------------------


def test_qido_limit_over_the_ceiling_is_reduced_with_a_warning(tmp_path: Path) -> None:
    _settings, archive, web = limited(tmp_path, http={"qido_max_limit": 2})
    try:
        for _ in range(3):
            archive.store(Path(_write(tmp_path, make_instance())), _origin())
        for params in ({"limit": "1000"}, {}):
            response = requests.get(web.url + "/studies", params=params, timeout=30)
            assert response.status_code == 200
            assert len(response.json()) == 2
            assert "additional results" in response.headers["Warning"]
        assert len(requests.get(web.url + "/studies", params={"offset": 2}).json()) == 1
    finally:
        web.stop()
        archive.close()


def _write(folder: Path, ds) -> Path:  # type: ignore[no-untyped-def]
    path = folder / f"{uid()}.dcm"
    path.write_bytes(to_bytes(ds))
    return path


def _origin():  # type: ignore[no-untyped-def]
    from dicomweb_server.archive import Origin

    return Origin("IMPORT")


# -- DIMSE ----------------------------------------------------------------------------------


def test_association_over_max_associations_is_rejected(settings: Settings) -> None:
    settings = with_dimse(settings, max_associations=2)
    archive = Archive(settings)
    handle = dimse_scp.start(settings, archive)
    opened = []
    try:
        for _ in range(2):
            assoc = associate(handle.port)
            assert assoc.is_established
            opened.append(assoc)
        extra = associate(handle.port)
        assert extra.is_rejected
        # A-ASSOCIATE-RJ, rejected-transient, source service-provider (presentation),
        # reason local-limit-exceeded (PS3.8 Table 9-21).
        assert extra.acceptor.primitive.result == 0x02
        assert extra.acceptor.primitive.result_source == 0x03
        assert extra.acceptor.primitive.diagnostic == 0x02
        opened.pop().release()
        time.sleep(0.3)
        again = associate(handle.port)
        assert again.is_established
        again.release()
    finally:
        for assoc in opened:
            assoc.release()
        handle.shutdown()
        archive.close()


def test_idle_association_is_aborted_after_network_timeout(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "d", "", dimse={"network_timeout": 1.0})
    archive = Archive(settings)
    handle = dimse_scp.start(settings, archive)
    try:
        ae = AE(ae_title="IDLE")
        for ts in UNCOMPRESSED:
            ae.add_requested_context(Verification, ts)
        ae.network_timeout = 60  # the SCU would wait; the server must not
        assoc = ae.associate("127.0.0.1", handle.port, ae_title="DICOMWEB")
        assert assoc.is_established
        deadline = time.monotonic() + 10
        while assoc.is_established and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not assoc.is_established
        assert assoc.is_aborted or assoc.is_released
        while handle.server.active_associations and time.monotonic() < deadline:
            time.sleep(0.1)  # the acceptor thread is finishing
        assert time.monotonic() < deadline
        assert not handle.server.active_associations
    finally:
        handle.shutdown()
        archive.close()


def test_silent_tcp_connection_is_dropped_after_acse_timeout(tmp_path: Path) -> None:
    import socket

    settings = make_settings(tmp_path / "d", "", dimse={"acse_timeout": 1.0})
    archive = Archive(settings)
    handle = dimse_scp.start(settings, archive)
    try:
        with socket.create_connection(("127.0.0.1", handle.port), timeout=10) as sock:
            start = time.monotonic()
            data = sock.recv(1024)  # the server gives up: closes (maybe after an A-ABORT)
            while data:
                data = sock.recv(1024)
            assert time.monotonic() - start < 8
    finally:
        handle.shutdown()
        archive.close()
