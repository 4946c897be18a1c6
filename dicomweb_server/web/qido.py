"""QIDO-RS: search for studies, series and instances (PS3.18 10.6).

The routes only translate: query parameters (PS3.18 8.3.4) become an
:class:`~dicomweb_server.archive.Query`, the archive answers it with one SQL statement,
and the matches go back as a DICOM JSON array (PS3.18 Annex F) with a RetrieveURL
(0008,1190) each.

Choices worth knowing:

* No match is ``200 OK`` with ``[]``, always.  PS3.18 8.3.4.4.1 describes 204 for an
  empty page; an empty array is also a valid response of the ``application/dicom+json``
  media type and is what clients (dicomweb-client, OHIF) handle uniformly, so every
  search answers the same way whatever the filters.
* ``limit`` is capped at ``http.qido_max_limit`` (the origin server's "maxResults" of
  PS3.18 8.3.4.4.1; default :data:`MAX_LIMIT`), which is also the limit when none is
  given.  A larger ``limit`` is not an error: 8.3.4.4.1 defines the number of results
  as the minimum of matches - offset, maxResults and limit.  When matches remain after
  the page, the response carries ``Warning: 299 {+service}: "There are additional
  results that can be requested"``; the archive is asked for one row more than the
  page to know that, so no separate COUNT is run.
* Only ``application/dicom+json`` (or ``application/json``) is produced; an Accept
  header that allows neither is answered 406 (PS3.18 8.7.4, RFC 9110 15.5.7).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from flask import Blueprint, Response, abort, current_app, request

from ..archive import InvalidQuery, Level, Query
from ..archive.query import resolve_key, vr_of
from ..archive.uids import is_valid_uid
from . import archive, urls
from .accept import accepts

blueprint = Blueprint("qido", __name__)

#: Default of ``http.qido_max_limit``: most matches one response returns (PS3.18
#: 8.3.4.4.1 "maxResults"); also the limit when the request gives none.
MAX_LIMIT = 10_000

DICOM_JSON = "application/dicom+json"
#: PS3.18 8.3.4.4.1: the warning of a response that holds only part of the matches.
MORE_RESULTS = '"There are additional results that can be requested"'
_RESERVED = frozenset({"includefield", "fuzzymatching", "limit", "offset"})
RETRIEVE_URL = "00081190"


@blueprint.get("/studies")
def search_studies() -> Response:
    """Search for Studies (PS3.18 10.6.1, Table 10.6.1-2)."""
    return _search(Level.STUDY)


@blueprint.get("/series")
def search_all_series() -> Response:
    """Search for Series in all studies (PS3.18 10.6.1)."""
    return _search(Level.SERIES)


@blueprint.get("/instances")
def search_all_instances() -> Response:
    """Search for Instances in all studies (PS3.18 10.6.1)."""
    return _search(Level.IMAGE)


@blueprint.get("/studies/<study>/series")
def search_study_series(study: str) -> Response:
    """Search for a Study's Series (PS3.18 10.6.1)."""
    return _search(Level.SERIES, study_uid=_uid(study, "StudyInstanceUID"))


@blueprint.get("/studies/<study>/instances")
def search_study_instances(study: str) -> Response:
    """Search for a Study's Instances (PS3.18 10.6.1)."""
    return _search(Level.IMAGE, study_uid=_uid(study, "StudyInstanceUID"))


@blueprint.get("/studies/<study>/series/<series>/instances")
def search_series_instances(study: str, series: str) -> Response:
    """Search for a Study's Series' Instances (PS3.18 10.6.1)."""
    return _search(
        Level.IMAGE,
        study_uid=_uid(study, "StudyInstanceUID"),
        series_uid=_uid(series, "SeriesInstanceUID"),
    )


def _uid(value: str, name: str) -> str:
    """A UID from the path, checked before it reaches SQL (PS3.5 9.1); 400 if malformed."""
    if not is_valid_uid(value):
        raise InvalidQuery(
            f"{name} {value[:80]!r} in the request path is not a valid UID (PS3.5 9.1: "
            "at most 64 characters, digits in dot-separated components)"
        )
    return value


