"""A 5-second run of ``scripts/load.py``: every client kind, zero errors, nothing lost."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[1] / "scripts" / "load.py"


def test_short_load_run_has_no_errors_and_loses_nothing() -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--seconds", "5", "--workers", "1"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "lost: 0" in result.stdout
    for operation in ("STOW-RS", "C-STORE", "QIDO-RS", "WADO-RS"):
        line = next(x for x in result.stdout.splitlines() if x.startswith(operation))
        requests, errors = (int(v) for v in line.split()[1:3])
        assert requests > 0 and errors == 0, line
