"""Faults: a server killed mid-upload, a full disk, an index database that goes away.

* ``dicomweb-server serve`` (gunicorn workers and the DIMSE process) is killed with
  SIGKILL, whole process group, while STOW-RS and C-STORE clients upload; after each
  restart every index row has its complete file (SHA-256), no dead writer's ``.part``
  file survives the restart, and every instance acknowledged before the kill is there.
* The data folder on a 2 MiB tmpfs: STOW-RS until the disk is full gives 507 with
  Failure Reason A700, C-STORE gives A700, nothing partial remains, and once space is
  freed storing works again.  Skipped when ``mount`` is not permitted.
* PostgreSQL behind a TCP proxy of the test's own, which is cut and restored (the shared
  server itself is never stopped): while cut, QIDO-RS and STOW-RS answer 503 and
  C-STORE a failure status; once restored, requests succeed again by themselves
  (``pool_pre_ping``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import random
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from pydicom.uid import CTImageStorage
from sqlalchemy import select

import dimse_scp
from dicomweb_server.archive import Archive, Origin
from dicomweb_server.archive.index import Instance
from dicomweb_server.config import Settings
from tests import serving
from tests.conftest import WebServer, make_settings
from tests.dimse_fixtures import associate
from tests.factory import make_instance, make_series, to_bytes
from tests.test_stow import content_type, failures, multipart

# -- consistency ----------------------------------------------------------------------------


def assert_consistent(archive: Archive) -> set[str]:
    """Every index row has its file with the SHA-256 recorded at ingest; returns the SOP
    Instance UIDs indexed."""
    with archive.reader() as session:
        rows = session.execute(
            select(Instance.sop_uid, Instance.storage_key, Instance.sha256)
        ).all()
    for sop_uid, key, sha in rows:
        path = archive.storage.path(key)
        assert path.is_file(), f"{sop_uid}: indexed, file {key} missing"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == sha, f"{sop_uid}: corrupt"
    return {r.sop_uid for r in rows}


# -- SIGKILL during uploads -------------------------------------------------------------------


class Uploads:
    """STOW-RS and C-STORE clients in threads, recording what was acknowledged."""

    def __init__(self, url: str, dimse_port: int) -> None:
        self.url = url
        self.dimse_port = dimse_port
        self.acknowledged: set[str] = set()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self._stow, args=(n,), daemon=True) for n in range(2)
        ] + [threading.Thread(target=self._c_store, daemon=True)]

    def __enter__(self) -> Uploads:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)

    def _stow(self, seed: int) -> None:
        rng = random.Random(seed)
        while not self.stop.is_set():
            series = make_series(rng.randint(1, 4), rows=128, columns=128)
            try:
                response = requests.post(
                    self.url + "/studies",
                    data=multipart([to_bytes(d) for d in series]),
                    headers={"Content-Type": content_type()},
                    timeout=30,
                )
            except requests.RequestException:
                continue  # the server is gone: nothing of this request was acknowledged
            if response.status_code == 200:
                with self.lock:
                    self.acknowledged.update(d.SOPInstanceUID for d in series)

    def _c_store(self) -> None:
        while not self.stop.is_set():
            try:
                assoc = associate(self.dimse_port, [CTImageStorage], acse_timeout=5)
            except Exception:
                time.sleep(0.1)
                continue
            if not assoc.is_established:
                time.sleep(0.1)
                continue
            try:
                while not self.stop.is_set() and assoc.is_established:
                    ds = make_instance(rows=128, columns=128)
                    try:
                        status = assoc.send_c_store(ds)
                    except RuntimeError:  # the association died under us (the kill)
                        break
                    if status and status.Status == 0x0000:
                        with self.lock:
                            self.acknowledged.add(ds.SOPInstanceUID)
            finally:
                with contextlib.suppress(Exception):
                    assoc.release()


def start_serve(data_dir: Path, database_url: str) -> tuple[subprocess.Popen, str, int]:
    server = serving.start_serve(data_dir, {"DICOMWEB_DATABASE__URL": database_url})
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:  # the port listens before a worker has booted
        with contextlib.suppress(requests.RequestException):
            if requests.get(server.root + "/health", timeout=5).ok:
                break
        time.sleep(0.1)
    return server.process, server.url, server.dimse_port


def kill_group(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(30)


def test_sigkill_during_stow_and_c_store_loses_nothing_acknowledged(
    settings: Settings,
) -> None:
    data_dir = settings.storage.data_dir
    Archive(settings).close()  # the schema exists before the first kill
    acknowledged: set[str] = set()
    rng = random.Random(11)
    for _ in range(3):
        process, url, dimse_port = start_serve(data_dir, settings.database.url)
        try:
            with Uploads(url, dimse_port) as uploads:
                time.sleep(rng.uniform(1.5, 3.0))
                kill_group(process)
            acknowledged |= uploads.acknowledged
        finally:
            kill_group(process)
        # Right after the kill, before any restart: a visible file is a whole instance.
        for path in data_dir.glob("*/*/*.dcm"):
            assert path.stat().st_size > 0
    assert acknowledged, "nothing was acknowledged before the kills; run the uploads longer"
    # A restarted server cleans up after the dead writers and serves what it acknowledged.
    process, url, _ = start_serve(data_dir, settings.database.url)
    try:
        assert list((data_dir / ".tmp").glob("*.part")) == []
        archive = Archive(settings, upgrade=False)
        try:
            indexed = assert_consistent(archive)
        finally:
            archive.close()
        missing = acknowledged - indexed
        assert not missing, f"{len(missing)} acknowledged instances lost"
        sample = sorted(acknowledged)[:5]
        for sop_uid in sample:
            found = requests.get(
                url + "/instances", params={"SOPInstanceUID": sop_uid}, timeout=30
            ).json()
            assert len(found) == 1
    finally:
        kill_group(process)


# -- disk full ----------------------------------------------------------------------------------


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs; skipped where mounting is not permitted (needs CAP_SYS_ADMIN)."""
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {result.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_full_disk_is_507_a700_and_recovers(tiny_disk: Path, tmp_path: Path) -> None:
    # The index lives elsewhere: this is about the instance files.
    settings = make_settings(tiny_disk / "data", f"sqlite:///{tmp_path / 'index.sqlite'}")
    archive = Archive(settings)
    web = WebServer(settings, archive)
    handle = dimse_scp.start(settings, archive)
    try:
        stored: list[str] = []
        response = None
        for _ in range(40):  # ~130 kB each: the disk fills after about 15
            ds = make_instance(rows=256, columns=256)
            response = requests.post(
                web.url + "/studies",
                data=multipart([to_bytes(ds)]),
                headers={"Content-Type": content_type()},
                timeout=30,
            )
            if response.status_code != 200:
                break
            stored.append(ds.StudyInstanceUID)
        assert response is not None and response.status_code == 507, response.text
        assert [reason for _, reason in failures(response.json())] == [0xA700]
        assert stored, "the disk was full before the first instance"
        assoc = associate(handle.port, [CTImageStorage])
        try:
            status = assoc.send_c_store(make_instance(rows=256, columns=256))
        finally:
            assoc.release()
        assert status.Status == 0xA700
        assert list((settings.storage.data_dir / ".tmp").iterdir()) == []
        assert len(assert_consistent(archive)) == len(stored)
        on_disk = {
            p.relative_to(settings.storage.data_dir).as_posix()
            for p in settings.storage.data_dir.glob("*/*/*.dcm")
        }
        assert len(on_disk) == len(stored)  # no orphan or partial file
        # Free space, store again.
        for study in stored[:4]:
            assert requests.delete(f"{web.url}/studies/{study}", timeout=30).status_code == 204
        again = make_instance(rows=256, columns=256)
        response = requests.post(
            web.url + "/studies",
            data=multipart([to_bytes(again)]),
            headers={"Content-Type": content_type()},
            timeout=30,
        )
        assert response.status_code == 200, response.text
    finally:
        handle.shutdown()
        web.stop()
        archive.close()


# -- PostgreSQL unreachable ---------------------------------------------------------------------


class Proxy:
    """A TCP forwarder 127.0.0.1:port -> target that can be cut and restored."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = serving.free_port()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        """Stop listening and drop every forwarded connection."""
        with self._lock:
            if self._listener is not None:
                # shutdown wakes the thread blocked in accept(); close alone would leave
                # the socket listening until that accept returned.
                with contextlib.suppress(OSError):
                    self._listener.shutdown(socket.SHUT_RDWR)
                self._listener.close()
                self._listener = None
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._sockets.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)


@pytest.mark.postgres
def test_postgres_unreachable_is_503_and_recovers(postgres_url: str, tmp_path: Path) -> None:
    from sqlalchemy.engine import make_url

    from tests.conftest import _empty_postgres

    _empty_postgres(postgres_url)
    url = make_url(postgres_url)
    proxy = Proxy((url.host or "127.0.0.1", url.port or 5432))
    proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    settings = make_settings(tmp_path / "data", proxied)
    archive = Archive(settings)
    web = WebServer(settings, archive)
    handle = dimse_scp.start(settings, archive)
    try:
        first = make_instance()
        ok = requests.post(
            web.url + "/studies",
            data=multipart([to_bytes(first)]),
            headers={"Content-Type": content_type()},
            timeout=30,
        )
        assert ok.status_code == 200
        proxy.cut()
        qido = requests.get(web.url + "/studies", timeout=30)
        assert qido.status_code == 503, qido.text
        assert "unreachable" in qido.json()["error"]
        lost = make_instance()
        stow = requests.post(
            web.url + "/studies",
            data=multipart([to_bytes(lost)]),
            headers={"Content-Type": content_type()},
            timeout=30,
        )
        assert stow.status_code == 503, stow.text
        assert [reason for _, reason in failures(stow.json())] == [0xA700]
        wado = requests.get(f"{web.url}/studies/{first.StudyInstanceUID}/metadata", timeout=30)
        assert wado.status_code == 503
        assoc = associate(handle.port, [CTImageStorage])
        try:
            status = assoc.send_c_store(make_instance())
        finally:
            assoc.release()
        assert status.Status != 0x0000  # refused, and the listener survives
        assert list((settings.storage.data_dir / ".tmp").iterdir()) == []
        proxy.restore()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if requests.get(web.url + "/studies", timeout=30).status_code == 200:
                break
            time.sleep(0.2)
        assert requests.get(web.url + "/studies", timeout=30).status_code == 200
        again = requests.post(
            web.url + "/studies",
            data=multipart([to_bytes(lost)]),
            headers={"Content-Type": content_type()},
            timeout=30,
        )
        assert again.status_code == 200, again.text
        assoc = associate(handle.port, [CTImageStorage])
        try:
            assert assoc.send_c_store(make_instance()).Status == 0x0000
        finally:
            assoc.release()
        assert len(assert_consistent(archive)) == 3
    finally:
        proxy.cut()
        handle.shutdown()
        web.stop()
        archive.close()


def test_storage_full_store_leaves_nothing(tiny_disk: Path, tmp_path: Path) -> None:
    """Archive.store straight: an instance larger than the free space is refused with
    StorageFull (an OutOfResources) and its temporary file is gone."""
    from dicomweb_server.archive.errors import OutOfResources, StorageFull

    settings = make_settings(tiny_disk / "d", f"sqlite:///{tmp_path / 'i.sqlite'}")
    archive = Archive(settings)
    try:
        big = to_bytes(make_instance(rows=1200, columns=1200))  # 2.9 MB > 2 MiB
        with pytest.raises(StorageFull) as caught:
            archive.store(io.BytesIO(big), Origin("TEST"))
        assert isinstance(caught.value, OutOfResources)
        assert list((settings.storage.data_dir / ".tmp").iterdir()) == []
    finally:
        archive.close()
