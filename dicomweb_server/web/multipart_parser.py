"""Streaming reader of ``multipart/related`` request bodies (RFC 2387, RFC 2046 5.1.1).

STOW-RS (PS3.18 10.5.1) sends instances as the parts of one ``multipart/related`` body;
a study can be gigabytes.  This reader never holds more than one chunk plus one
delimiter in memory: each part is handed out as a file-like :class:`PartReader` whose
``read`` returns the part's bytes straight from the request stream and ``b""`` at the
part's delimiter, so :meth:`Archive.store` copies the part to its temporary file with no
intermediate copy.

The shape follows Werkzeug's sans-I/O multipart decoder (bounded buffer, delimiter that
may straddle chunks), but it does no form-data handling: STOW-RS parts normally carry
only ``Content-Type`` (and ``Content-Location`` for bulk data), no
``Content-Disposition``.  The reader is independent of Flask and Werkzeug; it reads any
object with a ``read(size)`` method.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

#: Bytes read from the request stream at a time.
CHUNK = 1 << 20
#: Largest header block of one part; STOW-RS part headers are a few lines.
MAX_HEADER_SIZE = 16 * 1024


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class MultipartError(ValueError):
    """The body is not a well-formed ``multipart/related`` entity (RFC 2046 5.1.1)."""


class TruncatedBody(MultipartError):
    """The body ended inside a part, before its closing delimiter."""


class TooManyParts(MultipartError):
    """The body has more parts than the reader's ``max_parts`` (``http.max_parts``)."""


class BodyTooLarge(MultipartError):
    """The body is longer than :class:`LimitedStream` allows (``http.max_request_size``)."""


class LimitedStream:
    """``stream`` cut off after ``limit`` bytes: reading past it raises :class:`BodyTooLarge`.

    A chunked request declares no length, so its size is known only while it is read;
    this wrapper stops the upload at the limit instead of storing it to the end.  Like
    Werkzeug's ``LimitedStream`` with ``is_max=True``, but without Flask or Werkzeug.

    Parameters
    ----------
    stream
        The request body.
    limit
        Largest number of bytes allowed; 0 means no limit.
    """

    def __init__(self, stream: Readable, limit: int) -> None:
        self._stream = stream
        self.limit = limit
        self.bytes_read = 0
        self.exceeded = False

    def read(self, size: int = -1, /) -> bytes:
        if self.exceeded:
            raise self._error()
        if self.limit and (size is None or size < 0):
            size = CHUNK
        if not self.limit:
            data = self._stream.read(size)
            self.bytes_read += len(data)
            return data
        # One byte more than allowed tells an exact fit from an overlong body.  What fits
        # is still handed out (the parts it completes are stored); the next read raises.
        allowed = self.limit - self.bytes_read
        data = self._stream.read(min(size, allowed + 1))
        if len(data) > allowed:
            self.exceeded = True
            data = data[:allowed]
            if not data:
                raise self._error()
        self.bytes_read += len(data)
        return data

    def _error(self) -> BodyTooLarge:
        return BodyTooLarge(
            f"the request body exceeds {self.limit} bytes (http.max_request_size); "
            "send the instances in several smaller requests"
        )

    def readable(self) -> bool:
        return True


@dataclass(frozen=True)
class Part:
    """One body part: its header fields (names lower-cased) and a reader of its content."""

    headers: dict[str, str]
    stream: PartReader
    index: int  #: 0 for the first part

    @property
    def content_type(self) -> str:
        """The part's Content-Type; RFC 2046 5.1.1: ``text/plain`` when absent."""
        return self.headers.get("content-type", "text/plain")


