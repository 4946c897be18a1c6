"""WADO-RS: retrieve instances, metadata, frames, bulk data and rendered images (PS3.18 10.4).

Stored bytes are streamed as received whenever the client accepts their transfer syntax;
:mod:`..archive.transcode` runs only when it does not.  Metadata is the stored JSON text
of each instance, joined, never parsed; a native frame is one seek and one read.

Status codes (PS3.18 8.5 / 10.4.3): 400 for a malformed UID, frame list or rendering
parameter; 404 for an unknown study, series, instance, frame or bulk data path; 406 when
no media type of the Accept header can be produced (PS3.18 8.7.8).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from flask import Blueprint, Response, request
from pydicom.uid import UID
from werkzeug.exceptions import NotAcceptable
from werkzeug.wsgi import wrap_file

from ..archive import (
    Archive,
    InvalidQuery,
    NotFound,
    StoredInstance,
    render,
    transcode,
)
from ..archive.storage import CHUNK
from ..archive.uids import is_valid_uid
from . import archive
from .accept import (
    COMPRESSED,
    EXPLICIT_LE,
    LOSSY,
    MEDIA_TYPE_OF,
    OCTET_STREAM,
    Wanted,
    item_matches,
    wanted,
)
from .multipart import Part, content_type, length, new_boundary, stream
from .urls import base_url, expand

blueprint = Blueprint("wado", __name__)

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
PIXEL_KEYS = ("7FE00010", "7FE00008", "7FE00009")
#: Largest value a 32-bit Value Length can give (PS3.5 7.1.1), for the default rule.
_MAX_NATIVE = 0xFFFFFFFE

STUDY = "/studies/<study>"
SERIES = STUDY + "/series/<series>"
INSTANCE = SERIES + "/instances/<sop>"


# -- helpers ---------------------------------------------------------------------------


def _check_uids(*uids: str | None) -> None:
    """PS3.18 8.2: a malformed UID in the path is a bad request (400), not a miss."""
    for value in uids:
        if value is not None and not is_valid_uid(value):
            raise InvalidQuery(
                f"{value[:80]!r} is not a valid UID (PS3.5 9.1: at most 64 characters, "
                "digits in dot-separated components without leading zeros)"
            )


def _not_acceptable(offered: str) -> NotAcceptable:
    return NotAcceptable(
        f"none of the media types in the Accept header ({request.headers.get('Accept')!r}) "
        f"can be produced; this resource offers {offered} (PS3.18 8.7.8)"
    )


def _accept() -> list[Wanted]:
    return wanted(request.headers.get("Accept"))


def _multipart(item_type: str, parts: Iterable[Part], ts: str | None = None) -> Response:
    """A ``multipart/related`` response; with a Content-Length when ``parts`` is a
    sequence whose sizes are all known (see :func:`.multipart.length`)."""
    boundary = new_boundary()
    headers = {"Content-Type": content_type(item_type, boundary, ts)}
    if isinstance(parts, Sequence) and (total := length(parts, boundary)) is not None:
        headers["Content-Length"] = str(total)
    return Response(stream(parts, boundary), headers=headers, direct_passthrough=True)


# -- instances (PS3.18 10.4.1.1.1, Table 8.7.3-2) -------------------------------------


def _default_syntax(instance: StoredInstance) -> str:
    """PS3.18 8.7.3.3: no transfer-syntax parameter means Explicit VR Little Endian, unless
    the server has the pixel data only in lossy form or too large for a native encoding;
    then (and when no decoder is installed) the instance goes as stored."""
    stored = instance.transfer_syntax_uid
    if stored == EXPLICIT_LE or stored in LOSSY or instance.size > _MAX_NATIVE:
        return stored
    return EXPLICIT_LE if transcode.can_transcode(stored, EXPLICIT_LE) else stored


def _plan_instances(instances: list[StoredInstance]) -> tuple[bool, list[str]]:
    """Pick the first acceptable representation: (multipart?, target syntax per instance)."""
    for w in _accept():
        if not item_matches(w.media_type, DICOM):
            continue
        if not w.multipart and len(instances) != 1:
            continue  # PS3.18 8.6.1.1: a single part payload holds one item
        if w.transfer_syntax == "*":
            return w.multipart, [i.transfer_syntax_uid for i in instances]
        if w.transfer_syntax is None:
            return w.multipart, [_default_syntax(i) for i in instances]
        ts = w.transfer_syntax
        if is_valid_uid(ts) and all(
            transcode.can_transcode(i.transfer_syntax_uid, ts) for i in instances
        ):
            return w.multipart, [ts] * len(instances)
    raise _not_acceptable(
        'multipart/related; type="application/dicom" (and application/dicom for one instance)'
    )


def _instance_body(store: Archive, instance: StoredInstance, target: str) -> Iterator[bytes]:
    if target == instance.transfer_syntax_uid:
        return store.read(instance)
    path = store.path(instance)
    return _lazy(lambda: transcode.transcode(path, target))


def _lazy(make: object) -> Iterator[bytes]:
    yield from make()  # type: ignore[operator]


def _retrieve(study: str, series: str | None = None, sop: str | None = None) -> Response:
    _check_uids(study, series, sop)
    store = archive()
    instances = store.instances(study, series, sop)
    multipart, targets = _plan_instances(instances)
    if not multipart:
        [instance], [target] = instances, targets
        ctype = f"{DICOM}; transfer-syntax={target}"
        if target == instance.transfer_syntax_uid:
            # Whole stored file: let the WSGI server use sendfile (wsgi.file_wrapper).
            body = wrap_file(request.environ, store.open(instance), CHUNK)
            return Response(
                body,
                headers={"Content-Type": ctype, "Content-Length": str(instance.size)},
                direct_passthrough=True,
            )
        return Response(
            _instance_body(store, instance, target),
            headers={"Content-Type": ctype},
            direct_passthrough=True,
        )
    parts = [
        Part(
            f"{DICOM}; transfer-syntax={target}",
            _instance_body(store, i, target),
            size=i.size if target == i.transfer_syntax_uid else None,
        )
        for i, target in zip(instances, targets, strict=True)
    ]
    same = targets[0] if len(set(targets)) == 1 else None
    return _multipart(DICOM, parts, same)


@blueprint.get(STUDY)
def retrieve_study(study: str) -> Response:
    return _retrieve(study)


@blueprint.get(SERIES)
def retrieve_series(study: str, series: str) -> Response:
    return _retrieve(study, series)


@blueprint.get(INSTANCE)
def retrieve_instance(study: str, series: str, sop: str) -> Response:
    return _retrieve(study, series, sop)


# -- metadata (PS3.18 10.4.1.1.2, Annex F) ---------------------------------------------


def _metadata(study: str, series: str | None = None, sop: str | None = None) -> Response:
    _check_uids(study, series, sop)
    if not any(
        (
            not w.multipart
            and (item_matches(w.media_type, DICOM_JSON) or w.media_type == "application/json")
        )
        or (w.multipart and w.media_type == "*/*" and w.transfer_syntax is None)
        for w in _accept()
    ):
        raise _not_acceptable("application/dicom+json")
    instances = archive().instances(study, series, sop)
    # Cheap validator: which instances, and which exact files (a replaced instance has a
    # new checksum).  No metadata text is read to compute it.
    digest = hashlib.sha1(usedforsecurity=False)
    for i in instances:
        digest.update(f"{i.sop_uid}:{i.sha256};".encode("ascii"))
    etag = digest.hexdigest()
    # RFC 9110 13.1.2: If-None-Match compares weakly (a gzip layer may weaken the tag).
    if request.if_none_match.contains_weak(etag):
        response = Response(status=304)
        response.set_etag(etag)
        return response
    texts = archive().metadata(study, series, sop)
    response = Response(_json_array(texts, base_url()), content_type=DICOM_JSON)
    response.set_etag(etag)
    return response


def _json_array(texts: Iterator[str], base: str) -> Iterator[bytes]:
    """``[text,text,...]`` in chunks of about 256 KiB; no text is parsed."""
    pending: list[str] = ["["]
    size = 1
    for n, text in enumerate(texts):
        if n:
            pending.append(",")
        pending.append(expand(text, base))
        size += len(text)
        if size > 262144:
            yield "".join(pending).encode("utf-8")
            pending, size = [], 0
    pending.append("]")
    yield "".join(pending).encode("utf-8")


@blueprint.get(STUDY + "/metadata")
def study_metadata(study: str) -> Response:
    return _metadata(study)


@blueprint.get(SERIES + "/metadata")
def series_metadata(study: str, series: str) -> Response:
    return _metadata(study, series)


@blueprint.get(INSTANCE + "/metadata")
def instance_metadata(study: str, series: str, sop: str) -> Response:
    return _metadata(study, series, sop)


# -- frames and pixel bulk data (PS3.18 10.4.1.1.4, 8.7.3.3) -------------------------


@dataclass(frozen=True)
class FramePlan:
    """How frames are sent: ``mode`` is "stored" (bytes as stored), "native" (little
    endian octets, decoded if need be) or "encode" (re-compressed to ``syntax``)."""

    media_type: str
    syntax: str
    mode: str
    multipart: bool


def _stored_media(stored: str) -> str:
    return MEDIA_TYPE_OF.get(stored, OCTET_STREAM) if UID(stored).is_encapsulated else OCTET_STREAM


def _plan_frames(instance: StoredInstance, count: int) -> FramePlan:
    stored = instance.transfer_syntax_uid
    stored_media = _stored_media(stored)
    encapsulated = UID(stored).is_encapsulated
    for w in _accept():
        if not w.multipart and count != 1:
            continue
        media, ts = w.media_type, w.transfer_syntax
        # "*" (PS3.18 8.7.3.5.2) or a bare wildcard: as stored, whatever its media type.
        if ts == "*" and (
            media in ("*/*", OCTET_STREAM, stored_media) or item_matches(media, stored_media)
        ):
            return FramePlan(stored_media, stored, "stored", w.multipart)
        if media == "*/*" and ts is None:
            return FramePlan(stored_media, stored, "stored", w.multipart)
        if item_matches(media, OCTET_STREAM) and ts in (None, EXPLICIT_LE):
            if not encapsulated or transcode.can_transcode(stored, EXPLICIT_LE):
                return FramePlan(OCTET_STREAM, EXPLICIT_LE, "native", w.multipart)
            continue
        for candidate, syntaxes in COMPRESSED.items():
            if not item_matches(media, candidate) or (
                media != candidate and candidate != stored_media
            ):
                continue
            target = syntaxes[0] if ts in (None, "*") else ts
            if ts == "*" and stored in syntaxes:
                target = stored
            if target not in syntaxes:
                continue
            if target == stored:
                return FramePlan(candidate, stored, "stored", w.multipart)
            if transcode.can_transcode(stored, target):
                return FramePlan(candidate, target, "encode", w.multipart)
    raise _not_acceptable(
        f'multipart/related; type="{OCTET_STREAM}" or type="{stored_media}" (PS3.18 Table 8.7.3-5)'
    )


class _Frames:
    """Reads frames of one instance, parsing the file at most once (fallbacks only)."""

    def __init__(self, store: Archive, instance: StoredInstance) -> None:
        self.store = store
        self.instance = instance
        self._dataset = None

    def dataset(self):  # type: ignore[no-untyped-def]
        if self._dataset is None:
            self._dataset = transcode.read(self.store.path(self.instance))
        return self._dataset

    def stored(self, number: int) -> Iterator[bytes]:
        """Frame bytes as stored: a native slice, or an encapsulated frame's fragments."""
        px = self.instance.pixels
        if px is not None and (px.frame_size is not None or px.fragments is not None):
            return self.store.read_ranges(self.instance, px.frame_ranges(number))
        ds = self.dataset()
        if UID(self.instance.transfer_syntax_uid).is_encapsulated:
            from pydicom.encaps import generate_frames

            frames = int(ds.get("NumberOfFrames", 1) or 1)
            for n, frame in enumerate(generate_frames(ds.PixelData, number_of_frames=frames), 1):
                if n == number:
                    return iter([frame])
            raise NotFound(f"frame {number} of {self.instance.sop_uid} cannot be located")
        return iter([transcode.decode_frame(ds, number)])

    def native(self, number: int) -> Iterator[bytes]:
        """Little endian octets (PS3.18 8.7.3.3.1); big endian OW words are swapped."""
        ts = UID(self.instance.transfer_syntax_uid)
        px = self.instance.pixels
        if (
            not ts.is_encapsulated
            and not ts.is_deflated
            and px is not None
            and px.frame_size is not None
        ):
            chunks = self.store.read_ranges(self.instance, px.frame_ranges(number))
            if ts.is_little_endian or px.vr != "OW":
                return chunks
            return iter([_swap16(b"".join(chunks))])
        return iter([transcode.decode_frame(self.dataset(), number)])


