"""Load test: concurrent STOW-RS, C-STORE, QIDO-RS and WADO-RS against a server it starts.

The script starts the archive itself on 127.0.0.1 and free ports, over a fresh folder:

* default: ``dicomweb-server serve`` (gunicorn workers and the DIMSE process) on SQLite;
* ``--postgres URL``: ``dicomweb-server web`` with ``--workers`` gunicorn workers plus a
  separate ``dicomweb-server dimse`` process, both on that PostgreSQL database (which
  must exist and be empty; the script creates the schema through the server).

Clients run for ``--seconds``; then every instance acknowledged as stored (STOW-RS 200,
C-STORE 0000) is checked: present in the index (QIDO-RS) and retrievable (WADO-RS) with
identical bytes (STOW-RS: the file as sent; C-STORE: the data set as sent, since the
SCP writes its own File Meta Information), and the audit trail (``/admin/audit``) must
count every acknowledged C-STORE, in one row per association and study.  Prints
requests, errors, instances lost and latency percentiles per operation; exits 1 on any
error, loss or miscount.

When an operation has waited ``--stall`` seconds (default 10), the stacks of every
server process (``py-spy dump``) and of the clients are appended to ``--stall-log``,
with the SCUs' pynetdicom warnings: that is how the 30 s C-STORE stall was explained
(``dimse_scp/requestor.py``).

    .venv/bin/python scripts/load.py --seconds 60
    .venv/bin/python scripts/load.py --seconds 60 --workers 4 \\
        --postgres postgresql+psycopg://postgres@127.0.0.1:5432/load
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import io
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pydicom import dcmread  # noqa: E402
from pydicom.uid import generate_uid as make_uid  # noqa: E402
from pynetdicom import AE, evt  # noqa: E402
from pynetdicom.sop_class import CTImageStorage  # noqa: E402

from dicomweb_server.web.multipart_parser import MultipartReader, parse_content_type  # noqa: E402
from dimse_scp.requestor import responses_to_sender  # noqa: E402
from tests.factory import make_instance, to_bytes  # noqa: E402

AET = "LOADTEST"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(url: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        with contextlib.suppress(requests.RequestException):
            if requests.get(url, timeout=2).ok:
                return
        time.sleep(0.2)
    raise TimeoutError(f"{url} does not answer")


def wait_for_port(port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on {port}")


@dataclass
class Server:
    processes: list[subprocess.Popen]
    url: str
    dimse_port: int

    def stop(self) -> None:
        for process in self.processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def start_server(data_dir: Path, postgres: str, workers: int, log: Path) -> Server:
    http_port, dimse_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMWEB_")}
    env.update(
        {
            "DICOMWEB_DATABASE__URL": postgres,
            "DICOMWEB_LOG__LEVEL": "WARNING",
            "DICOMWEB_DIMSE__AET": "ARCHIVE",
            "DICOMWEB_DIMSE__MAX_ASSOCIATIONS": "64",
        }
    )
    common = ["--data-dir", str(data_dir)]
    cli = [sys.executable, "-m", "dicomweb_server"]
    out = open(log, "ab")  # noqa: SIM115 - kept open for the children's lifetime
    spawn = {
        "env": env,
        "stdout": out,
        "stderr": subprocess.STDOUT,
        "cwd": ROOT,
        "start_new_session": True,
    }
    if postgres:
        subprocess.run([*cli, "db", "upgrade", *common], check=True, **spawn)
        processes = [
            subprocess.Popen(
                [*cli, "web", "--http-port", str(http_port), "--workers", str(workers), *common],
                **spawn,
            ),
            subprocess.Popen([*cli, "dimse", "--dimse-port", str(dimse_port), *common], **spawn),
        ]
    else:
        processes = [
            subprocess.Popen(
                [
                    *cli,
                    "serve",
                    "--http-port",
                    str(http_port),
                    "--dimse-port",
                    str(dimse_port),
                    "--workers",
                    str(workers),
                    *common,
                ],
                **spawn,
            )
        ]
    deadline = time.monotonic() + 120
    wait_for(f"http://127.0.0.1:{http_port}/health", deadline)
    wait_for_port(dimse_port, deadline)
    return Server(processes, f"http://127.0.0.1:{http_port}/dicom-web", dimse_port)


@dataclass
class Sent:
    study: str
    series: str
    sop: str
    protocol: str
    digest: str  #: SHA-256 of the file (STOW-RS) or of the data set as sent (C-STORE)


@dataclass
class Stats:
    latency: dict[str, list[float]] = field(default_factory=lambda: collections.defaultdict(list))
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    examples: dict[str, str] = field(default_factory=dict)
    #: How many errors of each kind (operation, start of the message).
    kinds: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    acknowledged: list[Sent] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: Operations under way: thread id -> (operation, start), for the stall watchdog.
    inflight: dict[int, tuple[str, float]] = field(default_factory=dict)

    @contextlib.contextmanager
    def running(self, op: str):  # type: ignore[no-untyped-def]
        """Mark an operation of this thread as under way (see :func:`watchdog`)."""
        key = threading.get_ident()
        self.inflight[key] = (op, time.monotonic())
        try:
            yield
        finally:
            self.inflight.pop(key, None)

    def record(self, op: str, seconds: float, error: str = "") -> None:
        with self.lock:
            self.latency[op].append(seconds)
            if error:
                self.errors[op] += 1
                self.examples.setdefault(op, error[:300])
                self.kinds[op, error[:60]] += 1


def dataset_digest(data: bytes) -> str:
    """SHA-256 of a Part 10 file's data set, without File Meta Information."""
    ds = dcmread(io.BytesIO(data))
    buffer = io.BytesIO()
    ds.file_meta = type(ds.file_meta)()
    ds.save_as(buffer, enforce_file_format=False, implicit_vr=False, little_endian=True)
    return hashlib.sha256(buffer.getvalue()).hexdigest()


