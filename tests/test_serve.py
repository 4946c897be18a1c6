"""``dicomweb-server serve`` as a user starts it: both listeners, real clients, one index."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind, Verification

from tests.factory import make_series
from tests.serving import serving


@pytest.fixture
def served(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[str, int, subprocess.Popen]]:
    env = getattr(request, "param", {})
    output = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
    with serving(tmp_path / "d", env, aet="ARCHIVE", **output) as server:
        yield server.url, server.dimse_port, server.process


def test_serve_runs_dicomweb_and_dimse_on_one_index(served) -> None:
    from dicomweb_client.api import DICOMwebClient

    url, dimse_port, _process = served
    series = make_series(3)
    DICOMwebClient(url=url).store_instances(series)

    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(Verification)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", dimse_port, ae_title="ARCHIVE")
    assert assoc.is_established
    try:
        assert assoc.send_c_echo().Status == 0
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = series[0].StudyInstanceUID
        query.NumberOfStudyRelatedInstances = ""
        responses = assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)
        answers = [i for status, i in responses if status and status.Status == 0xFF00]
    finally:
        assoc.release()
    assert [int(a.NumberOfStudyRelatedInstances) for a in answers] == [3]
    assert requests.get(url.rsplit("/", 1)[0] + "/health", timeout=10).status_code == 200


def test_serve_prints_where_it_listens(served) -> None:
    url, dimse_port, process = served
    process.terminate()
    output, _ = process.communicate(timeout=30)
    assert f"DICOMweb listening on {url}" in output
    assert f"ARCHIVE listening on 127.0.0.1:{dimse_port}" in output
    assert "Traceback" not in output and "exited with code" not in output, output


def test_ctrl_c_stops_every_process_cleanly(served) -> None:
    """Ctrl-C in a terminal signals the whole process group: master, workers and DIMSE
    listeners all stop, without a traceback, and free their ports: a peer that has
    connected but not yet asked for an association included."""
    url, dimse_port, process = served
    assert requests.get(f"{url}/studies", timeout=10).status_code in (200, 204)
    probe = socket.create_connection(("127.0.0.1", dimse_port))
    time.sleep(0.5)  # accepted: its association waits for an A-ASSOCIATE-RQ
    os.killpg(process.pid, signal.SIGINT)
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    assert "Traceback" not in output and "exited with code" not in output, output
    assert listeners(dimse_port) == 0
    assert probe.recv(1) == b""  # closed by the listener
    probe.close()


@pytest.mark.parametrize("served", [{"DICOMWEB_DIMSE__PROCESSES": "3"}], indirect=True)
def test_ctrl_c_while_starting_stops_cleanly(served) -> None:
    """Ctrl-C as soon as both ports listen: one DIMSE listener already does, the others
    may still be starting, and each must take the signal as a stop, not an error."""
    _url, dimse_port, process = served
    os.killpg(process.pid, signal.SIGINT)
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    assert "Traceback" not in output and "exited with code" not in output, output
    assert listeners(dimse_port) == 0


def test_workers_leave_ctrl_c_to_the_master(served) -> None:
    """A SIGINT that reaches a worker alone leaves it serving: the master stops the
    workers (SIGQUIT).  gunicorn's gthread worker quits on SIGINT too, and when its
    quit was interrupted by the master's SIGQUIT it deadlocked on its own thread pool's
    lock, so that Ctrl-C held the server for its 300 s graceful timeout."""
    url, _dimse_port, process = served
    http_port = urlsplit(url).port or 0
    workers = _workers(process.pid, http_port)
    assert len(workers) == 2
    for pid in workers:
        os.kill(pid, signal.SIGINT)
    time.sleep(1.5)
    assert _workers(process.pid, http_port) == workers
    assert requests.get(f"{url}/studies", timeout=10).status_code in (200, 204)
    os.killpg(process.pid, signal.SIGINT)
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output


def _workers(master: int, http_port: int) -> set[int]:
    """The master's children that hold its HTTP listening socket: gunicorn's workers
    (the DIMSE listeners are forked before it binds)."""
    inodes = _listening(http_port)
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    found = set()
    for pid in map(int, children):
        fds = Path(f"/proc/{pid}/fd")
        links = {os.readlink(fd) for fd in fds.iterdir() if fd.is_symlink()}
        if any(f"socket:[{inode}]" in links for inode in inodes):
            found.add(pid)
    return found


def listeners(port: int) -> int:
    """Sockets listening on 127.0.0.1:``port``."""
    return len(_listening(port))


def _listening(port: int) -> list[str]:
    """Inodes of the sockets listening on 127.0.0.1:``port`` (Linux /proc/net/tcp,
    state 0A)."""
    inodes = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A" and fields[1] == f"0100007F:{port:04X}":
            inodes.append(fields[9])
    return inodes


@pytest.mark.parametrize("served", [{"DICOMWEB_DIMSE__PROCESSES": "3"}], indirect=True)
def test_dimse_processes_share_the_port_and_stop_together(served) -> None:
    """dimse.processes = 3: three listeners on one port serve concurrent associations."""
    from concurrent.futures import ThreadPoolExecutor

    from pynetdicom.sop_class import CTImageStorage

    url, dimse_port, process = served
    deadline = time.monotonic() + 60
    while listeners(dimse_port) < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert listeners(dimse_port) == 3
    series = make_series(12, rows=16, columns=16)

    def send(part: list[Dataset]) -> list[int]:
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", dimse_port, ae_title="ARCHIVE")
        assert assoc.is_established
        try:
            return [assoc.send_c_store(ds).Status for ds in part]
        finally:
            assoc.release()

    with ThreadPoolExecutor(6) as pool:
        statuses = [s for part in pool.map(send, [series[i::6] for i in range(6)]) for s in part]
    assert statuses == [0x0000] * 12
    study = series[0].StudyInstanceUID
    found = requests.get(f"{url}/studies/{study}/instances", timeout=30).json()
    assert len(found) == 12

    process.terminate()
    process.wait(30)
    assert listeners(dimse_port) == 0  # no listener process outlives serve
