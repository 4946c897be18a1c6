"""Checking and rebuilding the index against the stored files.

``verify`` compares every index row with its file (present, same size, same SHA-256 as at
ingest) and lists files no row points to.  ``reindex`` indexes stored files the index does
not know, e.g. after restoring the storage folder from a backup or losing the database.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select

from .core import Archive
from .errors import ArchiveError
from .index import Instance
from .ingest import IndexWriter, Origin, StoreStatus
from .parse import parse_instance
from .storage import CHUNK, Received

Progress = Callable[[int], None]


@dataclass
class VerifyReport:
    checked: int = 0
    missing: list[str] = field(default_factory=list)  #: SOP Instance UIDs without a file
    corrupt: list[str] = field(default_factory=list)  #: SOP Instance UIDs whose file changed
    unindexed: list[str] = field(default_factory=list)  #: storage keys no row points to

    @property
    def ok(self) -> bool:
        return not (self.missing or self.corrupt)

    def report(self) -> str:
        lines = [
            f"checked {self.checked} instances: {len(self.missing)} missing, "
            f"{len(self.corrupt)} corrupt; {len(self.unindexed)} unindexed files"
        ]
        lines += [f"  missing: {uid}" for uid in self.missing]
        lines += [f"  corrupt: {uid}" for uid in self.corrupt]
        lines += [f"  unindexed: {key}" for key in self.unindexed]
        return "\n".join(lines)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fp:
        while chunk := fp.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify(archive: Archive, progress: Progress = lambda n: None) -> VerifyReport:
    """Check every indexed instance against its file; never modifies anything."""
    report = VerifyReport()
    known: set[str] = set()
    with archive.reader() as session:
        rows = session.execute(
            select(Instance.sop_uid, Instance.storage_key, Instance.size, Instance.sha256)
        ).yield_per(1000)
        for row in rows:
            known.add(row.storage_key)
            path = archive.storage.path(row.storage_key)
            report.checked += 1
            if not path.is_file():
                report.missing.append(row.sop_uid)
            elif path.stat().st_size != row.size or _sha256(path) != row.sha256:
                report.corrupt.append(row.sop_uid)
            progress(1)
    report.unindexed = [k for k in archive.storage.iter_keys() if k not in known]
    return report


@dataclass
class ReindexReport:
    indexed: int = 0
    present: int = 0
    duplicates: list[str] = field(default_factory=list)  #: second copies of indexed SOPs
    rejected: list[str] = field(default_factory=list)

    def report(self) -> str:
        lines = [
            f"indexed {self.indexed}, already indexed {self.present}, "
            f"duplicate copies {len(self.duplicates)}, unreadable {len(self.rejected)}"
        ]
        lines += [f"  duplicate copy: {k}" for k in self.duplicates]
        lines += [f"  unreadable: {r}" for r in self.rejected]
        return "\n".join(lines)


def reindex(archive: Archive, progress: Progress = lambda n: None) -> ReindexReport:
    """Index every stored file that no index row points to, where it lies."""
    report = ReindexReport()
    with archive.reader() as session:
        known = set(session.scalars(select(Instance.storage_key)))
    settings = archive.settings.ingest
    for key in archive.storage.iter_keys():
        progress(1)
        if key in known:
            report.present += 1
            continue
        path = archive.storage.path(key)
        try:
            parsed = parse_instance(path, settings.bulk_data_threshold)
            received = Received(path, path.stat().st_size, _sha256(path))
            with archive.writer_engine.begin() as connection:
                writer = IndexWriter(connection, settings, [parsed.sop_uid])
                status, _ = writer.add(parsed, received, key, Origin("REINDEX", address=key))
                writer.flush()
        except ArchiveError as exc:
            report.rejected.append(f"{key}: {exc}")
            continue
        if status is StoreStatus.DUPLICATE:
            report.duplicates.append(key)
        else:
            report.indexed += 1
    return report