def new_instance(
    rng: random.Random, study: str | None = None, patient: str = ""
) -> tuple[object, bytes]:
    """A 32 kB CT instance; in ``study`` of ``patient`` if given, else a new study."""
    ds = make_instance(
        rows=128,
        columns=128,
        seed=rng.randint(0, 1000),
        study_uid=study,
        PatientID=patient or f"LOAD{rng.randint(0, 50)}",
    )
    return ds, to_bytes(ds)


def stow_client(url: str, stats: Stats, stop: threading.Event, seed: int) -> None:
    rng = random.Random(seed)
    session = requests.Session()
    while not stop.is_set():
        items = [new_instance(rng) for _ in range(rng.randint(1, 5))]
        boundary = uuid.uuid4().hex
        body = (
            b"".join(
                f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + b"\r\n"
                for _, data in items
            )
            + f"--{boundary}--\r\n".encode()
        )
        start = time.perf_counter()
        try:
            ctype = f'multipart/related; type="application/dicom"; boundary={boundary}'
            response = session.post(
                url + "/studies", data=body, timeout=60, headers={"Content-Type": ctype}
            )
            error = "" if response.status_code == 200 else f"{response.status_code} {response.text}"
        except requests.RequestException as exc:
            error = repr(exc)
        stats.record("STOW-RS", time.perf_counter() - start, error)
        if not error:
            with stats.lock:
                stats.acknowledged += [
                    Sent(
                        ds.StudyInstanceUID,
                        ds.SeriesInstanceUID,
                        ds.SOPInstanceUID,  # type: ignore[attr-defined]
                        "STOW-RS",
                        hashlib.sha256(data).hexdigest(),
                    )
                    for ds, data in items
                ]