def _media_type() -> str:
    """The response media type the Accept header allows, or 406 (PS3.18 8.7.4)."""
    header = request.headers.get("Accept")
    if accepts(header, DICOM_JSON):
        return DICOM_JSON
    if accepts(header, "application/json"):
        return "application/json"
    abort(
        406,
        description=(
            f"QIDO-RS here answers only {DICOM_JSON} (or application/json); the Accept "
            f"header {header!r} allows neither"
        ),
    )


def parse_query(level: Level, study_uid: str | None = None, series_uid: str | None = None) -> Query:
    """The request's query parameters (PS3.18 8.3.4) as a :class:`Query`.

    Raises :class:`InvalidQuery` naming the parameter that is malformed.
    """
    args = request.args
    filters: dict[str, str] = {}
    for key in args:
        if key in _RESERVED:
            continue
        values = [v for v in args.getlist(key)]
        json_key = resolve_key(key.partition(".")[0])[0]
        if vr_of(json_key) == "UI" and "." not in key:
            # PS3.18 8.3.4.1: a UID list may be comma-separated or repeated.
            values = [u for v in values for u in v.split(",")]
        filters[key] = "\\".join(values)
    return_keys: list[str] = []
    for value in args.getlist("includefield"):
        for item in value.split(","):
            item = item.strip()
            if not item:
                continue
            if item.lower() != "all":
                try:
                    resolve_key(item)
                except InvalidQuery as exc:
                    raise InvalidQuery(f"includefield: {exc}") from None
            return_keys.append(item)
    return Query(
        level=level,
        filters=filters,
        return_keys=tuple(return_keys),
        fuzzy=_boolean("fuzzymatching"),
        limit=min(_count("limit", _max_limit()), _max_limit()),
        offset=_count("offset", 0),
        study_uid=study_uid,
        series_uid=series_uid,
    )


def _max_limit() -> int:
    """``http.qido_max_limit`` of the serving app."""
    return int(current_app.extensions["settings"].http.qido_max_limit)


def _boolean(name: str) -> bool:
    value = request.args.get(name, "false").strip().lower()
    if value not in ("true", "false"):
        raise InvalidQuery(f"{name}: must be true or false, got {value!r} (PS3.18 8.3.4.1)")
    return value == "true"


def _count(name: str, default: int) -> int:
    value = request.args.get(name)
    if value is None or value == "":
        return default
    # isascii: str.isdigit also accepts digits int() refuses ("²"); the bound keeps the
    # value inside a 64-bit SQL integer.
    if not (value.isascii() and value.isdigit()) or len(value) > 19 or int(value) >= 1 << 63:
        raise InvalidQuery(
            f"{name}: must be an unsigned integer below 2^63, got {value[:40]!r} (PS3.18 8.3.4.4)"
        )
    return int(value)


def _search(level: Level, study_uid: str | None = None, series_uid: str | None = None) -> Response:
    media_type = _media_type()
    query = parse_query(level, study_uid, series_uid)
    limit = query.limit if query.limit is not None else _max_limit()
    probe = dataclasses.replace(query, limit=limit + 1)
    results = archive().search(probe)
    more = len(results) > limit
    results = results[:limit]
    base = urls.base_url()
    for result in results:
        result[RETRIEVE_URL] = {"vr": "UR", "Value": [_retrieve_url(base, level, result)]}
    body = urls.expand(
        json.dumps(
            [dict(sorted(r.items())) for r in results], separators=(",", ":"), ensure_ascii=False
        ),
        base,
    )
    response = Response(body, mimetype=media_type)
    if more:
        response.headers["Warning"] = f"299 {base}: {MORE_RESULTS}"
    return response


def _first(result: dict[str, Any], key: str) -> str:
    return str(result[key]["Value"][0])


def _retrieve_url(base: str, level: Level, result: dict[str, Any]) -> str:
    """The WADO-RS URL of a match (PS3.18 10.6.3.3, RetrieveURL (0008,1190))."""
    url = f"{base}/studies/{_first(result, '0020000D')}"
    if level in (Level.SERIES, Level.IMAGE):
        url += f"/series/{_first(result, '0020000E')}"
    if level is Level.IMAGE:
        url += f"/instances/{_first(result, '00080018')}"
    return url
