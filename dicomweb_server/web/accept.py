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
