"""Benchmark dicomweb-server against Orthanc, side by side on the same data.

Usage
-----
::

    python -m benchmarks.run                      # moderate: 100-slice CT, 1k and 100k index
    python -m benchmarks.run --smoke --no-orthanc # tiny data, our server only, < 60 s
    python -m benchmarks.run --sizes 1000 --only search,retrieve --json out.json
    python -m benchmarks.run --long               # adds 1,000 slices, 1M index, 2 GB memory

Both servers are started here on free loopback ports over temporary folders and stopped
at the end: ours with ``dicomweb-server serve`` (SQLite; ``--postgres`` adds a column on
a fresh PostgreSQL database, ``--no-fsync`` one that skips every fsync),
Orthanc from Debian's packages (installed when missing, ``--no-orthanc`` to leave it
out).  Orthanc 1.10 cannot be told to listen on loopback only, so when it takes part
the whole run re-executes itself in a private network namespace (``unshare --net``) that
holds nothing but a loopback interface.

The same deterministic data (:mod:`benchmarks.dataset`, cached in ``benchmarks/out/``)
is loaded into every server.  Each measurement alternates between the servers, request
by request for latencies and run by run for throughputs, to cancel machine drift; the
figure reported is the median (and p95 for latencies).  The table says which direction
is better, gives ours/Orthanc and checks the targets of the performance issue; the
JSON file holds every raw run.  Groups (``--only``): ingest, search, retrieve, memory,
limits.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from . import dataset, ingest, limits, process, retrieve, search
from .process import Server, StartError, isolated
from .timing import NotAvailable, summary

NETNS_ENV = "BENCH_NETNS"  #: set in the re-executed child, so it never re-executes again
GROUPS = ("ingest", "search", "retrieve", "memory", "limits")
MB = 1e6


@dataclass
class Plan:
    """What one run measures, from the command line."""

    smoke: bool
    long: bool
    sizes: list[int]
    slices: list[int]
    iterations: int
    runs: int
    groups: set[str]
    orthanc: bool
    postgres: bool
    nofsync: bool = False
    image: int = 512
    ingest_slices: int = 100

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Plan:
        smoke, long = args.smoke, args.long
        sizes = args.sizes or (
            [60] if smoke else [1_000, 100_000, 1_000_000] if long else [1_000, 100_000]
        )
        return cls(
            smoke=smoke,
            long=long,
            sizes=sorted(sizes),
            slices=[8] if smoke else [100, 1_000] if long else [100],
            iterations=args.iterations or (2 if smoke else 20),
            runs=args.runs or (1 if smoke else 3),
            groups=set(args.only.split(","))
            if args.only
            else set(GROUPS) - (set() if long else {"memory"}),
            orthanc=not args.no_orthanc and (args.orthanc or not smoke),
            postgres=args.postgres,
            nofsync=args.no_fsync,
            image=64 if smoke else 512,
            ingest_slices=10 if smoke else 100,
        )


@dataclass
class Results:
    """Every figure, keyed by measurement; written as JSON and printed as a table."""

    servers: list[str]
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(
        self,
        key: str,
        label: str,
        unit: str,
        better: str,
        server: str,
        values: list[float] | str,
        target: str = "",
    ) -> None:
        row = self.rows.setdefault(
            key, {"label": label, "unit": unit, "better": better, "target": target, "values": {}}
        )
        row["values"][server] = {"na": values} if isinstance(values, str) else summary(values)

    def finish(self) -> None:
        """Ratios ours/Orthanc and whether each target is met."""
        for row in self.rows.values():
            theirs = row["values"].get("orthanc", {})
            row["ratio"], row["met"] = {}, {}
            for name, ours in row["values"].items():
                if name == "orthanc" or "na" in ours:
                    continue
                stat = "p95" if row["target"].startswith("p95") else "median"
                if theirs and "na" not in theirs and theirs[stat]:
                    row["ratio"][name] = round(ours[stat] / theirs[stat], 3)
                row["met"][name] = _met(row["target"], ours, row["ratio"].get(name))


def _met(target: str, ours: dict[str, float], ratio: float | None) -> bool | None:
    """Evaluate targets written as "ratio >= 1.0", "p95 ratio <= 0.5" or "< 150"."""
    if not target:
        return None
    words = target.split()
    limit, op = float(words[-1]), words[-2]
    value = ratio if "ratio" in words else ours["median"]
    if value is None:
        return None
    return {">=": value >= limit, "<=": value <= limit, "<": value < limit}[op]


# -- the run ----------------------------------------------------------------------------


class Bench:
    """Runs the plan's measurements on the started servers."""

    def __init__(self, plan: Plan, servers: list[Server]) -> None:
        self.plan = plan
        self.servers = servers
        self.results = Results([s.name for s in servers])
        self.sessions = {s.name: requests.Session() for s in servers}
        self.tiny_loaded = 0
        self.batch = 0
        size = plan.image
        self.ct = {n: dataset.ct_series(f"ct{n}_{size}", n, size=size) for n in plan.slices}
        self.compressed = dataset.compressed_variants(4 if plan.smoke else 10, size)
        self.dx = dataset.radiographs("dx_small", 128, 100) if plan.smoke else dataset.radiographs()
        self.mf = dataset.multiframe("mf_small", 4, 64) if plan.smoke else dataset.multiframe()

    # helpers ---------------------------------------------------------------------------

    def _each(self, action: Callable[[Server], None]) -> None:
        """Run ``action`` on every server at once (loading, not measured)."""
        errors: list[BaseException] = []

        def guarded(server: Server) -> None:
            try:
                action(server)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=guarded, args=(s,)) for s in self.servers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]

    def load_reference(self) -> None:
        sets = [*self.ct.values(), *self.compressed.values(), self.dx, self.mf]
        paths = [p for s in sets for p in s.paths]
        log(f"loading {len(paths)} reference instances")
        for start in range(0, len(paths), 100):
            blobs = [p.read_bytes() for p in paths[start : start + 100]]
            self._each(lambda server, blobs=blobs: server.load(blobs))

    def grow(self, target: int) -> None:
        """Add tiny instances until every server holds at least ``target`` instances."""
        need = target - min(s.count() for s in self.servers)
        log(f"growing the index by {max(need, 0)} tiny instances to {target}")
        chunk, total, started, shown = 2_000, max(need, 0), time.monotonic(), time.monotonic()
        while need > 0:
            blobs = list(dataset.tiny_blobs(self.tiny_loaded, min(chunk, need)))
            self._each(lambda server, blobs=blobs: server.load(blobs))
            self.tiny_loaded += len(blobs)
            need -= len(blobs)
            if time.monotonic() - shown >= 60 and need > 0:
                shown = time.monotonic()
                done, rate = total - need, (total - need) / (shown - started)
                left = need / rate / 60
                log(f"  {done}/{total} loaded ({rate:.0f}/s, about {left:.0f} min left)")

    def _attempt(self, server: Server, action: Callable[[], Any]) -> Any:
        """``action()``, or a string saying why it could not be measured."""
        try:
            return action()
        except NotAvailable as exc:
            return f"n/a: {exc}"
        except (requests.RequestException, RuntimeError, OSError, ValueError) as exc:
            log(f"  {server.name}: {type(exc).__name__}: {exc}")
            return f"error: {type(exc).__name__}: {str(exc)[:200]}"

    def latency(self, key: str, label: str, target: str, call: Callable[[Server], float]) -> None:
        """Milliseconds of ``call``, alternating servers call by call after one warm-up."""
        samples: dict[str, list[float] | str] = {}
        for server in self.servers:
            outcome = self._attempt(server, lambda server=server: call(server))
            samples[server.name] = outcome if isinstance(outcome, str) else []
        for iteration in range(self.plan.iterations):
            order = self.servers if iteration % 2 == 0 else self.servers[::-1]
            for server in order:
                bucket = samples[server.name]
                if isinstance(bucket, str):
                    continue
                outcome = self._attempt(server, lambda server=server: call(server))
                if isinstance(outcome, str):
                    samples[server.name] = outcome
                else:
                    bucket.append(outcome * 1000)
        for name, values in samples.items():
            self.results.add(key, label, "ms", "lower", name, values, target)
        log(f"  {label}: " + ", ".join(f"{n}={_short(v)}" for n, v in samples.items()))

    def throughput(
        self,
        key: str,
        label: str,
        target: str,
        runs: int,
        call: Callable[[Server, int], tuple[float, float, float]],
        units: tuple[str, str] = ("instances/s", "MB/s"),
    ) -> None:
        """Rates of ``call(server, run)`` -> (seconds, instances, bytes), alternating servers."""
        rates: dict[str, tuple[list[float], list[float]] | str] = {
            s.name: ([], []) for s in self.servers
        }
        #: CPU milliseconds of the server's whole process tree per instance: on two
        #: shared cores, what a server spends is what the other senders cannot use.
        cpu: dict[str, list[float]] = {s.name: [] for s in self.servers}
        for run in range(runs):
            order = self.servers if run % 2 == 0 else self.servers[::-1]
            for server in order:
                bucket = rates[server.name]
                if isinstance(bucket, str):
                    continue
                # Each run starts with no dirty pages: what a run leaves unsynced (the
                # batches just generated; Orthanc's index, whose log it syncs only now
                # and then) would otherwise be written back, and counted, during the
                # next server's run.
                os.sync()
                before = process.cpu_seconds(server.process.pid)
                outcome = self._attempt(server, lambda s=server, r=run: call(s, r))
                if isinstance(outcome, str):
                    rates[server.name] = outcome
                    continue
                seconds, count, size = outcome
                if count:
                    bucket[0].append(count / seconds)
                    spent = process.cpu_seconds(server.process.pid) - before
                    cpu[server.name].append(spent * 1000 / count)
                bucket[1].append(size / MB / seconds)
        for name, bucket in rates.items():
            first, second = (bucket, bucket) if isinstance(bucket, str) else bucket
            if units[0] and (isinstance(first, str) or first):
                self.results.add(
                    f"{key}_per_s", f"{label}", units[0], "higher", name, first, target
                )
            self.results.add(
                f"{key}_MBps",
                f"{label}",
                units[1],
                "higher",
                name,
                second,
                "" if units[0] else target,
            )
            if cpu[name]:
                self.results.add(
                    f"{key}_cpu",
                    f"{label}: server CPU per instance",
                    "ms CPU",
                    "lower",
                    name,
                    cpu[name],
                )
        log(f"  {label}: " + ", ".join(f"{n}={_short(b)}" for n, b in rates.items()))

    # measurements ----------------------------------------------------------------------

    def measure_ingest(self) -> None:
        log("ingest")
        plan = self.plan

        def batch(run: int) -> list[Path]:
            del run
            self.batch += 1
            return dataset.ingest_batch(self.batch, plan.ingest_slices, plan.image).paths

        def files_for(runs: int) -> list[list[Path]]:
            return [batch(r) for r in range(runs)]

        def size(paths: list[Path]) -> int:
            return sum(p.stat().st_size for p in paths)

        cases: list[tuple[str, str, Callable[[Server, list[Path]], float]]] = [
            (
                "stow_1",
                "STOW-RS, 1 client, 10 instances/request",
                lambda s, f: ingest.stow(s.root, f, 1),
            ),
            (
                "stow_4",
                "STOW-RS, 4 clients, 10 instances/request",
                lambda s, f: ingest.stow(s.root, f, 4),
            ),
            (
                "storescu_1",
                "C-STORE storescu, 1 association",
                lambda s, f: ingest.storescu(s.dimse_port, s.aet, f, 1),
            ),
            (
                "storescu_4",
                "C-STORE storescu, 4 associations",
                lambda s, f: ingest.storescu(s.dimse_port, s.aet, f, 4),
            ),
            (
                "pynetdicom_1",
                "C-STORE pynetdicom, 1 association",
                lambda s, f: ingest.pynetdicom_store(
                    s.dimse_port, s.aet, f, "1.2.840.10008.5.1.4.1.1.2"
                ),
            ),
        ]
        # Untimed, one batch per server over four connections: a backlog is thousands
        # of instances, and what is measured is the steady state, not each server's
        # first requests (our workers' lazily opened connections, Orthanc's caches).
        warm_up = batch(0)
        for server in self.servers:
            self._attempt(server, lambda s=server: ingest.stow(s.root, warm_up, 4))
        for key, label, send in cases:
            batches = files_for(plan.runs)

            def call(server: Server, run: int, send=send, batches=batches) -> tuple:
                files = batches[run]
                return send(server, files), len(files), size(files)

            self.throughput(key, label, "ratio >= 1.0", plan.runs, call)

    def measure_search(self, size: int) -> None:
        self.grow(size)
        tag = _size_tag(size)
        for server in self.servers:
            server.settle()
        waited = process.wait_idle([s.pid for s in self.servers])
        log(f"search at {tag} instances (servers idle after {waited:.0f} s)")
        big = max(self.plan.slices)
        big_series = (self.ct[big].study_uid, self.ct[big].series_uid, big)
        study_uid = dataset.tiny_uids(0)[0] if self.tiny_loaded else self.ct[big].study_uid
        factor = "0.5" if size < 10_000 else "0.2"
        for key, query in search.qido_queries(study_uid, big_series).items():
            self.latency(
                f"{key}_{tag}",
                f"{query.label} @{tag}",
                f"p95 ratio <= {factor}",
                lambda s, q=query: search.qido(self.sessions[s.name], s.root, q),
            )
        clients: dict[str, search.FindClient | str] = {}
        for server in self.servers:
            try:
                clients[server.name] = search.FindClient(server.dimse_port, server.aet)
            except NotAvailable as exc:
                clients[server.name] = f"n/a: {exc}"
        try:
            for key, (label, identifier) in search.cfind_queries(study_uid).items():
                self.latency(
                    f"{key}_{tag}",
                    f"{label} @{tag}",
                    f"p95 ratio <= {factor}",
                    lambda s, i=identifier: _find(clients[s.name], i),
                )
        finally:
            for client in clients.values():
                if isinstance(client, search.FindClient):
                    client.close()

    def measure_retrieve(self) -> None:
        log("retrieve")
        plan = self.plan
        for n, series in self.ct.items():
            target = "ratio <= 0.5" if n < 1000 else "< 150"
            self.latency(
                f"wado_metadata_{n}",
                f"WADO series metadata, {n} slices",
                target,
                lambda s, x=series: retrieve.metadata(self.sessions[s.name], _series(s, x)),
            )
        first = self.ct[min(self.ct)]
        middle = len(first.sop_uids) // 2
        frames = {"native": first, **self.compressed}
        for label, series in frames.items():
            index = min(middle, len(series.sop_uids) - 1)
            self.latency(
                f"wado_frame_{label}",
                f"WADO frame ({label}, {plan.image}x{plan.image})",
                "ratio <= 0.5",
                lambda s, x=series, i=index: retrieve.frame(
                    self.sessions[s.name], _instance(s, x, i)
                ),
            )
        self.latency(
            "wado_frame_multiframe",
            "WADO frame of a multi-frame instance",
            "ratio <= 0.5",
            lambda s: retrieve.frame(self.sessions[s.name], _instance(s, self.mf, 0), 2),
        )
        for kind in ("rendered", "thumbnail"):
            self.latency(
                f"wado_{kind}",
                f"WADO {kind} (JPEG) of a CT slice",
                "",
                lambda s, k=kind: retrieve.rendered(
                    self.sessions[s.name], _instance(s, first, middle), k
                ),
            )
        runs = max(plan.runs, 3)
        for n, series in self.ct.items():
            self.throughput(
                f"wado_series_{n}",
                f"WADO retrieve whole series, {n} slices",
                "ratio >= 1.0",
                runs,
                lambda s, _r, x=series: _whole(self.sessions[s.name], _series(s, x)),
                units=("", "MB/s"),
            )
        self.throughput(
            "wado_dx_study",
            "WADO retrieve DX study (2 large images)",
            "ratio >= 1.0",
            runs,
            lambda s, _r: _whole(self.sessions[s.name], f"{s.root}/studies/{self.dx.study_uid}"),
            units=("", "MB/s"),
        )

    def measure_memory(self) -> None:
        """Peak RSS of each server's process tree during a ~2 GB STOW and retrieve."""
        log("memory (about 2 GB each way)")
        big = dataset.ct_series(
            f"big{self.plan.image}", 8 if self.plan.smoke else 4000, size=self.plan.image, seed=99
        )
        for server in self.servers:

            def upload(s: Server = server) -> tuple[float, float, float]:
                process.reset_peak_rss(s.pid)
                with process.PeakPss(s.pid) as pss:
                    ingest._send_stow(s.root, big.paths)
                return (pss.peak, *process.peak_rss_mb(s.pid))

            def download(s: Server = server) -> tuple[float, float, float]:
                process.reset_peak_rss(s.pid)
                with process.PeakPss(s.pid) as pss:
                    retrieve.whole(self.sessions[s.name], f"{s.root}/studies/{big.study_uid}")
                return (pss.peak, *process.peak_rss_mb(s.pid))

            figures = (
                ("pss", "peak PSS (sum over process tree)", "< 300"),
                ("sum", "peak RSS (sum over process tree)", ""),
                ("max", "peak RSS (largest process)", "< 300"),
            )
            for key, label, action in (
                ("memory_stow", "one ~2 GB STOW-RS", upload),
                ("memory_retrieve", "~2 GB study retrieve", download),
            ):
                outcome = self._attempt(server, action)
                for index, (suffix, which, target) in enumerate(figures):
                    values = outcome if isinstance(outcome, str) else [outcome[index]]
                    self.results.add(
                        f"{key}_{suffix}",
                        f"{which}, {label}",
                        "MB",
                        "lower",
                        server.name,
                        values,
                        target,
                    )

    def close(self) -> None:
        for session in self.sessions.values():
            session.close()


