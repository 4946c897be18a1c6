"""Authentication and authorization over HTTP: JWTs (JWKS file and URL), API keys, roles."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from pydantic import ValidationError
from sqlalchemy import select

from dicomweb_server.archive.index import Instance
from dicomweb_server.config import load_settings
from dicomweb_server.web import create_app
from dicomweb_server.web.auth import hash_api_key
from tests.auth_fixtures import (
    AUDIENCE,
    ISSUER,
    IdentityProvider,
    JwksServer,
    Keys,
    auth_section,
    ec_provider,
    start,
    stop,
    write_jwks,
)
from tests.conftest import WebServer, make_settings
from tests.factory import make_series, to_bytes

BOUNDARY = "auth-test-boundary"


def stow_body(*datasets) -> bytes:  # type: ignore[no-untyped-def]
    out = bytearray()
    for ds in datasets:
        out += f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        out += to_bytes(ds) + b"\r\n"
    return bytes(out + f"--{BOUNDARY}--\r\n".encode())


STOW_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def get(web: WebServer, path: str, **headers: str) -> requests.Response:
    return requests.get(web.url + path, headers=headers, timeout=30)


def stow(web: WebServer, datasets: list, **headers: str) -> requests.Response:  # type: ignore[type-arg]
    return requests.post(
        web.url + "/studies",
        data=stow_body(*datasets),
        headers={"Content-Type": STOW_TYPE, **headers},
        timeout=30,
    )


def challenge_of(response: requests.Response) -> str:
    return response.headers.get("WWW-Authenticate", "")


# -- tokens ---------------------------------------------------------------------------


def test_valid_token_may_search(secured: WebServer, idp: IdentityProvider) -> None:
    response = get(secured, "/studies", **bearer(idp.token(["read"])))
    assert response.status_code in (200, 204), response.text


def test_probes_need_no_credentials(secured: WebServer) -> None:
    assert requests.get(secured.root + "/health", timeout=10).status_code == 200
    assert requests.get(secured.root + "/ready", timeout=10).status_code == 200


def test_no_credentials_get_a_bare_bearer_challenge(secured: WebServer) -> None:
    response = get(secured, "/studies")
    assert response.status_code == 401
    # RFC 6750 3.1: no error code when the request carried no credentials.
    assert challenge_of(response) == 'Bearer realm="dicomweb"'
    assert response.json()["status"] == 401


def _hs256_with_public_key(idp: IdentityProvider) -> str:
    """Algorithm confusion: the issuer's public key used as an HMAC secret."""
    pem = idp.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = {"alg": "HS256", "kid": idp.kid, "typ": "JWT"}
    payload = {"iss": ISSUER, "aud": AUDIENCE, "sub": "x", "exp": int(time.time()) + 60}

    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    signing_input = b64(json.dumps(header).encode()) + b"." + b64(json.dumps(payload).encode())
    signature = hmac.new(pem, signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + b64(signature)).decode()


@pytest.mark.parametrize(
    "make_token",
    [
        pytest.param(lambda p, r: p.token(["read"], exp=int(time.time()) - 60), id="expired"),
        pytest.param(lambda p, r: p.token(["read"], iss="https://evil.test"), id="wrong-issuer"),
        pytest.param(lambda p, r: p.token(["read"], aud="another-app"), id="wrong-audience"),
        pytest.param(lambda p, r: p.token(["read"], exp=None), id="no-expiry"),
        pytest.param(lambda p, r: r.token(["read"]), id="bad-signature"),
        pytest.param(
            lambda p, r: jwt.encode(
                {
                    "iss": ISSUER,
                    "aud": AUDIENCE,
                    "sub": "x",
                    "roles": ["admin"],
                    "exp": int(time.time()) + 60,
                },
                None,
                algorithm="none",
            ),
            id="alg-none",
        ),
        pytest.param(lambda p, r: _hs256_with_public_key(p), id="hs256-confusion"),
        pytest.param(lambda p, r: p.token(["read"])[:-6] + "AAAAAA", id="tampered"),
        pytest.param(lambda p, r: "not.a.jwt", id="garbage"),
    ],
)
def test_bad_tokens_are_refused_with_invalid_token(
    secured: WebServer, idp: IdentityProvider, rogue_idp: IdentityProvider, make_token
) -> None:  # type: ignore[no-untyped-def]
    response = get(secured, "/studies", **bearer(make_token(idp, rogue_idp)))
    assert response.status_code == 401, response.text
    assert challenge_of(response).startswith('Bearer realm="dicomweb", error="invalid_token"')


