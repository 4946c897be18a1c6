"""The DIMSE listener: one pynetdicom AE, its presentation contexts, handlers, TLS and
allow-list, started and stopped from here only.

:func:`start` is non-blocking and returns a :class:`ServerHandle` (tests and embedding);
:func:`serve_forever` is what the ``dimse`` and ``serve`` commands run.

pynetdicom runs every association in threads of one process, so however many
associations arrive, their Python work shares one GIL and one core.  With
``dimse.processes`` above 1, :func:`serve_forever` starts that many listener processes
on the same port (``SO_REUSEPORT``, Linux), and the kernel spreads incoming
associations over them; they share the archive like gunicorn's workers do.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import multiprocessing
import signal
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydicom.uid import (
    AllTransferSyntaxes,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEG2000MCLossless,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)
from pynetdicom import AE, _config, evt
from pynetdicom.events import Event
from pynetdicom.presentation import AllStoragePresentationContexts, StoragePresentationContexts
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer

from dicomweb_server import malloc, metrics
from dicomweb_server.archive import Archive
from dicomweb_server.config import DimseSettings, Settings

from . import datasets, trail
from .echo import handle_echo
from .find import handle_find
from .get import handle_get
from .move import handle_move
from .runtime import Runtime
from .sockets import set_nodelay
from .store import handle_store

log = logging.getLogger(__name__)

#: Query/Retrieve identifiers and Verification need only the uncompressed syntaxes.
PLAIN_TRANSFER_SYNTAXES: list[str] = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
#: Lossless encodings an SCU would otherwise have to decode for us (PS3.5 A.4, A.6-A.7).
_LOSSLESS: list[str] = [
    RLELossless,
    JPEGLosslessSV1,
    JPEGLossless,
    JPEGLSLossless,
    JPEG2000Lossless,
    JPEG2000MCLossless,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
]
#: Transfer syntaxes accepted for storage, in our order of preference: pynetdicom gives
#: a proposed context the first of *these* that the requestor listed (PS3.8 9.3.3.2
#: leaves the choice to the acceptor).  Lossless compressed first, because an SCU
#: offering one in a context usually holds its data that way and would otherwise decode
#: it for us; then uncompressed; lossy syntaxes (JPEG baseline, JPEG 2000, HTJ2K,
#: JPEG-LS near-lossless, video...) last, so that we never make an SCU compress lossily
#: what it also offered losslessly.  Deflate comes after the plain syntaxes: it is a
#: transfer encoding nobody holds data in, and pynetdicom proposes it by default, so
#: preferring it made every such sender deflate each data set (22 instead of 97/s).
#: Every syntax pydicom knows is stored as received.
_FIRST = [*_LOSSLESS, *PLAIN_TRANSFER_SYNTAXES, DeflatedExplicitVRLittleEndian]
STORAGE_TRANSFER_SYNTAXES: list[str] = _FIRST + [
    str(ts) for ts in AllTransferSyntaxes if ts not in _FIRST
]

# PS3.8 Table 9-21, A-ASSOCIATE-RJ: result rejected-permanent, source service-user,
# reason calling-AE-title-not-recognized.
_REJECTED_PERMANENT = 0x01
_SERVICE_USER = 0x01
_CALLING_AE_NOT_RECOGNISED = 0x03


def configure_pynetdicom() -> None:
    """The one place that sets pynetdicom's process-wide flags.

    ``STORE_RECV_CHUNKED_DATASET``: a received C-STORE data set goes to a temporary file
    instead of memory, and the handler gets its path (see :mod:`.store`).

    pynetdicom's own logging of every PDU and DIMSE message, and of every C-FIND, C-MOVE
    and C-GET Identifier, is built whether or not the ``pynetdicom`` logger shows it;
    our log keeps it at WARNING (:func:`dicomweb_server.logs.configure`) and records one
    line per association and operation instead.  Unless that logger is opened to INFO,
    the flags that build those messages are off.  C-FIND's Pending responses do not
    pass through pynetdicom's messages at all (:mod:`.pending`), so its log shows the
    request and the final response of a search, and the audit line the match count.
    """
    _config.STORE_RECV_CHUNKED_DATASET = True
    verbose = logging.getLogger("pynetdicom").isEnabledFor(logging.INFO)
    _config.LOG_HANDLER_LEVEL = "standard" if verbose else "none"
    _config.LOG_REQUEST_IDENTIFIERS = _config.LOG_RESPONSE_IDENTIFIERS = verbose


def build_ae(settings: DimseSettings) -> AE:
    """Our Application Entity with every SOP Class it serves as SCP."""
    ae = AE(ae_title=settings.aet)
    ae.maximum_associations = settings.max_associations
    ae.maximum_pdu_size = settings.max_pdu_size
    ae.acse_timeout = settings.acse_timeout
    ae.dimse_timeout = settings.dimse_timeout
    ae.network_timeout = settings.network_timeout
    ae.add_supported_context(Verification, PLAIN_TRANSFER_SYNTAXES)
    for sop_class_uid in datasets.MODELS:
        ae.add_supported_context(sop_class_uid, PLAIN_TRANSFER_SYNTAXES)
    # As acceptor there is no 128-context limit; both roles are accepted so that a C-GET
    # requestor may take the SCP role for the storage classes it wants (PS3.7 D.3.3.4).
    # pynetdicom lists the retired storage classes (Ultrasound and Nuclear Medicine of
    # 1993, standalone curves, VL trial...) only in StoragePresentationContexts; old
    # archives migrating to us still hold such instances.
    storage = {c.abstract_syntax: c for c in StoragePresentationContexts}
    storage.update((c.abstract_syntax, c) for c in AllStoragePresentationContexts)
    for abstract_syntax in storage:
        ae.add_supported_context(
            abstract_syntax, STORAGE_TRANSFER_SYNTAXES, scu_role=True, scp_role=True
        )
    return ae


def tls_context(settings: DimseSettings) -> ssl.SSLContext | None:
    """DICOM TLS (PS3.15 B.1) when a certificate and key are configured.

    With ``tls_ca`` set, peers must present a certificate signed by that CA.
    """
    if not (settings.tls_cert and settings.tls_key):
        if settings.tls_cert or settings.tls_key or settings.tls_ca:
            raise ValueError("dimse.tls_cert and dimse.tls_key must be set together for TLS")
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.tls_cert, settings.tls_key)
    if settings.tls_ca:
        context.load_verify_locations(settings.tls_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _check_peer(event: Event, settings: DimseSettings) -> None:
    """Refuse peers outside ``allowed_aets`` / ``allowed_hosts`` with A-ASSOCIATE-RJ."""
    assoc = event.assoc
    calling = (assoc.requestor.primitive.calling_ae_title or "").strip()
    host = assoc.requestor.address
    refused_by = None
    if settings.allowed_aets and calling not in {a.strip() for a in settings.allowed_aets}:
        refused_by = f"calling AE title {calling!r} is not in dimse.allowed_aets"
    elif settings.allowed_hosts and host not in settings.allowed_hosts:
        refused_by = f"host {host} is not in dimse.allowed_hosts"
    if refused_by is None:
        return
    log.warning("association from %s:%s refused: %s", host, assoc.requestor.port, refused_by)
    assoc.acse.send_reject(_REJECTED_PERMANENT, _SERVICE_USER, _CALLING_AE_NOT_RECOGNISED)
    evt.trigger(assoc, evt.EVT_REJECTED, {})
    assoc.kill()


def _opened(event: Event, runtime: Runtime) -> None:
    set_nodelay(event)
    host, port = event.address[0], event.address[1]
    runtime.activity.opened(event.assoc, f"{host}:{port}")


def _requested(event: Event, runtime: Runtime) -> None:
    # The first event in the association's own thread: bind its id for logging there.
    runtime.activity.bind(event.assoc)


def _closed(event: Event, runtime: Runtime) -> None:
    stats = runtime.activity.closed(event.assoc)
    if stats is not None:
        trail.association_ended(runtime, event.assoc, stats)


def _sent(event: Event, runtime: Runtime) -> None:
    """Count each final response we send (C_STORE_RSP -> "C-STORE"); not pending ones.
    C-FIND/C-MOVE/C-GET responses also feed the audit trail (:mod:`.trail`)."""
    trail.response_sent(event, runtime)
    name = type(event.message).__name__
    if name.endswith("_RSP"):
        status = getattr(event.message.command_set, "Status", None)
        if status is not None and metrics.status_class(status) != "pending":
            metrics.dimse_operation(name[: -len("_RSP")].replace("_", "-"), int(status))


def handlers(runtime: Runtime) -> list[tuple[Any, Callable[..., Any], list[Any]]]:
    """Every event handler, with the runtime bound as an argument (no globals)."""
    return [
        (evt.EVT_CONN_OPEN, _opened, [runtime]),
        (evt.EVT_REQUESTED, _requested, [runtime]),
        (evt.EVT_REQUESTED, _check_peer, [runtime.settings.dimse]),
        (evt.EVT_CONN_CLOSE, _closed, [runtime]),
        (evt.EVT_DIMSE_SENT, _sent, [runtime]),
        (evt.EVT_C_ECHO, handle_echo, [runtime]),
        (evt.EVT_C_STORE, handle_store, [runtime]),
        (evt.EVT_C_FIND, handle_find, [runtime]),
        (evt.EVT_C_GET, handle_get, [runtime]),
        (evt.EVT_C_MOVE, handle_move, [runtime]),
    ]


class AssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server, with the TLS handshake moved off the accept loop.

    pynetdicom wraps each accepted socket with a blocking server-side handshake in the
    thread that accepts connections, so one peer that connects and says nothing stalls
    every other peer until the network timeout.  Wrapping without the handshake lets
    OpenSSL perform it on the first read, in the association's own thread.
    """

    #: Bind with ``SO_REUSEPORT``, so that sibling processes can listen on the port too.
    reuse_port = False

    def server_bind(self) -> None:
        if self.reuse_port:
            assert self.socket is not None
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        assert self.socket is not None
        client, address = self.socket.accept()
        if self.ssl_context:
            client = self.ssl_context.wrap_socket(
                client, server_side=True, do_handshake_on_connect=False
            )
        return client, address


