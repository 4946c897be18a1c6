"""Cross-cutting HTTP behaviour: gzip of JSON responses and CORS, over a real socket."""

from __future__ import annotations

import gzip
import io

import requests

from dicomweb_server.archive import Archive, Origin
from tests.conftest import WebServer
from tests.factory import make_series, to_bytes

ORIGIN = Origin("IMPORT", address="test")
VIEWER = "http://viewer.example.org"


def store_series(archive: Archive, count: int) -> str:
    series = make_series(count)
    for ds in series:
        archive.store(io.BytesIO(to_bytes(ds)), ORIGIN)
    return str(series[0].StudyInstanceUID)


def raw_get(url: str, **headers: str) -> tuple[requests.Response, bytes]:
    """GET without letting requests undo the Content-Encoding, to see the wire bytes."""
    response = requests.get(url, headers=headers, stream=True, timeout=30)
    return response, response.raw.read(decode_content=False)


# -- gzip ----------------------------------------------------------------------------


def test_large_json_is_gzipped_when_accepted(web: WebServer, archive: Archive) -> None:
    study = store_series(archive, 20)
    url = f"{web.url}/studies/{study}/metadata"  # a streamed (generator) response
    response, wire = raw_get(url, **{"Accept-Encoding": "gzip"})
    assert response.status_code == 200
    assert response.headers["Content-Encoding"] == "gzip"
    assert "Accept-Encoding" in response.headers["Vary"]
    plain, plain_wire = raw_get(url, **{"Accept-Encoding": "identity"})
    assert "Content-Encoding" not in plain.headers
    assert "Accept-Encoding" in plain.headers["Vary"]
    assert gzip.decompress(wire) == plain_wire
    assert len(wire) < len(plain_wire) / 3
    # The ETag of the compressed representation is weak (RFC 9110 8.8.1).
    if "ETag" in response.headers:
        assert response.headers["ETag"].startswith('W/"')


def test_non_streamed_json_and_small_bodies(web: WebServer, archive: Archive) -> None:
    store_series(archive, 30)
    response, wire = raw_get(f"{web.url}/instances", **{"Accept-Encoding": "gzip, deflate"})
    assert response.status_code == 200
    assert response.headers["Content-Encoding"] == "gzip"
    assert len(gzip.decompress(wire)) > 1024
    if "Content-Length" in response.headers:
        assert int(response.headers["Content-Length"]) == len(wire)
    # A small JSON error body is not worth compressing.
    small, wire = raw_get(f"{web.url}/studies/1.2.3/metadata", **{"Accept-Encoding": "gzip"})
    assert small.status_code == 404
    assert "Content-Encoding" not in small.headers
    assert b"error" in wire


def test_gzip_refused_by_q0_and_absent_header(web: WebServer, archive: Archive) -> None:
    study = store_series(archive, 20)
    url = f"{web.url}/studies/{study}/metadata"
    response, _ = raw_get(url, **{"Accept-Encoding": "gzip;q=0, identity"})
    assert "Content-Encoding" not in response.headers
    response, _ = raw_get(url, **{"Accept-Encoding": ""})
    assert "Content-Encoding" not in response.headers


def test_pixel_data_and_multipart_are_never_compressed(web: WebServer, archive: Archive) -> None:
    study = store_series(archive, 3)
    response, wire = raw_get(
        f"{web.url}/studies/{study}",
        **{"Accept-Encoding": "gzip", "Accept": 'multipart/related; type="application/dicom"'},
    )
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("multipart/related")
    assert "Content-Encoding" not in response.headers
    assert b"DICM" in wire


def test_stow_response_is_compressed_for_many_instances(web: WebServer) -> None:
    series = make_series(15)
    boundary = "bnd"
    body = b"".join(
        b"--bnd\r\nContent-Type: application/dicom\r\n\r\n" + to_bytes(d) + b"\r\n" for d in series
    )
    body += b"--bnd--"
    response = requests.post(
        f"{web.url}/studies",
        data=body,
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept-Encoding": "gzip",
        },
        timeout=30,
    )
    assert response.status_code == 200
    assert response.headers["Content-Encoding"] == "gzip"
    assert len(response.json()["00081199"]["Value"]) == 15  # requests decompressed it


# -- CORS ----------------------------------------------------------------------------


def test_preflight_for_multipart_post_from_another_origin(web: WebServer) -> None:
    response = requests.options(
        f"{web.url}/studies",
        headers={
            "Origin": VIEWER,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
        timeout=10,
    )
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] in ("*", VIEWER)
    assert "POST" in response.headers["Access-Control-Allow-Methods"]
    assert "content-type" in response.headers["Access-Control-Allow-Headers"].lower()


def test_preflight_for_delete(web: WebServer) -> None:
    response = requests.options(
        f"{web.url}/studies/1.2.3",
        headers={"Origin": VIEWER, "Access-Control-Request-Method": "DELETE"},
        timeout=10,
    )
    assert response.status_code == 200
    assert "DELETE" in response.headers["Access-Control-Allow-Methods"]


def test_get_and_post_carry_allow_origin_and_exposed_headers(
    web: WebServer, archive: Archive
) -> None:
    study = store_series(archive, 1)
    response = requests.get(
        f"{web.url}/studies/{study}/metadata", headers={"Origin": VIEWER}, timeout=10
    )
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] in ("*", VIEWER)
    response = requests.post(
        f"{web.url}/studies",
        data=b"x",
        headers={"Origin": VIEWER, "Content-Type": "multipart/related; boundary=b"},
        timeout=10,
    )
    assert response.status_code == 400
    assert response.headers["Access-Control-Allow-Origin"] in ("*", VIEWER)
    # Viewers read STOW-RS refusals from the Warning header: it must be exposed.
    assert "warning" in response.headers["Access-Control-Expose-Headers"].lower()


def test_urls_keep_the_port_when_the_client_leaves_it_out_of_host(web, archive) -> None:
    """dicomweb-client sends ``Host: 127.0.0.1`` without the port; URLs must still work."""
    import io

    import requests

    from dicomweb_server.archive import Origin
    from tests.factory import make_instance, to_bytes

    ds = make_instance()
    archive.store(io.BytesIO(to_bytes(ds)), Origin("IMPORT"))
    response = requests.get(f"{web.url}/studies", headers={"Host": "127.0.0.1"}, timeout=10)
    [study] = response.json()
    url = study["00081190"]["Value"][0]
    assert url == f"{web.url}/studies/{ds.StudyInstanceUID}"
    assert requests.get(url + "/metadata", timeout=10).status_code == 200