def test_token_within_leeway_is_accepted(secured: WebServer, idp: IdentityProvider) -> None:
    # Expired 2 s ago, leeway 5 s (auth_section): clocks drift, tokens still pass.
    response = get(secured, "/studies", **bearer(idp.token(["read"], exp=int(time.time()) - 2)))
    assert response.status_code in (200, 204)


def test_token_without_the_role_is_forbidden(secured: WebServer, idp: IdentityProvider) -> None:
    response = get(secured, "/studies", **bearer(idp.token(["write"])))
    assert response.status_code == 403
    assert 'error="insufficient_scope"' in challenge_of(response)
    assert "read" in response.json()["error"]
    response = stow(secured, make_series(1), **bearer(idp.token(["read"])))
    assert response.status_code == 403


def test_admin_role_implies_the_others(secured: WebServer, idp: IdentityProvider) -> None:
    response = stow(secured, make_series(1), **bearer(idp.token(["admin"])))
    assert response.status_code == 200, response.text


def test_roles_from_a_nested_claim_through_the_map(
    tmp_path: Path, idp: IdentityProvider, keys: Keys
) -> None:
    section = auth_section(
        write_jwks(tmp_path / "jwks.json", idp),
        keys,
        roles_claim="realm_access.roles",
        role_map={"pacs-reader": ["read"], "pacs-boss": ["admin"]},
        user_claim="preferred_username",
    )
    server, archive = start(make_settings(tmp_path / "d", "", auth=section))
    try:
        nested = idp.token(None, realm_access={"roles": ["pacs-reader", "unrelated"]})
        assert get(server, "/studies", **bearer(nested)).status_code in (200, 204)
        # A top-level "roles" claim is not the configured one: no role, 403.
        assert get(server, "/studies", **bearer(idp.token(["read"]))).status_code == 403
        boss = idp.token(None, realm_access={"roles": ["pacs-boss"]}, preferred_username="bob")
        series = make_series(1)
        assert stow(server, series, **bearer(boss)).status_code == 200
        with archive.reader() as session:
            origin = session.scalar(
                select(Instance.origin_user).where(Instance.sop_uid == series[0].SOPInstanceUID)
            )
        assert origin == "bob"  # user_claim names the stored instances' origin
    finally:
        stop(server, archive)


def test_es256_token_from_a_jwks_with_two_keys(
    tmp_path: Path, idp: IdentityProvider, keys: Keys
) -> None:
    ec = ec_provider()
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": idp.jwks["keys"] + ec.jwks["keys"]}))
    server, archive = start(make_settings(tmp_path / "d", "", auth=auth_section(jwks, keys)))
    try:
        assert get(server, "/studies", **bearer(ec.token(["read"]))).status_code in (200, 204)
        assert get(server, "/studies", **bearer(idp.token(["read"]))).status_code in (200, 204)
    finally:
        stop(server, archive)


def test_jwks_file_is_reread_when_keys_rotate(
    secured: WebServer,
    auth_settings,
    rogue_idp: IdentityProvider,  # type: ignore[no-untyped-def]
) -> None:
    new = IdentityProvider(rogue_idp.private_key, kid="rotated")
    assert get(secured, "/studies", **bearer(new.token(["read"]))).status_code == 401
    path = auth_settings.auth.jwks_file
    time.sleep(0.01)
    write_jwks(path, new)
    assert get(secured, "/studies", **bearer(new.token(["read"]))).status_code in (200, 204)


