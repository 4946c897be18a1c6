"""The archive core: ingest, index, storage, query and retrieval.

This package knows nothing of HTTP or DIMSE: it imports neither Flask nor pynetdicom
(a test checks it).  The web and DIMSE fronts call only what is exported here and map
:mod:`.errors` to their own status codes.
"""

from .attributes import Level
from .core import Archive
from .errors import (
    ArchiveError,
    DuplicateInstance,
    InstanceTooLarge,
    InvalidInstance,
    InvalidQuery,
    NotFound,
    OutOfResources,
    StudyMismatch,
    UnsupportedTransferSyntax,
)
from .ingest import Origin, Prepared, StoreResult, StoreStatus
from .query import Query
from .retrieve import StoredInstance

__all__ = [
    "Archive",
    "ArchiveError",
    "DuplicateInstance",
    "InstanceTooLarge",
    "InvalidInstance",
    "InvalidQuery",
    "Level",
    "NotFound",
    "Origin",
    "OutOfResources",
    "Prepared",
    "Query",
    "StoreResult",
    "StoreStatus",
    "StoredInstance",
    "StudyMismatch",
    "UnsupportedTransferSyntax",
]
