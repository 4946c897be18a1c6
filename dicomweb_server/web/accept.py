"""Content negotiation: Accept headers as PS3.18 8.7 and RFC 9110 12.5.1 define them.

An Accept header is a list of media ranges with parameters and q-values; DICOMweb adds
``type`` and ``transfer-syntax`` parameters to ``multipart/related``.  ``*/*``,
``type/*`` and a missing header accept anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class MediaRange:
    type: str  #: "multipart/related", "application/dicom+json", "*/*", ...
    params: dict[str, str] = field(default_factory=dict)
    q: float = 1.0

    def matches(self, media_type: str) -> bool:
        """Whether this range covers the concrete ``media_type`` (parameters ignored)."""
        if self.type == "*/*":
            return True
        major, _, minor = self.type.partition("/")
        other_major, _, other_minor = media_type.partition("/")
        return major == other_major and (minor == "*" or minor == other_minor)


def _split(text: str, separator: str) -> list[str]:
    """Split on ``separator`` outside double quotes."""
    parts, current, quoted = [], [], False
    for char in text:
        if char == '"':
            quoted = not quoted
        if char == separator and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def parse_accept(header: str | None) -> list[MediaRange]:
    """Media ranges of an Accept header, best first (stable for equal q)."""
    if not header or not header.strip():
        return [MediaRange("*/*")]
    ranges = []
    for item in _split(header, ","):
        pieces = _split(item, ";")
        media = pieces[0].strip().lower()
        if not media:
            continue
        if media == "*":
            media = "*/*"
        params: dict[str, str] = {}
        q = 1.0
        for piece in pieces[1:]:
            name, _, value = piece.partition("=")
            name, value = name.strip().lower(), value.strip().strip('"')
            if name == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
            elif name:
                params[name] = value
        if q > 0:
            ranges.append(MediaRange(media, params, q))
    return sorted(ranges, key=lambda r: -r.q)


def accepts(header: str | None, media_type: str) -> bool:
    """Whether an Accept header allows ``media_type`` at all."""
    return any(r.matches(media_type) for r in parse_accept(header))


# -- DICOMweb specifics (PS3.18 8.7.3 and 8.7.5) ------------------------------------------


@dataclass(frozen=True)
class Wanted:
    """One acceptable representation, as a retrieve handler sees it.

    ``media_type`` is the representation of each item (``application/dicom``,
    ``image/jls``, ``*/*``...), ``multipart`` whether the client asked for it inside
    ``multipart/related`` (PS3.18 8.6.1.2) rather than as a single part, and
    ``transfer_syntax`` the ``transfer-syntax`` parameter: ``None`` when absent (the
    default of PS3.18 8.7.3.3 applies), ``"*"`` for "as stored", else a UID.
    """

    media_type: str
    multipart: bool
    transfer_syntax: str | None
    q: float = 1.0


def wanted(header: str | None) -> list[Wanted]:
    """The Accept header as :class:`Wanted` entries, best first.

    ``multipart/related`` without a ``type`` parameter, ``*/*`` and ``multipart/*`` stand
    for "any item type in a multipart payload"; a bare item type (``application/dicom``)
    is a single-part request.
    """
    out: list[Wanted] = []
    for media in parse_accept(header):
        ts = media.params.get("transfer-syntax") or None
        if media.type in ("multipart/related", "multipart/*"):
            item = media.params.get("type", "*/*").strip().lower() or "*/*"
            out.append(Wanted(item, True, ts, media.q))
        elif media.type == "*/*":
            out.append(Wanted("*/*", True, ts, media.q))
        else:
            out.append(Wanted(media.type, False, ts, media.q))
    return out


def item_matches(accepted: str, media_type: str) -> bool:
    """Whether an item type from :func:`wanted` (maybe a wildcard) covers ``media_type``."""
    return MediaRange(accepted).matches(media_type)


#: Compressed bulk data media types and their transfer syntaxes, default first
#: (PS3.18 Table 8.7.3-5; HTJ2K ``image/jphc`` from the 2023 editions on).
COMPRESSED: dict[str, tuple[str, ...]] = {
    "image/jpeg": (
        "1.2.840.10008.1.2.4.70",
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.51",
        "1.2.840.10008.1.2.4.57",
    ),
    "image/dicom-rle": ("1.2.840.10008.1.2.5",),
    "image/jls": ("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"),
    "image/jp2": ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"),
    "image/jpx": ("1.2.840.10008.1.2.4.92", "1.2.840.10008.1.2.4.93"),
    "image/jphc": ("1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"),
    "video/mpeg": ("1.2.840.10008.1.2.4.100", "1.2.840.10008.1.2.4.101"),
    "video/mp4": (
        "1.2.840.10008.1.2.4.102",
        "1.2.840.10008.1.2.4.103",
        "1.2.840.10008.1.2.4.104",
        "1.2.840.10008.1.2.4.105",
        "1.2.840.10008.1.2.4.106",
        "1.2.840.10008.1.2.4.107",
        "1.2.840.10008.1.2.4.108",
    ),
}

#: Transfer syntax -> its compressed media type (the inverse of :data:`COMPRESSED`).
MEDIA_TYPE_OF: dict[str, str] = {ts: media for media, group in COMPRESSED.items() for ts in group}

#: Uncompressed bulk data: little endian octets (PS3.18 Table 8.7.3-4).
OCTET_STREAM = "application/octet-stream"
EXPLICIT_LE = "1.2.840.10008.1.2.1"

#: Lossy syntaxes: when a file is stored only in one of these, PS3.18 8.7.3.3 lets the
#: server send it as stored instead of the Explicit VR Little Endian default.
LOSSY = frozenset(
    {
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.51",
        "1.2.840.10008.1.2.4.81",
        "1.2.840.10008.1.2.4.91",
        "1.2.840.10008.1.2.4.93",
        "1.2.840.10008.1.2.4.203",
        *COMPRESSED["video/mpeg"],
        *COMPRESSED["video/mp4"],
    }
)