def _swap16(data: bytes) -> bytes:
    import numpy as np

    usable = len(data) & ~1
    return np.frombuffer(data[:usable], dtype=">u2").astype("<u2").tobytes() + data[usable:]


def _frame_count(instance: StoredInstance) -> int:
    if instance.pixels is not None:
        return instance.pixels.number_of_frames
    return instance.number_of_frames


def _frame_parts(reader: _Frames, numbers: list[int], plan: FramePlan) -> Iterator[Part]:
    ctype = f"{plan.media_type}; transfer-syntax={plan.syntax}"
    if plan.mode == "encode":
        encoded = transcode.encode_frames(reader.dataset(), numbers, plan.syntax)
        for data in encoded:
            yield Part(ctype, [data])
        return
    for number in numbers:
        body = reader.stored(number) if plan.mode == "stored" else reader.native(number)
        yield Part(ctype, body)


def _frames_response(instance: StoredInstance, numbers: list[int]) -> Response:
    count = _frame_count(instance)
    if count == 0:
        raise NotFound(f"instance {instance.sop_uid} has no pixel data, hence no frames")
    missing = [n for n in numbers if n > count]
    if missing:
        # PS3.18 10.4.1.1.4 / 8.5: a frame the instance does not have is not found.
        raise NotFound(f"instance {instance.sop_uid} has {count} frames; no frame {missing[0]}")
    plan = _plan_frames(instance, len(numbers))
    parts = _frame_parts(_Frames(archive(), instance), numbers, plan)
    if not plan.multipart:
        [part] = list(parts)
        return Response(
            part.body, headers={"Content-Type": part.content_type}, direct_passthrough=True
        )
    return _multipart(plan.media_type, parts, plan.syntax)


