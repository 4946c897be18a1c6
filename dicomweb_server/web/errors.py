"""One table from archive errors to HTTP statuses, and the JSON error body.

Every route raises; nothing below a route catches :class:`ArchiveError`.  The handler
for unexpected exceptions is the safety net that keeps a bad request from taking the
worker down: it logs the traceback and answers 500.
"""

from __future__ import annotations

import logging

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
}


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

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error")
        return error_response(500, "internal error; the server log has the details")
