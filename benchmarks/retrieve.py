"""Retrieve clients: WADO-RS metadata, frames, instances and rendered (PS3.18 10.4).

Every response body is read to its end in 1 MiB pieces and discarded, so the figures
are the server's time to deliver, not the client's to keep.
"""

from __future__ import annotations

import time

import requests

from .timing import NotAvailable, check

PIECE = 1 << 20
#: Frames as stored, whatever their transfer syntax (PS3.18 8.7.3.5.2, Table 8.7.3-5)
FRAME_ACCEPT = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
FRAME_FALLBACK = 'multipart/related; type="application/octet-stream"'
#: Instances as stored (PS3.18 Table 8.7.3-2)
INSTANCE_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
INSTANCE_FALLBACK = 'multipart/related; type="application/dicom"'
METADATA_ACCEPT = "application/dicom+json"


def get(session: requests.Session, url: str, accepts: list[str], what: str) -> tuple[float, int]:
    """GET ``url`` with the first media type of ``accepts`` the server takes.

    A 406 (Not Acceptable) or 400 moves on to the next media type, because older
    servers reject ``transfer-syntax=*``.  Returns seconds and bytes received.
    """
    for accept in accepts:
        start = time.perf_counter()
        with session.get(url, headers={"Accept": accept}, stream=True, timeout=600) as response:
            if response.status_code in (400, 406) and accept != accepts[-1]:
                continue
            check(response, what)
            received = sum(len(piece) for piece in response.iter_content(PIECE))
        return time.perf_counter() - start, received
    raise NotAvailable(f"{what}: no acceptable media type")


def series_url(root: str, study_uid: str, series_uid: str) -> str:
    return f"{root}/studies/{study_uid}/series/{series_uid}"


def metadata(session: requests.Session, url: str) -> float:
    seconds, _ = get(session, f"{url}/metadata", [METADATA_ACCEPT], "series metadata")
    return seconds


def frame(session: requests.Session, instance_url: str, number: int = 1) -> float:
    seconds, _ = get(
        session, f"{instance_url}/frames/{number}", [FRAME_ACCEPT, FRAME_FALLBACK], "frame"
    )
    return seconds


def rendered(session: requests.Session, instance_url: str, kind: str) -> float:
    """``kind``: "rendered" or "thumbnail" (PS3.18 8.3.5.1.2), as JPEG."""
    seconds, _ = get(session, f"{instance_url}/{kind}", ["image/jpeg"], kind)
    return seconds


def whole(session: requests.Session, url: str) -> tuple[float, int]:
    """Retrieve all instances under ``url`` (a study or series); seconds and bytes."""
    return get(session, url, [INSTANCE_ACCEPT, INSTANCE_FALLBACK], "retrieve")
