"""glibc's allocator, told to keep the buffers a request goes through.

Ingest and retrieve move data through short-lived buffers of 64 KiB to a few MiB
(gunicorn's body reader, the multipart parser, file reads and writes).  glibc serves
each allocation over its mmap threshold (128 KiB, raised on the fly up to the largest
block freed) with a fresh ``mmap`` and returns it with ``munmap`` on free, and trims
free memory at the top of its heaps above twice that threshold: so every megabyte read
from a socket was new pages, faulted in one by one and zeroed by the kernel.  Reading
a 5.3 MB STOW-RS body through gunicorn cost 3.3-3.9 ms of CPU that way and 0.6 ms with
the thresholds below (``benchmarks`` and ``docs/performance.md`` give the figures for
whole requests).

Fixed thresholds keep blocks of up to :data:`MMAP_THRESHOLD` in the heaps and up to
:data:`TRIM_THRESHOLD` of free memory at a heap's top, per glibc arena.

glibc also gives each new thread an arena of its own, up to eight per core, and each
keeps the memory its thread freed: after four-client STOW-RS a gunicorn worker's
threads held 5-25 MB more in their arenas than in one.  Python code runs one thread at
a time under the interpreter lock, so separate arenas buy it nothing; one
(:data:`ARENA_MAX`) keeps a worker's memory at what its busiest moment needed.

The same can be had with glibc's ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``
and ``MALLOC_ARENA_MAX`` environment variables, which win over this: an operator's
choice is kept (the two thresholds go together: setting either keeps both).
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform

log = logging.getLogger(__name__)

MMAP_THRESHOLD = 4 << 20  #: larger blocks still get their own mapping
TRIM_THRESHOLD = 32 << 20  #: free memory a heap keeps at its top before trimming
ARENA_MAX = 1  #: arenas per process

#: mallopt() parameters, from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8


def tune() -> list[str]:
    """Set the parameters in this process (inherited by processes it forks) that the
    operator's environment leaves open; returns the names of those set (none off glibc)."""
    if platform.libc_ver()[0] != "glibc":
        return []
    wanted = []
    if not {"MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"} & os.environ.keys():
        wanted += [
            ("MMAP_THRESHOLD", _M_MMAP_THRESHOLD, MMAP_THRESHOLD),
            ("TRIM_THRESHOLD", _M_TRIM_THRESHOLD, TRIM_THRESHOLD),
        ]
    if "MALLOC_ARENA_MAX" not in os.environ:
        wanted.append(("ARENA_MAX", _M_ARENA_MAX, ARENA_MAX))
    try:
        libc = ctypes.CDLL(None)
        return [name for name, parameter, value in wanted if libc.mallopt(parameter, value) == 1]
    except (OSError, AttributeError) as exc:
        log.debug("mallopt unavailable: %s", exc)
        return []
