"""Child processes of the benchmark: free ports, readiness, memory, clean stops.

Every server is started in its own session (process group), so it is stopped by its
own id and nothing else on the machine is touched.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import requests

LOOPBACK = "127.0.0.1"


class StartError(RuntimeError):
    """A server did not come up; the message carries the tail of its log."""


def free_port() -> int:
    """A TCP port free on the loopback address right now."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def isolated() -> bool:
    """Whether this process sees no network interface but loopback.

    Asked through ``if_nameindex`` (netlink), because ``/sys/class/net`` shows the
    namespace that mounted sysfs, not the caller's.
    """
    return [name for _index, name in socket.if_nameindex()] == ["lo"]


def wait_http(url: str, process: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    """Poll ``url`` until it answers 200, the process dies, or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise StartError(f"exited with {process.returncode}: {tail(log)}")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise StartError(f"{url} not ready after {timeout:.0f} s: {tail(log)}")


def wait_tcp(port: int, timeout: float) -> bool:
    """Whether something accepts connections on ``port`` within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((LOOPBACK, port), timeout=1):
                return True
        except OSError:
            time.sleep(0.2)
    return False


def tail(log: Path, lines: int = 15) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def start(argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``argv`` in a new process group, output appended to ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )


def stop(process: subprocess.Popen, timeout: float = 15.0) -> None:
    """SIGTERM the process group we started, then SIGKILL it if it lingers."""
    if process.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, sig)  # our child leads its own group
        except ProcessLookupError:
            return
        try:
            process.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (gunicorn workers, the DIMSE child)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds used so far by ``pid`` and its descendants."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for member in tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / tick


def wait_idle(pids: list[int], busy: float = 0.03, limit: float = 180.0) -> float:
    """Wait until the process trees of ``pids`` together use less than ``busy`` of a core
    over one second (background work after a bulk load: Orthanc's stable-series events,
    a database checkpoint); returns the seconds waited, at most ``limit``."""
    began = time.monotonic()
    while time.monotonic() - began < limit:
        before = sum(cpu_seconds(pid) for pid in pids)
        time.sleep(1.0)
        if sum(cpu_seconds(pid) for pid in pids) - before < busy:
            break
    return time.monotonic() - began


def _status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def reset_peak_rss(pid: int) -> None:
    """Reset VmHWM of the tree (``clear_refs`` value 5, Linux >= 4.0)."""
    for member in tree(pid):
        with contextlib.suppress(OSError):
            Path(f"/proc/{member}/clear_refs").write_text("5")


def peak_rss_mb(pid: int) -> tuple[float, float]:
    """VmHWM over the tree in MB: the sum (an upper bound of the simultaneous peak,
    counting every process's start-up baseline) and the largest single process."""
    peaks = [_status_kb(member, "VmHWM") / 1024 for member in tree(pid)]
    return sum(peaks), max(peaks, default=0.0)


def pss_mb(pid: int) -> float:
    """Proportional set size of the tree in MB: each page shared by n of its processes
    counts 1/n in each, so the sum is the memory the server holds, which a sum of RSS
    over forked processes counts several times."""
    total = 0
    for member in tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{member}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    break
    return total / 1024


class PeakPss:
    """The largest :func:`pss_mb` of a tree while the ``with`` block runs (sampled)."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid, self.interval, self.peak = pid, interval, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakPss:
        self.peak = pss_mb(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, pss_mb(self.pid))

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, pss_mb(self.pid))


class Server:
    """A running server under test: its DICOMweb root, DIMSE address and process."""

    name = "server"

    def __init__(
        self, process: subprocess.Popen, root: str, dimse_port: int | None, aet: str, workdir: Path
    ) -> None:
        self.process = process
        self.root = root  #: DICOMweb root URL, without trailing slash
        self.dimse_port = dimse_port  #: None when the DIMSE listener did not come up
        self.aet = aet
        self.workdir = workdir

    @property
    def pid(self) -> int:
        return self.process.pid

    def load(self, blobs: list[bytes]) -> None:
        """Store Part 10 blobs by the fastest route (not measured)."""
        raise NotImplementedError

    def count(self) -> int:
        """Instances in the index."""
        raise NotImplementedError

    def settle(self) -> None:
        """End what :meth:`load` left running before latencies are measured."""

    def version(self) -> str:
        return ""

    def stop(self) -> None:
        stop(self.process)