class SharedPortServer(AssociationServer):
    """A listener that sibling processes share (``dimse.processes`` > 1)."""

    reuse_port = True


#: Seconds between checks of the accept loop for a shutdown request (socketserver's
#: default of 0.5 s would delay every stop by that much).
POLL_INTERVAL = 0.05


@dataclass
class ServerHandle:
    """A running listener: its port, and how to stop it."""

    server: AssociationServer
    ae: AE
    runtime: Runtime
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def shutdown(self, grace: float = 5.0) -> None:
        """Stop accepting, let established associations finish for up to ``grace``
        seconds, abort the rest (A-ABORT; peers still negotiating included).

        A connection whose peer has not yet sent its A-ASSOCIATE-RQ (state Sta2; a port
        probe, a health check) has nothing to abort: PS3.8's state table defines no
        A-ABORT request there, and pynetdicom's state machine raised in the
        association's thread.  Its transport is closed instead, as the ARTIM timer
        would on expiry.
        """
        self.server.shutdown()
        self.thread.join(grace)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(
            assoc.is_established for assoc in self.server.active_associations
        ):
            time.sleep(POLL_INTERVAL)
        for assoc in self.server.active_associations:
            state = assoc.dul.state_machine.current_state
            if state == "Sta2":
                assoc.dul.socket.close()
            elif state not in ("Sta1", "Sta13"):  # Sta13: already closing
                assoc.abort()


