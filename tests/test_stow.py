"""STOW-RS over a real socket: dicomweb-client, raw requests, chunked and large uploads."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from pydicom import Dataset, dcmread
from pydicom.uid import JPEG2000Lossless, RLELossless

from dicomweb_server.archive import Archive, NotFound
from dicomweb_server.config import Settings
from tests.conftest import WebServer, make_settings
from tests.factory import make_instance, make_series, to_bytes, uid
from tests.large_stream import LargeInstance

DICOM_JSON = "application/dicom+json"


def multipart(
    parts: list[bytes], boundary: str = "xBOUNDARYx", part_type: str = "application/dicom"
) -> bytes:
    out = bytearray()
    for part in parts:
        out += f"--{boundary}\r\nContent-Type: {part_type}\r\n\r\n".encode() + part + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out)


def content_type(
    boundary: str = "xBOUNDARYx", quoted: bool = True, part_type: str | None = "application/dicom"
) -> str:
    b = f'"{boundary}"' if quoted else boundary
    t = "" if part_type is None else (f'; type="{part_type}"' if quoted else f"; type={part_type}")
    return f"multipart/related{t}; boundary={b}"


def post(
    web: WebServer, data: object, ctype: str, path: str = "/studies", **headers: str
) -> requests.Response:
    return requests.post(
        web.url + path, data=data, headers={"Content-Type": ctype, **headers}, timeout=60
    )


def stored_uids(archive: Archive, study: str) -> set[str]:
    try:
        return {i.sop_uid for i in archive.instances(study)}
    except NotFound:
        return set()


def failures(body: dict) -> list[tuple[str, int]]:
    return [
        (item.get("00081155", {}).get("Value", [""])[0], item["00081197"]["Value"][0])
        for item in body.get("00081198", {}).get("Value", [])
    ]


# -- dicomweb-client ---------------------------------------------------------------


def test_dicomweb_client_store_single_and_many(dicomweb, web: WebServer, archive: Archive) -> None:  # type: ignore[no-untyped-def]
    one = make_instance()
    result = dicomweb.store_instances([one])
    [item] = result.ReferencedSOPSequence
    assert item.ReferencedSOPInstanceUID == one.SOPInstanceUID
    assert item.ReferencedSOPClassUID == one.SOPClassUID
    # dicomweb-client sends "Host: 127.0.0.1" without the port, so compare paths only.
    assert item.RetrieveURL.endswith(
        f"/dicom-web/studies/{one.StudyInstanceUID}/series/{one.SeriesInstanceUID}"
        f"/instances/{one.SOPInstanceUID}"
    )
    assert result.RetrieveURL.endswith(f"/dicom-web/studies/{one.StudyInstanceUID}")
    assert "FailedSOPSequence" not in result

    series = make_series(5)
    result = dicomweb.store_instances(series)
    assert len(result.ReferencedSOPSequence) == 5
    assert stored_uids(archive, series[0].StudyInstanceUID) == {d.SOPInstanceUID for d in series}


def test_dicomweb_client_store_compressed_instances(dicomweb, archive: Archive) -> None:  # type: ignore[no-untyped-def]
    study = uid()
    instances = [
        make_instance(study_uid=study, frames=2, rows=32, columns=32, transfer_syntax=RLELossless),
        make_instance(study_uid=study, rows=32, columns=32, transfer_syntax=JPEG2000Lossless),
    ]
    result = dicomweb.store_instances(instances, study_instance_uid=study)
    assert len(result.ReferencedSOPSequence) == 2
    by_uid = {i.sop_uid: i for i in archive.instances(study)}
    for ds in instances:
        stored = by_uid[ds.SOPInstanceUID]
        assert stored.transfer_syntax_uid == ds.file_meta.TransferSyntaxUID
        # The preamble dicomweb-client leaves out was added; the data set is as sent.
        assert dcmread(archive.path(stored)).PixelData == ds.PixelData


# -- media types and framing -------------------------------------------------------


@pytest.mark.parametrize("quoted", [True, False])
def test_boundary_and_type_quoted_or_not(web: WebServer, archive: Archive, quoted: bool) -> None:
    ds = make_instance()
    # RFC 2046 allows ':' and '=' in a boundary only when quoted.
    boundary = "a:b=c ?x" if quoted else "plain_B0undary.1"
    response = post(web, multipart([to_bytes(ds)], boundary), content_type(boundary, quoted))
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == DICOM_JSON
    assert stored_uids(archive, ds.StudyInstanceUID) == {ds.SOPInstanceUID}


def test_missing_type_parameter_is_accepted(web: WebServer, archive: Archive) -> None:
    ds = make_instance()
    response = post(web, multipart([to_bytes(ds)]), content_type(part_type=None))
    assert response.status_code == 200, response.text


def test_single_application_dicom_body(web: WebServer, archive: Archive) -> None:
    ds = make_instance()
    response = post(web, to_bytes(ds), "application/dicom")
    assert response.status_code == 200, response.text
    assert stored_uids(archive, ds.StudyInstanceUID) == {ds.SOPInstanceUID}


@pytest.mark.parametrize(
    "ctype",
    ["application/json", "text/plain", 'multipart/related; type="image/jpeg"; boundary=x', ""],
)
def test_unsupported_media_type_is_415(web: WebServer, ctype: str) -> None:
    response = post(web, multipart([b"x"], "x"), ctype)
    assert response.status_code == 415
    assert "error" in response.json() and "multipart/related" in response.json()["error"]


def test_malformed_bodies_are_400(web: WebServer) -> None:
    response = post(web, b"no parts", 'multipart/related; type="application/dicom"')
    assert response.status_code == 400 and "boundary" in response.json()["error"]
    response = post(web, b"not multipart at all", content_type())
    assert response.status_code == 400
    assert "no boundary delimiter" in response.headers["Warning"]
    response = post(web, b"--xBOUNDARYx--\r\n", content_type())
    assert response.status_code == 400 and "no parts" in response.headers["Warning"]


def test_chunked_upload_of_several_instances(web: WebServer, archive: Archive) -> None:
    series = make_series(3)
    body = multipart([to_bytes(d) for d in series])

    def generate() -> Iterator[bytes]:  # requests sends a generator with chunked encoding
        for start in range(0, len(body), 333):
            yield body[start : start + 333]

    response = post(web, generate(), content_type())
    assert response.status_code == 200, response.text
    assert response.request.headers.get("Transfer-Encoding") == "chunked"
    assert stored_uids(archive, series[0].StudyInstanceUID) == {d.SOPInstanceUID for d in series}


# -- per-instance failures -----------------------------------------------------------


def test_bare_dataset_without_part10_header_is_refused(web: WebServer, archive: Archive) -> None:
    ds = make_instance()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=False, implicit_vr=False, little_endian=True)
    bare = buffer.getvalue()
    bare = bare[132:] if bare[128:132] == b"DICM" else bare
    # Strip the File Meta group too: a raw data set as a C-STORE would carry it.
    while bare[:2] == b"\x02\x00":
        length = (
            int.from_bytes(bare[6:8], "little")
            if bare[4:6] not in (b"OB", b"UN")
            else int.from_bytes(bare[8:12], "little")
        )
        bare = bare[(8 if bare[4:6] not in (b"OB", b"UN") else 12) + length :]
    response = post(web, multipart([bare]), content_type())
    assert response.status_code == 400
    assert failures(response.json()) == [("", 0xC000)]
    assert "Part 10" in response.headers["Warning"]
    assert stored_uids(archive, ds.StudyInstanceUID) == set()


def test_study_mismatch_fails_only_the_foreign_instance(web: WebServer, archive: Archive) -> None:
    study = uid()
    good = make_instance(study_uid=study)
    foreign = make_instance()
    response = post(
        web, multipart([to_bytes(good), to_bytes(foreign)]), content_type(), f"/studies/{study}"
    )
    assert response.status_code == 202
    body = response.json()
    assert failures(body) == [(foreign.SOPInstanceUID, 0xC409)]
    assert body["00081198"]["Value"][0]["00081150"]["Value"] == [foreign.SOPClassUID]
    assert [i["00081155"]["Value"][0] for i in body["00081199"]["Value"]] == [good.SOPInstanceUID]
    assert stored_uids(archive, study) == {good.SOPInstanceUID}
    assert stored_uids(archive, foreign.StudyInstanceUID) == set()
    assert "differs from the study" in response.headers["Warning"]

    only_foreign = post(web, multipart([to_bytes(foreign)]), content_type(), f"/studies/{study}")
    assert only_foreign.status_code == 409
    assert only_foreign.json()["00081190"] == {"vr": "UR"}  # Type 2, no study stored


def test_malformed_study_uid_in_url_is_400(web: WebServer) -> None:
    response = post(web, multipart([b"x"]), content_type(), "/studies/1.02.abc")
    assert response.status_code == 400 and "not a valid UID" in response.json()["error"]


def test_non_dicom_part_fails_but_others_are_stored(web: WebServer, archive: Archive) -> None:
    ds = make_instance()
    response = post(web, multipart([b"garbage", to_bytes(ds)]), content_type())
    assert response.status_code == 202
    assert failures(response.json()) == [("", 0xC000)]
    assert stored_uids(archive, ds.StudyInstanceUID) == {ds.SOPInstanceUID}


def test_truncated_body_keeps_earlier_instances(web: WebServer, archive: Archive) -> None:
    series = make_series(2)
    first, second = (to_bytes(d) for d in series)
    body = multipart([first, second])
    truncated = body[: body.index(second) + len(second) // 2]
    response = post(web, truncated, content_type())
    assert response.status_code == 202
    body_json = response.json()
    assert [i["00081155"]["Value"][0] for i in body_json["00081199"]["Value"]] == [
        series[0].SOPInstanceUID
    ]
    assert failures(body_json) == [("", 0x0110)]
    assert "incomplete" in response.headers["Warning"]
    assert stored_uids(archive, series[0].StudyInstanceUID) == {series[0].SOPInstanceUID}
    # The stored one is intact and no temporary file is left behind.
    [stored] = archive.instances(series[0].StudyInstanceUID)
    assert archive.path(stored).read_bytes() == first
    assert list((archive.storage.root / ".tmp").iterdir()) == []

    only_partial = post(web, multipart([first])[: len(first) // 2], content_type())
    assert only_partial.status_code == 400


def _server(tmp_path: Path, database_url: str, policy: str) -> tuple[Settings, Archive, WebServer]:
    settings = make_settings(tmp_path / policy, database_url, ingest={"duplicate_policy": policy})
    archive = Archive(settings)
    return settings, archive, WebServer(settings, archive)


@pytest.mark.parametrize("policy", ["keep", "reject", "replace"])
def test_duplicate_policy_is_visible_in_the_response(
    tmp_path: Path, database_url: str, policy: str
) -> None:
    _, archive, web = _server(tmp_path, database_url, policy)
    try:
        ds = make_instance()
        assert post(web, multipart([to_bytes(ds)]), content_type()).status_code == 200
        changed = Dataset()
        changed.update(ds)
        changed.file_meta = ds.file_meta
        changed.PatientName = "Changed^Name"
        response = post(web, multipart([to_bytes(changed)]), content_type())
        body = response.json()
        [stored] = archive.instances(ds.StudyInstanceUID)
        name = str(dcmread(archive.path(stored)).PatientName)
        if policy == "keep":
            # Re-sending is routine for a PACS: success, as for the first copy.
            assert response.status_code == 200
            [item] = body["00081199"]["Value"]
            assert "00081196" not in item
            assert "stored already" in response.headers["Warning"]
            assert name == "Doe^John"
        elif policy == "reject":
            assert response.status_code == 409
            assert failures(body) == [(ds.SOPInstanceUID, 0x0111)]
            assert name == "Doe^John"
        else:
            assert response.status_code == 200
            assert "00081196" not in body["00081199"]["Value"][0]
            assert name == "Changed^Name"
    finally:
        web.stop()
        archive.close()


def test_one_request_carrying_an_instance_twice_keeps_the_last_copy_under_replace(
    tmp_path: Path, database_url: str
) -> None:
    """Both copies are indexed in one transaction: the second replaces the first's
    pending row, and the first's file is removed."""
    _, archive, web = _server(tmp_path, database_url, "replace")
    try:
        ds = make_instance()
        changed = Dataset()
        changed.update(ds)
        changed.file_meta = ds.file_meta
        changed.PatientName = "Changed^Name"
        response = post(web, multipart([to_bytes(ds), to_bytes(changed)]), content_type())
        assert response.status_code == 200
        assert len(response.json()["00081199"]["Value"]) == 2
        [stored] = archive.instances(ds.StudyInstanceUID)
        assert str(dcmread(archive.path(stored)).PatientName) == "Changed^Name"
        assert len(list(archive.settings.storage.data_dir.glob("*/*/*.dcm"))) == 1
    finally:
        web.stop()
        archive.close()


