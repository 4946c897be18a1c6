"""Who may call the DICOMweb API, and the audit record of every call.

DICOMweb defines no authentication of its own; it rides on HTTP's (RFC 9110 11), and
OAuth 2.0 bearer tokens (RFC 6750) are what viewers and cloud archives use.  Two
methods, enabled by ``auth.mode``:

- ``jwt``: OAuth2 / OpenID Connect access tokens, ``Authorization: Bearer <JWT>``,
  verified with PyJWT against the issuer's JWKS (a URL, fetched and cached, or a file),
  with ``iss``, ``aud`` and ``exp`` required and checked, asymmetric algorithms only.
- ``apikey``: static keys for scripts, ``Authorization: Bearer <key>`` or
  ``X-API-Key: <key>``.  The configuration keeps only ``sha256:<hex>`` of each key:
  the keys are 256-bit random strings (:func:`mint_api_key`), so unlike passwords they
  cannot be found by guessing, and a slow password hash would only slow every request.

Each request is classified once, by blueprint and HTTP method, in :data:`ACCESS`: the
role it needs and the audit action it is.  No credentials or bad ones: 401 with a
``WWW-Authenticate: Bearer`` challenge (RFC 6750 3, ``error="invalid_token"`` when a
token was presented and refused).  Valid credentials without the role: 403 with
``error="insufficient_scope"`` (RFC 6750 3.1).  ``/health``, ``/ready`` and CORS
preflight requests (OPTIONS) are open and not audited.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import os
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from flask import Flask, Response, g, request
from werkzeug.exceptions import ServiceUnavailable

from ..archive import Archive
from ..archive.audit import Action, Entry, log_entry
from ..archive.uids import is_valid_uid
from ..config import AuthMethod, AuthSettings, Role, Settings
from .errors import error_response

log = logging.getLogger(__name__)

#: The user of every request when ``auth.mode`` is ``none``.
ANONYMOUS = "anonymous"
#: Prefix of API key names in the audit trail and in instances' origin, so that a key
#: never passes for a person of the same name.
API_KEY_USER_PREFIX = "apikey:"
#: Prefix of the keys :func:`mint_api_key` makes, so that a leaked key is recognisable.
API_KEY_PREFIX = "dwk_"


# -- what each request needs ------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """The role a request needs and the action the audit trail records."""

    role: Role
    action: Action


_SEARCH = Rule(Role.READ, Action.SEARCH)
_RETRIEVE = Rule(Role.READ, Action.RETRIEVE)

#: (blueprint, HTTP method) -> what the request needs.  HEAD is a GET without a body.
ACCESS: dict[tuple[str | None, str], Rule] = {
    ("qido", "GET"): _SEARCH,
    ("qido", "HEAD"): _SEARCH,
    ("wado", "GET"): _RETRIEVE,
    ("wado", "HEAD"): _RETRIEVE,
    ("stow", "POST"): Rule(Role.WRITE, Action.STORE),
    ("stow", "DELETE"): Rule(Role.DELETE, Action.DELETE),
    ("admin", "GET"): Rule(Role.ADMIN, Action.AUDIT),
    ("admin", "HEAD"): Rule(Role.ADMIN, Action.AUDIT),
}
#: Requests no table entry names (unknown paths, new routes): by method, action "other".
#: Anything not listed (e.g. TRACE) needs ``admin``.
BY_METHOD: dict[str, Role] = {
    "GET": Role.READ,
    "HEAD": Role.READ,
    "POST": Role.WRITE,
    "PUT": Role.WRITE,
    "PATCH": Role.WRITE,
    "DELETE": Role.DELETE,
}
#: Endpoints anyone may call, never audited: liveness and readiness probes, and the
#: Prometheus scrape (counts and timings only; see web/metrics.py).
OPEN_ENDPOINTS = frozenset({"health", "ready", "metrics", "static"})


def rule_for(blueprint: str | None, endpoint: str | None, method: str) -> Rule | None:
    """What a request needs; ``None`` when it is open (probes, CORS preflight)."""
    if method == "OPTIONS" or endpoint in OPEN_ENDPOINTS:
        return None
    rule = ACCESS.get((blueprint, method))
    if rule is not None:
        return rule
    return Rule(BY_METHOD.get(method, Role.ADMIN), Action.OTHER)


# -- who is calling ---------------------------------------------------------------------


@dataclass(frozen=True)
class Principal:
    """An authenticated caller."""

    name: str  #: user (from ``auth.user_claim``) or ``apikey:<name>``
    roles: frozenset[Role]
    method: str  #: "jwt", "apikey" or "none"

    def may(self, role: Role) -> bool:
        """Whether the caller has ``role``; ``admin`` implies every role."""
        return role in self.roles or Role.ADMIN in self.roles


class Refused(Exception):
    """Credentials missing or refused: answered with 401 and a Bearer challenge.

    ``error`` is the RFC 6750 3.1 error code: ``None`` when no credentials were sent
    (3.1: the challenge then carries no error), ``"invalid_token"`` when they were
    refused, ``"invalid_request"`` when the request was malformed.
    """

    def __init__(self, description: str, error: str | None = "invalid_token") -> None:
        super().__init__(description)
        self.description = description
        self.error = error


def hash_api_key(key: str) -> str:
    """The form of ``key`` kept in the configuration: ``sha256:<64 hex digits>``."""
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def mint_api_key() -> str:
    """A new API key: 256 random bits, URL-safe, prefixed :data:`API_KEY_PREFIX`."""
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


class Authenticator:
    """Checks credentials against ``auth`` settings; one per app, shared by threads."""

    def __init__(self, settings: AuthSettings) -> None:
        self.settings = settings
        self.methods = settings.methods
        self._keys: dict[str, Principal] = {}
        for name, key in settings.api_keys.items():
            if key.hash in self._keys:
                raise ValueError(f"auth.api_keys: {name!r} has the same hash as another key")
            self._keys[key.hash] = Principal(
                API_KEY_USER_PREFIX + name, frozenset(key.roles), AuthMethod.API_KEY.value
            )
        self._jwks_client: jwt.PyJWKClient | None = None
        if AuthMethod.JWT in self.methods and settings.jwks_url:
            self._jwks_client = jwt.PyJWKClient(
                settings.jwks_url,
                cache_keys=True,
                cache_jwk_set=settings.jwks_cache_seconds > 0,
                lifespan=max(settings.jwks_cache_seconds, 1),
                timeout=10,
            )
        self._file_lock = threading.Lock()
        self._file_keys: tuple[float, list[jwt.PyJWK]] | None = None

    def authenticate(self, headers: Any) -> Principal:
        """The caller of a request with these headers; raises :class:`Refused`."""
        if not self.methods:
            return Principal(ANONYMOUS, frozenset(Role), "none")
        authorization = headers.get("Authorization", "")
        api_key = headers.get("X-API-Key", "")
        if authorization:
            scheme, _, credentials = authorization.partition(" ")
            if scheme.lower() != "bearer":
                # RFC 6750 3: a request without Bearer credentials gets a bare challenge.
                raise Refused(f"the {scheme!r} authorization scheme is not supported", None)
            token = credentials.strip()
            if not token:
                raise Refused("the Bearer credentials are empty", "invalid_request")
            if AuthMethod.JWT in self.methods and (
                token.count(".") == 2 or AuthMethod.API_KEY not in self.methods
            ):
                return self._verify_jwt(token)
            return self._verify_api_key(token)
        if api_key and AuthMethod.API_KEY in self.methods:
            return self._verify_api_key(api_key.strip())
        raise Refused("this server requires authentication", None)

    # -- API keys ---------------------------------------------------------------------

    def _verify_api_key(self, key: str) -> Principal:
        # Looking up the SHA-256 of the key reveals nothing through timing: an attacker
        # cannot choose hashes, only keys.
        principal = self._keys.get(hash_api_key(key))
        if principal is None:
            raise Refused("the API key is not known")
        return principal

    # -- JWT --------------------------------------------------------------------------

    def _verify_jwt(self, token: str) -> Principal:
        s = self.settings
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise Refused(f"the token is not a JWT: {exc}") from exc
        algorithm = header.get("alg")
        if algorithm not in s.algorithms:
            raise Refused(f"token algorithm {algorithm!r} is not in auth.algorithms")
        key = self._signing_key(token, header.get("kid"))
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[algorithm],
                audience=s.audience,
                issuer=s.issuer,
                leeway=s.leeway,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.PyJWTError as exc:
            raise Refused(f"the token is not valid: {exc}") from exc
        name = claims.get(s.user_claim) or claims.get("sub") or ""
        return Principal(str(name), self._roles(claims), AuthMethod.JWT.value)

    def _signing_key(self, token: str, kid: str | None) -> jwt.PyJWK:
        if self._jwks_client is not None:
            try:
                return self._jwks_client.get_signing_key_from_jwt(token)
            except jwt.PyJWKClientConnectionError as exc:
                log.error("auth: the JWKS at auth.jwks_url is unreachable: %s", exc)
                raise ServiceUnavailable(
                    "the token issuer's keys (auth.jwks_url) cannot be fetched; try later"
                ) from exc
            except jwt.PyJWTError as exc:
                raise Refused(f"no key of the issuer verifies this token: {exc}") from exc
        keys = self._keys_from_file()
        if kid is not None:
            keys = [k for k in keys if k.key_id == kid]
        if len(keys) != 1:
            raise Refused(f"no single key of the issuer matches the token's key id {kid!r}")
        return keys[0]

    def _keys_from_file(self) -> list[jwt.PyJWK]:
        """The signing keys of ``auth.jwks_file``, reread whenever the file changes."""
        path = Path(self.settings.jwks_file or "")
        mtime = os.stat(path).st_mtime
        with self._file_lock:
            if self._file_keys is None or self._file_keys[0] != mtime:
                data = json.loads(path.read_text())
                keyset = jwt.PyJWKSet.from_dict(data)
                keys = [k for k in keyset.keys if k.public_key_use in (None, "sig")]
                self._file_keys = (mtime, keys)
            return self._file_keys[1]

    def _roles(self, claims: dict[str, Any]) -> frozenset[Role]:
        value: Any = claims
        for part in self.settings.roles_claim.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, str):
            values = value.split()  # "scope"-style: space-separated (RFC 8693 4.2)
        elif isinstance(value, list):
            values = [v for v in value if isinstance(v, str)]
        else:
            values = []
        return frozenset(r for v in values for r in self.settings.role_map.get(v, []))


def challenge(realm: str, error: str | None = None, description: str = "") -> str:
    """A ``WWW-Authenticate`` value (RFC 6750 3)."""
    value = f'Bearer realm="{realm}"'
    if error:
        value += f', error="{error}"'
        if description:
            safe = description.replace("\\", "").replace('"', "'")[:200]
            value += f', error_description="{safe}"'
    return value


# -- the hooks --------------------------------------------------------------------------


def install(app: Flask, settings: Settings, archive: Archive) -> None:
    """Check every request's credentials and record it in the audit trail.

    Authorization runs as a ``before_request`` hook (after routing, so the blueprint is
    known); the audit record is written in ``after_request``, which sees refused and
    failed requests too.
    """
    authenticator = Authenticator(settings.auth)
    writer = archive.audit_writer() if settings.auth.audit else None
    app.extensions["auth"] = authenticator
    app.extensions["audit"] = writer
    realm = settings.auth.realm
    warning = open_access_warning(settings)
    if warning:
        log.warning(warning)

    @app.before_request
    def _authorize() -> Response | None:
        rule = rule_for(request.blueprint, request.endpoint, request.method)
        g.audit_rule = rule
        if rule is None:
            return None
        try:
            principal = authenticator.authenticate(request.headers)
        except Refused as exc:
            log.warning(
                "auth: refused %s %s from %s: %s",
                request.method,
                request.path,
                request.remote_addr,
                exc.description,
            )
            response = error_response(401, exc.description)
            response.headers["WWW-Authenticate"] = challenge(realm, exc.error, exc.description)
            return response
        g.principal = principal
        if principal.method != "none":
            # The STOW-RS front records this as the stored instances' origin user.
            request.environ["REMOTE_USER"] = principal.name
        if not principal.may(rule.role):
            response = error_response(
                403, f"{principal.name!r} lacks the {rule.role.value!r} role this request needs"
            )
            response.headers["WWW-Authenticate"] = challenge(
                realm, "insufficient_scope", f"requires role {rule.role.value}"
            )
            return response
        return None

    @app.after_request
    def _audit(response: Response) -> Response:
        rule: Rule | None = g.get("audit_rule")
        if rule is None:
            return response
        entry = _entry(rule, response)
        if writer is not None:
            writer.submit(entry)
        else:
            log_entry(entry)
        return response


def note(*, instances: int | None = None, study_uid: str | None = None) -> None:
    """Tell the audit record of the current request what a route knows best.

    Routes may call this (e.g. DELETE with the number of instances removed); without
    it, the study comes from the URL and, for STOW-RS, the count from the response.
    """
    if instances is not None:
        g.audit_instances = instances
    if study_uid is not None:
        g.audit_study = study_uid


def _entry(rule: Rule, response: Response) -> Entry:
    principal: Principal | None = g.get("principal")
    study = g.get("audit_study") or (request.view_args or {}).get("study") or ""
    if not is_valid_uid(study):
        study = ""
    instances = g.get("audit_instances")
    if rule.action is Action.STORE and instances is None:
        instances, study = _stow_outcome(response, study)
    query = request.query_string.decode("latin-1")
    return Entry(
        user=principal.name if principal else "",
        action=rule.action,
        protocol="DICOMweb",
        method=request.method,
        path=request.path + ("?" + query if query else ""),
        study_uid=study,
        address=request.remote_addr or "",
        status=response.status_code,
        instances=instances,
    )


def _stow_outcome(response: Response, study: str) -> tuple[int | None, str]:
    """Instances stored and the study, from a STOW-RS response (PS3.18 10.5.3).

    The response is a small DICOM JSON object held in memory: Referenced SOP Sequence
    (0008,1199) lists the stored instances, Retrieve URL (0008,1190) names the study.
    """
    if response.is_streamed or not response.is_json:
        return None, study
    body = response.get_json(silent=True)
    if not isinstance(body, dict):
        return None, study
    stored = len(body.get("00081199", {}).get("Value", []))
    if not study:
        urls = body.get("00081190", {}).get("Value", [])
        if urls and "/studies/" in urls[0]:
            candidate = urls[0].rsplit("/studies/", 1)[1].split("/", 1)[0]
            study = candidate if is_valid_uid(candidate) else ""
    return stored, study


def open_access_warning(settings: Settings) -> str | None:
    """A warning when anyone who reaches the HTTP port may read and delete everything."""
    if settings.auth.methods:
        return None
    host = settings.http.host
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if loopback and not settings.http.trusted_proxies:
        return None
    where = (
        f"on {host}, which is not a loopback address"
        if not loopback
        else "behind a proxy (http.trusted_proxies is set)"
    )
    return (
        f'!!! AUTHENTICATION IS OFF (auth.mode = "none") and DICOMweb listens {where}: '
        "anyone who can reach it may read, store and delete every study. Set auth.mode "
        'to "jwt" and/or "apikey" (see config/dicomweb-server.toml) or bind to 127.0.0.1.'
    )
