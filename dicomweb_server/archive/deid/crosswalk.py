"""The crosswalk: pseudonym -> original identity, readable only with the admin's key.

Each record is sealed with hybrid encryption: a fresh Fernet key encrypts the JSON
payload, and RSA-OAEP (SHA-256) under the configured *public* key encrypts that Fernet
key.  The archive can therefore write records but never read them; only whoever holds
the private key (an admin, offline) can, with :func:`reveal`.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import struct
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from sqlalchemy import insert, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from ..index import DeidCrosswalk

_OAEP = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def load_public_key(path: Path) -> rsa.RSAPublicKey:
    key = serialization.load_pem_public_key(path.read_bytes())
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError(f"deid.crosswalk_public_key {path} is not an RSA public key")
    return key


def seal(public_key: rsa.RSAPublicKey, payload: dict[str, Any]) -> str:
    fernet_key = Fernet.generate_key()
    wrapped = public_key.encrypt(fernet_key, _OAEP)
    token = Fernet(fernet_key).encrypt(json.dumps(payload, sort_keys=True).encode())
    return base64.b64encode(struct.pack(">H", len(wrapped)) + wrapped + token).decode()


def unseal(private_key: rsa.RSAPrivateKey, sealed: str) -> dict[str, Any]:
    raw = base64.b64decode(sealed)
    (size,) = struct.unpack(">H", raw[:2])
    fernet_key = private_key.decrypt(raw[2 : 2 + size], _OAEP)
    return json.loads(Fernet(fernet_key).decrypt(raw[2 + size :]))


def record(
    engine: Engine, public_key: rsa.RSAPublicKey, kind: str, pseudonym: str, payload: dict
) -> None:
    """Store one link unless this pseudonym has one already (it maps to one identity)."""
    with engine.begin() as connection:
        found = connection.scalar(
            select(DeidCrosswalk.id).where(
                DeidCrosswalk.kind == kind, DeidCrosswalk.pseudonym == pseudonym
            )
        )
    if found is not None:
        return
    try:
        with engine.begin() as connection:
            connection.execute(
                insert(DeidCrosswalk).values(
                    kind=kind,
                    pseudonym=pseudonym,
                    sealed=seal(public_key, payload),
                    created_at=dt.datetime.now(dt.UTC),
                )
            )
    except IntegrityError:
        pass  # another process recorded the same pseudonym at the same moment


def reveal(engine: Engine, private_key_pem: bytes, kind: str, pseudonym: str) -> dict | None:
    """The original identity behind ``pseudonym``, for an admin holding the private key."""
    key = serialization.load_pem_private_key(private_key_pem, password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("the crosswalk key must be an RSA private key")
    with engine.connect() as connection:
        sealed = connection.scalar(
            select(DeidCrosswalk.sealed).where(
                DeidCrosswalk.kind == kind, DeidCrosswalk.pseudonym == pseudonym
            )
        )
    return None if sealed is None else unseal(key, sealed)