def test_instance_too_large_is_refused_with_out_of_resources(
    tmp_path: Path, database_url: str
) -> None:
    settings = make_settings(tmp_path / "d", database_url, ingest={"max_instance_size": 4000})
    archive = Archive(settings)
    web = WebServer(settings, archive)
    try:
        small = make_instance(rows=4, columns=4)
        big = make_instance(rows=64, columns=64, study_uid=small.StudyInstanceUID)
        response = post(web, multipart([to_bytes(big), to_bytes(small)]), content_type())
        assert response.status_code == 202
        assert failures(response.json()) == [("", 0xA700)]
        assert stored_uids(archive, small.StudyInstanceUID) == {small.SOPInstanceUID}
    finally:
        web.stop()
        archive.close()


# -- memory ---------------------------------------------------------------------------


def _rss_peak_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_large_chunked_upload_in_bounded_memory(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "big", "", storage={"fsync": False})
    archive = Archive(settings)
    web = WebServer(settings, archive)
    try:
        large = LargeInstance(frames=400)  # 200 MiB of pixel data
        boundary = uuid.uuid4().hex

        def generate() -> Iterator[bytes]:
            yield f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            while chunk := large.read(1 << 20):
                yield chunk
            yield f"\r\n--{boundary}--\r\n".encode()

        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        before = _rss_kib()
        response = post(web, generate(), content_type(boundary))
        growth_mib = (_rss_peak_kib() - before) / 1024
        assert response.status_code == 200, response.text
        [stored] = archive.instances(large.dataset.StudyInstanceUID)
        assert stored.size == large.size
        assert stored.number_of_frames == 400
        assert growth_mib < 100, f"RSS grew by {growth_mib:.0f} MiB during a 200 MiB upload"
    finally:
        web.stop()
        archive.close()