def _find(client: search.FindClient | str, identifier: Any) -> float:
    if isinstance(client, str):
        raise NotAvailable(client.removeprefix("n/a: "))
    return client.find(identifier)


def _whole(session: requests.Session, url: str) -> tuple[float, int, int]:
    """Retrieve ``url`` again and again for at least 0.25 s: a 100-slice series moves
    in ~20 ms, and single transfers that short varied by +-30% from run to run."""
    seconds = size = 0
    while seconds < 0.25:
        took, got = retrieve.whole(session, url)
        seconds, size = seconds + took, size + got
    return seconds, 0, size


def _series(server: Server, series: dataset.SeriesSet) -> str:
    return retrieve.series_url(server.root, series.study_uid, series.series_uid)


def _instance(server: Server, series: dataset.SeriesSet, index: int) -> str:
    return f"{_series(server, series)}/instances/{series.sop_uids[index]}"


def _short(values: list[float] | tuple | str) -> str:
    if isinstance(values, str):
        return values[:60]
    if isinstance(values, tuple):
        values = values[0] or values[1]
    if not values:
        return "-"
    ordered = sorted(values)
    return f"{ordered[len(ordered) // 2]:.1f}"


def _size_tag(size: int) -> str:
    for limit, suffix in ((1_000_000, "M"), (1_000, "k")):
        if size >= limit and size % limit == 0:
            return f"{size // limit}{suffix}"
    return str(size)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- servers, machine, output ---------------------------------------------------------