def c_store_client(port: int, stats: Stats, stop: threading.Event, seed: int) -> None:
    rng = random.Random(seed)
    ae = AE(ae_title=AET)
    ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
    # Without this, pynetdicom's reactor thread sometimes takes a C-STORE-RSP meant for
    # send_c_store, which then waits 30 s for nothing (dimse_scp/requestor.py).
    handlers = [(evt.EVT_CONN_OPEN, lambda event: responses_to_sender(event.assoc))]
    while not stop.is_set():
        assoc = ae.associate("127.0.0.1", port, ae_title="ARCHIVE", evt_handlers=handlers)
        if not assoc.is_established:
            stats.record("C-STORE", 0.0, "association not established")
            time.sleep(0.5)
            continue
        # One study (and patient) per association, as a modality sends.
        study, patient = make_uid(), f"LOAD{rng.randint(0, 50)}"
        try:
            for _ in range(rng.randint(5, 30)):
                if stop.is_set():
                    break
                ds, data = new_instance(rng, study, patient)
                start = time.perf_counter()
                try:
                    with stats.running("C-STORE"):
                        status = assoc.send_c_store(ds)
                except RuntimeError as exc:  # the association was aborted
                    stats.record("C-STORE", time.perf_counter() - start, repr(exc))
                    break
                code = getattr(status, "Status", None)
                # No status: no response within the SCU's DIMSE timeout (30 s), which
                # aborts the association.
                error = "" if code == 0 else f"status {code}"
                stats.record("C-STORE", time.perf_counter() - start, error)
                if not assoc.is_established:
                    break  # aborted: the next send would only fail again
                if not error:
                    with stats.lock:
                        stats.acknowledged.append(
                            Sent(
                                ds.StudyInstanceUID,
                                ds.SeriesInstanceUID,
                                ds.SOPInstanceUID,  # type: ignore[attr-defined]
                                "C-STORE",
                                dataset_digest(data),
                            )
                        )
        finally:
            assoc.release()


def qido_client(url: str, stats: Stats, stop: threading.Event, seed: int) -> None:
    rng = random.Random(seed)
    session = requests.Session()
    while not stop.is_set():
        path, params = rng.choice(
            [
                ("/studies", {"limit": "20"}),
                ("/studies", {"PatientID": f"LOAD{rng.randint(0, 50)}"}),
                ("/series", {"Modality": "CT", "limit": "50"}),
                ("/studies", {"PatientName": "Doe*", "limit": "10", "includefield": "all"}),
                ("/instances", {"limit": "100", "offset": str(rng.randint(0, 200))}),
            ]
        )
        start = time.perf_counter()
        try:
            response = session.get(url + path, params=params, timeout=60)
            error = "" if response.status_code == 200 else f"{response.status_code} {response.text}"
        except requests.RequestException as exc:
            error = repr(exc)
        stats.record("QIDO-RS", time.perf_counter() - start, error)


def retrieve(session: requests.Session, url: str, sent: Sent) -> bytes:
    """The instance as WADO-RS returns it (one part of multipart/related)."""
    response = session.get(
        f"{url}/studies/{sent.study}/series/{sent.series}/instances/{sent.sop}",
        headers={"Accept": 'multipart/related; type="application/dicom"'},
        timeout=60,
    )
    response.raise_for_status()
    _, options = parse_content_type(response.headers["Content-Type"])
    parts = []
    for part in MultipartReader(io.BytesIO(response.content), options["boundary"]):
        parts.append(part.stream.read(len(response.content) + 1) + part.stream.read())
    if len(parts) != 1:
        raise ValueError(f"{len(parts)} parts for one instance")
    return parts[0]


def wado_client(url: str, stats: Stats, stop: threading.Event, seed: int) -> None:
    rng = random.Random(seed)
    session = requests.Session()
    while not stop.is_set():
        with stats.lock:
            known = stats.acknowledged[-200:]
        if not known:
            time.sleep(0.1)
            continue
        sent = rng.choice(known)
        start = time.perf_counter()
        try:
            if rng.random() < 0.5:
                retrieve(session, url, sent)
            else:
                response = session.get(
                    f"{url}/studies/{sent.study}/series/{sent.series}/metadata", timeout=60
                )
                response.raise_for_status()
            error = ""
        except (requests.RequestException, ValueError) as exc:
            error = repr(exc)
        stats.record("WADO-RS", time.perf_counter() - start, error)


