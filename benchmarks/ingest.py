"""Ingest clients: STOW-RS (PS3.18 section 10.5) and C-STORE (PS3.4 Annex B).

Each function sends a list of files and returns the wall-clock seconds from the first
byte to the last acknowledgement.  Bodies are streamed from the files in 1 MiB pieces,
so the client holds at most one piece per connection.
"""

from __future__ import annotations

import http.client
import shutil
import socket
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

from pydicom.uid import ExplicitVRLittleEndian

from .timing import NOT_OFFERED, NotAvailable

PIECE = 1 << 20
PER_REQUEST = 10  #: instances in one STOW-RS request
CLIENT_AET = "BENCH"


def _send_stow(root: str, files: list[Path]) -> None:
    """One STOW-RS request: ``multipart/related; type="application/dicom"`` (PS3.18 8.6.1.2)."""
    url = urlsplit(root)
    boundary = uuid.uuid4().hex
    heads = [f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()] * len(files)
    tail = f"\r\n--{boundary}--\r\n".encode()
    length = sum(len(h) + f.stat().st_size for h, f in zip(heads, files, strict=True))
    length += 2 * (len(files) - 1) + len(tail)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=600)
    try:
        connection.putrequest("POST", f"{url.path}/studies")
        connection.putheader(
            "Content-Type", f'multipart/related; type="application/dicom"; boundary={boundary}'
        )
        connection.putheader("Accept", "application/dicom+json")
        connection.putheader("Content-Length", str(length))
        connection.endheaders()
        for number, (head, path) in enumerate(zip(heads, files, strict=True)):
            connection.send((b"\r\n" if number else b"") + head)
            with path.open("rb") as fp:
                while piece := fp.read(PIECE):
                    connection.send(piece)
        connection.send(tail)
        response = connection.getresponse()
        body = response.read()
    except (ConnectionError, http.client.HTTPException) as exc:
        raise NotAvailable(f"STOW-RS connection failed: {exc}") from exc
    finally:
        connection.close()
    if response.status in NOT_OFFERED:
        raise NotAvailable(f"STOW-RS: HTTP {response.status}")
    if response.status != 200:  # 202 or 409: some instance failed (PS3.18 10.5.3)
        raise RuntimeError(f"STOW-RS: HTTP {response.status} {body[:300]!r}")


def stow(root: str, files: list[Path], clients: int) -> float:
    """Send ``files`` ten to a request over ``clients`` concurrent connections."""
    requests_ = [files[i : i + PER_REQUEST] for i in range(0, len(files), PER_REQUEST)]
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(lambda batch: _send_stow(root, batch), requests_))
    return time.perf_counter() - start


def storescu(port: int | None, aet: str, files: list[Path], associations: int) -> float:
    """DCMTK ``storescu``: ``associations`` processes, each sending its share of files."""
    if port is None:
        raise NotAvailable("no DIMSE listener")
    if not shutil.which("storescu"):
        raise NotAvailable("storescu (DCMTK) is not installed")
    shares = [files[i::associations] for i in range(associations)]
    start = time.perf_counter()
    children = [
        subprocess.Popen(
            ["storescu", "-aet", CLIENT_AET, "-aec", aet, "127.0.0.1", str(port), *map(str, share)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for share in shares
        if share
    ]
    failures = []
    for child in children:
        _out, err = child.communicate(timeout=600)
        if child.returncode:
            failures.append(err.decode(errors="replace")[-300:])
    seconds = time.perf_counter() - start
    if failures:
        raise RuntimeError(f"storescu failed: {failures[0]}")
    return seconds


def associate(
    port: int | None,
    aet: str,
    contexts: list[str],  # type: ignore[no-untyped-def]
    transfer_syntaxes: list[str] | None = None,
):
    """A pynetdicom association with TCP_NODELAY set (Nagle adds ~40 ms per message).

    ``transfer_syntaxes`` narrows what is proposed: a C-STORE sender proposes the
    syntax its files are in, else an acceptor choosing another one makes pynetdicom
    decode and re-encode every file on the client side.

    pynetdicom's own logging is off, as in a quiet production client: left on, it
    pretty-prints every C-FIND response it receives (~0.3 ms each, whether or not the
    log shows it), a cost that is the client's and the same against either server.
    """
    from pynetdicom import AE, _config

    _config.LOG_HANDLER_LEVEL = "none"
    _config.LOG_RESPONSE_IDENTIFIERS = False

    if port is None:
        raise NotAvailable("no DIMSE listener")
    ae = AE(ae_title=CLIENT_AET)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    for context in contexts:
        if transfer_syntaxes:
            ae.add_requested_context(context, transfer_syntaxes)
        else:
            ae.add_requested_context(context)
    assoc = ae.associate("127.0.0.1", port, ae_title=aet)
    if not assoc.is_established:
        raise NotAvailable(f"association with {aet} on port {port} was not established")
    assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return assoc


def pynetdicom_store(port: int | None, aet: str, files: list[Path], sop_class: str) -> float:
    """pynetdicom C-STORE over one association; files are sent as stored, not decoded."""
    assoc = associate(port, aet, [sop_class], [ExplicitVRLittleEndian])
    try:
        start = time.perf_counter()
        for path in files:
            status = assoc.send_c_store(path)
            if not status or status.Status not in (0x0000, 0xB000, 0xB007, 0xB006):
                raise RuntimeError(f"C-STORE of {path.name}: status {status}")
        return time.perf_counter() - start
    finally:
        assoc.release()
