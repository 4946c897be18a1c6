"""Validation of UIDs: every identifier from the network passes here before it reaches
SQL or a storage path.

PS3.5 section 9.1: a UID is at most 64 characters, components of digits separated by
dots, no component empty and none with a leading zero (except the single digit "0").
Padding with a trailing NUL or space, as PS3.5 6.2 allows on the wire, is removed.
"""

from __future__ import annotations

import re

from .errors import InvalidInstance

_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
MAX_LENGTH = 64


def is_valid_uid(value: object) -> bool:
    """Whether ``value`` is a syntactically valid UID (PS3.5 9.1)."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_LENGTH
        and _UID.fullmatch(value) is not None
    )


def clean_uid(value: object, name: str) -> str:
    """Return ``value`` as a UID without padding, or raise :class:`InvalidInstance`.

    ``name`` (such as ``"SOPInstanceUID"``) goes into the message, so that whoever
    reads the error knows which attribute was wrong.
    """
    text = str(value).rstrip("\0 ") if value is not None else ""
    if not text:
        raise InvalidInstance(f"{name} is missing or empty")
    if not is_valid_uid(text):
        shown = text if len(text) <= 80 else text[:77] + "..."
        raise InvalidInstance(
            f"{name} {shown!r} is not a valid UID: PS3.5 9.1 allows at most 64 characters, "
            "digits in dot-separated components without leading zeros"
        )
    return text