def verify(url: str, stats: Stats) -> tuple[int, list[str]]:
    """Every acknowledged instance: indexed and retrievable with identical content."""
    session = requests.Session()
    lost: list[str] = []
    for sent in stats.acknowledged:
        try:
            found = session.get(
                url + "/instances", params={"SOPInstanceUID": sent.sop}, timeout=60
            ).json()
            if len(found) != 1:
                lost.append(f"{sent.sop} ({sent.protocol}): not in the index")
                continue
            data = retrieve(session, url, sent)
            digest = (
                hashlib.sha256(data).hexdigest()
                if sent.protocol == "STOW-RS"
                else dataset_digest(data)
            )
            if digest != sent.digest:
                lost.append(f"{sent.sop} ({sent.protocol}): retrieved content differs")
        except (requests.RequestException, ValueError) as exc:
            lost.append(f"{sent.sop} ({sent.protocol}): {exc!r}")
    return len(stats.acknowledged), lost


def process_group(pgid: int) -> list[int]:
    """Process ids of the group ``pgid`` (the server and its workers), from /proc."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:  # fields after the name: state, ppid, pgrp
                pids.append(int(stat.parent.name))
    return sorted(pids)


def watchdog(server: Server, stats: Stats, stop: threading.Event, stall: float, out: Path) -> None:
    """When an operation has waited ``stall`` seconds, record the stacks of every server
    process (``py-spy dump``) and of this script's threads, once per stalled operation,
    so that a stall can be explained rather than only counted."""
    seen: set[tuple[int, float]] = set()
    py_spy = Path(sys.executable).with_name("py-spy")
    while not stop.wait(1.0):
        now = time.monotonic()
        stalled = [
            (k, v)
            for k, v in list(stats.inflight.items())
            if now - v[1] > stall and (k, v[1]) not in seen
        ]
        if not stalled:
            continue
        report = [
            f"== stall at {time.strftime('%H:%M:%S')}: "
            + ", ".join(f"{op} in thread {k} for {now - t:.1f} s" for k, (op, t) in stalled)
        ]
        for process in server.processes:
            for pid in process_group(process.pid):
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                report.append(f"== py-spy dump --pid {pid}: {cmd.decode(errors='replace')}")
                result = subprocess.run(
                    [str(py_spy), "dump", "--locals", "--pid", str(pid)],
                    capture_output=True,
                    text=True,
                    timeout=60,
                )
                report.append(result.stdout + result.stderr)
        report.append("== load.py threads")
        for ident, frame in sys._current_frames().items():
            report.append(f"-- thread {ident}")
            report.append("".join(traceback.format_stack(frame)))
        with out.open("a") as file:
            file.write("\n".join(report) + "\n")
        print(f"stall recorded in {out}", flush=True)
        seen.update((k, v[1]) for k, v in stalled)


def audited_c_stores(root: str, expected: int) -> tuple[int, int]:
    """(rows, instances) of this script's C-STORE rows in the audit trail (one row per
    association and study), read through ``/admin/audit``; the DIMSE process writes
    them within a second of each association's end, so a short wait is allowed for
    them to reach ``expected`` instances."""
    deadline = time.monotonic() + 15
    while True:
        rows, offset = [], 0
        while True:
            page = requests.get(
                root + "/admin/audit",
                params={"user": AET, "action": "store", "limit": "1000", "offset": str(offset)},
                timeout=60,
            ).json()["events"]
            rows += page
            offset += len(page)
            if len(page) < 1000:
                break
        instances = sum(row["instances"] or 0 for row in rows if row["method"] == "C-STORE")
        if instances >= expected or time.monotonic() > deadline:
            return len(rows), instances
        time.sleep(0.5)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Load test of a dicomweb-server it starts.")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--postgres", default="", help="PostgreSQL URL (default: SQLite)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    parser.add_argument("--stow", type=int, default=2, help="STOW-RS clients")
    parser.add_argument("--cstore", type=int, default=2, help="C-STORE clients")
    parser.add_argument("--qido", type=int, default=2, help="QIDO-RS clients")
    parser.add_argument("--wado", type=int, default=2, help="WADO-RS clients")
    parser.add_argument(
        "--stall",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="record server and client stacks when an operation waits this long",
    )
    parser.add_argument(
        "--stall-log",
        type=Path,
        default=Path(tempfile.gettempdir()) / "load-stalls.txt",
        help="where those stacks go (created only if there is something to write)",
    )
    args = parser.parse_args(argv)
    # pynetdicom's own warnings in this process (the SCUs) go to the stall log too.
    client_log = logging.FileHandler(args.stall_log, delay=True)
    client_log.setFormatter(logging.Formatter("%(asctime)s %(threadName)s %(message)s"))
    logging.getLogger("pynetdicom").addHandler(client_log)
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)

    with tempfile.TemporaryDirectory(prefix="load-") as tmp:
        log = Path(tmp) / "server.log"
        server = start_server(Path(tmp) / "data", args.postgres, args.workers, log)
        stats, stop = Stats(), threading.Event()
        clients = (
            [
                threading.Thread(target=stow_client, args=(server.url, stats, stop, n))
                for n in range(args.stow)
            ]
            + [
                threading.Thread(
                    target=c_store_client, args=(server.dimse_port, stats, stop, 100 + n)
                )
                for n in range(args.cstore)
            ]
            + [
                threading.Thread(target=qido_client, args=(server.url, stats, stop, 200 + n))
                for n in range(args.qido)
            ]
            + [
                threading.Thread(target=wado_client, args=(server.url, stats, stop, 300 + n))
                for n in range(args.wado)
            ]
        )
        stop_watch = threading.Event()
        threading.Thread(
            target=watchdog,
            daemon=True,
            args=(server, stats, stop_watch, args.stall, args.stall_log.resolve()),
        ).start()
        try:
            start = time.monotonic()
            for client in clients:
                client.start()
            time.sleep(args.seconds)
            stop.set()
            for client in clients:
                client.join(120)
            elapsed = time.monotonic() - start
            acknowledged, lost = verify(server.url, stats)
            c_stored = sum(1 for s in stats.acknowledged if s.protocol == "C-STORE")
            audit_rows, audited = audited_c_stores(server.url.rsplit("/", 1)[0], c_stored)
        finally:
            stop_watch.set()
            server.stop()
        backend = (
            f"PostgreSQL, web x{args.workers} workers + dimse"
            if args.postgres
            else f"SQLite, serve with {args.workers} workers"
        )
        print(
            f"{backend}; {elapsed:.0f} s; clients: STOW {args.stow}, C-STORE {args.cstore}, "
            f"QIDO {args.qido}, WADO {args.wado}"
        )
        print(
            f"{'operation':10} {'requests':>9} {'errors':>7} {'per s':>7} "
            f"{'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8}"
        )
        for op in ("STOW-RS", "C-STORE", "QIDO-RS", "WADO-RS"):
            values = stats.latency.get(op, [])
            print(
                f"{op:10} {len(values):>9} {stats.errors[op]:>7} {len(values) / elapsed:>7.1f} "
                f"{percentile(values, 0.5):>8.1f} {percentile(values, 0.95):>8.1f} "
                f"{percentile(values, 0.99):>8.1f} {percentile(values, 1.0):>8.1f}"
            )
        by_protocol = collections.Counter(s.protocol for s in stats.acknowledged)
        print(f"instances acknowledged: {acknowledged} ({dict(by_protocol)}); lost: {len(lost)}")
        print(
            f"audit trail: {audit_rows} C-STORE rows (one per association and study) "
            f"for {audited} instances; {c_stored} acknowledged"
        )
        for op, example in stats.examples.items():
            print(f"first {op} error: {example}")
        for (op, kind), count in sorted(stats.kinds.items()):
            print(f"{op} errors: {count} x {kind}")
        for line in lost[:10]:
            print(f"LOST {line}")
        errors = sum(stats.errors.values())
        if errors or lost:
            print("server log tail:\n" + "".join(log.read_text(errors="replace")[-3000:]))
        return 1 if errors or lost or not acknowledged or audited != c_stored else 0


if __name__ == "__main__":
    sys.exit(main())
