"""One table from archive errors to HTTP statuses, and the JSON error body.

Every route raises; nothing below a route catches :class:`ArchiveError`.  The handler
for unexpected exceptions is the safety net that keeps a bad request from taking the
worker down: it logs the traceback and answers 500.
"""

from __future__ import annotations

import logging

import sqlalchemy.exc
from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from ..archive import errors

log = logging.getLogger(__name__)

#: Archive error -> HTTP status (PS3.18 8.6 / RFC 9110).
STATUS: dict[type[errors.ArchiveError], int] = {
    errors.NotFound: 404,
    errors.InvalidQuery: 400,
    errors.StudyMismatch: 409,
    errors.UnsupportedTransferSyntax: 415,
    errors.InvalidInstance: 400,
    errors.DuplicateInstance: 409,
    errors.InstanceTooLarge: 413,
    errors.OutOfResources: 503,
    # RFC 4918 11.5 Insufficient Storage: the disk is full, a retry will not help until
    # space is freed (PS3.18 8.6 has 503 for a busy server; full is not busy).
    errors.StorageFull: 507,
}

#: Index (database) failures that mean "unreachable" rather than "a bug": a refused or
#: dropped connection, a pool exhausted.  Answered 503 Service Unavailable (RFC 9110
#: 15.6.4, PS3.18 8.6 "Busy"): the condition is temporary, and since the engines ping
#: each connection before use (pool_pre_ping) the next request after recovery succeeds.
DATABASE_UNAVAILABLE: tuple[type[Exception], ...] = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.TimeoutError,
)


def is_database_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the index cannot be reached (as opposed to a bad statement)."""
    if isinstance(exc, DATABASE_UNAVAILABLE):
        return True
    return isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated


#: PS3.18 Annex I.2.2 Failure Reason (0008,1197) values for a STOW-RS instance refused
#: with each archive error; the most specific class wins (looked up along the MRO).
#: Standard codes: A7xx refused out of resources, C122 referenced transfer syntax not
#: supported, Cxxx cannot understand, 0110 processing failure.  Implementation-specific
#: codes, as Annex I.2.2 allows (listed in the conformance statement): C409 Study
#: Instance UID differs from the one in the request URL (the value dcm4chee-arc uses),
#: and 0111 "Duplicate SOP Instance" (PS3.7 C.4) when the duplicate policy is reject.
FAILURE_REASON: dict[type[errors.ArchiveError], int] = {
    errors.OutOfResources: 0xA700,
    errors.InstanceTooLarge: 0xA700,
    errors.UnsupportedTransferSyntax: 0xC122,
    errors.StudyMismatch: 0xC409,
    errors.InvalidInstance: 0xC000,
    errors.DuplicateInstance: 0x0111,
}
#: Failure Reason for anything not in the table, including the request body ending
#: inside a part: "processing failure" (PS3.18 Table I.2-2).
PROCESSING_FAILURE = 0x0110
#: "Error: Cannot understand" (PS3.18 Table I.2-2), for a part that is not an instance.
CANNOT_UNDERSTAND = 0xC000

#: Warning Reason (0008,1196), PS3.18 Annex I: "coercion of data elements", for an
#: instance stored de-identified.  A duplicate kept under ``duplicate_policy = "keep"``
#: is a success like the first copy, as a PACS re-sending a study expects; the Warning
#: header says it was already stored.
WARNING_COERCION = 0xB000


def failure_reason(exc: BaseException) -> int:
    """The PS3.18 Failure Reason for an instance refused with ``exc``."""
    for kind in type(exc).__mro__:
        if kind in FAILURE_REASON:
            return FAILURE_REASON[kind]  # type: ignore[index]
    return PROCESSING_FAILURE


def status_for(exc: errors.ArchiveError) -> int:
    for kind in type(exc).__mro__:
        if kind in STATUS:
            return STATUS[kind]
    return 500


def error_response(status: int, message: str) -> Response:
    response = jsonify({"error": message, "status": status})
    response.status_code = status
    return response


def register(app: Flask) -> None:
    @app.errorhandler(errors.ArchiveError)
    def _archive_error(exc: errors.ArchiveError) -> Response:
        status = status_for(exc)
        if status >= 500:
            log.warning("request failed: %s", exc)
        return error_response(status, str(exc))

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        response = error_response(exc.code or 500, exc.description or exc.name)
        for key, value in exc.get_headers():
            if key.lower() != "content-type":
                response.headers[key] = value
        return response

    @app.errorhandler(sqlalchemy.exc.SQLAlchemyError)
    def _database_error(exc: sqlalchemy.exc.SQLAlchemyError) -> Response:
        if not is_database_unavailable(exc):
            log.exception("unhandled database error")
            return error_response(500, "internal error; the server log has the details")
        log.warning("index unavailable: %s", exc)
        response = error_response(
            503, "the index database is unreachable; retry later (see the server log)"
        )
        response.headers["Retry-After"] = "5"
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error")
        return error_response(500, "internal error; the server log has the details")
