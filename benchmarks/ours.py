"""Our server as a subprocess: ``dicomweb-server serve`` on SQLite or PostgreSQL.

The embedded default keeps the SQLite index in a temporary data folder.  The
PostgreSQL variant runs against a database created here and dropped at the end.
Reference data is loaded in-process through :meth:`Archive.store`, the same ingest
path as STOW-RS and C-STORE, which skips HTTP for data that is not being measured.
"""

from __future__ import annotations

import io
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

from . import process
from .process import LOOPBACK, Server, StartError

#: TCP when PostgreSQL is reachable on loopback; else its Unix socket, which still works
#: inside the private network namespace that :func:`benchmarks.run.isolate` creates.
POSTGRES_TCP = "postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
POSTGRES_SOCKET = "postgresql+psycopg://postgres@/{name}?host=/var/run/postgresql"
AET = "DICOMWEB"


class Ours(Server):
    name = "ours"

    def __init__(self, *args, database_url: str = "", data_dir: Path, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.database_url = database_url
        self.data_dir = data_dir
        self._archive = None

    def archive(self):  # type: ignore[no-untyped-def]
        if self._archive is None:
            from dicomweb_server.archive import Archive
            from dicomweb_server.config import load_settings

            # The loader of reference data and of the grown index: durability is not
            # what it measures, so it skips fsync (the server it loads for keeps it).
            settings = load_settings(
                None,
                storage={"data_dir": self.data_dir, "fsync": False},
                database={"url": self.database_url},
            )
            self._archive = Archive(settings, upgrade=False)
        return self._archive

    def load(self, blobs: list[bytes]) -> None:
        """Through the ingest path, 500 instances an index transaction (as STOW-RS
        batches a request's instances), which is what makes a 1M index a matter of
        minutes rather than hours."""
        from dicomweb_server.archive import Origin, Prepared

        archive = self.archive()
        origin = Origin("IMPORT", address="benchmark")
        for start in range(0, len(blobs), 500):
            ready = [archive.prepare(io.BytesIO(b), origin) for b in blobs[start : start + 500]]
            archive.index([r for r in ready if isinstance(r, Prepared)])

    def count(self) -> int:
        return self.archive().count_instances()

    def settle(self) -> None:
        # The loader's connections end, and SQLite folds its write-ahead log into the
        # database, as a server that received the data itself would have done by now.
        if self._archive is not None:
            self._archive.close()
            self._archive = None

    def version(self) -> str:
        from dicomweb_server import __version__

        return __version__

    def stop(self) -> None:
        if self._archive is not None:
            self._archive.close()
        super().stop()
        if self.database_url:
            _drop_database(self.database_url)
        shutil.rmtree(self.workdir, ignore_errors=True)


def _postgres_template() -> str:
    return POSTGRES_TCP if process.wait_tcp(5432, 0.5) else POSTGRES_SOCKET


def _create_database() -> str:
    from sqlalchemy import create_engine, text

    name = f"dicomweb_bench_{uuid.uuid4().hex[:8]}"
    template = _postgres_template()
    admin = create_engine(template.format(name="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return template.format(name=name)


def _drop_database(url: str) -> None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = make_url(url).database
    admin = create_engine(make_url(url).set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def start_ours(
    postgres: bool = False, workers: int = 0, dimse_wait: float = 10.0, durable: bool = True
) -> Ours:
    """Start ``dicomweb-server serve`` on free loopback ports; raise StartError on failure.

    ``durable=False``: no fsync of files or folders, and SQLite's ``synchronous=NORMAL``:
    what our durability costs beside Orthanc (which syncs each file, not its folders, and
    its index's log now and then); never a default.
    """
    workdir = Path(tempfile.mkdtemp(prefix="bench-ours-"))
    data_dir = workdir / "data"
    http_port, dimse_port = process.free_port(), process.free_port()
    database_url = _create_database() if postgres else ""
    env = {"DICOMWEB_DATABASE__URL": database_url, "DICOMWEB_LOG__LEVEL": "WARNING"}
    if not durable:
        env["DICOMWEB_STORAGE__FSYNC"] = "false"
        env["DICOMWEB_DATABASE__SQLITE_SYNCHRONOUS"] = "NORMAL"
    argv = [
        sys.executable,
        "-m",
        "dicomweb_server",
        "serve",
        "--host",
        LOOPBACK,
        "--http-port",
        str(http_port),
        "--dimse-port",
        str(dimse_port),
        "--data-dir",
        str(data_dir),
        "--workers",
        str(workers),
    ]
    log = workdir / "server.log"
    child = process.start(argv, log, env)
    server = Ours(
        child,
        f"http://{LOOPBACK}:{http_port}/dicom-web",
        None,
        AET,
        workdir,
        database_url=database_url,
        data_dir=data_dir,
    )
    server.name = "ours" + ("-pg" if postgres else "") + ("" if durable else "-nofsync")
    try:
        process.wait_http(f"http://{LOOPBACK}:{http_port}/health", child, log)
    except StartError:
        server.stop()
        raise
    if process.wait_tcp(dimse_port, dimse_wait):
        server.dimse_port = dimse_port
    return server
