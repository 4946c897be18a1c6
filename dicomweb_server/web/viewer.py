"""The built-in web page at ``/``, and an installed OHIF Viewer under ``/ohif/``.

The page (``static/viewer/``: one HTML template, one script, one style sheet, no build
step) is a client of our own DICOMweb API and nothing more: it lists studies with
QIDO-RS (PS3.18 10.6), shows their thumbnails (PS3.18 10.4.1.1.3 ``/thumbnail``),
uploads files with STOW-RS (PS3.18 10.5) and, when OHIF is not installed, shows a
series' images through ``/rendered`` (PS3.18 10.4.1.1.3).  It sends no credentials, so
it is usable only with ``auth.mode = "none"``; with authentication on, these routes
need the ``read`` role like any unlisted GET (``web/auth.py``), which a browser
following a link does not have.

OHIF's prebuilt ``@ohif/app`` dist is built for the site root: its ``index.html``
names every asset with an absolute ``/`` path, webpack's runtime loads chunks, workers
and codecs from ``__webpack_require__.p = "/"``, and the style sheet loads its font
from ``url(/...)``.  Rather than claim the site root, this module serves the dist under
``/ohif/`` and rewrites those few literals on the fly (streamed, so a 17 MB bundle costs
one chunk of memory): asset paths get the ``/ohif`` prefix, ``window.PUBLIC_URL`` and
``routerBasename`` say where the app lives, and ``/ohif/app-config.js`` is generated
with one DICOMweb data source pointing at this server (``urls.base_url``).  Paths under
``/ohif/`` that name no file are answered with ``index.html``, as OHIF's client-side
router needs (its own ``serve.json`` does the same), unless they look like a missing
asset (``.js``, ``.png``...), which is a plain 404.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

from flask import (
    Blueprint,
    Response,
    current_app,
    render_template_string,
    request,
    send_file,
    url_for,
)
from werkzeug.exceptions import NotFound
from werkzeug.security import safe_join

from ..config import Settings
from . import urls

blueprint = Blueprint("viewer", __name__)

STATIC = Path(__file__).parent / "static" / "viewer"
#: Where OHIF is served, below the app's script root.
OHIF_PATH = "/ohif"
#: ``index.html`` of a dist larger than this is refused: it is read whole to be rewritten.
MAX_INDEX_SIZE = 1 << 20
CHUNK = 1 << 16
#: Bytes held back between chunks so that a literal split across two reads still
#: matches; longer than any pattern below.
_OVERLAP = 64

#: Media types of the files an OHIF dist holds, where Python's table may lack them.
MEDIA_TYPES = {
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".css": "text/css",
    ".wasm": "application/wasm",
    ".json": "application/json",
    ".map": "application/json",
    ".svg": "image/svg+xml",
    ".woff2": "font/woff2",
    ".woff": "font/woff",
    ".html": "text/html",
}
#: A missing path ending so is a missing file (404), not a route of OHIF's router.
ASSET_SUFFIXES = frozenset(MEDIA_TYPES) | {".png", ".ico", ".jpg", ".gif", ".txt", ".xml"}


# -- the built-in page ----------------------------------------------------------------


@functools.cache
def _page_template() -> str:
    return (STATIC / "index.html").read_text(encoding="utf-8")


@blueprint.get("/")
def index() -> Response:
    """The study browser: search, thumbnails, upload, and a link to a viewer."""
    settings: Settings = current_app.extensions["settings"]
    page = {
        # Same-origin path: the page and the API are served by the same app.
        "dicomweb": request.script_root + settings.http.base_path,
        "ohif": request.script_root + OHIF_PATH + "/" if ohif_dist(settings) else "",
    }
    html = render_template_string(
        _page_template(),
        page=page,
        css=url_for("static", filename="viewer/viewer.css"),
        js=url_for("static", filename="viewer/viewer.js"),
    )
    response = Response(html, mimetype="text/html")
    response.headers["Cache-Control"] = "no-cache"
    return response


# -- OHIF ---------------------------------------------------------------------------------


def ohif_dist(settings: Settings) -> Path | None:
    """The OHIF build to serve: ``http.viewer_dir``, else ``<data_dir>/ohif``, if present.

    Looked up at each request (one ``stat``), so ``install-viewer`` takes effect without
    a restart.
    """
    folder = (
        Path(settings.http.viewer_dir)
        if settings.http.viewer_dir
        else settings.storage.data_dir / "ohif"
    )
    return folder if (folder / "index.html").is_file() else None


def datasource(root: str) -> dict[str, object]:
    """OHIF's DICOMweb data source configuration for our DICOMweb root ``root``.

    What this server supports: ``includefield`` (PS3.18 8.3.4.3), ``*``/``?`` wildcards
    in QIDO-RS (PS3.18 8.3.4.6.1 via PS3.4 C.2.2.2.4), frames and bulk data by
    ``BulkDataURI`` (PS3.18 8.6.1.3), multipart ``type`` parameters without quotes.
    """
    return {
        "friendlyName": "dicomweb-server",
        "name": "dicomweb",
        "wadoUriRoot": root,
        "qidoRoot": root,
        "wadoRoot": root,
        "qidoSupportsIncludeField": True,
        "supportsReject": False,
        "imageRendering": "wadors",
        "thumbnailRendering": "wadors",
        "enableStudyLazyLoad": True,
        "supportsFuzzyMatching": False,
        "supportsWildcard": True,
        "staticWado": False,
        "singlepart": "bulkdata,video",
        "bulkDataURI": {"enabled": True},
        "omitQuotationForMultipartRequest": True,
    }


def app_config(root: str, basename: str) -> str:
    """The text of OHIF's ``app-config.js`` (``window.config``) for this server."""
    config = {
        "name": "dicomweb-server",
        "routerBasename": basename,
        "extensions": [],
        "modes": [],
        "customizationService": {},
        "showStudyList": True,
        "maxNumberOfWebWorkers": 3,
        # Same origin by default; the warning would only confuse users.
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": True,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "showErrorDetails": "always",
        # OHIF's notice would cover the viewport at every visit.
        "investigationalUseDialog": {"option": "never"},
        "defaultDataSourceName": "dicomweb",
        "dataSources": [
            {
                "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
                "sourceName": "dicomweb",
                "configuration": datasource(root),
            }
        ],
    }
    # json.dumps escapes nothing HTML-ish, but this is a script file, not inline HTML.
    return "/* generated by dicomweb-server */\nwindow.config = " + json.dumps(config) + ";\n"


