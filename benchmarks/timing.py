"""Small helpers shared by the measurements: statistics and "not available"."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import requests

#: HTTP statuses meaning "this server does not offer that (yet)": Not Found, Method
#: Not Allowed, Not Implemented (RFC 9110 sections 15.5.5, 15.5.6, 15.6.2).
NOT_OFFERED = {404, 405, 501}


class NotAvailable(Exception):
    """The server does not offer what a measurement needs; recorded as "n/a"."""


def check(response: requests.Response, what: str) -> requests.Response:
    """Raise :class:`NotAvailable` for 404/405/501, ``HTTPError`` for other failures."""
    if response.status_code in NOT_OFFERED:
        raise NotAvailable(f"{what}: HTTP {response.status_code}")
    if response.status_code >= 400:
        raise requests.HTTPError(
            f"{what}: HTTP {response.status_code} {response.text[:200]!r}", response=response
        )
    return response


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (``fraction`` in 0..1) of a non-empty list."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[rank]


def summary(values: list[float]) -> dict[str, Any]:
    """Median, p95 and the raw values, rounded for the report."""
    return {
        "median": round(statistics.median(values), 4),
        "p95": round(percentile(values, 0.95), 4),
        "runs": [round(v, 4) for v in values],
    }


def elapsed(action: Callable[[], object]) -> float:
    """Wall-clock seconds one call of ``action`` takes."""
    start = time.perf_counter()
    action()
    return time.perf_counter() - start