# -- DICOM JSON + bulk data (PS3.18 10.5.1.2) ---------------------------------------


def json_multipart(
    datasets: list[Dataset], boundary: str = "jsonB", frame_media: str = ""
) -> bytes:
    """Metadata part first, then one bulk part per Pixel Data, named by Content-Location."""
    items, bulk = [], []
    for n, ds in enumerate(datasets):
        location = f"http://client.example/bulk/{n}"

        def handler(element, location=location):  # type: ignore[no-untyped-def]
            return location

        items.append(ds.to_json_dict(bulk_data_threshold=256, bulk_data_element_handler=handler))
        value = ds.PixelData
        media = "application/octet-stream"
        if frame_media:
            from pydicom.encaps import generate_frames

            [value] = list(generate_frames(ds.PixelData, number_of_frames=1))
            media = f"{frame_media}; transfer-syntax={ds.file_meta.TransferSyntaxUID}"
        bulk.append((location, media, value))
    out = bytearray(f"--{boundary}\r\nContent-Type: application/dicom+json\r\n\r\n".encode())
    out += json_dumps(items) + b"\r\n"
    for location, media, value in bulk:
        out += (
            (
                f"--{boundary}\r\nContent-Type: {media}\r\nContent-Location: {location}\r\n\r\n"
            ).encode()
            + value
            + b"\r\n"
        )
    out += f"--{boundary}--".encode()
    return bytes(out)