def _frame_numbers(text: str) -> list[int]:
    """PS3.18 8.3.3.1: a comma-separated list of 1-based frame numbers; else 400."""
    try:
        numbers = [int(part) for part in text.split(",")]
    except ValueError:
        numbers = []
    if not numbers or any(n < 1 for n in numbers):
        raise InvalidQuery(
            f"frame list {text[:80]!r} is not a comma-separated list of numbers >= 1"
        )
    return numbers


def _one(study: str, series: str, sop: str) -> StoredInstance:
    _check_uids(study, series, sop)
    return archive().instances(study, series, sop)[0]


@blueprint.get(INSTANCE + "/frames/<frames>")
def retrieve_frames(study: str, series: str, sop: str, frames: str) -> Response:
    numbers = _frame_numbers(frames)
    return _frames_response(_one(study, series, sop), numbers)


# -- bulk data (PS3.18 10.4.1.1.5) -----------------------------------------------------


@blueprint.get(INSTANCE + "/bulkdata/<path:key>")
def retrieve_bulkdata(study: str, series: str, sop: str, key: str) -> Response:
    instance = _one(study, series, sop)
    key = key.strip("/").upper()
    ts = UID(instance.transfer_syntax_uid)
    if key in PIXEL_KEYS and ts.is_encapsulated:
        if instance.transfer_syntax_uid in COMPRESSED["video/mpeg"] + COMPRESSED["video/mp4"]:
            return _video(instance)
        # PS3.18 8.7.3.3.2: compressed multi-frame pixel data goes frame by frame.
        count = _frame_count(instance) or 1
        return _frames_response(instance, list(range(1, count + 1)))
    px = instance.pixels
    if key in PIXEL_KEYS and px is not None and px.length is not None and not ts.is_deflated:
        # Native pixel data: the whole value as little endian octets (PS3.18 8.7.3.3.1),
        # straight from the byte range ingest recorded; big endian words are swapped.
        raw = archive().read_ranges(instance, [(px.offset, px.length)])
        if not ts.is_little_endian and px.vr == "OW":
            return _octets(_lazy(lambda: iter([_swap16(b"".join(raw))])))
        return _octets(raw)
    if key in instance.bulk:
        return _octets(archive().read_ranges(instance, [instance.bulk[key]]))
    return _octets(iter([_bulk_from_file(instance, key)]))