def start(settings: Settings, archive: Archive, *, processes: int = 1) -> ServerHandle:
    """Start listening on ``settings.dimse.host:port`` (port 0: any free port); returns
    at once.  ``processes``: how many listener processes share the port, this one
    included (see :func:`serve_forever`)."""
    configure_pynetdicom()
    dimse = settings.dimse
    runtime = Runtime(archive, settings)
    if settings.auth.audit:
        archive.audit_writer()  # started here, once, not by two associations at a time
    ae = build_ae(dimse)
    server_class = AssociationServer
    if processes > 1:
        server_class = SharedPortServer
        # The cap is on the whole listener: each process takes its share.
        ae.maximum_associations = math.ceil(dimse.max_associations / processes)
    server = ae.make_server(
        (dimse.host, dimse.port),
        evt_handlers=handlers(runtime),
        ssl_context=tls_context(dimse),
        server_class=server_class,
    )
    # What AE.start_server(block=False) does, with a shorter poll interval; the AE's
    # server list is where ThreadedAssociationServer.shutdown expects to find it.
    ae._servers.append(server)
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": POLL_INTERVAL},
        name=f"dimse-{dimse.aet}",
        daemon=True,
    )
    thread.start()
    handle = ServerHandle(server, ae, runtime, thread)
    log.info(
        "DIMSE listening",
        extra={
            "aet": dimse.aet,
            "host": dimse.host,
            "port": handle.port,
            "tls": dimse.tls_cert is not None,
        },
    )
    return handle


def serve_forever(settings: Settings) -> None:
    """Run the listener until SIGTERM or Ctrl-C (the ``dimse`` command, ``serve``'s child).

    With ``dimse.processes`` > 1, the other listener processes are started first, on the
    same port (a free one chosen here if the port is 0), and stopped with this one.
    """
    dimse = settings.dimse
    siblings: list[Any] = []
    if dimse.processes > 1:
        if dimse.port == 0:
            settings = settings.model_copy(
                update={"dimse": dimse.model_copy(update={"port": _free_port(dimse.host)})}
            )
        # Forked before this process starts any thread (see dicomweb_server.server).
        context = multiprocessing.get_context("fork")
        for _ in range(dimse.processes - 1):
            sibling = context.Process(target=_sibling, args=(settings,), daemon=True)
            sibling.start()
            siblings.append(sibling)
    try:
        _listen(settings, announce=True)
    finally:
        for sibling in siblings:
            sibling.terminate()
        for sibling in siblings:
            sibling.join(10)


def _sibling(settings: Settings) -> None:
    """One more listener process (see :func:`serve_forever`)."""
    from dicomweb_server import logs

    logs.configure(settings.log)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C before _listen took it over
        _listen(settings, announce=False)


def _listen(settings: Settings, *, announce: bool) -> None:
    """Listen until SIGTERM or Ctrl-C.

    Ctrl-C signals every process of the group at once, so it may reach this one while
    it is still starting, after a sibling already listens: that is a stop too.
    """
    malloc.tune()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    archive = Archive(settings)
    handle = None
    try:
        handle = start(settings, archive, processes=settings.dimse.processes)
        # What start-up built lives as long as the process: out of the collector's
        # sight, a full collection no longer walks it (as the gunicorn workers do).
        gc.freeze()
        dimse = settings.dimse
        if announce:
            print(f"DIMSE {dimse.aet} listening on {dimse.host}:{handle.port}", flush=True)
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        if handle is not None:
            handle.shutdown()
        archive.close()


def _free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])
