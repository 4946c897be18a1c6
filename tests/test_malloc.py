"""dicomweb_server.malloc: glibc's thresholds set in a fresh process, unless the
operator chose them through glibc's own environment variables."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")

PROBE = "from dicomweb_server import malloc; print(malloc.tune())"


def _tune(**env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    result = subprocess.run(
        [sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_thresholds_are_set_in_a_fresh_process() -> None:
    assert _tune() == "True"


@pytest.mark.parametrize("name", ["MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"])
def test_an_operators_environment_wins(name: str) -> None:
    assert _tune(**{name: str(1 << 20)}) == "False"