# -- JWKS over HTTP -------------------------------------------------------------------


def test_jwks_url_is_fetched_once_and_cached(
    tmp_path: Path, idp: IdentityProvider, rogue_idp: IdentityProvider
) -> None:
    jwks = JwksServer(idp.jwks)
    section = {
        "mode": "jwt",
        "jwks_url": jwks.url,
        "issuer": ISSUER,
        "audience": AUDIENCE,
    }
    server, archive = start(make_settings(tmp_path / "d", "", auth=section))
    try:
        for _ in range(3):
            response = get(server, "/studies", **bearer(idp.token(["read"])))
            assert response.status_code in (200, 204), response.text
        assert jwks.fetches == 1
        stranger = IdentityProvider(rogue_idp.private_key, kid="unknown-kid")
        response = get(server, "/studies", **bearer(stranger.token(["read"])))
        assert response.status_code == 401
        assert 'error="invalid_token"' in challenge_of(response)
    finally:
        stop(server, archive)
        jwks.stop()


def test_unreachable_jwks_url_is_a_503(tmp_path: Path, idp: IdentityProvider) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    section = {
        "mode": "jwt",
        "jwks_url": f"http://127.0.0.1:{port}/certs",
        "issuer": ISSUER,
        "audience": AUDIENCE,
    }
    server, archive = start(make_settings(tmp_path / "d", "", auth=section))
    try:
        response = get(server, "/studies", **bearer(idp.token(["read"])))
        assert response.status_code == 503
        assert "jwks_url" in response.json()["error"]
    finally:
        stop(server, archive)


# -- API keys -------------------------------------------------------------------------


def test_read_key_may_search_but_not_store(secured: WebServer, keys: Keys) -> None:
    assert get(secured, "/studies", **bearer(keys.reader)).status_code in (200, 204)
    assert get(secured, "/studies", **{"X-API-Key": keys.reader}).status_code in (200, 204)
    response = stow(secured, make_series(1), **{"X-API-Key": keys.reader})
    assert response.status_code == 403
    assert "apikey:reader" in response.json()["error"]


def test_write_key_may_store_and_is_the_origin(secured: WebServer, keys: Keys) -> None:
    series = make_series(2)
    response = stow(secured, series, **bearer(keys.writer))
    assert response.status_code == 200, response.text
    archive = secured.app.extensions["archive"]
    with archive.reader() as session:
        users = set(
            session.scalars(
                select(Instance.origin_user).where(
                    Instance.sop_uid.in_([ds.SOPInstanceUID for ds in series])
                )
            )
        )
    assert users == {"apikey:writer"}


def test_unknown_key_is_refused(secured: WebServer) -> None:
    response = get(secured, "/studies", **{"X-API-Key": "dwk_" + "x" * 43})
    assert response.status_code == 401
    assert 'error="invalid_token"' in challenge_of(response)


def test_delete_needs_the_delete_role(secured: WebServer, keys: Keys) -> None:
    series = make_series(1)
    assert stow(secured, series, **bearer(keys.writer)).status_code == 200
    path = f"{secured.url}/studies/{series[0].StudyInstanceUID}"
    for key in (keys.reader, keys.writer):
        assert requests.delete(path, headers=bearer(key), timeout=30).status_code == 403
    assert requests.delete(path, timeout=30).status_code == 401
    assert requests.delete(path, headers=bearer(keys.deleter), timeout=30).status_code == 204
    assert (
        get(
            secured, f"/studies/{series[0].StudyInstanceUID}/metadata", **bearer(keys.reader)
        ).status_code
        == 404
    )


