"""Keyed pseudonyms: the same input and secret give the same output in every process.

Everything is derived with HMAC-SHA256 under the configured secret, with a distinct label
per kind of value, so a study arriving in parts, over different associations or after a
restart, is still one study under one pseudonymous patient, and nobody without the secret
can recompute or reverse a pseudonym from a guessed identity.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac

#: Longest UID, PS3.5 9.1.
_UID_MAX = 64


class Pseudonyms:
    """Derives UIDs, patient identifiers and per-patient date offsets from one secret.

    Parameters
    ----------
    secret
        The key; changing it changes every pseudonym, so it must be kept stable.
    uid_root
        Root of the new UIDs.  ``"2.25"`` gives PS3.5 B.2 UUID-derived UIDs
        (``2.25.`` and the decimal value of 128 bits); any other root is followed by as
        many decimal digits of the HMAC as fit in 64 characters.
    id_prefix
        Prefix of pseudonymous Patient IDs and names.
    max_date_shift
        Dates move back by 1 to ``max_date_shift`` days, the same for all of a patient's
        instances (PS3.15 E.3.6 Modified Dates).
    """

    def __init__(
        self,
        secret: str,
        *,
        uid_root: str = "2.25",
        id_prefix: str = "ANON-",
        max_date_shift: int = 3650,
    ) -> None:
        if not secret:
            raise ValueError(
                "deid.secret is empty: set a long random secret (kept stable) to de-identify"
            )
        self._key = secret.encode()
        self.uid_root = uid_root.rstrip(".")
        self.id_prefix = id_prefix
        self.max_date_shift = max(max_date_shift, 1)
        if len(self.uid_root) > _UID_MAX - 20:
            raise ValueError(f"deid.uid_root {uid_root!r} leaves too few digits for unique UIDs")

    def _digest(self, label: str, value: str) -> bytes:
        return hmac.new(self._key, f"{label}\0{value}".encode(), hashlib.sha256).digest()

    def uid(self, original: str) -> str:
        """The replacement of ``original``; every occurrence maps to the same UID."""
        number = int.from_bytes(self._digest("uid", original.strip())[:16], "big")
        if self.uid_root == "2.25":
            return f"2.25.{number}"
        room = _UID_MAX - len(self.uid_root) - 1
        digits = str(int.from_bytes(self._digest("uid", original.strip()), "big"))[:room]
        return f"{self.uid_root}.{digits.lstrip('0') or '0'}"

    def patient_id(self, patient_id: str, issuer: str = "") -> str:
        """Pseudonymous Patient ID (at most 64 characters, VR LO)."""
        token = self._digest("patient", f"{issuer}\0{patient_id.strip()}").hex()[:16].upper()
        return f"{self.id_prefix}{token}"[:64]

    def date_offset(self, patient_id: str, issuer: str = "") -> dt.timedelta:
        """How far this patient's dates move: back by 1 to ``max_date_shift`` days."""
        digest = self._digest("date", f"{issuer}\0{patient_id.strip()}")
        return -dt.timedelta(days=1 + int.from_bytes(digest[:8], "big") % self.max_date_shift)