def _dist_or_404() -> Path:
    dist = ohif_dist(current_app.extensions["settings"])
    if dist is None:
        raise NotFound(
            "no OHIF Viewer is installed: run `dicomweb-server install-viewer` or set "
            "http.viewer_dir to the folder of an OHIF build"
        )
    return dist


@blueprint.get(OHIF_PATH + "/app-config.js")
def ohif_config() -> Response:
    """OHIF's configuration, generated for the DICOMweb root clients reach us at."""
    _dist_or_404()
    body = app_config(urls.base_url(), request.script_root + OHIF_PATH)
    response = Response(body, mimetype="text/javascript")
    response.headers["Cache-Control"] = "no-cache"
    return response


@blueprint.get(OHIF_PATH + "/", defaults={"path": ""})
@blueprint.get(OHIF_PATH + "/<path:path>")
def ohif(path: str) -> Response:
    """A file of the OHIF dist, rewritten for ``/ohif/`` where needed; else index.html."""
    dist = _dist_or_404()
    prefix = request.script_root + OHIF_PATH
    joined = safe_join(str(dist), path) if path else None
    file = Path(joined) if joined else None
    if file is None or not file.is_file() or file.name == "index.html":
        if path and Path(path).suffix.lower() in ASSET_SUFFIXES and path != "index.html":
            raise NotFound(f"{OHIF_PATH}/{path} is not part of the installed OHIF Viewer")
        return _ohif_index(dist, prefix)
    suffix = file.suffix.lower()
    rewrite = _REWRITES.get(suffix)
    if rewrite is not None:
        return _rewritten(file, rewrite(prefix), MEDIA_TYPES[suffix], prefix)
    response = send_file(
        file, mimetype=MEDIA_TYPES.get(suffix), conditional=True, max_age=0, etag=True
    )
    response.headers["Cache-Control"] = "no-cache"
    return response


