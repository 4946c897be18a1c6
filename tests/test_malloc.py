"""dicomweb_server.malloc: glibc's allocator parameters set in a fresh process, unless
the operator chose them through glibc's own environment variables."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")

PROBE = "from dicomweb_server import malloc; print(','.join(malloc.tune()))"

#: Eight threads each allocate, then glibc's malloc_info() says how many arenas serve
#: them (one <heap> element each).
ARENAS = """
import ctypes, threading
from dicomweb_server import malloc
malloc.tune()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.open_memstream.restype = ctypes.c_void_p
libc.open_memstream.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
held, ready = [], threading.Barrier(8)
def allocate():
    held.append(libc.malloc(100_000))
    ready.wait()  # all alive at once, so none can reuse another's arena
threads = [threading.Thread(target=allocate) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
text, size = ctypes.c_char_p(), ctypes.c_size_t()
stream = libc.open_memstream(ctypes.byref(text), ctypes.byref(size))
libc.malloc_info(0, stream)
libc.fclose(stream)
print(ctypes.string_at(text, size.value).decode().count("<heap nr="))
"""


def _run(code: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    result = subprocess.run(
        [sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_parameters_are_set_in_a_fresh_process() -> None:
    assert _run(PROBE) == "MMAP_THRESHOLD,TRIM_THRESHOLD,ARENA_MAX"


@pytest.mark.parametrize("name", ["MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"])
def test_an_operators_thresholds_win(name: str) -> None:
    assert _run(PROBE, **{name: str(1 << 20)}) == "ARENA_MAX"


def test_threads_share_one_arena() -> None:
    assert _run(ARENAS) == "1"


def test_an_operators_arena_limit_wins() -> None:
    assert _run(PROBE, MALLOC_ARENA_MAX="4") == "MMAP_THRESHOLD,TRIM_THRESHOLD"
    assert int(_run(ARENAS, MALLOC_ARENA_MAX="4")) > 1
