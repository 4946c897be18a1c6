"""The Alembic revisions build exactly the schema the models describe, on both backends."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from dicomweb_server.archive import Archive
from dicomweb_server.archive.index import Base


def test_migrations_match_models(archive: Archive) -> None:
    with archive.writer_engine.connect() as connection:
        context = MigrationContext.configure(connection)
        differences = compare_metadata(context, Base.metadata)
    assert differences == [], "write an Alembic revision for these model changes"
