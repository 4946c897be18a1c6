"""The DICOMweb front: a Flask app over the archive (PS3.18).

Routes translate HTTP to archive calls and back, nothing more: ``qido.py`` (search),
``wado.py`` (retrieve), ``stow.py`` (store and delete).  The archive is created per
process and reached through ``current_app.extensions["archive"]``.
"""

from __future__ import annotations

from flask import Flask, Response, current_app
from flask_cors import CORS
from werkzeug.middleware.proxy_fix import ProxyFix

from ..archive import Archive
from ..config import Settings
from . import compress, errors, metrics


def archive() -> Archive:
    """The archive of the app serving the current request."""
    return current_app.extensions["archive"]


def create_app(settings: Settings, archive: Archive | None = None) -> Flask:
    """Build the WSGI app; ``archive`` is opened from ``settings`` unless given."""
    from . import admin, auth, qido, stow, wado

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = None
    app.json.sort_keys = False  # DICOM JSON keys are in tag order already
    app.extensions["settings"] = settings
    app.extensions["archive"] = archive or Archive(settings, upgrade=False)
    # metrics: first, so that its route label is set before auth may refuse a request.
    metrics.install(app, app.extensions["archive"])
    base = settings.http.base_path
    for module in (qido, wado, stow):
        app.register_blueprint(module.blueprint, url_prefix=base or None)
    errors.register(app)
    compress.install(app)
    # auth: after compress, so that its after_request hook (audit) runs before gzip.
    app.register_blueprint(admin.blueprint, url_prefix="/admin")
    # -- viewer: the built-in page at / and OHIF under /ohif/ (web/viewer.py) --
    if settings.http.viewer:
        from . import viewer

        app.register_blueprint(viewer.blueprint)
    # -- viewer (end) --
    auth.install(app, settings, app.extensions["archive"])
    if settings.http.cors_origins:
        CORS(
            app,
            origins=settings.http.cors_origins,
            expose_headers=[
                "Content-Type",
                "Content-Length",
                "ETag",
                "Warning",
                "Location",
                "WWW-Authenticate",
                metrics.REQUEST_ID_HEADER,
            ],
            max_age=3600,
        )
    if settings.http.trusted_proxies:
        n = settings.http.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n, x_host=n, x_port=n, x_prefix=n)

    @app.get("/health")
    def health() -> Response:
        return Response("ok\n", mimetype="text/plain")

    @app.get("/ready")
    def ready() -> Response:
        app.extensions["archive"].check()
        return Response("ready\n", mimetype="text/plain")

    return app