def _octets(body: Iterable[bytes]) -> Response:
    """Uncompressed bulk data: ``application/octet-stream`` (PS3.18 Table 8.7.3-4)."""
    for w in _accept():
        if item_matches(w.media_type, OCTET_STREAM) and w.transfer_syntax in (
            None,
            "*",
            EXPLICIT_LE,
        ):
            if w.multipart:
                return _multipart(OCTET_STREAM, [Part(OCTET_STREAM, body)])
            return Response(body, headers={"Content-Type": OCTET_STREAM}, direct_passthrough=True)
    raise _not_acceptable(f'multipart/related; type="{OCTET_STREAM}" or {OCTET_STREAM}')


def _bulk_from_file(instance: StoredInstance, key: str) -> bytes:
    """A bulk value whose byte range was not recorded (deflated files): parse and walk."""
    ds = transcode.read(archive().path(instance))
    pieces = key.split("/")
    node = ds
    try:
        for n, piece in enumerate(pieces):
            if n % 2 == 0:
                element = node[int(piece, 16)]
                if n == len(pieces) - 1:
                    if element.VR == "SQ" or not isinstance(element.value, bytes | bytearray):
                        break
                    return bytes(element.value)
                node = element
            else:
                node = node.value[int(piece)]
    except (KeyError, ValueError, IndexError, TypeError):
        pass
    raise NotFound(f"instance {instance.sop_uid} has no bulk data {key!r}")


