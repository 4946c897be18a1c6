"""The ingest hook: choose a profile by source, de-identify, quarantine, record the link.

Ingest calls :meth:`Deidentifier.apply` once, right after the instance was parsed; the
original file is replaced by its de-identified copy before anything is stored or indexed,
so the original identity never reaches the archive's storage or index.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

from sqlalchemy.engine import Engine

from ...config import DeidSettings
from ..parse import ParsedInstance, parse_instance
from ..storage import Received, Storage
from . import crosswalk, pixels, quarantine
from .apply import Outcome, deidentify
from .pixels import Signature
from .profile import CompoundPolicy, Option, Profile
from .pseudonyms import Pseudonyms
from .rewrite import rewrite

if TYPE_CHECKING:
    from ..ingest import Origin

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Applied:
    received: Received
    parsed: ParsedInstance
    quarantined: bool = False


def build_profiles(settings: DeidSettings) -> dict[str, Profile]:
    """The configured profiles; unknown options or profile names fail at start-up."""
    compound = CompoundPolicy(settings.compound_actions)
    profiles = {}
    for name, section in settings.profiles.items():
        try:
            options = frozenset(Option(o) for o in section.options)
        except ValueError as exc:
            raise ValueError(f"deid.profiles.{name}.options: {exc}") from exc
        safe = set()
        for entry in section.safe_private:
            creator, group, element = (p.strip() for p in entry.rsplit(",", 2))
            safe.add((creator, int(group, 16), int(element[-2:], 16)))
        dates = {Option.RETAIN_LONGITUDINAL_FULL_DATES, Option.RETAIN_LONGITUDINAL_MODIFIED_DATES}
        if dates <= options:
            raise ValueError(f"deid.profiles.{name}: choose full or modified dates, not both")
        try:
            signatures = tuple(
                Signature(
                    tuple((k, str(v)) for k, v in entry.match.items()),
                    tuple(tuple(r) for r in entry.regions),  # type: ignore[misc]
                )
                for entry in section.clean_pixel_data
            )
        except ValueError as exc:
            raise ValueError(f"deid.profiles.{name}.clean_pixel_data: {exc}") from exc
        profiles[name] = Profile(name, options, compound, frozenset(safe), signatures)
    for source, name in [("default_profile", settings.default_profile), *settings.sources.items()]:
        if name and name not in profiles:
            raise ValueError(f"deid: {source} names profile {name!r}, not in [deid.profiles]")
    return profiles


class Deidentifier:
    """De-identifies what ingest receives, per source; one per process."""

    def __init__(
        self,
        settings: DeidSettings,
        storage: Storage,
        writer: Engine,
        data_dir: Path,
        bulk_data_threshold: int,
    ) -> None:
        self.settings = settings
        self.storage = storage
        self.writer = writer
        self.data_dir = data_dir
        self.bulk_data_threshold = bulk_data_threshold
        self.profiles = build_profiles(settings)
        self.pseudonyms = Pseudonyms(
            settings.secret,
            uid_root=settings.uid_root,
            id_prefix=settings.id_prefix,
            max_date_shift=settings.max_date_shift,
        )
        self.public_key = None
        if settings.crosswalk == "encrypted":
            if settings.crosswalk_public_key is None:
                raise ValueError('deid.crosswalk = "encrypted" needs deid.crosswalk_public_key')
            self.public_key = crosswalk.load_public_key(settings.crosswalk_public_key)
        elif settings.crosswalk != "none":
            raise ValueError(
                f'deid.crosswalk must be "none" or "encrypted", not {settings.crosswalk!r}'
            )

    def profile_for(self, origin: Origin) -> Profile | None:
        """The profile for ``origin``: its STOW-RS source name, else its calling AE title,
        else the default; ``None`` stores the instance unchanged."""
        if origin.protocol == quarantine.DEIDENTIFIED:
            return None
        for key in (getattr(origin, "source", ""), origin.ae_title):
            if key and key in self.settings.sources:
                name = self.settings.sources[key]
                return self.profiles[name] if name else None
        name = self.settings.default_profile
        return self.profiles[name] if name else None

    def apply(
        self,
        received: Received,
        parsed: ParsedInstance,
        origin: Origin,
        profile: Profile | None = None,
    ) -> Applied:
        """De-identify one received instance; the original temporary file is discarded."""
        profile = profile or self.profile_for(origin)
        if profile is None:
            return Applied(received, parsed)
        reason = quarantine.reason_to_hold(parsed.dataset, self.settings)
        cleaner = None
        if reason is not None and profile.clean_pixel_data:
            # Clean Pixel Data Option (PS3.15 E.3.1), judged on the original header.
            cleaner = pixels.plan(
                profile.clean_pixel_data,
                parsed.dataset,
                parsed.pixels,
                parsed.transfer_syntax_uid,
            )
        outcome: list[Outcome] = []

        def transform(ds):  # type: ignore[no-untyped-def]
            outcome.append(deidentify(ds, profile, self.pseudonyms, cleaner is not None))

        new = cast(
            Received,
            rewrite(
                received.ready(),
                parsed.dataset,
                parsed.pixels,
                parsed.transfer_syntax_uid,
                transform,
                self.storage.receive,
                cleaner,
            ),
        )
        try:
            new_parsed = parse_instance(new, self.bulk_data_threshold)
            if self.public_key is not None:
                self._record(outcome[0])
        except BaseException:
            self.storage.discard(new)
            raise
        self.storage.discard(received)
        # Coercion of data elements (PS3.4 B.2.3 Warning B000; PS3.18 WarningReason B000):
        # the sender should know its identifiers were replaced.
        new_parsed.coerced = True
        new_parsed.warnings.append(
            f"de-identified on ingest (PS3.15 Annex E, profile {profile.name}): identifying "
            f"attributes and UIDs were replaced; stored as {new_parsed.sop_uid}"
        )
        if cleaner is not None:
            new_parsed.warnings.append(
                f"burned-in text regions blanked (Clean Pixel Data Option): {reason}"
            )
        elif reason is not None:
            quarantine.hold(self.writer, self.data_dir, new, new_parsed, origin, reason)
            log.info("quarantined %s: %s", new_parsed.sop_uid, reason)
            return Applied(new, new_parsed, quarantined=True)
        return Applied(new, new_parsed)

    def _record(self, outcome: Outcome) -> None:
        if self.public_key is None:
            return
        identity = outcome.identity
        crosswalk.record(
            self.writer,
            self.public_key,
            "patient",
            outcome.patient_id,
            {
                "PatientID": identity.patient_id,
                "IssuerOfPatientID": identity.issuer,
                "PatientName": identity.patient_name,
            },
        )
        crosswalk.record(
            self.writer,
            self.public_key,
            "study",
            outcome.study_uid,
            {"StudyInstanceUID": identity.study_uid},
        )
