"""De-identification on ingest: PS3.15 Annex E, Basic Application Level Confidentiality
Profile and its options, with keyed pseudonyms, per-source profiles, an encrypted
crosswalk and a quarantine for instances that may carry burned-in text.

Part of the archive core: no Flask, Werkzeug or pynetdicom here.
"""

from .apply import deidentify
from .profile import STANDARD_EDITION, Action, Option, Profile
from .pseudonyms import Pseudonyms

__all__ = ["STANDARD_EDITION", "Action", "Option", "Profile", "Pseudonyms", "deidentify"]