def _video(instance: StoredInstance) -> Response:
    """MPEG video is one stream over all fragments (PS3.5 8.2.5); sent as its media type."""
    media = MEDIA_TYPE_OF[instance.transfer_syntax_uid]
    ctype = f"{media}; transfer-syntax={instance.transfer_syntax_uid}"
    store = archive()
    for w in _accept():
        if item_matches(w.media_type, media) or w.transfer_syntax == "*":
            body = _lazy(lambda: _video_stream(store, instance))
            if w.multipart:
                return _multipart(media, [Part(ctype, body)], instance.transfer_syntax_uid)
            return Response(body, headers={"Content-Type": ctype}, direct_passthrough=True)
    raise _not_acceptable(media)


def _video_stream(store: Archive, instance: StoredInstance) -> Iterator[bytes]:
    px = instance.pixels
    if px is not None and px.fragments is not None:
        ranges = [fragment for frame in px.fragments for fragment in frame]
        return store.read_ranges(instance, ranges)
    from pydicom.encaps import generate_fragments

    ds = transcode.read(store.path(instance))
    return iter(list(generate_fragments(ds.PixelData)))


# -- rendered and thumbnails (PS3.18 10.4.1.1.3, Sup 203) ------------------------------


def _render_options() -> dict[str, object]:
    return {
        "window": render.parse_window(request.args.get("window")),
        "viewport": render.parse_viewport(request.args.get("viewport")),
        "quality": render.parse_quality(request.args.get("quality")),
    }


def _rendered_type(offered: tuple[str, ...]) -> str:
    for w in _accept():
        if w.multipart and w.media_type == "*/*":
            return offered[0]
        for media in offered:
            if item_matches(w.media_type, media):
                return media
    raise _not_acceptable(", ".join(offered))