def test_unknown_paths_need_credentials_too(secured: WebServer, keys: Keys) -> None:
    # No probing of what exists without credentials.
    assert get(secured, "/no-such-resource").status_code == 401
    assert get(secured, "/no-such-resource", **bearer(keys.reader)).status_code == 404


# -- CORS and the admin endpoint --------------------------------------------------------


def test_cors_preflight_needs_no_credentials(secured: WebServer) -> None:
    response = requests.options(
        secured.url + "/studies",
        headers={
            "Origin": "https://viewer.example.org",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        },
        timeout=10,
    )
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] in ("*", "https://viewer.example.org")
    # A refused request still carries CORS headers, so the viewer can read the 401.
    refused = get(secured, "/studies", Origin="https://viewer.example.org")
    assert refused.status_code == 401
    assert "Access-Control-Allow-Origin" in refused.headers
    assert "WWW-Authenticate" in refused.headers.get("Access-Control-Expose-Headers", "")


def test_audit_endpoint_is_for_admins_only(secured: WebServer, keys: Keys, idp) -> None:  # type: ignore[no-untyped-def]
    url = secured.root + "/admin/audit"
    assert requests.get(url, timeout=10).status_code == 401
    for key in (keys.reader, keys.writer, keys.deleter):
        assert requests.get(url, headers=bearer(key), timeout=10).status_code == 403
    assert requests.get(url, headers=bearer(keys.admin), timeout=10).status_code == 200
    token = idp.token(["admin"])
    assert requests.get(url, headers=bearer(token), timeout=10).status_code == 200


# -- configuration and the open-access warning ------------------------------------------


@pytest.mark.parametrize(
    "section, message",
    [
        ({"mode": "jwt"}, "jwks_url or jwks_file, issuer, audience is not set"),
        ({"mode": "kerberos"}, "unknown"),
        ({"algorithms": ["HS256"]}, "not allowed"),
        ({"algorithms": ["none"]}, "not allowed"),
        ({"api_keys": {"k": {"hash": "plain-text-key", "roles": ["read"]}}}, "sha256"),
    ],
)
def test_unsafe_settings_are_refused(section: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        load_settings(None, auth=section)


def test_mode_accepts_combinations_in_any_order() -> None:
    section = {"jwks_url": "http://x", "issuer": "i", "audience": "a"}
    assert load_settings(None, auth={"mode": "apikey+jwt", **section}).auth.mode == "jwt,apikey"
    assert load_settings(None, auth={"mode": "NONE"}).auth.methods == frozenset()


def test_open_access_off_loopback_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from dicomweb_server.archive import Archive

    loopback = make_settings(tmp_path / "a", "")
    exposed = make_settings(tmp_path / "b", "", http={"host": "0.0.0.0"})
    for settings, warned in ((loopback, False), (exposed, True)):
        caplog.clear()
        archive = Archive(settings)
        with caplog.at_level(logging.WARNING, logger="dicomweb_server.web.auth"):
            app = create_app(settings, archive)
        app.extensions["audit"].close()
        archive.close()
        assert any("AUTHENTICATION IS OFF" in r.message for r in caplog.records) is warned


def test_without_authentication_everything_is_open(web: WebServer) -> None:
    # The embedded default (loopback, auth.mode = "none") stays usable without setup.
    assert get(web, "/studies").status_code in (200, 204)
    assert requests.get(web.root + "/admin/audit", timeout=10).status_code == 200


def test_apikey_command_prints_a_key_and_its_hash() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dicomweb_server", "apikey", "ingest-bot", "--role", "write"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    key = result.stdout.split("key:", 1)[1].split()[0]
    assert key.startswith("dwk_") and len(key) > 40
    assert f'hash = "{hash_api_key(key)}"' in result.stdout
    assert 'roles = ["write"]' in result.stdout
    # The printed line is valid configuration.
    entry = tomllib.loads(result.stdout.strip().splitlines()[-1])
    assert load_settings(None, auth={"api_keys": entry}).auth.api_keys["ingest-bot"].roles