class MultipartReader:
    """Iterate over the parts of a ``multipart/related`` body read from ``stream``.

    Parts must be read in order: asking for the next part skips what is left of the
    current one.  Errors in the framing raise :class:`MultipartError`; a body that ends
    inside a part raises :class:`TruncatedBody` from that part's ``read``, after every
    byte that did arrive was returned.

    Parameters
    ----------
    stream
        The raw body, e.g. Werkzeug's ``request.stream`` (already de-chunked).
    boundary
        The ``boundary`` parameter of the Content-Type, without quotes.
    chunk_size
        Bytes read from ``stream`` at a time.
    max_parts
        Most parts allowed (0: no limit); the next one raises :class:`TooManyParts`
        before any of its bytes are handed out.
    """

    def __init__(
        self,
        stream: Readable,
        boundary: str | bytes,
        chunk_size: int = CHUNK,
        max_parts: int = 0,
    ) -> None:
        if isinstance(boundary, str):
            boundary = boundary.encode("latin-1")
        if not 1 <= len(boundary) <= 70:  # RFC 2046 5.1.1: 1 to 70 characters
            raise MultipartError(f"the boundary must be 1 to 70 characters, got {len(boundary)}")
        self._stream = stream
        self._chunk_size = chunk_size
        # A delimiter is CRLF "--" boundary; the CRLF belongs to the delimiter, not to
        # the part before it.  Starting the buffer with CRLF lets the first delimiter,
        # which may open the body without a preceding CRLF, match the same pattern.
        self._delimiter = b"\r\n--" + boundary
        self._buffer = bytearray(b"\r\n")
        self._scanned = 0
        self._eof = False
        self._finished = False
        self._current: PartReader | None = None
        self._max_parts = max_parts
        self.bytes_read = 0

    # -- buffer management ---------------------------------------------------------

    def _fill(self) -> bool:
        """Append one chunk of the stream to the buffer; ``False`` at the end of it."""
        if self._eof:
            return False
        chunk = self._stream.read(self._chunk_size)
        if not chunk:
            self._eof = True
            return False
        self.bytes_read += len(chunk)
        self._buffer += chunk
        return True

    def _take(self, count: int) -> bytes:
        """Remove and return the first ``count`` bytes of the buffer (one copy)."""
        with memoryview(self._buffer) as view:
            data = bytes(view[:count])
        del self._buffer[:count]
        return data

    def _read_part_data(self, size: int) -> tuple[bytes, bool]:
        """Up to ``size`` bytes of the current part, and whether the part ended."""
        count, ended = self._part_run(size)
        data = self._take(count)
        self._after_run(ended)
        return data, ended

    def _read_part_into(self, buffer: memoryview) -> tuple[int, bool]:
        """:meth:`_read_part_data` into ``buffer``: bytes copied, and whether the part ended."""
        count, ended = self._part_run(len(buffer))
        with memoryview(self._buffer) as view:
            buffer[:count] = view[:count]
        del self._buffer[:count]
        self._after_run(ended)
        return count, ended

    def _after_run(self, ended: bool) -> None:
        if ended:
            del self._buffer[: len(self._delimiter)]

    def _part_run(self, size: int) -> tuple[int, bool]:
        """How many of the buffer's first bytes (at most ``size``) are the current part's,
        and whether its delimiter follows them.

        Counts what is buffered rather than waiting for ``size`` bytes, and never scans
        the same bytes for the delimiter twice (``_scanned``: a prefix of the buffer known
        not to hold the start of a delimiter).
        """
        delimiter = self._delimiter
        keep = len(delimiter) - 1
        while True:
            index = self._buffer.find(delimiter, self._scanned)
            if index >= 0:
                take = min(index, size)
                self._scanned = 0
                return take, take == index
            # Everything but a possible start of the delimiter at the end is part data.
            safe = len(self._buffer) - keep
            self._scanned = max(safe, 0)
            if safe > 0:
                take = min(safe, size)
                self._scanned -= take
                return take, False
            if not self._fill():
                if self._buffer:
                    self._scanned = 0
                    return min(len(self._buffer), size), False
                raise TruncatedBody(
                    "the request body ended inside a part, before the closing boundary "
                    "delimiter (RFC 2046 5.1.1); was the upload interrupted?"
                )

    def _after_delimiter(self) -> bool:
        """Consume what follows a delimiter; ``True`` when another part follows."""
        while len(self._buffer) < 2 and self._fill():
            pass
        if self._buffer[:2] == b"--":  # close-delimiter: the epilogue is ignored
            self._finished = True
            return False
        # Transport padding (linear white space), then CRLF.
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                padding = bytes(self._buffer[:end]).rstrip(b"\r")
                if padding.strip(b" \t"):
                    raise MultipartError(
                        "unexpected characters after a boundary delimiter: "
                        f"{padding[:40]!r} (RFC 2046 5.1.1)"
                    )
                del self._buffer[: end + 1]
                return True
            if len(self._buffer) > 1024:
                raise MultipartError("a boundary delimiter line is longer than 1024 bytes")
            if not self._fill():
                raise TruncatedBody("the request body ended right after a boundary delimiter")

    def _read_headers(self) -> dict[str, str]:
        while True:
            if self._buffer[:2] == b"\r\n":  # a part without header fields
                del self._buffer[:2]
                return {}
            end = self._buffer.find(b"\r\n\r\n", 0, MAX_HEADER_SIZE + 4)
            if end >= 0:
                block = bytes(self._buffer[:end])
                del self._buffer[: end + 4]
                return _parse_headers(block)
            if len(self._buffer) > MAX_HEADER_SIZE:
                raise MultipartError(f"part header fields exceed {MAX_HEADER_SIZE} bytes")
            if not self._fill():
                raise TruncatedBody("the request body ended inside a part's header fields")

    # -- public interface ----------------------------------------------------------

    def __iter__(self) -> Iterator[Part]:
        return self.parts()

    def parts(self) -> Iterator[Part]:
        """Yield each part in turn; the previous part is skipped if not read to its end."""
        # The preamble, up to the first delimiter, is ignored (RFC 2046 5.1.1).
        try:
            self._read_part_data_until_end()
        except TruncatedBody:
            raise MultipartError(
                "no boundary delimiter found in the request body; does the boundary "
                "parameter of the Content-Type match the body?"
            ) from None
        index = 0
        while self._after_delimiter():
            if self._max_parts and index >= self._max_parts:
                raise TooManyParts(
                    f"the body has more than {self._max_parts} parts (http.max_parts); "
                    "send the instances in several requests"
                )
            part = Part(self._read_headers(), PartReader(self), index)
            self._current = part.stream
            yield part
            part.stream.drain()
            index += 1

    @property
    def finished(self) -> bool:
        """Whether the close-delimiter was seen."""
        return self._finished

    def _read_part_data_until_end(self) -> None:
        while True:
            _, ended = self._read_part_data(self._chunk_size)
            if ended:
                return