@contextlib.contextmanager
def started(plan: Plan) -> Iterator[list[Server]]:
    from .ours import start_ours

    servers: list[Server] = []
    try:
        servers.append(start_ours())
        if plan.postgres:
            servers.append(start_ours(postgres=True))
        if plan.nofsync:
            servers.append(start_ours(durable=False))
        if plan.orthanc:
            from .orthanc import ensure_installed, start_orthanc

            ensure_installed()
            servers.append(start_orthanc())
        if "ingest" in plan.groups and not plan.smoke:  # smoke: never install anything
            _ensure_dcmtk()
        yield servers
    finally:
        for server in servers:
            server.stop()


def _ensure_dcmtk() -> None:
    if subprocess.run(["which", "storescu"], capture_output=True).returncode == 0:
        return
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        subprocess.run(
            ["apt-get", "install", "-y", "--no-install-recommends", "dcmtk"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )


def machine(servers: list[Server]) -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    memory = next(
        line.split(":", 1)[1].strip()
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal")
    )
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parent,
    ).stdout.strip()
    dcmtk = subprocess.run(
        ["sh", "-c", "storescu --version 2>/dev/null | head -1"], capture_output=True, text=True
    ).stdout.strip()
    import pydicom
    import pynetdicom

    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "memory": memory,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "pydicom": pydicom.__version__,
        "pynetdicom": pynetdicom.__version__,
        "dcmtk": dcmtk,
        "commit": commit,
        "servers": {s.name: _version(s) for s in servers},
    }