def _ohif_index(dist: Path, prefix: str) -> Response:
    index_file = dist / "index.html"
    if index_file.stat().st_size > MAX_INDEX_SIZE:
        raise NotFound(f"{index_file} is larger than {MAX_INDEX_SIZE} bytes; not an OHIF build")
    html = index_file.read_text(encoding="utf-8")
    html = re.sub(r'\b(src|href)="/(?!/)', rf'\1="{prefix}/', html)
    html = re.sub(r"""window\.PUBLIC_URL\s*=\s*(["'])/\1""", f'window.PUBLIC_URL="{prefix}/"', html)
    response = Response(html, mimetype="text/html")
    response.headers["Cache-Control"] = "no-cache"
    return response


Rewrite = list[tuple[re.Pattern[bytes], bytes]]


def _js_rewrite(prefix: str) -> Rewrite:
    # webpack's public path: where chunks, workers and wasm codecs are loaded from.
    return [
        (
            re.compile(rb'(__webpack_require__\.p\s*=\s*)(["\'])/\2'),
            rb"\g<1>\g<2>" + prefix.encode() + rb"/\g<2>",
        )
    ]


def _css_rewrite(prefix: str) -> Rewrite:
    return [(re.compile(rb"""url\((["']?)/(?!/)"""), rb"url(\g<1>" + prefix.encode() + rb"/")]


_REWRITES: dict[str, Callable[[str], Rewrite]] = {
    ".js": _js_rewrite,
    ".mjs": _js_rewrite,
    ".css": _css_rewrite,
}


def _rewritten(file: Path, rewrite: Rewrite, media_type: str, prefix: str) -> Response:
    """``file`` with ``rewrite`` applied, streamed; revalidated by an ETag.

    The length is not known before the end, so the body goes out chunked; the ETag
    (file identity and prefix) lets the browser keep its copy with a 304.
    """
    stat = file.stat()
    tag = hashlib.sha256(f"{file}|{stat.st_mtime_ns}|{stat.st_size}|{prefix}".encode())
    response = Response(_stream_replaced(file, rewrite), mimetype=media_type)
    response.set_etag(tag.hexdigest()[:32])
    response.headers["Cache-Control"] = "no-cache"
    return response.make_conditional(request)


def _stream_replaced(file: Path, rewrite: Rewrite) -> Iterator[bytes]:
    """The bytes of ``file`` with every pattern replaced, read :data:`CHUNK` at a time.

    A match must begin in the part of the buffer that is emitted; the last
    :data:`_OVERLAP` bytes wait for the next read, so a literal split between two reads
    is still found.
    """
    pending = b""
    with open(file, "rb") as source:
        while True:
            data = source.read(CHUNK)
            buffer = pending + data
            cut = len(buffer) if not data else max(len(buffer) - _OVERLAP, 0)
            out, pending = _replace_before(buffer, cut, rewrite)
            if out:
                yield out
            if not data:
                return


def _replace_before(buffer: bytes, cut: int, rewrite: Rewrite) -> tuple[bytes, bytes]:
    """Replace matches starting before ``cut``; return (output, bytes kept for later)."""
    pieces: list[bytes] = []
    position = 0
    while True:
        found = [
            (match, replacement)
            for pattern, replacement in rewrite
            if (match := pattern.search(buffer, position)) is not None and match.start() < cut
        ]
        if not found:
            break
        match, replacement = min(found, key=lambda item: item[0].start())
        pieces.append(buffer[position : match.start()])
        pieces.append(match.expand(replacement))
        position = match.end()
    end = max(cut, position)
    pieces.append(buffer[position:end])
    return b"".join(pieces), buffer[end:]
