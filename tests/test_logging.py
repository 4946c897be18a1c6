"""Structured logs: request and association ids on every line, no patient data at INFO.

Logging is configured exactly as the command line does (:func:`logs.configure`, JSON
format) and the lines are read back from standard error, as a log collector would.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from pydicom.uid import CTImageStorage

from dicomweb_server import logs
from dicomweb_server.archive import Archive
from dicomweb_server.config import LogSettings, Settings
from tests.conftest import WebServer
from tests.dimse_fixtures import associate, running_server
from tests.factory import make_instance, to_bytes

NAME = "Quixotic^Zebulon"  # distinctive: found in a log line only if it leaked there
PATIENT_ID = "ZQX-4471-PID"


class JsonLog:
    """The process's logging, configured as ``log.format = "json"``, read back."""

    def __init__(self, stream: io.StringIO) -> None:
        self.stream = stream

    def read(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stream.getvalue().splitlines()]


@pytest.fixture
def json_log() -> Iterator[JsonLog]:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    chatty = {name: logging.getLogger(name).level for name in ("pynetdicom", "alembic")}
    logs.configure(LogSettings(level="INFO", format="json"))
    stream = io.StringIO()  # instead of standard error, which pytest captures itself
    [handler] = root.handlers
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(stream)
    try:
        yield JsonLog(stream)
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
        for name, level in chatty.items():
            logging.getLogger(name).setLevel(level)


@pytest.fixture
def dimse_server(settings: Settings, archive: Archive):  # type: ignore[no-untyped-def]
    yield from running_server(settings, archive)


def _stow(url: str, body: bytes, **headers: str) -> requests.Response:
    boundary = "log-test"
    data = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + body
        + f"\r\n--{boundary}--\r\n".encode()
    )
    ctype = f'multipart/related; type="application/dicom"; boundary={boundary}'
    return requests.post(
        url + "/studies", data=data, headers={"Content-Type": ctype, **headers}, timeout=60
    )


def test_request_id_is_echoed_and_on_every_line_of_the_request(
    web: WebServer, json_log: JsonLog
) -> None:
    response = _stow(web.url, to_bytes(make_instance()), **{"X-Request-ID": "trace-7f3a.1"})
    assert response.status_code == 200
    assert response.headers["X-Request-ID"] == "trace-7f3a.1"
    mine = [line for line in json_log.read() if line.get("request_id") == "trace-7f3a.1"]
    # The audit line of the request, logged from an after_request hook, carries it.
    assert any(line["logger"] == "dicomweb_server.audit" for line in mine)


@pytest.mark.parametrize("offered", ["", "has space", "x" * 129, "semi;colon"])
def test_malformed_request_ids_are_replaced(web: WebServer, offered: str) -> None:
    response = requests.get(web.url + "/studies", headers={"X-Request-ID": offered}, timeout=30)
    given = response.headers["X-Request-ID"]
    assert given != offered
    assert len(given) == 32 and int(given, 16) >= 0


def test_each_request_gets_its_own_id(web: WebServer) -> None:
    ids = {requests.get(web.url + "/studies", timeout=30).headers["X-Request-ID"] for _ in range(3)}
    assert len(ids) == 3


def test_association_id_is_on_every_line_of_the_association(
    dimse_server,
    json_log: JsonLog,  # type: ignore[no-untyped-def]
) -> None:
    assoc = associate(dimse_server.port, [CTImageStorage])
    assert assoc.is_established
    broken = make_instance()
    del broken.StudyInstanceUID  # refused by ingest: the handler logs a warning
    assert assoc.send_c_store(broken).Status != 0
    assoc.release()
    deadline_lines: list[dict[str, Any]] = []
    for _ in range(100):  # the summary is logged when pynetdicom closes the connection
        deadline_lines = json_log.read()
        if any(line["message"] == "association" for line in deadline_lines):
            break
        dimse_server.thread.join(0.05)
    [summary] = [line for line in deadline_lines if line["message"] == "association"]
    [warning] = [line for line in deadline_lines if line["message"].startswith("C-STORE of")]
    assert summary["association_id"] == warning["association_id"]
    assert len(summary["association_id"]) == 32
    assert "request_id" not in warning


def test_no_patient_name_or_id_in_info_lines(
    web: WebServer,
    dimse_server,
    json_log: JsonLog,  # type: ignore[no-untyped-def]
) -> None:
    over_http = make_instance(PatientName=NAME, PatientID=PATIENT_ID)
    assert _stow(web.url, to_bytes(over_http)).status_code == 200
    assoc = associate(dimse_server.port, [CTImageStorage])
    assert assoc.is_established
    assert assoc.send_c_store(make_instance(PatientName=NAME, PatientID=PATIENT_ID)).Status == 0
    assoc.release()
    found = requests.get(
        web.url + "/studies",
        params={"PatientName": "Quixotic*", "PatientID": PATIENT_ID, "limit": "5"},
        timeout=30,
    )
    assert found.status_code == 200 and len(found.json()) >= 1
    requests.get(f"{web.url}/studies/{over_http.StudyInstanceUID}/metadata", timeout=30)
    for _ in range(100):  # until the association's summary line is out
        lines = json_log.read()
        if any(line["message"] == "association" for line in lines):
            break
        dimse_server.thread.join(0.05)
    # werkzeug's access log is the test server's (``serve`` runs gunicorn, access log off).
    info = [
        json.dumps(line)
        for line in lines
        if line["level"] == "INFO" and line["logger"] != "werkzeug"
    ]
    assert any("dicomweb_server.audit" in line and "PatientName" in line for line in info), (
        "the search's audit line should name the key it searched by"
    )
    for text in info:
        for secret in ("Quixotic", "Zebulon", PATIENT_ID):
            assert secret not in text, f"{secret!r} in an INFO log line: {text}"
