"""Bulk operations from the command line: ``import`` of files and folders."""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from .archive import Archive, ArchiveError, Origin, StoreStatus
from .config import Settings

log = logging.getLogger(__name__)


@dataclass
class ImportSummary:
    stored: int = 0
    duplicates: int = 0
    rejected: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)

    def add(self, path: str, outcome: str, reason: str = "") -> None:
        if outcome == "rejected":
            self.rejected += 1
            self.reasons[reason] += 1
            self.examples.setdefault(reason, path)
        elif outcome == StoreStatus.DUPLICATE:
            self.duplicates += 1
        else:
            self.stored += 1

    def report(self) -> str:
        lines = [
            f"stored {self.stored}, already present {self.duplicates}, rejected {self.rejected}"
        ]
        for reason, count in self.reasons.most_common():
            lines.append(f"  rejected {count}: {reason} (e.g. {self.examples[reason]})")
        return "\n".join(lines)


def iter_files(paths: Iterable[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_file():
            yield path
            continue
        for folder, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                yield Path(folder) / name


_archive: Archive | None = None


def _open(settings: Settings) -> None:
    global _archive  # one Archive per worker process
    _archive = Archive(settings, upgrade=False)


def _store_one(path: Path) -> tuple[str, str, str]:
    assert _archive is not None
    try:
        result = _archive.store(path, Origin("IMPORT", address=str(path)))
    except ArchiveError as exc:
        return str(path), "rejected", f"{type(exc).__name__}: {str(exc).split(':')[0]}"
    except OSError as exc:
        return str(path), "rejected", f"unreadable: {exc.strerror}"
    return str(path), result.status, ""


def import_paths(settings: Settings, paths: Iterable[Path], jobs: int = 1) -> ImportSummary:
    """Store every file under ``paths`` with a progress bar; never stops on a bad file."""
    Archive(settings).close()  # create or upgrade the index once
    files = list(iter_files(paths))
    summary = ImportSummary()
    progress = tqdm(total=len(files), unit="file", desc="import", disable=None)
    try:
        if jobs <= 1:
            _open(settings)
            results: Iterable[tuple[str, str, str]] = map(_store_one, files)
            for result in results:
                summary.add(*result)
                progress.update()
        else:
            context = multiprocessing.get_context("spawn")
            with context.Pool(jobs, initializer=_open, initargs=(settings,)) as pool:
                for result in pool.imap_unordered(_store_one, files, chunksize=16):
                    summary.add(*result)
                    progress.update()
    finally:
        progress.close()
    log.info(
        "import finished",
        extra={
            "stored": summary.stored,
            "duplicates": summary.duplicates,
            "rejected": summary.rejected,
        },
    )
    return summary
