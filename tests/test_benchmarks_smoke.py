"""The benchmark suite still runs: ``python -m benchmarks.run --smoke`` against our server.

It starts the real ``dicomweb-server serve`` on free ports, so the suite cannot rot
while the server changes.  No figure is judged here (CI times nothing); only that each
measurement produced a positive number or said why it could not ("n/a: ...").
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: measurements every smoke run must report, measured or explained
EXPECTED = [
    "qido_study_list_60",
    "qido_patient_name_60",
    "qido_instances_of_series_60",
    "cfind_study_patient_60",
    "cfind_series_of_study_60",
    "wado_metadata_8",
    "wado_frame_native",
    "wado_series_8_MBps",
    "wado_dx_study_MBps",
    "stow_1_per_s",
    "stow_4_per_s",
    "stow_1_MBps",
    "storescu_1_per_s",
    "pynetdicom_1_per_s",
]
LIMITS = ["disk_write_fsync_MBps", "loopback_http_sendfile_MBps", "pydicom_header_parse_per_s"]


def smoke(tmp_path: Path, *args: str) -> tuple[str, dict]:
    """Run ``benchmarks.run --smoke --no-orthanc *args``; its table and JSON report."""
    out = tmp_path / "smoke.json"
    argv = [sys.executable, "-m", "benchmarks.run", "--smoke", "--no-orthanc", *args]
    completed = subprocess.run(
        [*argv, "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed.stdout, json.loads(out.read_text())


def test_smoke_run_reports_every_measurement(tmp_path: Path) -> None:
    table, report = smoke(tmp_path)
    rows = report["results"]
    missing = [key for key in EXPECTED if key not in rows]
    assert not missing, f"not reported: {missing}"
    for key, row in rows.items():
        assert row["unit"] and row["better"] in ("lower", "higher"), key
        value = row["values"]["ours"]
        if "na" in value:
            assert value["na"].startswith(("n/a", "error")), (key, value)
        else:
            assert value["median"] > 0 and value["p95"] >= value["median"], (key, value)
            assert all(run > 0 for run in value["runs"]), (key, value)
    for key in LIMITS:
        assert report["meta"]["limits"][key] > 0, key
    assert "| measurement |" in table


def test_limits_only_run_still_starts_our_server(tmp_path: Path) -> None:
    """Our server must start: a smoke run whose server fails exits non-zero."""
    _table, report = smoke(tmp_path, "--only", "limits")
    assert "ours" in report["meta"]["machine"]["servers"]


def test_no_fsync_adds_a_column_of_ours_without_fsync(tmp_path: Path) -> None:
    """``--no-fsync`` runs a second server of ours beside the first, on every row."""
    table, report = smoke(tmp_path, "--no-fsync", "--only", "ingest")
    rows = report["results"]
    for key in ("stow_1_per_s", "stow_4_per_s", "storescu_1_per_s"):
        assert set(rows[key]["values"]) == {"ours", "ours-nofsync"}, key
        assert rows[key]["values"]["ours-nofsync"]["median"] > 0, key
    assert "| ours-nofsync |" in table
