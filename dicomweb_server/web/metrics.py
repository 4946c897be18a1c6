"""Request accounting of the DICOMweb front: metrics, request ids, and ``/metrics``.

One WSGI middleware (:class:`Accounting`) wraps the app, outermost, so that it sees
every request including refused and failed ones:

* it gives the request an id: the client's ``X-Request-ID`` when well formed (a proxy
  or a viewer may already have assigned one), else a new UUID; the id is bound to the
  logging context (:func:`dicomweb_server.logs.bind_request`) while the request is
  handled *and* while its body streams, and echoed in the ``X-Request-ID`` response
  header so that a user reporting a failure can quote it;
* it counts bytes read from ``wsgi.input`` and bytes of the response body, and times the
  request to its last byte.  Whole stored files that the WSGI server sends with
  ``sendfile`` (``wsgi.file_wrapper``) are not wrapped, which would defeat the
  zero-copy path: for those the Content-Length is counted and the time is to the first
  byte.

Requests are labelled by their Flask URL rule (``/dicom-web/studies/<study>``), never by
the path, whose UIDs would make one time series per study; unmatched paths share the
label ``unmatched``.

``GET /metrics`` answers the text exposition format (prometheus-client), summed over
every process of the archive (see :mod:`dicomweb_server.metrics`), plus the index size
counted at scrape time.  It is open like ``/health`` (``web/auth.py``: OPEN_ENDPOINTS):
the figures are counts and timings, nothing about patients or studies, and Prometheus
scrapers rarely carry bearer tokens; keep the port off the internet or filter
``/metrics`` at the proxy when the counts themselves are sensitive.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from flask import Flask, Response, request

from .. import logs, metrics
from ..archive import Archive

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

#: Request header (and response header) carrying the request id.
REQUEST_ID_HEADER = "X-Request-ID"
#: A client's id is kept only if it is short and log-safe: no spaces, quotes, newlines.
_WELL_FORMED = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+/=-]{0,127}")
#: Environ key where the route label is left for the middleware by the Flask hook.
ROUTE_KEY = "dicomweb_server.route"
UNMATCHED = "unmatched"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def request_id(offered: str | None) -> str:
    """The client's id if well formed, else a new one (UUID4, 32 hex digits)."""
    if offered and _WELL_FORMED.fullmatch(offered):
        return offered
    return uuid.uuid4().hex


class _CountingInput:
    """``wsgi.input`` that counts the bytes the app reads from it."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.count = 0

    def read(self, *args: Any) -> bytes:
        data = self._stream.read(*args)
        self.count += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        n = self._stream.readinto(buffer)
        self.count += n or 0
        return n

    def readline(self, *args: Any) -> bytes:
        data = self._stream.readline(*args)
        self.count += len(data)
        return data

    def readlines(self, *args: Any) -> list[bytes]:
        lines = self._stream.readlines(*args)
        self.count += sum(len(line) for line in lines)
        return lines

    def __iter__(self) -> Iterator[bytes]:
        for line in self._stream:
            self.count += len(line)
            yield line

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class _Exchange:
    """One request in flight: what the middleware records when it ends."""

    def __init__(self, environ: WSGIEnvironment, rid: str) -> None:
        self.environ = environ
        self.started = time.perf_counter()
        self.status = "500"  # if the app raises before start_response
        self.bytes_out = 0
        self.input = _CountingInput(environ["wsgi.input"])
        environ["wsgi.input"] = self.input
        self.token = logs.bind_request(rid)
        self.done = False

    def finish(self) -> None:
        if self.done:
            return
        self.done = True
        logs.unbind(self.token)
        method = self.environ.get("REQUEST_METHOD", "")
        metrics.http_request(
            route=self.environ.get(ROUTE_KEY, UNMATCHED),
            method=method if method in _METHODS else "other",
            status=self.status,
            seconds=time.perf_counter() - self.started,
            bytes_in=self.input.count,
            bytes_out=self.bytes_out,
        )


class _Body:
    """The response iterable, counted, finishing the exchange when the server closes it."""

    def __init__(self, body: Iterable[bytes], exchange: _Exchange) -> None:
        self._body = body
        self._exchange = exchange

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._body:
            self._exchange.bytes_out += len(chunk)
            yield chunk

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            self._exchange.finish()


class Accounting:
    """WSGI middleware: request id, byte counts, latency and status per route."""

    def __init__(self, app: WSGIApplication) -> None:
        self.app = app

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Any:
        rid = request_id(environ.get("HTTP_X_REQUEST_ID"))
        exchange = _Exchange(environ, rid)
        headers_out: list[tuple[str, str]] = []

        def _start_response(status: str, headers: list[tuple[str, str]], *exc: Any) -> Any:
            exchange.status = status.split(" ", 1)[0]
            headers = [(k, v) for k, v in headers if k.lower() != "x-request-id"]
            headers.append((REQUEST_ID_HEADER, rid))
            headers_out[:] = headers
            return start_response(status, headers, *exc)

        try:
            body = self.app(environ, _start_response)
        except BaseException:
            exchange.finish()
            raise
        wrapper = environ.get("wsgi.file_wrapper")
        if isinstance(wrapper, type) and isinstance(body, wrapper):
            length = next((v for k, v in headers_out if k.lower() == "content-length"), "0")
            exchange.bytes_out = int(length) if length.isdigit() else 0
            exchange.finish()
            return body
        return _Body(body, exchange)


class IndexSize:
    """A collector: the index's studies, series and instances, counted at scrape time.

    Computed by whichever process answers the scrape, so it needs no multiprocess
    bookkeeping and is never stale.
    """

    def __init__(self, archive: Archive) -> None:
        self.archive = archive

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        family = GaugeMetricFamily(
            "dicomweb_index_size", "Rows in the index, by level.", labels=["level"]
        )
        for level, count in self.archive.index_size().items():
            family.add_metric([level], count)
        yield family


def install(app: Flask, archive: Archive) -> None:
    """Wrap ``app`` with :class:`Accounting` and add ``GET /metrics``.

    Call first in ``create_app``: the route hook must run before any other
    ``before_request`` hook that may answer on its own (authentication), so that a
    refused request is labelled with its route too.
    """

    @app.before_request
    def _label() -> None:
        rule = request.url_rule
        request.environ[ROUTE_KEY] = rule.rule if rule is not None else UNMATCHED

    collector = IndexSize(archive)

    @app.get("/metrics", endpoint="metrics")
    def metrics_view() -> Response:
        body, media_type = metrics.exposition([collector])
        return Response(body, content_type=media_type)

    inner: Callable[..., Any] = app.wsgi_app
    app.wsgi_app = Accounting(inner)  # type: ignore[method-assign]
