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
    host = request.host
    port = request.environ.get("SERVER_PORT", "")
    default = {"http": "80", "https": "443"}.get(request.scheme)
    if (
        ":" not in host.rpartition("]")[2]
        and port
        and port != default
        and not settings.http.trusted_proxies
    ):
        # No proxy in front, so the client reached us on our own port; some clients
        # (dicomweb-client) leave it out of Host, which would break every URL we hand out.
        host = f"{host}:{port}"
    return f"{request.scheme}://{host}{request.script_root}{settings.http.base_path}"


def expand(stored_json: str, base: str) -> str:
    """Stored metadata text with its URI placeholder replaced by ``base``."""
    return stored_json.replace(dicomjson.BASE, base)
