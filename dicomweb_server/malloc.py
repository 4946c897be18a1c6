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
:data:`TRIM_THRESHOLD` of free memory at a heap's top, per glibc arena.  The same can
be had with the ``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` environment
variables, which glibc reads at start and which win over this: an operator's choice
is kept.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform

log = logging.getLogger(__name__)

MMAP_THRESHOLD = 4 << 20  #: larger blocks still get their own mapping
TRIM_THRESHOLD = 32 << 20  #: free memory a heap keeps at its top before trimming

#: mallopt() parameters, from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_ENVIRONMENT = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def tune() -> bool:
    """Set the thresholds in this process (inherited by processes it forks); True if
    set.  Does nothing off glibc or when the operator set either variable."""
    if platform.libc_ver()[0] != "glibc" or any(name in os.environ for name in _ENVIRONMENT):
        return False
    try:
        libc = ctypes.CDLL(None)
        done = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
        done = libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and done
    except (OSError, AttributeError) as exc:
        log.debug("mallopt unavailable: %s", exc)
        return False
    return done
