"""An identity provider for tests: an RSA key pair, its JWKS (file or local HTTP), tokens.

Tokens are signed with PyJWT exactly as an OpenID Connect provider would sign them, and
the server checks them against the JWKS published here; nothing of ours is replaced.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from dicomweb_server.archive import Archive
from dicomweb_server.config import Settings
from dicomweb_server.web.auth import hash_api_key, mint_api_key
from tests.conftest import WebServer, make_settings

ISSUER = "https://idp.test/realms/pacs"
AUDIENCE = "dicomweb"
KID = "test-key-1"


@dataclass
class IdentityProvider:
    """Signs tokens with its private key; ``jwks`` is what it publishes."""

    private_key: Any
    kid: str = KID
    algorithm: str = "RS256"

    @property
    def jwks(self) -> dict[str, Any]:
        jwk = json.loads(
            jwt.algorithms.get_default_algorithms()[self.algorithm].to_jwk(
                self.private_key.public_key()
            )
        )
        jwk.update(kid=self.kid, use="sig", alg=self.algorithm)
        return {"keys": [jwk]}

    def token(self, roles: list[str] | None = None, **claims: Any) -> str:
        """A token for ``alice`` valid for 5 minutes; ``claims`` override any field."""
        now = int(time.time())
        payload: dict[str, Any] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": "alice",
            "iat": now,
            "exp": now + 300,
            "roles": roles if roles is not None else ["read"],
            **claims,
        }
        payload = {k: v for k, v in payload.items() if v is not None}
        return jwt.encode(payload, self.private_key, self.algorithm, headers={"kid": self.kid})


def rsa_provider(kid: str = KID) -> IdentityProvider:
    return IdentityProvider(rsa.generate_private_key(public_exponent=65537, key_size=2048), kid)


def ec_provider(kid: str = "ec-key") -> IdentityProvider:
    return IdentityProvider(ec.generate_private_key(ec.SECP256R1()), kid, "ES256")


@pytest.fixture(scope="session")
def idp() -> IdentityProvider:
    """The trusted identity provider (2048-bit RSA keys take a while: one per session)."""
    return rsa_provider()


@pytest.fixture(scope="session")
def rogue_idp() -> IdentityProvider:
    """A provider the server does not trust, using the same key id."""
    return rsa_provider()


@dataclass
class Keys:
    """API keys configured on the server, by role."""

    reader: str
    writer: str
    deleter: str
    admin: str


@pytest.fixture(scope="session")
def keys() -> Keys:
    return Keys(mint_api_key(), mint_api_key(), mint_api_key(), mint_api_key())


def auth_section(jwks_file: Path, keys: Keys, **extra: Any) -> dict[str, Any]:
    return {
        "mode": "jwt,apikey",
        "jwks_file": jwks_file,
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "leeway": 5,
        "api_keys": {
            "reader": {"hash": hash_api_key(keys.reader), "roles": ["read"]},
            "writer": {"hash": hash_api_key(keys.writer), "roles": ["read", "write"]},
            "deleter": {"hash": hash_api_key(keys.deleter), "roles": ["read", "delete"]},
            "auditor": {"hash": hash_api_key(keys.admin), "roles": ["admin"]},
        },
        **extra,
    }


def write_jwks(path: Path, provider: IdentityProvider) -> Path:
    path.write_text(json.dumps(provider.jwks))
    return path


@pytest.fixture
def auth_db() -> str:
    """The index under the secured server: SQLite, since authentication does not touch
    the index; test modules about the audit trail override it with ``database_url``."""
    return ""


@pytest.fixture
def auth_settings(tmp_path: Path, auth_db: str, idp: IdentityProvider, keys: Keys) -> Settings:
    jwks = write_jwks(tmp_path / "jwks.json", idp)
    return make_settings(tmp_path / "d", auth_db, auth=auth_section(jwks, keys))


def start(settings: Settings) -> tuple[WebServer, Archive]:
    archive = Archive(settings)
    return WebServer(settings, archive), archive


def stop(server: WebServer, archive: Archive) -> None:
    server.stop()
    writer = server.app.extensions.get("audit")
    if writer is not None:
        writer.close()
    archive.close()


@pytest.fixture
def secured(auth_settings: Settings) -> Iterator[WebServer]:
    """A DICOMweb server requiring JWTs or API keys."""
    server, archive = start(auth_settings)
    yield server
    stop(server, archive)


class JwksServer:
    """Publishes a JWKS over HTTP on 127.0.0.1, counting the fetches."""

    def __init__(self, jwks: dict[str, Any]) -> None:
        self.jwks = jwks
        self.fetches = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.fetches += 1
                body = json.dumps(outer.jwks).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/certs"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)