def _representative(instances: list[StoredInstance]) -> StoredInstance:
    """The instance a study or series thumbnail shows: the middle image of the first
    series that has pixel data (Sup 203 leaves the choice to the server)."""
    images = [i for i in instances if i.pixels is not None or i.number_of_frames]
    if not images:
        return instances[0]
    first_series = [i for i in images if i.series_uid == images[0].series_uid]
    return first_series[len(first_series) // 2]


def _render_instance(instance: StoredInstance, frame: int | None, thumbnail: bool) -> Response:
    options = _render_options()
    if instance.sop_class_uid in render.ENCAPSULATED_DOCUMENTS and not thumbnail:
        media, body = render.document(archive().path(instance))
        if not any(item_matches(w.media_type, media) for w in _accept()):
            raise _not_acceptable(media)
        return Response(body, headers={"Content-Type": media})
    if (
        instance.transfer_syntax_uid in MEDIA_TYPE_OF
        and MEDIA_TYPE_OF[instance.transfer_syntax_uid].startswith("video/")
        and not thumbnail
    ):
        return _video(instance)
    if _frame_count(instance) == 0:
        raise NotFound(f"instance {instance.sop_uid} has no pixel data to render")
    count = _frame_count(instance)
    number = frame if frame is not None else (count + 1) // 2 if thumbnail else 1
    if number > count:
        raise NotFound(f"instance {instance.sop_uid} has {count} frames; no frame {number}")
    media = _rendered_type(tuple(render.IMAGE_FORMATS))
    data = render.render(
        archive().path(instance), number, media_type=media, thumbnail=thumbnail, **options
    )  # type: ignore[arg-type]
    return Response(data, headers={"Content-Type": media})


def _rendered(
    study: str, series: str | None, sop: str | None, frames: str | None, thumbnail: bool
) -> Response:
    _check_uids(study, series, sop)
    numbers = _frame_numbers(frames) if frames is not None else None
    instances = archive().instances(study, series, sop)
    instance = instances[0] if sop else _representative(instances)
    if numbers is None or len(numbers) == 1:
        return _render_instance(instance, numbers[0] if numbers else None, thumbnail)
    # Several frames: one rendered image per frame in a multipart payload (PS3.18 8.6.1.2).
    media = _rendered_type(tuple(render.IMAGE_FORMATS))
    options = _render_options()
    count = _frame_count(instance)
    if any(n > count for n in numbers):
        raise NotFound(f"instance {instance.sop_uid} has {count} frames")
    path = archive().path(instance)
    parts = (
        Part(media, _lazy(lambda n=n: iter([render.render(path, n, media_type=media, **options)])))  # type: ignore[arg-type]
        for n in numbers
    )
    return _multipart(media, parts)


@blueprint.get(STUDY + "/rendered")
def study_rendered(study: str) -> Response:
    return _rendered(study, None, None, None, thumbnail=False)


@blueprint.get(SERIES + "/rendered")
def series_rendered(study: str, series: str) -> Response:
    return _rendered(study, series, None, None, thumbnail=False)


@blueprint.get(INSTANCE + "/rendered")
def instance_rendered(study: str, series: str, sop: str) -> Response:
    return _rendered(study, series, sop, None, thumbnail=False)


@blueprint.get(INSTANCE + "/frames/<frames>/rendered")
def frames_rendered(study: str, series: str, sop: str, frames: str) -> Response:
    return _rendered(study, series, sop, frames, thumbnail=False)


@blueprint.get(STUDY + "/thumbnail")
def study_thumbnail(study: str) -> Response:
    return _rendered(study, None, None, None, thumbnail=True)


@blueprint.get(SERIES + "/thumbnail")
def series_thumbnail(study: str, series: str) -> Response:
    return _rendered(study, series, None, None, thumbnail=True)


@blueprint.get(INSTANCE + "/thumbnail")
def instance_thumbnail(study: str, series: str, sop: str) -> Response:
    return _rendered(study, series, sop, None, thumbnail=True)


@blueprint.get(INSTANCE + "/frames/<frames>/thumbnail")
def frames_thumbnail(study: str, series: str, sop: str, frames: str) -> Response:
    return _rendered(study, series, sop, frames, thumbnail=True)
