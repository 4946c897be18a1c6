"""The command line as operators use it: real processes, real files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dicomweb_server.archive import Archive
from dicomweb_server.config import Settings
from tests.factory import make_series, to_bytes, write


def run_cli(*args: str, settings: Settings | None = None, **kwargs) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if settings is not None:
        env["DICOMWEB_STORAGE__DATA_DIR"] = str(settings.storage.data_dir)
        env["DICOMWEB_DATABASE__URL"] = settings.database.url
    return subprocess.run(
        [sys.executable, "-m", "dicomweb_server", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        **kwargs,
    )


@pytest.mark.parametrize(
    "command",
    [[], ["serve"], ["web"], ["dimse"], ["import"], ["db", "upgrade"], ["verify"], ["reindex"]],
)
def test_every_command_explains_itself(command: list[str]) -> None:
    result = run_cli(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout
    if command == ["serve"]:
        for option in (
            "--host",
            "--http-port",
            "--dimse-port",
            "--aet",
            "--data-dir",
            "--config",
            "--remote-ae",
        ):
            assert option in result.stdout


def test_import_reports_stored_duplicate_and_rejected(settings: Settings, tmp_path: Path) -> None:
    folder = tmp_path / "incoming"
    series = make_series(5)
    for ds in series:
        write(ds, folder / "nested")
    (folder / "notes.txt").write_text("not a DICOM file")
    (folder / "broken.dcm").write_bytes(to_bytes(series[0])[:300])
    result = run_cli("import", str(folder), settings=settings)
    assert result.returncode == 0, result.stderr
    assert "stored 5, already present 0, rejected 2" in result.stdout
    assert "InvalidInstance" in result.stdout
    again = run_cli("import", str(folder / "nested"), "-j", "2", settings=settings)
    assert "stored 0, already present 5, rejected 0" in again.stdout
    archive = Archive(settings)
    try:
        assert len(archive.instances(series[0].StudyInstanceUID)) == 5
    finally:
        archive.close()


def test_db_upgrade_creates_and_is_idempotent(settings: Settings) -> None:
    for _ in range(2):
        result = run_cli("db", "upgrade", settings=settings)
        assert result.returncode == 0, result.stderr
        assert "up to date" in result.stdout


def test_bad_remote_ae_option_is_refused() -> None:
    result = run_cli("dimse", "--remote-ae", "PACS=nohostport", "--data-dir", "/nonexistent")
    assert result.returncode == 2
    assert "AET=HOST:PORT" in result.stderr


def test_verify_finds_missing_corrupt_and_unindexed_files_and_reindex_restores(
    settings: Settings, tmp_path: Path
) -> None:
    series = make_series(4)
    for ds in series:
        write(ds, tmp_path / "in")
    assert run_cli("import", str(tmp_path / "in"), settings=settings).returncode == 0
    clean = run_cli("verify", settings=settings)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "checked 4 instances: 0 missing, 0 corrupt; 0 unindexed files" in clean.stdout

    archive = Archive(settings)
    stored = archive.instances(series[0].StudyInstanceUID)
    archive.path(stored[0]).unlink()
    with open(archive.path(stored[1]), "r+b") as fp:  # one flipped byte deep in the pixels
        fp.seek(-10, 2)
        byte = fp.read(1)
        fp.seek(-10, 2)
        fp.write(bytes([byte[0] ^ 0xFF]))
    archive.delete(series[0].StudyInstanceUID, series[0].SeriesInstanceUID, stored[2].sop_uid)
    write(series[2], archive.path(stored[2]).parent, f"{series[2].SOPInstanceUID}.dcm")
    archive.close()

    damaged = run_cli("verify", settings=settings)
    assert damaged.returncode == 1
    assert "checked 3 instances: 1 missing, 1 corrupt; 1 unindexed files" in damaged.stdout
    assert f"missing: {stored[0].sop_uid}" in damaged.stdout
    assert f"corrupt: {stored[1].sop_uid}" in damaged.stdout

    rebuilt = run_cli("reindex", settings=settings)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "indexed 1, already indexed 2" in rebuilt.stdout
    archive = Archive(settings)
    try:
        assert stored[2].sop_uid in {
            i.sop_uid for i in archive.instances(series[0].StudyInstanceUID)
        }
    finally:
        archive.close()
