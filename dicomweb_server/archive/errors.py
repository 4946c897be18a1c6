"""The archive's exceptions: one root, a few kinds, each mapped once per protocol.

The web front turns them into HTTP statuses and PS3.18 failure reasons, the DIMSE front
into PS3.4 statuses; both use one table each (``web/errors.py``, ``dimse_scp/status.py``)
so the two never disagree on what "invalid" or "not found" means.
"""

from __future__ import annotations


class ArchiveError(Exception):
    """Root of every error the archive raises on purpose."""

    #: The refused instance's SOP Class and SOP Instance UIDs, when ingest got far enough
    #: to read them: PS3.18 Annex I lists them in the FailedSOPSequence item.
    sop_class_uid: str = ""
    sop_uid: str = ""


class InvalidInstance(ArchiveError):
    """The data is not a DICOM instance we can store (unreadable, a required UID missing
    or malformed, ...).  Nothing was stored."""


class UnsupportedTransferSyntax(InvalidInstance):
    """The instance is encoded in a transfer syntax the archive does not store."""


class StudyMismatch(InvalidInstance):
    """STOW-RS to ``/studies/{uid}`` received an instance of another study."""


class DuplicateInstance(ArchiveError):
    """The SOP Instance UID is stored already and the duplicate policy is ``reject``."""


class InstanceTooLarge(ArchiveError):
    """The instance exceeds ``ingest.max_instance_size``."""


class OutOfResources(ArchiveError):
    """Storage is full or unwritable; the caller may retry later.  Nothing was stored."""


class StorageFull(OutOfResources):
    """The storage file system is full or the quota is exhausted (ENOSPC, EDQUOT).

    A kind of :class:`OutOfResources` (C-STORE A700, STOW-RS Failure Reason A700) that
    the web front answers 507 Insufficient Storage (RFC 4918 11.5) rather than 503:
    retrying soon will not help until an operator frees space.
    """


class NotFound(ArchiveError):
    """No stored study, series, instance, frame or bulk data matches the request."""


class InvalidQuery(ArchiveError):
    """A search key, value or option is malformed; the message names it."""