def json_dumps(value: object) -> bytes:
    import json

    return json.dumps(value).encode()


JSON_TYPE = 'multipart/related; type="application/dicom+json"; boundary=jsonB'


def test_json_and_bulk_data_store_native_instances(web: WebServer, archive: Archive) -> None:
    series = make_series(2)
    response = post(web, json_multipart(series), JSON_TYPE)
    assert response.status_code == 200, response.text
    assert len(response.json()["00081199"]["Value"]) == 2
    by_uid = {i.sop_uid: i for i in archive.instances(series[0].StudyInstanceUID)}
    for ds in series:
        stored = dcmread(archive.path(by_uid[ds.SOPInstanceUID]))
        assert stored.PixelData == ds.PixelData
        assert stored.PatientName == ds.PatientName
        assert stored.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"


def test_json_and_compressed_frame_store_encapsulated(web: WebServer, archive: Archive) -> None:
    from pydicom.encaps import generate_frames

    ds = make_instance(rows=32, columns=32, transfer_syntax=JPEG2000Lossless)
    response = post(web, json_multipart([ds], frame_media="image/jp2"), JSON_TYPE)
    assert response.status_code == 200, response.text
    [stored] = archive.instances(ds.StudyInstanceUID)
    assert stored.transfer_syntax_uid == JPEG2000Lossless
    back = dcmread(archive.path(stored))
    [frame] = list(generate_frames(back.PixelData, number_of_frames=1))
    [original] = list(generate_frames(ds.PixelData, number_of_frames=1))
    assert frame == original


