"""Prometheus metrics at ``/metrics``: HTTP by route, instances per protocol, DIMSE, index.

Counters live per process and tests share processes, so each test compares a scrape
after its requests with one before them.  The last tests run ``dicomweb-server serve``
with two gunicorn workers and the DIMSE child, as deployed, and check that one scrape
sums every process.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from pydicom.uid import CTImageStorage
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from dicomweb_server.archive import Archive
from dicomweb_server.config import Settings
from tests.conftest import WebServer, make_settings
from tests.dimse_fixtures import associate, running_server
from tests.factory import make_series, to_bytes
from tests.serving import serving

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(root: str) -> Samples:
    """Every sample of ``/metrics``, keyed by (name, sorted labels)."""
    response = requests.get(root + "/metrics", timeout=30)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            samples[key] = samples.get(key, 0.0) + sample.value
    return samples


def scrape_after(root: str, before: Samples, requests_made: int) -> Samples:
    """A scrape once ``requests_made`` more requests (not scrapes) are counted.

    A request is counted when the server closes its response, which may be a moment
    after the client has read the last byte and sent its next request.
    """
    deadline = time.monotonic() + 10
    while True:
        after = scrape(root)
        counted = sum(
            v - before.get(key, 0.0)
            for key, v in after.items()
            if key[0] == "dicomweb_http_requests_total" and ("route", "/metrics") not in key[1]
        )
        if counted >= requests_made or time.monotonic() > deadline:
            return after
        time.sleep(0.02)


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def stow(url: str, datasets: list) -> requests.Response:  # type: ignore[type-arg]
    """STOW-RS of ``datasets`` in one multipart/related body."""
    boundary = "metrics-test-boundary"
    body = (
        b"".join(
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            + to_bytes(ds)
            + b"\r\n"
            for ds in datasets
        )
        + f"--{boundary}--\r\n".encode()
    )
    ctype = f'multipart/related; type="application/dicom"; boundary={boundary}'
    return requests.post(url + "/studies", data=body, headers={"Content-Type": ctype}, timeout=60)


def test_http_requests_are_counted_by_route_not_path(web: WebServer) -> None:
    before = scrape(web.root)
    series = make_series(3)
    study = series[0].StudyInstanceUID
    response = stow(web.url, series)
    assert response.status_code == 200
    body_size = int(response.request.headers["Content-Length"])
    assert requests.get(f"{web.url}/studies/{study}/series", timeout=30).status_code == 200
    assert requests.get(f"{web.url}/studies/{study}/series", timeout=30).status_code == 200
    assert requests.get(f"{web.url}/studies/1.2.3/metadata", timeout=30).status_code == 404
    assert requests.get(web.root + "/no/such/path", timeout=30).status_code == 404
    after = scrape_after(web.root, before, 5)

    route = "/dicom-web/studies/<study>/series"
    assert (
        delta(
            before, after, "dicomweb_http_requests_total", route=route, method="GET", status="200"
        )
        == 2
    )
    assert (
        delta(
            before,
            after,
            "dicomweb_http_requests_total",
            route="/dicom-web/studies",
            method="POST",
            status="200",
        )
        == 1
    )
    assert (
        delta(
            before,
            after,
            "dicomweb_http_requests_total",
            route="/dicom-web/studies/<study>/metadata",
            method="GET",
            status="404",
        )
        == 1
    )
    assert (
        delta(
            before,
            after,
            "dicomweb_http_requests_total",
            route="unmatched",
            method="GET",
            status="404",
        )
        == 1
    )
    assert (
        delta(
            before, after, "dicomweb_http_request_duration_seconds_count", route=route, method="GET"
        )
        == 2
    )
    assert (
        delta(before, after, "dicomweb_http_request_bytes_total", route="/dicom-web/studies")
        == body_size
    )
    assert delta(before, after, "dicomweb_http_response_bytes_total", route=route) > 0
    assert (
        delta(
            before, after, "dicomweb_instances_received_total", protocol="STOW-RS", outcome="stored"
        )
        == 3
    )
    # The index gauges are counted at scrape time from this test's own archive.
    assert value(after, "dicomweb_index_size", level="instances") == 3
    assert value(after, "dicomweb_index_size", level="series") == 1
    assert value(after, "dicomweb_index_size", level="studies") == 1
    # No UID in any label: one time series per route, not per study.
    assert not any(study in str(key) for key in after)


def test_failed_and_duplicate_instances_are_counted(web: WebServer) -> None:
    series = make_series(1)
    assert stow(web.url, series).status_code == 200
    before = scrape(web.root)
    stow(web.url, series)  # the same instance again: kept once (duplicate_policy keep)
    broken = make_series(1)[0]
    del broken.SOPInstanceUID  # an instance without its identity is refused
    stow(web.url, [broken])
    after = scrape_after(web.root, before, 2)
    assert (
        delta(
            before,
            after,
            "dicomweb_instances_received_total",
            protocol="STOW-RS",
            outcome="duplicate",
        )
        == 1
    )
    assert (
        delta(
            before, after, "dicomweb_instances_received_total", protocol="STOW-RS", outcome="failed"
        )
        == 1
    )


def test_whole_file_retrieve_counts_its_bytes(web: WebServer) -> None:
    [ds] = make_series(1)
    assert stow(web.url, [ds]).status_code == 200
    url = (
        f"{web.url}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )
    before = scrape(web.root)
    response = requests.get(
        url, headers={"Accept": "application/dicom; transfer-syntax=*"}, timeout=30
    )
    assert response.status_code == 200
    after = scrape_after(web.root, before, 1)
    route = "/dicom-web/studies/<study>/series/<series>/instances/<sop>"
    assert delta(before, after, "dicomweb_http_response_bytes_total", route=route) == len(
        response.content
    )


@pytest.fixture
def dimse_server(settings: Settings, archive: Archive):  # type: ignore[no-untyped-def]
    yield from running_server(settings, archive)


def test_dimse_associations_operations_and_stores(web: WebServer, dimse_server) -> None:  # type: ignore[no-untyped-def]
    before = scrape(web.root)
    series = make_series(2)
    assoc = associate(dimse_server.port, [Verification, CTImageStorage])
    assert assoc.is_established
    try:
        assert assoc.send_c_echo().Status == 0
        for ds in series:
            assert assoc.send_c_store(ds).Status == 0
        during = scrape(web.root)
    finally:
        assoc.release()
    assert delta(before, during, "dicomweb_dimse_associations_active") == 1
    deadline = time.monotonic() + 10
    while True:  # EVT_CONN_CLOSE comes from pynetdicom's own thread, a moment later
        after = scrape(web.root)
        if delta(before, after, "dicomweb_dimse_associations_active") == 0:
            break
        assert time.monotonic() < deadline, "the association never counted as closed"
        time.sleep(0.05)
    assert delta(before, after, "dicomweb_dimse_associations_total") == 1
    assert (
        delta(
            before, after, "dicomweb_dimse_operations_total", operation="C-ECHO", status="success"
        )
        == 1
    )
    assert (
        delta(
            before, after, "dicomweb_dimse_operations_total", operation="C-STORE", status="success"
        )
        == 2
    )
    assert (
        delta(
            before, after, "dicomweb_instances_received_total", protocol="DIMSE", outcome="stored"
        )
        == 2
    )


def test_metrics_need_no_credentials_when_auth_is_on(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "d", auth={"mode": "apikey"})
    archive = Archive(settings)
    server = WebServer(settings, archive)
    try:
        assert requests.get(server.url + "/studies", timeout=30).status_code == 401
        assert requests.get(server.root + "/metrics", timeout=30).status_code == 200
    finally:
        server.stop()
        archive.close()


# -- several processes: gunicorn workers and the DIMSE child -----------------------------


def _pids(folder: Path) -> set[str]:
    return {p.stem.rsplit("_", 1)[1] for p in folder.glob("counter_*.db")}


def test_serve_sums_every_worker_and_the_dimse_process(tmp_path: Path) -> None:
    # The operator's folder (kept, so the test can see which processes wrote to it).
    folder = tmp_path / "metrics"
    folder.mkdir()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(folder)}
    with serving(tmp_path / "d", env, aet="ARCHIVE") as server:
        root, dimse_port = server.root, server.dimse_port
        sent = 0
        with ThreadPoolExecutor(8) as pool:
            # New connections until both workers have answered some (bounded).
            while len(_pids(folder)) < 2 and sent < 400:
                codes = list(
                    pool.map(
                        lambda _: requests.get(root + "/health", timeout=30).status_code,
                        range(20),
                    )
                )
                assert codes == [200] * 20
                sent += 20
        assert len(_pids(folder)) >= 2, "one worker answered every request"
        series = make_series(2)
        ae = AE(ae_title="TESTSCU")
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", dimse_port, ae_title="ARCHIVE")
        assert assoc.is_established
        for ds in series:
            assert assoc.send_c_store(ds).Status == 0
        assoc.release()
        # A whole stored file, which gunicorn sends with sendfile (wsgi.file_wrapper).
        ds = series[0]
        retrieved = requests.get(
            f"{root}/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}",
            headers={"Accept": "application/dicom; transfer-syntax=*"},
            timeout=30,
        )
        assert retrieved.status_code == 200
        assert retrieved.headers["X-Request-ID"]
        samples = scrape_after(root, {}, sent + 1)
        assert (
            value(
                samples, "dicomweb_http_requests_total", route="/health", method="GET", status="200"
            )
            == sent
        )
        assert value(
            samples,
            "dicomweb_http_response_bytes_total",
            route="/dicom-web/studies/<study>/series/<series>/instances/<sop>",
        ) == len(retrieved.content)
        assert (
            value(samples, "dicomweb_instances_received_total", protocol="DIMSE", outcome="stored")
            == 2
        )
        assert (
            value(samples, "dicomweb_dimse_operations_total", operation="C-STORE", status="success")
            == 2
        )
        assert value(samples, "dicomweb_index_size", level="instances") == 2
        assert len(_pids(folder)) >= 3  # two workers and the DIMSE child


def test_serve_sets_up_multiprocess_metrics_on_its_own(tmp_path: Path) -> None:
    with serving(tmp_path / "d", aet="ARCHIVE") as server:
        root, dimse_port = server.root, server.dimse_port
        ae = AE(ae_title="TESTSCU")
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", dimse_port, ae_title="ARCHIVE")
        assert assoc.is_established
        assert assoc.send_c_store(make_series(1)[0]).Status == 0
        assoc.release()
        # Stored in the DIMSE process, counted in the scrape of a web worker.
        samples = scrape(root)
        assert (
            value(samples, "dicomweb_instances_received_total", protocol="DIMSE", outcome="stored")
            == 1
        )