def _version(server: Server) -> str:
    try:
        return server.version()
    except (requests.RequestException, ValueError, KeyError):
        return "?"


def table(results: Results) -> str:
    names = results.servers
    others = [n for n in names if n != "orthanc"]
    head = ["measurement", "unit", *names]
    if "orthanc" in names:
        head += [f"{n}/orthanc" for n in others]
    head += ["target", "met"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in results.rows.values():
        cells = [row["label"], f"{row['unit']} ({row['better']} is better)"]
        for name in names:
            value = row["values"].get(name, {"na": "-"})
            if "na" in value:
                cells.append("n/a")
            elif row["unit"] == "ms":
                cells.append(f"{value['median']:.1f} (p95 {value['p95']:.1f})")
            else:
                cells.append(f"{value['median']:.1f}")
        if "orthanc" in names:
            cells += [str(row["ratio"].get(n, "")) for n in others]
        met = ", ".join(
            f"{n}: {'yes' if m else 'no'}" for n, m in row["met"].items() if m is not None
        )
        cells += [row["target"], met]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def isolate() -> None:
    """Re-execute once in a private network namespace, so nothing listens beyond loopback."""
    if os.environ.get(NETNS_ENV):
        raise SystemExit("unshare --net did not isolate this process; not starting Orthanc")
    argv = ["unshare", "--net", "--", sys.executable, "-m", "benchmarks.run", *sys.argv[1:]]
    log("re-executing in a private network namespace (unshare --net)")
    completed = subprocess.run(
        argv, cwd=Path(__file__).resolve().parent.parent, env={**os.environ, NETNS_ENV: "1"}
    )
    sys.exit(completed.returncode)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--smoke", action="store_true", help="tiny data, 1-2 iterations")
    parser.add_argument(
        "--long", action="store_true", help="1,000-slice CT, 1M index, 2 GB memory runs"
    )
    parser.add_argument(
        "--sizes",
        type=lambda v: [int(x) for x in v.split(",")],
        help="index sizes for search, e.g. 1000,100000",
    )
    parser.add_argument("--only", help=f"comma-separated groups of {','.join(GROUPS)}")
    parser.add_argument("--iterations", type=int, help="requests per latency figure")
    parser.add_argument("--runs", type=int, help="runs per throughput figure")
    parser.add_argument("--orthanc", action="store_true", help="include Orthanc in --smoke")
    parser.add_argument("--no-orthanc", action="store_true", help="our server only")
    parser.add_argument("--postgres", action="store_true", help="also our server on PostgreSQL")
    parser.add_argument(
        "--no-fsync",
        action="store_true",
        help="also our server without fsync (what our durability costs)",
    )
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    return parser.parse_args(argv)


def _work_folders() -> None:
    """Both servers keep their data beside the dataset, on the project's disk, not in
    the system's temporary folder: /tmp may be a tmpfs, and on the machines these figures
    come from creating a file there costs ~0.65 ms against ~0.02 ms elsewhere on the same
    disk (something watches it), which would be measured as ingest time."""
    work = dataset.OUT / "work"
    work.mkdir(parents=True, exist_ok=True)
    os.environ["TMPDIR"] = str(work)
    tempfile.tempdir = None  # re-read TMPDIR


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = Plan.from_args(args)
    if plan.orthanc and not isolated():
        isolate()
    if isolated():
        subprocess.run(["ip", "link", "set", "lo", "up"], check=False)
    _work_folders()
    began = time.monotonic()
    meta: dict[str, Any] = {
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "argv": sys.argv[1:],
        "plan": plan.__dict__ | {"groups": sorted(plan.groups)},
    }
    try:
        with started(plan) as servers:
            bench = Bench(plan, servers)
            meta["machine"] = machine(servers)
            try:
                bench.load_reference()
                if "search" in plan.groups:
                    bench.measure_search(plan.sizes[0])
                if "retrieve" in plan.groups:
                    bench.measure_retrieve()
                if "ingest" in plan.groups:
                    bench.measure_ingest()
                if "search" in plan.groups:
                    for size in plan.sizes[1:]:
                        bench.measure_search(size)
                if "memory" in plan.groups:
                    bench.measure_memory()
            finally:
                bench.close()
            results = bench.results
    except StartError as exc:
        log(f"a server did not start: {exc}")
        return 2
    if "limits" in plan.groups:
        log("physical limits")
        ct = next(iter(bench.ct.values()))
        meta["limits"] = limits.measure(
            dataset.OUT / "probe", ct.paths, 16 if plan.smoke else 512, plan.iterations
        )
    results.finish()
    meta["seconds"] = round(time.monotonic() - began, 1)
    print(table(results))
    if "limits" in meta:
        print("\nphysical limits: " + ", ".join(f"{k}={v}" for k, v in meta["limits"].items()))
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "results": results.rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
