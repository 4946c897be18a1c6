"""Physical limits of this machine, to read the server figures against.

- disk: sequential write of a file in 1 MiB pieces followed by one fsync;
- loopback HTTP: ``curl`` downloading a file from a minimal server thread that answers
  every request with ``os.sendfile`` (no HTTP parsing worth the name), i.e. what the
  kernel and curl can move over 127.0.0.1, not what any real server does;
- pydicom: header parses per second (``stop_before_pixels``) of the CT slices;
- the WSGI floor: latency of an empty QIDO-RS answer from a bare Flask app under
  gunicorn's threaded worker (:mod:`benchmarks.floor`), asked by the QIDO-RS client:
  the part of every search latency of ours that is the web stack, not the archive.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests
from pydicom import dcmread

from . import process
from .timing import summary

PIECE = 1 << 20


def disk_write(folder: Path, megabytes: int) -> float:
    """MB/s of writing ``megabytes`` MiB and fsync-ing the file once."""
    path = folder / "disk-probe.bin"
    piece = os.urandom(PIECE)
    start = time.perf_counter()
    with path.open("wb") as fp:
        for _ in range(megabytes):
            fp.write(piece)
        fp.flush()
        os.fsync(fp.fileno())
    seconds = time.perf_counter() - start
    path.unlink()
    return megabytes * PIECE / 1e6 / seconds


def _serve_file(listener: socket.socket, path: Path, requests_: int) -> None:
    size = path.stat().st_size
    for _ in range(requests_):
        connection, _ = listener.accept()
        with connection, path.open("rb") as fp:
            connection.recv(65536)  # the request; its content does not matter
            connection.sendall(
                f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n".encode()
            )
            offset = 0
            while offset < size:
                offset += os.sendfile(connection.fileno(), fp.fileno(), offset, size - offset)


def loopback_http(folder: Path, megabytes: int, runs: int = 3) -> float:
    """Best MB/s of ``curl`` fetching a ``megabytes`` MiB file over 127.0.0.1 (sendfile)."""
    if not shutil.which("curl"):
        return 0.0
    path = folder / "loopback-probe.bin"
    with path.open("wb") as fp:
        for _ in range(megabytes):
            fp.write(os.urandom(PIECE))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    thread = threading.Thread(target=_serve_file, args=(listener, path, runs), daemon=True)
    thread.start()
    speeds = []
    try:
        for _ in range(runs):
            out = subprocess.run(
                [
                    "curl",
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{speed_download}",
                    f"http://127.0.0.1:{port}/",
                ],
                capture_output=True,
                text=True,
                timeout=120,
            ).stdout
            speeds.append(float(out or 0) / 1e6)
    finally:
        thread.join(10)
        listener.close()
        path.unlink()
    return max(speeds)


def header_parse_rate(files: list[Path]) -> float:
    """pydicom header reads (without pixel data) per second."""
    start = time.perf_counter()
    for path in files:
        dcmread(path, stop_before_pixels=True)
    return len(files) / (time.perf_counter() - start)


def wsgi_floor(folder: Path, iterations: int) -> dict[str, float]:
    """Median and p95 milliseconds of ``GET /dicom-web/studies`` answered ``[]`` by
    :mod:`benchmarks.floor` under gunicorn (gthread, one worker), after one warm-up."""
    port = process.free_port()
    argv = [sys.executable, "-m", "gunicorn", "--worker-class", "gthread", "--threads", "8"]
    argv += ["--bind", f"127.0.0.1:{port}", "--worker-tmp-dir", "/dev/shm"]
    child = process.start([*argv, "benchmarks.floor:app"], folder / "floor.log", {})
    url = f"http://127.0.0.1:{port}/dicom-web/studies"
    try:
        process.wait_http(url, child, folder / "floor.log")
        with requests.Session() as session:
            times = []
            for _ in range(iterations + 1):
                start = time.perf_counter()
                session.get(url, headers={"Accept": "application/dicom+json"}).json()
                times.append((time.perf_counter() - start) * 1000)
    finally:
        process.stop(child)
    figures = summary(times[1:])
    return {"wsgi_floor_median_ms": figures["median"], "wsgi_floor_p95_ms": figures["p95"]}


def measure(folder: Path, files: list[Path], megabytes: int, iterations: int) -> dict[str, float]:
    folder.mkdir(parents=True, exist_ok=True)
    return {
        "disk_write_fsync_MBps": round(disk_write(folder, megabytes), 1),
        "loopback_http_sendfile_MBps": round(loopback_http(folder, megabytes), 1),
        "pydicom_header_parse_per_s": round(header_parse_rate(files), 1),
        **{k: round(v, 3) for k, v in wsgi_floor(folder, iterations).items()},
    }
