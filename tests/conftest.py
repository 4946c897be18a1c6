"""Fixtures: archives on SQLite and PostgreSQL, real HTTP and DIMSE servers on free ports.

Tests that take ``settings`` (or anything built on it) run once per index backend.
PostgreSQL is the server named by ``DICOMWEB_TEST_POSTGRES_URL`` (default: the local
server on 127.0.0.1:5432 with trust authentication); each test worker gets its own
database, emptied between tests.  Without a reachable server those runs are skipped,
saying why.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from werkzeug.serving import make_server

from dicomweb_server.archive import Archive
from dicomweb_server.archive.index import Base
from dicomweb_server.config import Settings, load_settings

# The fixtures of the authentication tests (test_auth, test_audit), registered here so
# that pytest rewrites their asserts before those modules import them.
pytest_plugins = ["tests.auth_fixtures"]

POSTGRES_URL = os.environ.get(
    "DICOMWEB_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for this test process."""
    admin = create_engine(
        POSTGRES_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3}
    )
    try:
        with admin.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:  # any failure to connect means: no PostgreSQL here
        admin.dispose()
        if os.environ.get("DICOMWEB_TEST_REQUIRE_POSTGRES"):  # CI: a skip would hide it
            raise
        pytest.skip(
            f"PostgreSQL not reachable at {POSTGRES_URL} ({type(exc).__name__}); "
            "set DICOMWEB_TEST_POSTGRES_URL to run these tests"
        )
    name = f"dicomweb_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = POSTGRES_URL.rsplit("/", 1)[0] + "/" + name
    yield url
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _empty_postgres(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as connection:
        tables = [t.name for t in Base.metadata.sorted_tables]
        exists = connection.execute(text("SELECT to_regclass('public.instances')")).scalar()
        if exists:
            connection.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
    engine.dispose()


def make_settings(data_dir: Path, database_url: str = "", **sections: dict[str, Any]) -> Settings:
    """Settings for a test: its own folder, free ports, loopback only."""
    sections.setdefault("http", {})
    sections["http"] = {"host": "127.0.0.1", "port": 0, **sections["http"]}
    sections.setdefault("dimse", {})
    sections["dimse"] = {"host": "127.0.0.1", "port": 0, **sections["dimse"]}
    storage = {"data_dir": data_dir, **sections.pop("storage", {})}
    database = {"url": database_url, **sections.pop("database", {})}
    return load_settings(None, storage=storage, database=database, **sections)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str:
    """``""`` (SQLite in the data folder) or an emptied PostgreSQL database."""
    if request.param == "sqlite":
        return ""
    url = request.getfixturevalue("postgres_url")
    _empty_postgres(url)
    return url


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return make_settings(tmp_path / "data", database_url)


@pytest.fixture
def archive(settings: Settings) -> Iterator[Archive]:
    archive = Archive(settings)
    yield archive
    archive.close()


class WebServer:
    """The Flask app on a real socket, in a background thread."""

    def __init__(self, settings: Settings, archive: Archive) -> None:
        from dicomweb_server.web import create_app

        self.app = create_app(settings, archive)
        self.server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.port = self.server.server_port
        self.root = f"http://127.0.0.1:{self.port}"
        self.url = self.root + settings.http.base_path
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.thread.join(5)


def serving(settings: Settings) -> Iterator[WebServer]:
    """A web server over its own archive on ``settings``; both close when it ends.

    For tests whose settings differ from the ``settings`` fixture: ``yield from
    serving(make_settings(...))`` in a fixture of their own.
    """
    archive = Archive(settings)
    server = WebServer(settings, archive)
    try:
        yield server
    finally:
        server.stop()
        archive.close()


@pytest.fixture
def web(settings: Settings, archive: Archive) -> Iterator[WebServer]:
    """A DICOMweb server; ``web.url`` is its DICOMweb root."""
    server = WebServer(settings, archive)
    yield server
    server.stop()


@pytest.fixture
def dicomweb(web: WebServer):  # type: ignore[no-untyped-def]
    """A ``dicomweb-client`` pointed at the test server, as users connect."""
    from dicomweb_client.api import DICOMwebClient

    return DICOMwebClient(url=web.url)


# -- DIMSE ----------------------------------------------------------------------------


@pytest.fixture
def dimse_server(settings: Settings, archive: Archive):  # type: ignore[no-untyped-def]
    """Our DIMSE listener on a free port (``.port``), over the test's archive."""
    from tests.dimse_fixtures import running_server

    yield from running_server(settings, archive)


@pytest.fixture
def destination():  # type: ignore[no-untyped-def]
    """A Storage SCP started by the test, AE title ``DEST``: a C-MOVE destination."""
    from tests.dimse_fixtures import StorageSCP

    scp = StorageSCP("DEST")
    yield scp
    scp.shutdown()


@pytest.fixture
def mover(settings: Settings, archive: Archive, destination):  # type: ignore[no-untyped-def]
    """Our DIMSE listener, knowing the test's Storage SCP as C-MOVE destination ``DEST``."""
    from tests.dimse_fixtures import running_server, with_dimse

    remote = {"DEST": {"host": "127.0.0.1", "port": destination.port}}
    yield from running_server(with_dimse(settings, remote_aes=remote), archive)
