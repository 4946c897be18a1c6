"""The one table from archive errors to DIMSE statuses (PS3.4, PS3.7 Annex C).

The web front has its twin in ``dicomweb_server/web/errors.py``; both map the same
:mod:`dicomweb_server.archive.errors` classes, so the two protocols agree on what
"invalid", "full" or "duplicate" means.  Every status here carries its section.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset

from dicomweb_server.archive.errors import (
    ArchiveError,
    DuplicateInstance,
    InstanceTooLarge,
    InvalidInstance,
    InvalidQuery,
    NotFound,
    OutOfResources,
)

# -- general and per-service codes ------------------------------------------------------

SUCCESS = 0x0000
#: PS3.4 C.4.1.1.4 / C.4.2.1.5 / C.4.3.1.4: matches or sub-operations are continuing.
PENDING = 0xFF00
#: PS3.4 C.4.1.1.4 etc.: matching or sub-operations terminated by a C-CANCEL.
CANCEL = 0xFE00

#: PS3.4 Table B.2-1: the instance was stored although its Data Set does not match the
#: SOP Class the SCU named in the request (Affected SOP Class UID).
STORE_WARNING_NOT_MATCHING_SOP_CLASS = 0xB007
#: PS3.4 Table B.2-1: Warning, Coercion of Data Elements: stored de-identified.
STORE_WARNING_COERCION = 0xB000
#: PS3.4 Table B.2-1: Refused, Out of Resources (range A7xx).
STORE_OUT_OF_RESOURCES = 0xA700
#: PS3.4 Table B.2-1: Error, Cannot understand (range Cxxx).
STORE_CANNOT_UNDERSTAND = 0xC000
#: PS3.7 Table C-2 (general status): Failure, Duplicate SOP Instance.
DUPLICATE_SOP_INSTANCE = 0x0111

#: PS3.4 Table C.4-1: Refused, Out of Resources.
FIND_OUT_OF_RESOURCES = 0xA700
#: PS3.4 Tables C.4-1, C.4-2, C.4-3: Error, Identifier does not match SOP Class.
IDENTIFIER_DOES_NOT_MATCH = 0xA900
#: PS3.4 Tables C.4-1, C.4-2, C.4-3: Failed, Unable to process (range Cxxx).
UNABLE_TO_PROCESS = 0xC000
#: PS3.4 Tables C.4-2 and C.4-3: Refused, Out of Resources, unable to calculate the
#: number of matches.
RETRIEVE_OUT_OF_RESOURCES = 0xA701
#: PS3.4 Table C.4-2: Refused, Move Destination unknown.
MOVE_DESTINATION_UNKNOWN = 0xA801
#: PS3.4 Tables C.4-2 and C.4-3: Warning, sub-operations complete, one or more failures
#: or warnings.
SUBOPERATIONS_WARNING = 0xB000

#: (0000,0902) Error Comment is LO: at most 64 characters of the default repertoire
#: (the command set carries no Specific Character Set), PS3.7 E.1 / PS3.5 6.2.
ERROR_COMMENT_LENGTH = 64


@dataclass(frozen=True)
class Reply:
    """A non-success status and the Error Comment explaining it to the peer's operator."""

    status: int
    comment: str

    def dataset(self) -> Dataset:
        """A status Dataset as pynetdicom accepts from a handler."""
        ds = Dataset()
        ds.Status = self.status
        ds.ErrorComment = error_comment(self.comment)
        return ds


def error_comment(message: str) -> str:
    """``message`` cut to what an LO in a command set may hold."""
    text = message.encode("ascii", "replace").decode("ascii").replace("\\", "/")
    text = " ".join(text.split())
    if len(text) > ERROR_COMMENT_LENGTH:
        text = text[: ERROR_COMMENT_LENGTH - 3] + "..."
    return text


# Order matters: subclasses before their bases (UnsupportedTransferSyntax is an
# InvalidInstance).
_STORE: tuple[tuple[type[ArchiveError], int], ...] = (
    (OutOfResources, STORE_OUT_OF_RESOURCES),
    (InstanceTooLarge, STORE_OUT_OF_RESOURCES),
    (DuplicateInstance, DUPLICATE_SOP_INSTANCE),
    (InvalidInstance, STORE_CANNOT_UNDERSTAND),
)
_QUERY: tuple[tuple[type[ArchiveError], int], ...] = (
    (OutOfResources, FIND_OUT_OF_RESOURCES),
    (InvalidQuery, IDENTIFIER_DOES_NOT_MATCH),
    (InvalidInstance, IDENTIFIER_DOES_NOT_MATCH),  # a malformed UID in the identifier
    (NotFound, UNABLE_TO_PROCESS),
)
_RETRIEVE: tuple[tuple[type[ArchiveError], int], ...] = (
    (OutOfResources, RETRIEVE_OUT_OF_RESOURCES),
    (InvalidQuery, IDENTIFIER_DOES_NOT_MATCH),
    (InvalidInstance, IDENTIFIER_DOES_NOT_MATCH),
    (NotFound, UNABLE_TO_PROCESS),
)


def _lookup(table: tuple[tuple[type[ArchiveError], int], ...], exc: ArchiveError) -> Reply:
    for kind, status in table:
        if isinstance(exc, kind):
            return Reply(status, str(exc))
    return Reply(UNABLE_TO_PROCESS, str(exc))


def for_store(exc: ArchiveError) -> Reply:
    """The C-STORE failure status for an error of ``archive.store`` (PS3.4 B.2.3)."""
    return _lookup(_STORE, exc)


def for_find(exc: ArchiveError) -> Reply:
    """The C-FIND failure status for an error of ``archive.search`` (PS3.4 C.4.1.1.4)."""
    return _lookup(_QUERY, exc)


def for_retrieve(exc: ArchiveError) -> Reply:
    """The C-MOVE / C-GET failure status (PS3.4 C.4.2.1.5, C.4.3.1.4)."""
    return _lookup(_RETRIEVE, exc)
