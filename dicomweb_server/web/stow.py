"""STOW-RS (PS3.18 10.5) and the DELETE of studies, series and instances.

Store: ``POST {base}/studies[/{study}]`` with a ``multipart/related`` body whose parts are
Part 10 instances (``type="application/dicom"``).  The body is read as a stream: each
part goes straight from the request to :meth:`Archive.store` through
:class:`~.multipart_parser.PartReader`, so memory stays at about one chunk whatever the
upload's size, and every instance is stored (or refused) before the next one is read.
An instance refused, or a body that breaks off, never undoes what was stored before it.
The other form of PS3.18 10.5.1.2, ``type="application/dicom+json"`` (metadata in DICOM
JSON, bulk data in parts named by Content-Location), is accepted too: bulk parts are
spooled to temporary files and each instance is written as a Part 10 file by
:mod:`..archive.jsonstore` before it goes through the same :meth:`Archive.store`.

The answer is a Store Instances Response Module (PS3.18 Annex I) in DICOM JSON, with the
status of PS3.18 Table 10.5.3-1: 200 all stored, 202 some stored with failures or
warnings, 409 none stored, 400 none stored because the body could not be understood,
415 a media type other than ``multipart/related`` of ``application/dicom`` or
``application/dicom+json`` (or a bare ``application/dicom`` body, accepted as an
extension).  The failure and warning reasons come from the tables in :mod:`.errors`;
each refusal's text goes into a ``Warning: 299`` header field (RFC 9111 5.5, as PS3.18
8.4 and the UPS transactions use it) and the log.

Limits (``http.max_request_size``, ``http.max_parts``): a body longer than allowed, or
with more parts, is answered 413 Content Too Large (RFC 9110 15.5.14; PS3.18 8.6 lists
413 among the status codes of the web services).  With a Content-Length over the limit
nothing is stored; with chunked transfer coding the size is known only while reading, so
reading stops at the limit, the instance being read is dropped, and the instances stored
before it are kept and listed in the response body (as for any body that breaks off).
A full disk is 507 Insufficient Storage (RFC 4918 11.5) with Failure Reason A700 per
instance; an unreachable index is 503 (PS3.18 8.6 "Busy"), also with A700.  Both only
when no instance of the request was stored: otherwise 202 with the failures listed.

Delete is not part of PS3.18; the resources answer ``204 No Content`` as the Microsoft
DICOM service and dcm4chee-arc do (``404`` if nothing matches, ``400`` for a malformed UID).
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, current_app, json, request
from werkzeug.exceptions import (
    BadRequest,
    ClientDisconnected,
    RequestEntityTooLarge,
    UnsupportedMediaType,
)

from ..archive import Archive, ArchiveError, Origin, Prepared, StoreResult, StoreStatus
from ..archive.errors import OutOfResources
from ..archive.jsonstore import BulkResolver, build_part10
from ..archive.uids import is_valid_uid
from . import errors
from .multipart_parser import (
    BodyTooLarge,
    LimitedStream,
    MultipartError,
    MultipartReader,
    Part,
    PartReader,
    Readable,
    TooManyParts,
    parse_content_type,
)
from .urls import base_url

log = logging.getLogger(__name__)

blueprint = Blueprint("stow", __name__)

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
#: At most this many ``Warning`` header fields; the body lists every instance anyway.
MAX_WARNING_HEADERS = 10
#: After refusing a body as too large, read (and drop) at most this much of the rest, so
#: that a client still sending can read the answer rather than a connection reset
#: ("lingering close"); past it the connection is just closed (RFC 9110 15.5.14 allows it).
DRAIN_LIMIT = 8 << 20
#: The request's body stream, limited, in the WSGI environ (one wrapper per request).
_BODY_KEY = "dicomweb_server.stow.body"
#: The request's :class:`Origin`, in the WSGI environ.
_ORIGIN_KEY = "dicomweb_server.stow.origin"


@dataclass(frozen=True)
class Failure:
    """One instance (or part) that was not stored."""

    reason: int  #: PS3.18 Table I.2-2 Failure Reason
    message: str
    sop_class_uid: str = ""
    sop_uid: str = ""
    #: HTTP status of the whole request when nothing was stored and this failure is the
    #: worst: 507 disk full, 503 index unreachable; 0 for the Table 10.5.3-1 default.
    http_status: int = 0


#: A source name in ``/sources/{name}/studies``: a configuration key, never a path.
_SOURCE = re.compile(r"[A-Za-z0-9_-]{1,64}")

#: Prepared instances indexed together in one transaction (see ``Archive.index``).
BATCH = 32


@dataclass
class Outcome:
    """What happened to each part of one STOW-RS request."""

    stored: list[StoreResult] = field(default_factory=list)
    failed: list[Failure] = field(default_factory=list)
    #: The body itself was malformed or ended early (as opposed to an instance refused).
    body_error: str = ""
    #: The body broke ``http.max_request_size`` or ``http.max_parts``: answered 413.
    limit_error: str = ""
    #: Instances received and in place, waiting to be indexed together.
    pending: list[Prepared] = field(default_factory=list)

    def flush(self) -> None:
        """Index the pending instances, all in one transaction."""
        pending, self.pending = self.pending, []
        for prepared, result in zip(pending, _archive().index(pending), strict=True):
            if isinstance(result, ArchiveError):
                self.fail(result, f"SOP Instance {prepared.parsed.sop_uid}: {result}")
            else:
                self.stored.append(result)

    def fail(
        self, exc: BaseException, message: str | None = None, reason: int | None = None
    ) -> None:
        status = 0
        if isinstance(exc, OutOfResources):
            status = errors.status_for(exc)  # 507 disk full, else 503
        elif errors.is_database_unavailable(exc):
            status = 503
        self.failed.append(
            Failure(
                reason if reason is not None else errors.failure_reason(exc),
                message or str(exc),
                getattr(exc, "sop_class_uid", ""),
                getattr(exc, "sop_uid", ""),
                status,
            )
        )


def _archive() -> Archive:
    return current_app.extensions["archive"]


def _origin() -> Origin:
    """Provenance of the instances of this request: peer address, user and source name.

    The source is the ``{name}`` of ``/sources/{name}/studies``: it selects the
    de-identification profile (``[deid.sources]``) the way a calling AE title does for
    C-STORE, so each contributing site can post to its own route.  Built once per
    request, not once per part.
    """
    origin = request.environ.get(_ORIGIN_KEY)
    if origin is None:
        user = request.environ.get("REMOTE_USER") or ""
        if not user and request.authorization is not None:
            user = request.authorization.username or ""
        origin = request.environ[_ORIGIN_KEY] = Origin(
            "STOW-RS",
            address=f"{request.remote_addr or ''}:{request.environ.get('REMOTE_PORT', '')}",
            user=user or request.user_agent.string,
            source=(request.view_args or {}).get("source", ""),
        )
    return origin


def _check_uid(value: str | None, name: str) -> None:
    if value is not None and not is_valid_uid(value):
        raise BadRequest(
            f"{name} {value[:80]!r} in the URL is not a valid UID: PS3.5 9.1 allows at most "
            "64 characters, digits in dot-separated components without leading zeros"
        )


# -- store ---------------------------------------------------------------------------


@blueprint.post("/studies")
@blueprint.post("/studies/<study>")
@blueprint.post("/sources/<source>/studies")
@blueprint.post("/sources/<source>/studies/<study>")
def store(study: str | None = None, source: str = "") -> Response:
    """Store Instances (PS3.18 10.5.1); ``study`` restricts them to one study."""
    _check_uid(study, "StudyInstanceUID")
    if source and not _SOURCE.fullmatch(source):
        raise BadRequest(f"source name {source[:64]!r} must be 1-64 letters, digits, '-' or '_'")
    _check_content_length()
    media_type, options = parse_content_type(request.headers.get("Content-Type", ""))
    outcome = Outcome()
    try:
        _store_body(media_type, options, study, outcome)
        outcome.flush()
    finally:
        _archive().discard(outcome.pending)  # files of a request that died half-way
    return _response(outcome, study)


def _store_body(
    media_type: str, options: dict[str, str], study: str | None, outcome: Outcome
) -> None:
    if media_type == "multipart/related":
        root_type = options.get("type", "").strip().lower()
        if root_type not in ("", DICOM, DICOM_JSON):
            raise UnsupportedMediaType(
                f'multipart/related type "{root_type}" is not supported; STOW-RS parts must be '
                '"application/dicom" or "application/dicom+json" (PS3.18 10.5.1.2)'
            )
        boundary = options.get("boundary", "")
        if not boundary:
            raise BadRequest(
                "the Content-Type multipart/related has no boundary parameter (RFC 2046 5.1.1)"
            )
        try:
            reader = MultipartReader(_body(), boundary, max_parts=_limits().max_parts)
        except MultipartError as exc:
            raise BadRequest(str(exc)) from exc
        if root_type == DICOM_JSON:
            _store_json_parts(reader, study, outcome)
        else:
            _store_parts(reader, study, outcome)
    elif media_type == DICOM:
        # One bare Part 10 instance as the whole body: not in PS3.18's STOW-RS, which
        # asks for multipart/related, but sent by some tools (the Microsoft DICOM service
        # accepts it too); it costs nothing to take.
        _store_one(_body(), study, outcome)
    else:
        raise UnsupportedMediaType(
            f'Content-Type "{media_type or "(none)"}" is not supported: STOW-RS takes '
            'multipart/related; type="application/dicom" (PS3.18 10.5.1.2)'
        )


def _limits() -> Any:
    return current_app.extensions["settings"].http


def _check_content_length() -> None:
    """413 before reading anything when the declared length is over the limit."""
    limit = _limits().max_request_size
    length = request.content_length or 0
    if limit and length > limit:
        if length <= limit + DRAIN_LIMIT:
            _drain(request.stream)
        raise RequestEntityTooLarge(
            f"the request body of {length} bytes exceeds {limit} bytes "
            "(http.max_request_size); send the instances in several smaller requests"
        )


def _body() -> LimitedStream:
    """The request body, cut off at ``http.max_request_size`` (0: not cut)."""
    body = request.environ.get(_BODY_KEY)
    if body is None:
        body = LimitedStream(request.stream, _limits().max_request_size)
        request.environ[_BODY_KEY] = body
    return body


def _drain(stream: Readable) -> None:
    """Read and drop up to :data:`DRAIN_LIMIT` bytes of what the client still sends."""
    left = DRAIN_LIMIT
    try:
        while left > 0 and (chunk := stream.read(min(left, 1 << 20))):
            left -= len(chunk)
    except (ClientDisconnected, OSError, ValueError):
        pass


def _note_limit(exc: BaseException, outcome: Outcome) -> None:
    if isinstance(exc, TooManyParts | BodyTooLarge):
        outcome.limit_error = str(exc)


def _store_parts(reader: MultipartReader, study: str | None, outcome: Outcome) -> None:
    """Store every part; stop at the first framing error, keeping what was stored."""
    parts = iter(reader)
    while True:
        try:
            part = next(parts)
        except StopIteration:
            break
        except (MultipartError, ClientDisconnected, OSError) as exc:
            outcome.body_error = f"the request body is malformed: {exc}"
            _note_limit(exc, outcome)
            if reader.bytes_read and not isinstance(exc, MultipartError | ClientDisconnected):
                log.warning("STOW-RS body unreadable: %s", exc)
            break
        if not _store_part(part, study, outcome):
            break
    if not (outcome.stored or outcome.pending or outcome.failed or outcome.body_error):
        outcome.body_error = "the multipart/related body has no parts"


def _store_part(part: Part, study: str | None, outcome: Outcome) -> bool:
    """Store one part; ``False`` when the body cannot be read any further."""
    media_type, _ = parse_content_type(part.headers.get("content-type", DICOM))
    if media_type not in (DICOM, "application/octet-stream"):
        outcome.failed.append(
            Failure(
                errors.CANNOT_UNDERSTAND,
                f"part {part.index + 1} has Content-Type {media_type!r}; "
                'STOW-RS parts of type="application/dicom" must be application/dicom',
            )
        )
        return True
    return _store_one(part.stream, study, outcome, f"part {part.index + 1}")


def _store_one(
    stream: Readable, study: str | None, outcome: Outcome, label: str = "the body"
) -> bool:
    """Store one instance read from ``stream``; ``False`` when the body broke off."""
    try:
        ready = _archive().prepare(stream, _origin(), expected_study_uid=study)  # type: ignore[arg-type]
        if isinstance(ready, StoreResult):
            outcome.stored.append(ready)
        else:
            outcome.pending.append(ready)
            if len(outcome.pending) >= BATCH:
                outcome.flush()
    except ArchiveError as exc:
        outcome.fail(exc, f"{label}: {exc}")
        if isinstance(stream, PartReader):
            try:
                stream.drain()  # the archive may have stopped reading early (size limit)
            except (MultipartError, ClientDisconnected, OSError) as drain_error:
                outcome.body_error = f"the request body is malformed: {drain_error}"
                _note_limit(drain_error, outcome)
                return False
    except (MultipartError, ClientDisconnected) as exc:
        _note_limit(exc, outcome)
        outcome.fail(
            exc,
            f"{label} is incomplete, nothing of it was stored: {exc}",
            errors.PROCESSING_FAILURE,
        )
        outcome.body_error = f"the request body broke off in {label}"
        return False
    except Exception as exc:  # the safety net per instance: log, report, go on
        if errors.is_database_unavailable(exc):
            log.warning("STOW-RS: %s not stored, the index is unreachable: %s", label, exc)
            outcome.fail(
                exc,
                f"{label}: the index database is unreachable; retry later",
                errors.FAILURE_REASON[OutOfResources],
            )
            return True
        log.exception("STOW-RS: storing %s failed unexpectedly", label)
        outcome.fail(
            exc,
            f"{label}: internal error ({type(exc).__name__}); the server log has the details",
            errors.PROCESSING_FAILURE,
        )
        return not isinstance(exc, OSError)
    return True


# -- DICOM JSON + bulk data (PS3.18 10.5.1.2) ------------------------------------------

#: Largest DICOM JSON metadata part read into memory.
MAX_METADATA_SIZE = 64 << 20
CHUNK_SIZE = 1 << 20


def _store_json_parts(reader: MultipartReader, study: str | None, outcome: Outcome) -> None:
    """Store instances sent as DICOM JSON metadata plus bulk data parts.

    Bulk data parts are spooled to temporary files (the metadata may reference them in
    any order, and may come after them); each instance is then written as a Part 10
    file (:func:`~..archive.jsonstore.build_part10`) and stored.
    """
    metadata: list[Any] = []
    with tempfile.TemporaryDirectory(prefix="stow-json-") as folder:
        bulk: dict[str, tuple[Path, str | None]] = {}
        try:
            for part in reader:
                media_type, params = parse_content_type(part.content_type)
                if media_type in (DICOM_JSON, "application/json"):
                    metadata.extend(_read_metadata(part, outcome))
                    continue
                location = part.headers.get("content-location", "")
                if not location:
                    outcome.failed.append(
                        Failure(
                            errors.CANNOT_UNDERSTAND,
                            f"part {part.index + 1} ({media_type}) has no Content-Location, so "
                            "no BulkDataURI can refer to it (PS3.18 10.5.1.2)",
                        )
                    )
                    continue
                path = Path(folder) / f"{len(bulk)}.bulk"
                with open(path, "wb") as out:
                    shutil.copyfileobj(part.stream, out, CHUNK_SIZE)  # type: ignore[misc]
                bulk[location] = (path, params.get("transfer-syntax"))
        except (MultipartError, ClientDisconnected, OSError) as exc:
            outcome.body_error = f"the request body is malformed: {exc}"
            _note_limit(exc, outcome)
        if not metadata and not outcome.failed and not outcome.body_error:
            outcome.body_error = "the request has no application/dicom+json metadata part"
        for n, item in enumerate(metadata):
            _store_json_instance(item, bulk, Path(folder) / f"{n}.dcm", study, outcome)


def _read_metadata(part: Part, outcome: Outcome) -> list[Any]:
    data = bytearray()
    while chunk := part.stream.read(CHUNK_SIZE):
        data += chunk
        if len(data) > MAX_METADATA_SIZE:
            raise MultipartError(f"a DICOM JSON part exceeds {MAX_METADATA_SIZE} bytes")
    try:
        value = json.loads(bytes(data))
    except ValueError as exc:
        outcome.failed.append(
            Failure(errors.CANNOT_UNDERSTAND, f"part {part.index + 1} is not valid JSON: {exc}")
        )
        return []
    return value if isinstance(value, list) else [value]


def _resolver(bulk: dict[str, tuple[Path, str | None]]) -> BulkResolver:
    def resolve(uri: str) -> tuple[bytes, str | None]:
        found = bulk.get(uri)
        if found is None:  # absolute in one place, relative in the other
            found = next((v for k, v in bulk.items() if k.endswith(uri) or uri.endswith(k)), None)
        if found is None:
            raise KeyError(uri)
        return found[0].read_bytes(), found[1]

    return resolve


def _json_uid(item: Any, tag: str) -> str:
    try:
        return str(item[tag]["Value"][0])
    except (KeyError, IndexError, TypeError):
        return ""


def _store_json_instance(
    item: Any,
    bulk: dict[str, tuple[Path, str | None]],
    path: Path,
    study: str | None,
    outcome: Outcome,
) -> None:
    label = f"instance {_json_uid(item, '00080018') or '(no SOPInstanceUID)'}"
    try:
        try:
            with open(path, "wb") as out:
                build_part10(item, _resolver(bulk), out)
            outcome.stored.append(_archive().store(path, _origin(), expected_study_uid=study))
        finally:
            path.unlink(missing_ok=True)
    except ArchiveError as exc:
        outcome.failed.append(
            Failure(
                errors.failure_reason(exc),
                f"{label}: {exc}",
                exc.sop_class_uid or _json_uid(item, "00080016"),
                exc.sop_uid or _json_uid(item, "00080018"),
            )
        )


# -- response ------------------------------------------------------------------------


def _us(value: int) -> dict[str, Any]:
    return {"vr": "US", "Value": [value]}


def _ui(value: str) -> dict[str, Any]:
    return {"vr": "UI", "Value": [value]}


def response_dataset(outcome: Outcome, base: str) -> dict[str, Any]:
    """The Store Instances Response Module (PS3.18 Table I.1-1) as DICOM JSON."""
    dataset: dict[str, Any] = {}
    studies = {r.study_uid for r in outcome.stored}
    study_url = {"vr": "UR"}  # Type 2: empty unless the instances are of one study
    if len(studies) == 1:
        study_url["Value"] = [f"{base}/studies/{studies.pop()}"]  # type: ignore[assignment]
    dataset["00081190"] = study_url
    if outcome.failed:
        items = []
        for failure in outcome.failed:
            item: dict[str, Any] = {}
            if failure.sop_class_uid:
                item["00081150"] = _ui(failure.sop_class_uid)
            if failure.sop_uid:
                item["00081155"] = _ui(failure.sop_uid)
            item["00081197"] = _us(failure.reason)
            items.append(item)
        dataset["00081198"] = {"vr": "SQ", "Value": items}
    if outcome.stored:
        items = []
        for result in outcome.stored:
            url = (
                f"{base}/studies/{result.study_uid}/series/{result.series_uid}"
                f"/instances/{result.sop_uid}"
            )
            item = {
                "00081150": _ui(result.sop_class_uid),
                "00081155": _ui(result.sop_uid),
                "00081190": {"vr": "UR", "Value": [url]},
            }
            if result.coerced:
                item["00081196"] = _us(errors.WARNING_COERCION)
            items.append(item)
        dataset["00081199"] = {"vr": "SQ", "Value": items}
    return dataset


def status_code(outcome: Outcome) -> int:
    """HTTP status per PS3.18 Table 10.5.3-1; 413, 503 and 507 as the module says."""
    if outcome.limit_error:
        return 413
    if outcome.stored:
        coerced = any(r.coerced for r in outcome.stored)
        return 202 if outcome.failed or outcome.body_error or coerced else 200
    worst = max((f.http_status for f in outcome.failed), default=0)
    if worst:
        return worst  # 507 disk full before 503 index unreachable
    understood = {errors.CANNOT_UNDERSTAND}
    if outcome.body_error or all(f.reason in understood for f in outcome.failed):
        return 400  # "unable to store any Instances due to bad syntax"
    return 409  # "... due to a conflict in the request", or a mixture of reasons


def _warning_headers(messages: Iterable[str]) -> list[tuple[str, str]]:
    headers = []
    for message in list(messages)[:MAX_WARNING_HEADERS]:
        text = " ".join(message.split()).replace("\\", "/").replace('"', "'")
        text = text.encode("ascii", "replace").decode("ascii")[:500]
        headers.append(("Warning", f'299 - "{text}"'))
    return headers


def _response(outcome: Outcome, study: str | None) -> Response:
    if _body().exceeded and not outcome.limit_error:
        outcome.limit_error = str(BodyTooLarge(f"the request body exceeds {_body().limit} bytes"))
    if outcome.limit_error:
        _drain(request.stream)  # so that the client reads the 413 (see DRAIN_LIMIT)
    status = status_code(outcome)
    messages = [f.message for f in outcome.failed]
    if outcome.limit_error and outcome.limit_error not in messages:
        messages.insert(0, outcome.limit_error)
    if outcome.body_error and outcome.body_error not in messages:
        messages.append(outcome.body_error)
    for result in outcome.stored:
        if result.status is StoreStatus.DUPLICATE:
            messages.append(
                f"SOP Instance {result.sop_uid} was stored already; the stored "
                "copy was kept (ingest.duplicate_policy = keep)"
            )
        messages.extend(f"{result.sop_uid}: {w}" for w in result.warnings)
    if messages:
        log.info(
            "STOW-RS %s: %d stored, %d failed: %s",
            request.path,
            len(outcome.stored),
            len(outcome.failed),
            "; ".join(messages[:MAX_WARNING_HEADERS]),
        )
    body = json.dumps(response_dataset(outcome, base_url()))
    response = Response(body, status=status, mimetype=DICOM_JSON)
    for name, value in _warning_headers(messages):
        response.headers.add(name, value)
    return response


# -- delete --------------------------------------------------------------------------


@blueprint.delete("/studies/<study>")
@blueprint.delete("/studies/<study>/series/<series>")
@blueprint.delete("/studies/<study>/series/<series>/instances/<instance>")
def delete(study: str, series: str | None = None, instance: str | None = None) -> Response:
    """Delete a study, series or instance: files and index rows, aggregates updated.

    204 No Content when something was deleted; :class:`~..archive.NotFound` (404) when
    nothing matches; 400 for a malformed UID.
    """
    _check_uid(study, "StudyInstanceUID")
    _check_uid(series, "SeriesInstanceUID")
    _check_uid(instance, "SOPInstanceUID")
    count = _archive().delete(study, series, instance)
    log.info("DELETE %s removed %d instances (client %s)", request.path, count, _origin().address)
    return Response(status=204)
