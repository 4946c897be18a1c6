"""Administration endpoints, outside the DICOMweb root: the audit trail.

``GET /admin/audit`` answers JSON, newest first::

    {"events": [{"at": "2026-01-02T03:04:05.123456+00:00", "user": "alice",
                 "action": "retrieve", "protocol": "DICOMweb", "method": "GET",
                 "path": "/dicom-web/studies/1.2.3", "study": "1.2.3",
                 "address": "10.0.0.5", "status": 200, "instances": null}, ...],
     "limit": 100, "offset": 0}

Filters, all optional and combined with AND: ``user``, ``study`` (a Study Instance UID),
``action`` (store, search, retrieve, delete, audit, other), ``since`` (inclusive) and
``until`` (exclusive) as ISO 8601 date-times (UTC unless an offset is given), ``limit``
(1 to 1000, default 100) and ``offset``.  Only callers with the ``admin`` role reach it
(see :data:`.auth.ACCESS`).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.exceptions import BadRequest

from ..archive import audit
from ..archive.uids import is_valid_uid

blueprint = Blueprint("admin", __name__)

#: Largest page of audit events one request returns.
MAX_LIMIT = 1000
DEFAULT_LIMIT = 100


@blueprint.get("/audit")
def audit_events() -> Response:
    """The audit trail, filtered; see the module docstring."""
    args = request.args
    study = args.get("study")
    if study is not None and not is_valid_uid(study):
        raise BadRequest(f"study {study[:80]!r} is not a valid UID (PS3.5 9.1)")
    action = args.get("action")
    if action is not None and action not in set(audit.Action):
        raise BadRequest(
            f"action {action[:40]!r} is not one of {', '.join(a.value for a in audit.Action)}"
        )
    limit = _integer("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    offset = _integer("offset", 0, 0, None)
    writer: audit.AuditWriter | None = current_app.extensions.get("audit")
    if writer is not None:
        writer.flush()  # this process's rows, so a caller sees its own requests
    entries = audit.query(
        current_app.extensions["archive"].reader_engine,
        user=args.get("user"),
        study_uid=study,
        action=audit.Action(action) if action else None,
        since=_datetime("since"),
        until=_datetime("until"),
        limit=limit,
        offset=offset,
    )
    return jsonify({"events": [_json(e) for e in entries], "limit": limit, "offset": offset})


def _json(entry: audit.Entry) -> dict[str, Any]:
    return {
        "at": entry.at.isoformat(),
        "user": entry.user,
        "action": entry.action.value,
        "protocol": entry.protocol,
        "method": entry.method,
        "path": entry.path,
        "study": entry.study_uid,
        "address": entry.address,
        "status": entry.status,
        "instances": entry.instances,
    }


def _integer(name: str, default: int, low: int, high: int | None) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} {raw[:40]!r} is not an integer") from None
    if value < low or (high is not None and value > high):
        upper = f" to {high}" if high is not None else " or more"
        raise BadRequest(f"{name} {value} is out of range: use {low}{upper}")
    return value


def _datetime(name: str) -> dt.datetime | None:
    raw = request.args.get(name)
    if raw is None:
        return None
    try:
        value = dt.datetime.fromisoformat(raw.replace(" ", "+"))
    except ValueError:
        raise BadRequest(
            f"{name} {raw[:40]!r} is not an ISO 8601 date-time, e.g. 2026-01-02T03:04:05Z"
        ) from None
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)
