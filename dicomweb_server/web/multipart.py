"""Writing ``multipart/related`` responses (RFC 2387) lazily, part by part.

PS3.18 8.6.1.2 packs instances, frames and bulk data into ``multipart/related`` payloads
whose root ``type`` parameter names the item media type.  Parts are produced from
iterators, so a 5,000-instance study is streamed with one chunk in memory at a time.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Part:
    """One body part: its Content-Type (with parameters) and its bytes, lazily.

    ``size``, when given, is exactly how many bytes ``body`` yields.
    """

    content_type: str
    body: Iterable[bytes]
    location: str | None = None
    size: int | None = None


def new_boundary() -> str:
    """A boundary that cannot occur in DICOM data by chance (RFC 2046 5.1.1)."""
    return f"dicomweb-{uuid.uuid4().hex}"


def content_type(item_type: str, boundary: str, transfer_syntax: str | None = None) -> str:
    """The response Content-Type: ``multipart/related; type="..."; boundary=...``.

    PS3.18 8.6.1.2 requires the ``type`` parameter; ``transfer-syntax`` is added when
    every part shares one syntax, as Table 8.7.3-5 media types carry it.
    """
    value = f'multipart/related; type="{item_type}"; boundary={boundary}'
    if transfer_syntax:
        value += f"; transfer-syntax={transfer_syntax}"
    return value


def _head(part: Part, boundary: str, first: bool) -> bytes:
    head = ("" if first else "\r\n") + f"--{boundary}\r\n"
    head += f"Content-Type: {part.content_type}\r\n"
    if part.location:
        head += f"Content-Location: {part.location}\r\n"
    return (head + "\r\n").encode("ascii")


def _close(boundary: str, empty: bool) -> bytes:
    return (("" if empty else "\r\n") + f"--{boundary}--\r\n").encode("ascii")


def length(parts: Sequence[Part], boundary: str) -> int | None:
    """The payload's exact length when every part's size is known, else ``None``.

    A response with a Content-Length goes out as it is; without one, gunicorn frames it
    in chunks and copies every chunk once more to do so.
    """
    if any(part.size is None for part in parts):
        return None
    heads = sum(len(_head(part, boundary, i == 0)) for i, part in enumerate(parts))
    return heads + sum(part.size or 0 for part in parts) + len(_close(boundary, not parts))


def stream(parts: Iterable[Part], boundary: str) -> Iterator[bytes]:
    """The payload of ``parts``: each part's head, then its body chunks, then the close.

    The head of a part is sent together with its first chunk, so a small frame is one
    write on the socket.
    """
    first = True
    for part in parts:
        pending: bytes | None = _head(part, boundary, first)
        first = False
        for chunk in part.body:
            if not chunk:
                continue
            if pending is not None:
                if len(chunk) < 65536:
                    yield pending + chunk
                else:
                    yield pending
                    yield chunk
                pending = None
            else:
                yield chunk
        if pending is not None:
            yield pending
    yield _close(boundary, first)