class PartReader:
    """File-like reader of one part's content, straight from the request stream."""

    def __init__(self, reader: MultipartReader) -> None:
        self._reader = reader
        self._ended = False
        self.size = 0

    def read(self, size: int = -1, /) -> bytes:
        """Up to ``size`` bytes (a whole chunk when ``size`` is negative); ``b""`` at the end.

        Raises :class:`TruncatedBody` when the body ends before the part's delimiter.
        """
        if self._ended or size == 0:  # read(0) is b"" for every file object
            return b""
        if size is None or size < 0:
            size = self._reader._chunk_size
        while True:
            data, ended = self._reader._read_part_data(size)
            if ended:
                self._ended = True
            self.size += len(data)
            if data or self._ended:
                return data

    def readinto(self, buffer: bytearray | memoryview, /) -> int:
        """Like :meth:`read`, into ``buffer``: one copy, from the request's buffer."""
        if self._ended or not len(buffer):
            return 0
        with memoryview(buffer) as view, view.cast("B") as target:
            while True:
                count, ended = self._reader._read_part_into(target)
                if ended:
                    self._ended = True
                self.size += count
                if count or self._ended:
                    return count

    def readable(self) -> bool:
        return True

    def drain(self) -> None:
        """Skip the rest of the part."""
        while self.read(self._reader._chunk_size):
            pass

    @property
    def ended(self) -> bool:
        return self._ended


def parse_content_type(value: str) -> tuple[str, dict[str, str]]:
    """Media type (lower-cased) and parameters (names lower-cased) of a Content-Type.

    More lenient than RFC 2045 5.1: a parameter value may be quoted or not even when it
    holds ``/`` (``type=application/dicom``, as many STOW-RS clients send it).
    """
    pieces, current, quoted = [], [], False
    for char in value:
        if char == '"':
            quoted = not quoted
        if char == ";" and not quoted:
            pieces.append("".join(current))
            current = []
        else:
            current.append(char)
    pieces.append("".join(current))
    params: dict[str, str] = {}
    for piece in pieces[1:]:
        name, _, raw = piece.partition("=")
        raw = raw.strip()
        if len(raw) >= 2 and raw[0] == raw[-1] == '"':
            raw = raw[1:-1].replace('\\"', '"')
        if name.strip():
            params[name.strip().lower()] = raw
    return pieces[0].strip().lower(), params


def _parse_headers(block: bytes) -> dict[str, str]:
    """Header fields of a part (RFC 5322 syntax; folded lines joined), names lower-cased."""
    headers: dict[str, str] = {}
    name = ""
    for raw in block.decode("latin-1").split("\r\n"):
        if raw[:1] in (" ", "\t") and name:  # obsolete line folding
            headers[name] = (headers[name] + " " + raw.strip()).strip()
            continue
        name, colon, value = raw.partition(":")
        if not colon:
            raise MultipartError(f"malformed part header line {raw[:80]!r}")
        name = name.strip().lower()
        headers[name] = value.strip()
    return headers
