"""gzip of JSON responses (RFC 9110 8.4.1.3 ``Content-Encoding: gzip``).

QIDO-RS results and WADO-RS metadata are repetitive JSON that shrinks five- to tenfold,
which matters to a viewer loading the metadata of a 1,000-slice series over a slow
link.  Pixel data, multipart bodies and images are never compressed here: they are
mostly incompressible and gzip costs 39 ms per 512 KB frame against 2.4 ms to send it
(``design.md``), and PS3.18 frames are served as stored.

Only ``application/dicom+json`` and ``application/json`` bodies are compressed, when
the request's Accept-Encoding allows gzip (RFC 9110 12.5.3) and the body is larger than
:data:`MIN_SIZE` (or streamed, size unknown).  Streamed (generator) responses stay
streamed: each chunk goes through one compressor as it is produced.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator

from flask import Flask, Response, request

#: Media types worth compressing.
COMPRESSIBLE = frozenset({"application/dicom+json", "application/json"})
#: Bodies smaller than this are sent as they are: gzip's header and the CPU cost
#: outweigh the bytes saved.
MIN_SIZE = 1024
#: zlib level: 5 gives nearly level 9's ratio on DICOM JSON at a fraction of the time.
LEVEL = 5
_GZIP_WBITS = 16 + zlib.MAX_WBITS  # a gzip (RFC 1952) container, not raw zlib


def install(app: Flask) -> None:
    """Compress the app's JSON responses; called once by ``create_app``."""
    app.after_request(gzip_response)


def _accepts_gzip() -> bool:
    return request.accept_encodings.quality("gzip") > 0


def gzip_response(response: Response) -> Response:
    """Compress ``response`` in place when it is JSON and the client takes gzip."""
    if response.mimetype not in COMPRESSIBLE:
        return response
    # The representation depends on Accept-Encoding, compressed or not (RFC 9110 12.5.5).
    response.vary.add("Accept-Encoding")
    if (
        request.method == "HEAD"
        or response.status_code < 200
        or response.status_code in (204, 206, 304)
        or "Content-Encoding" in response.headers
        or not _accepts_gzip()
    ):
        return response
    if response.is_streamed:
        response.response = _compress_stream(response.response)
        response.headers.pop("Content-Length", None)
        response.direct_passthrough = False
    else:
        data = response.get_data()
        if len(data) < MIN_SIZE:
            return response
        compressor = zlib.compressobj(LEVEL, zlib.DEFLATED, _GZIP_WBITS)
        response.set_data(compressor.compress(data) + compressor.flush())
    response.headers["Content-Encoding"] = "gzip"
    etag, weak = response.get_etag()
    if etag and not weak:
        # The bytes differ now, so a strong validator would lie (RFC 9110 8.8.1); the
        # weak one still matches in If-None-Match, which compares weakly (13.1.2), as
        # nginx does when it compresses.
        response.set_etag(etag, weak=True)
    return response


def _compress_stream(chunks: Iterable[bytes | str]) -> Iterator[bytes]:
    """gzip ``chunks`` as they come; closes the original iterable (WSGI close())."""
    compressor = zlib.compressobj(LEVEL, zlib.DEFLATED, _GZIP_WBITS)
    try:
        for chunk in chunks:
            data = compressor.compress(chunk.encode() if isinstance(chunk, str) else chunk)
            if data:
                yield data
        yield compressor.flush()
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
