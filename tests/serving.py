"""``dicomweb-server serve`` started as a user starts it, for the tests that need the real
process tree (gunicorn workers and DIMSE listeners): free ports, a clean environment,
and the wait until both listeners answer.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"nothing listens on {port}")


@dataclass(frozen=True)
class Served:
    process: subprocess.Popen
    root: str  #: http://127.0.0.1:PORT
    dimse_port: int

    @property
    def url(self) -> str:
        """The DICOMweb root."""
        return f"{self.root}/dicom-web"


def start_serve(
    data_dir: Path,
    env: dict[str, str] | None = None,
    *,
    aet: str | None = None,
    **popen: Any,
) -> Served:
    """Start ``serve`` with two workers on free ports; return once both ports listen.

    The environment is this one without ``DICOMWEB_*`` and ``PROMETHEUS_MULTIPROC_DIR``,
    plus ``env``.  The server runs in its own process group (session), as in a terminal.
    ``popen``: where its output goes (default: discarded).
    """
    http_port, dimse_port = free_port(), free_port()
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("DICOMWEB_") and k != "PROMETHEUS_MULTIPROC_DIR"
    }
    argv = [sys.executable, "-m", "dicomweb_server", "serve"]
    argv += ["--http-port", str(http_port), "--dimse-port", str(dimse_port)]
    argv += ["--aet", aet] if aet else []
    argv += ["--data-dir", str(data_dir), "--workers", "2"]
    popen.setdefault("stdout", subprocess.DEVNULL)
    popen.setdefault("stderr", subprocess.DEVNULL)
    process = subprocess.Popen(argv, env={**clean, **(env or {})}, start_new_session=True, **popen)
    deadline = time.monotonic() + 90
    wait_for_port(http_port, deadline)
    wait_for_port(dimse_port, deadline)
    return Served(process, f"http://127.0.0.1:{http_port}", dimse_port)


@contextmanager
def serving(data_dir: Path, env: dict[str, str] | None = None, **kwargs: Any) -> Iterator[Served]:
    """:func:`start_serve`, stopped with SIGTERM at the end."""
    served = start_serve(data_dir, env, **kwargs)
    try:
        yield served
    finally:
        served.process.terminate()
        served.process.wait(30)