def test_json_with_missing_bulk_part_fails_that_instance(web: WebServer, archive: Archive) -> None:
    good, bad = make_series(2)
    body = json_multipart([good, bad])
    body = body.replace(b"http://client.example/bulk/1", b"http://client.example/bulk/9", 1)
    response = post(web, body, JSON_TYPE)
    assert response.status_code == 202
    assert failures(response.json()) == [(bad.SOPInstanceUID, 0xC000)]
    assert "matches no part" in response.headers["Warning"]
    assert stored_uids(archive, good.StudyInstanceUID) == {good.SOPInstanceUID}


# -- under gunicorn ------------------------------------------------------------------


def test_chunked_upload_under_gunicorn(tmp_path: Path) -> None:
    """gunicorn hands the app a de-chunked stream with no Content-Length: it must work."""
    import os
    import socket
    import subprocess
    import sys
    import time

    data_dir = tmp_path / "gunicorn"
    Archive(make_settings(data_dir, "")).close()  # create the index (migrations)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    env = {**os.environ, "DICOMWEB_STORAGE__DATA_DIR": str(data_dir), "DICOMWEB_DATABASE__URL": ""}
    gunicorn = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "--bind",
            f"fd://{listener.fileno()}",
            "-k",
            "gthread",
            "--threads",
            "2",
            "-w",
            "1",
            "dicomweb_server.wsgi:app",
        ],
        pass_fds=[listener.fileno()],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    listener.close()
    try:
        root = f"http://127.0.0.1:{port}"
        # The socket listens before the worker has booted: wait for an answer.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(root + "/health", timeout=5).ok:
                    break
            except requests.RequestException:
                time.sleep(0.2)
        series = make_series(3)
        body = multipart([to_bytes(d) for d in series])
        chunks = (body[i : i + 1000] for i in range(0, len(body), 1000))
        response = requests.post(
            root + "/dicom-web/studies",
            data=chunks,
            headers={"Content-Type": content_type()},
            timeout=30,
        )
        assert response.request.headers.get("Transfer-Encoding") == "chunked"
        assert response.status_code == 200, response.text
        assert len(response.json()["00081199"]["Value"]) == 3
    finally:
        gunicorn.terminate()
        gunicorn.wait(10)
    archive = Archive(make_settings(data_dir, ""))
    try:
        assert stored_uids(archive, series[0].StudyInstanceUID) == {
            d.SOPInstanceUID for d in series
        }
    finally:
        archive.close()


@pytest.mark.parametrize("policy", ["keep", "reject"])
def test_same_instance_twice_in_one_request(tmp_path: Path, database_url: str, policy: str) -> None:
    """Both copies are indexed in one transaction; when it fails on the second, each is
    indexed alone, so the first is stored and only the second is refused."""
    _, archive, web = _server(tmp_path, database_url, policy)
    try:
        ds = make_instance()
        other = make_instance(study_uid=ds.StudyInstanceUID)
        response = post(
            web, multipart([to_bytes(ds), to_bytes(other), to_bytes(ds)]), content_type()
        )
        body = response.json()
        assert stored_uids(archive, ds.StudyInstanceUID) == {
            ds.SOPInstanceUID,
            other.SOPInstanceUID,
        }
        if policy == "keep":
            assert response.status_code == 200
            assert len(body["00081199"]["Value"]) == 3
        else:
            assert response.status_code == 202
            assert failures(body) == [(ds.SOPInstanceUID, 0x0111)]
        files = sorted(p.name for p in (tmp_path).rglob("*.dcm") if ".tmp" not in p.parts)
        assert len(files) == 2, files
    finally:
        archive.close()
        web.stop()
