"""Prometheus metrics shared by every process: gunicorn workers, DIMSE listener, import.

The metric objects are process-wide, as prometheus-client designs them: a counter is one
number per process however many Flask apps or DIMSE servers that process runs.  With
several processes (``serve``: gunicorn workers plus the DIMSE child) each process writes
its values to files under ``PROMETHEUS_MULTIPROC_DIR`` and the scrape sums them
(prometheus-client's multiprocess mode; :mod:`dicomweb_server.server` sets the variable
before any worker starts).  Without the variable (tests, one process) the default
in-memory registry is used.

prometheus-client chooses between the two when it is *first imported*, so this module
imports it only when a metric is first touched: importing the archive (which counts
stored instances) in the gunicorn master, before the variable is set, must not fix the
choice for the workers it forks.

Label values are bounded sets (routes, protocols, outcomes), never UIDs or paths, so
that the number of series stays small.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

#: Environment variable of prometheus-client's multiprocess mode (its name, not ours).
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Latency buckets in seconds: 5 ms for a QIDO page up to minutes for a whole-study
#: retrieve or a large STOW-RS body.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


@dataclass(frozen=True)
class _Metrics:
    http_requests: Counter
    http_latency: Histogram
    http_bytes_in: Counter
    http_bytes_out: Counter
    instances: Counter
    instances_sent: Counter
    associations: Counter
    associations_active: Gauge
    dimse_operations: Counter


_created: list[_Metrics] = []
_create_lock = threading.Lock()


def _metrics() -> _Metrics:
    """The metric objects of this process, created once.

    Under a lock: request threads reach here together on a worker's first requests, and
    a second set of objects would overwrite the first one's values in multiprocess mode
    (and fail to register in the default registry).
    """
    if _created:
        return _created[0]
    with _create_lock:
        if not _created:
            _created.append(_create())
        return _created[0]


def _create() -> _Metrics:
    from prometheus_client import Counter, Gauge, Histogram

    return _Metrics(
        http_requests=Counter(
            "dicomweb_http_requests",
            "HTTP requests answered, by route (URL rule, not path), method and status.",
            ["route", "method", "status"],
        ),
        http_latency=Histogram(
            "dicomweb_http_request_duration_seconds",
            "Time from request to the last byte of the response (to the first byte when "
            "a whole stored file is sent with sendfile), by route and method.",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
        ),
        http_bytes_in=Counter(
            "dicomweb_http_request_bytes",
            "Request body bytes read, by route.",
            ["route"],
        ),
        http_bytes_out=Counter(
            "dicomweb_http_response_bytes",
            "Response body bytes sent, by route.",
            ["route"],
        ),
        instances=Counter(
            "dicomweb_instances_received",
            "Instances handed to the archive, by protocol (STOW-RS, DIMSE, IMPORT, ...) and "
            "outcome (stored, duplicate, replaced, quarantined, failed).",
            ["protocol", "outcome"],
        ),
        instances_sent=Counter(
            "dicomweb_instances_sent",
            "Instances sent by C-GET and C-MOVE sub-operations, by protocol.",
            ["protocol"],
        ),
        associations=Counter(
            "dicomweb_dimse_associations",
            "DIMSE connections accepted (associations requested, refused ones included).",
        ),
        associations_active=Gauge(
            "dicomweb_dimse_associations_active",
            "DIMSE connections open now.",
            multiprocess_mode="livesum",
        ),
        dimse_operations=Counter(
            "dicomweb_dimse_operations",
            "DIMSE operations answered, by command and final status class "
            "(success, warning, cancel, failure; PS3.7 Annex C).",
            ["operation", "status"],
        ),
    )


# -- what the fronts and the archive record ---------------------------------------------


def http_request(
    route: str, method: str, status: str, seconds: float, bytes_in: int, bytes_out: int
) -> None:
    """One answered HTTP request."""
    m = _metrics()
    m.http_requests.labels(route, method, status).inc()
    m.http_latency.labels(route, method).observe(seconds)
    if bytes_in:
        m.http_bytes_in.labels(route).inc(bytes_in)
    if bytes_out:
        m.http_bytes_out.labels(route).inc(bytes_out)


def instance_received(protocol: str, outcome: str) -> None:
    """One instance through ``Archive.store``: ``outcome`` is a StoreStatus or "failed"."""
    _metrics().instances.labels(protocol, outcome).inc()


def instance_sent(protocol: str) -> None:
    """One instance sent to a peer (a C-GET or C-MOVE sub-operation)."""
    _metrics().instances_sent.labels(protocol).inc()


def association_opened() -> None:
    m = _metrics()
    m.associations.inc()
    m.associations_active.inc()


def association_closed() -> None:
    _metrics().associations_active.dec()


def dimse_operation(operation: str, status: int) -> None:
    """A final DIMSE response (pending responses are not operations of their own)."""
    _metrics().dimse_operations.labels(operation, status_class(status)).inc()


def status_class(status: int) -> str:
    """The class of a DIMSE status (PS3.7 C.1-C.4): success, warning, cancel or failure.

    Warning is 0001, Bxxx and the service-specific 0107 (attribute list error) and 0116
    (attribute value out of range) of PS3.7 C.4; Cancel is FE00 (C.3); Pending FF00 and
    FF01 (C.2) are reported as ``pending``.
    """
    if status == 0x0000:
        return "success"
    if status in (0xFF00, 0xFF01):
        return "pending"
    if status == 0xFE00:
        return "cancel"
    if status in (0x0001, 0x0107, 0x0116) or (status & 0xF000) == 0xB000:
        return "warning"
    return "failure"


# -- exposition -------------------------------------------------------------------------


def multiprocess_dir() -> str | None:
    """The multiprocess directory in force, if any (set by ``server`` or the operator)."""
    return os.environ.get(MULTIPROC_ENV) or None


def exposition(extra: Iterable[Any] = ()) -> tuple[bytes, str]:
    """The text exposition of every metric, summed over processes, plus ``extra``
    collectors (computed at scrape time, e.g. the index size); returns (body, media type).
    """
    from prometheus_client import (
        CONTENT_TYPE_LATEST,
        REGISTRY,
        CollectorRegistry,
        generate_latest,
    )

    _metrics()  # the families exist (at zero) from the first scrape on
    registry: CollectorRegistry
    if multiprocess_dir():
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        body = generate_latest(registry)
    else:
        body = generate_latest(REGISTRY)
    own = CollectorRegistry(auto_describe=False)
    for collector in extra:
        own.register(collector)
    return body + generate_latest(own), CONTENT_TYPE_LATEST


def mark_process_dead(pid: int) -> None:
    """Drop the live-gauge files of an exited process (gunicorn ``child_exit``)."""
    if multiprocess_dir():
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
