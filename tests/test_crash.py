"""A process killed (SIGKILL) in the middle of ingest leaves the archive consistent.

The import command is killed repeatedly at random moments; afterwards every index row
has its complete file, no partial file is visible, and the next start removes the dead
writers' temporary files.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import select

from dicomweb_server.archive import Archive
from dicomweb_server.archive.index import Instance
from dicomweb_server.config import Settings
from tests.factory import make_series, write


def _wait_for_activity(data: Path, process: subprocess.Popen, timeout: float = 60.0) -> None:
    """Until ``process`` is writing an instance (its temporary files carry its PID)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if any(data.glob(f".tmp/*-{process.pid}-*.part")):
            return
        time.sleep(0.02)


def test_sigkill_during_import_leaves_archive_consistent(
    settings: Settings, tmp_path: Path
) -> None:
    source = tmp_path / "incoming"
    hashes = set()
    for ds in make_series(150, rows=64, columns=64):
        path = write(ds, source)
        hashes.add(hashlib.sha256(path.read_bytes()).hexdigest())
    env = {
        **os.environ,
        "DICOMWEB_STORAGE__DATA_DIR": str(settings.storage.data_dir),
        "DICOMWEB_DATABASE__URL": settings.database.url,
    }
    rng = random.Random(7)
    for _ in range(4):
        process = subprocess.Popen(
            [sys.executable, "-m", "dicomweb_server", "import", str(source)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # Kill at a random moment once the import is under way: a fixed delay would
        # fire before Python has even started on a loaded machine.
        _wait_for_activity(settings.storage.data_dir, process)
        time.sleep(rng.uniform(0.0, 0.5))
        process.send_signal(signal.SIGKILL)
        process.wait()

    data = settings.storage.data_dir
    visible = list(data.glob("*/*/*.dcm"))
    for path in visible:  # a visible file is always a complete instance
        assert hashlib.sha256(path.read_bytes()).hexdigest() in hashes
    archive = Archive(settings)  # a new start cleans up after the dead writers
    try:
        assert list((data / ".tmp").iterdir()) == []
        with archive.reader() as session:
            rows = session.execute(select(Instance.storage_key, Instance.sha256)).all()
        assert rows, "the imports were killed before storing anything; make them run longer"
        for key, sha in rows:
            path = archive.storage.path(key)
            assert path.is_file()
            assert hashlib.sha256(path.read_bytes()).hexdigest() == sha
    finally:
        archive.close()
