"""The public DICOMweb root URL, for RetrieveURL and BulkDataURI.

From, in order: ``http.public_url`` when configured; the ``Forwarded`` (RFC 7239) or
``X-Forwarded-Host/-Proto/-Prefix`` headers when ``http.trusted_proxies`` says a proxy
sets them (Werkzeug's ProxyFix applies them to the request); else the request's own
scheme, host and port.
"""

from __future__ import annotations

from flask import current_app, request

from ..archive import dicomjson


def base_url() -> str:
    """The DICOMweb root as clients reach it, without a trailing slash."""
    settings = current_app.extensions["settings"]
    if settings.http.public_url:
        return settings.http.public_url.rstrip("/")
    forwarded = request.headers.get("Forwarded") if settings.http.trusted_proxies else None
    if forwarded:
        fields = dict(
            part.strip().split("=", 1) for part in forwarded.split(",")[0].split(";") if "=" in part
        )
        host = fields.get("host", "").strip('"') or request.host
        proto = fields.get("proto", "").strip('"') or request.scheme
        return f"{proto}://{host}{request.script_root}{settings.http.base_path}"
    return f"{request.host_url.rstrip('/')}{settings.http.base_path}"


def expand(stored_json: str, base: str) -> str:
    """Stored metadata text with its URI placeholder replaced by ``base``."""
    return stored_json.replace(dicomjson.BASE, base)
