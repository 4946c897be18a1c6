"""Apply a :class:`~.profile.Profile` to a pydicom header (PS3.15 E.1, E.3).

Works on the header that ingest parsed (Pixel Data is never loaded): every attribute is
looked up in Table E.1-1 and acted on; sequences are walked recursively, so an identifier
nested in a referenced or content item is treated like one at the top level.  What was
done is then recorded in the dataset (PS3.15 E.1.1: Patient Identity Removed,
De-identification Method and its Code Sequence, CID 7050).
"""

from __future__ import annotations

import datetime as dt
import enum
import re
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataelem import empty_value_for_VR
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from .pixels import CLEAN_PIXEL_DATA_CODE
from .profile import BASIC_PROFILE_CODE, STANDARD_EDITION, Action, Option, Profile
from .pseudonyms import Pseudonyms

_PATIENT_NAME = 0x00100010
_PATIENT_ID = 0x00100020
_TEXT_VRS = {"LO", "LT", "SH", "ST", "UT", "UC", "PN"}
_FREE_TEXT_VRS = {"LT", "ST", "UT", "UC"}
_BINARY_VRS = {"OB", "OW", "OF", "OD", "OL", "OV", "UN"}
_DUMMY_TEXT = "ANONYMIZED"
_DUMMIES: dict[str, Any] = {
    "AS": "000Y",
    "DA": "19000101",
    "DT": "19000101000000",
    "TM": "000000",
    "DS": "0",
    "IS": "0",
    "OB": b"\0\0",
    "OW": b"\0\0",
    "UN": b"\0\0",
    "US": 0,
    "SS": 0,
    "UL": 0,
    "SL": 0,
    "UV": 0,
    "SV": 0,
    "FL": 0.0,
    "FD": 0.0,
}


class _Mode(enum.Enum):
    NORMAL = "normal"
    DUMMY = "dummy"  # inside a sequence replaced by dummy content (D on SQ)
    CLEAN = "clean"  # inside a sequence being cleaned (C on SQ)


@dataclass
class Identity:
    """The original identity of an instance, read before anything is changed."""

    patient_id: str
    issuer: str
    patient_name: str
    study_uid: str
    #: Strings that must not survive in cleaned text (names, IDs, birth date...).
    secrets: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, ds: Dataset) -> Identity:
        def text(keyword: str) -> str:
            value = ds.get(keyword)
            return "" if value is None else str(value).strip()

        name = text("PatientName")
        secrets = [text(k) for k in _IDENTIFYING_KEYWORDS]
        secrets += [part for part in re.split(r"[\^=]", name) if len(part.strip()) > 1]
        secrets = sorted({s for s in secrets if len(s) > 1}, key=len, reverse=True)
        return cls(
            text("PatientID"), text("IssuerOfPatientID"), name, text("StudyInstanceUID"), secrets
        )


_IDENTIFYING_KEYWORDS = (
    "PatientName",
    "PatientID",
    "OtherPatientIDs",
    "PatientBirthDate",
    "AccessionNumber",
    "InstitutionName",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "OperatorsName",
    "PatientAddress",
    "PatientTelephoneNumbers",
)


@dataclass
class Outcome:
    """What :func:`deidentify` did, for the crosswalk and the logs."""

    identity: Identity
    patient_id: str
    patient_name: str
    study_uid: str
    date_offset: dt.timedelta | None


def deidentify(
    ds: Dataset, profile: Profile, pseudonyms: Pseudonyms, pixels_cleaned: bool = False
) -> Outcome:
    """De-identify ``ds`` in place according to ``profile``.

    Pixel Data must not be in ``ds`` (ingest reads headers only); the caller copies it,
    or blanks regions of it and says so with ``pixels_cleaned`` (Clean Pixel Data Option).
    """
    identity = Identity.of(ds)
    offset = None
    if profile.shifts_dates:
        offset = pseudonyms.date_offset(identity.patient_id, identity.issuer)
    walker = _Walker(profile, pseudonyms, identity, offset, str(ds.get("SOPClassUID", "")))
    walker.walk(ds, _Mode.NORMAL, top=True)
    pseudonym = pseudonyms.patient_id(identity.patient_id, identity.issuer)
    if profile.action(_PATIENT_ID) is not Action.KEEP:
        ds.PatientID = pseudonym
    if profile.action(_PATIENT_NAME) is not Action.KEEP:
        ds.PatientName = pseudonym
    record_method(ds, profile, pixels_cleaned)
    return Outcome(
        identity,
        pseudonym,
        str(ds.get("PatientName", "")),
        str(ds.get("StudyInstanceUID", "")),
        offset,
    )


def record_method(ds: Dataset, profile: Profile, pixels_cleaned: bool = False) -> None:
    """Say what was done (PS3.15 E.1.1 and E.3.6; codes from CID 7050).

    With ``pixels_cleaned`` (PS3.15 E.3.1), the Clean Pixel Data Option is recorded and
    Burned In Annotation (0028,0301) becomes NO: the known regions of text were blanked.
    """
    ds.PatientIdentityRemoved = "YES"
    codes = sorted(
        [o.code for o in profile.options] + ([CLEAN_PIXEL_DATA_CODE] if pixels_cleaned else [])
    )
    ds.DeidentificationMethod = [
        f"DICOM PS3.15 {STANDARD_EDITION} Annex E {BASIC_PROFILE_CODE[1]}"[:64]
    ] + [meaning[:64] for _value, meaning in codes]
    if pixels_cleaned:
        ds.BurnedInAnnotation = "NO"
    items = []
    for value, meaning in [BASIC_PROFILE_CODE, *codes]:
        item = Dataset()
        item.CodeValue = value
        item.CodingSchemeDesignator = "DCM"
        item.CodeMeaning = meaning
        items.append(item)
    ds.DeidentificationMethodCodeSequence = items
    if profile.shifts_dates:
        ds.LongitudinalTemporalInformationModified = "MODIFIED"
    elif Option.RETAIN_LONGITUDINAL_FULL_DATES in profile.options:
        ds.LongitudinalTemporalInformationModified = "UNMODIFIED"
    else:
        ds.LongitudinalTemporalInformationModified = "REMOVED"


class _Walker:
    def __init__(
        self,
        profile: Profile,
        pseudonyms: Pseudonyms,
        identity: Identity,
        offset: dt.timedelta | None,
        sop_class: str = "",
    ) -> None:
        self.profile = profile
        self.sop_class = sop_class  # its IOD resolves compound actions (PS3.15 E.3.1)
        self.pseudonyms = pseudonyms
        self.identity = identity
        self.offset = offset

    def walk(self, ds: Dataset, mode: _Mode, top: bool = False) -> None:
        """Act on every attribute of ``ds``; ``top`` for the instance itself, whose
        attributes' IOD types are known (those of nested items are not)."""
        sop_class = self.sop_class if top else None
        kept_private: set[tuple[int, int]] = set()  # (group, block) of kept private values
        private_creators: list[int] = []
        for tag in list(ds.keys()):
            group, element = tag.group, tag.element
            if element == 0:  # Group Length: retired, and wrong once values change
                del ds[tag]
                continue
            if group & 1:
                if 0x10 <= element <= 0xFF:
                    private_creators.append(int(tag))
                elif self._keep_private(ds, group, element):
                    kept_private.add((group, element >> 8))
                    self._act(ds, int(tag), Action.KEEP, mode)
                else:
                    del ds[tag]
                continue
            action = self.profile.action(int(tag), sop_class)
            self._act(ds, int(tag), action, mode)
        for tag in private_creators:  # a creator stays only while a value of its block does
            if (tag >> 16, tag & 0xFF) not in kept_private:
                del ds[tag]

    def _keep_private(self, ds: Dataset, group: int, element: int) -> bool:
        if self.profile.action((group << 16) | element) is not Action.CLEAN:
            return False  # Retain Safe Private not chosen: X (PS3.15 E.3.10)
        if element < 0x1000:
            return False  # (gggg,0001-000F) and reserved ranges: no creator, not safe
        creator = ds.get((group << 16) | (element >> 8))
        if creator is None or creator.value is None:
            return False
        name = (
            creator.value.decode("latin-1") if isinstance(creator.value, bytes) else creator.value
        )
        vr = ds[(group << 16) | element].VR
        return self.profile.keeps_private(str(name).strip(), group, element & 0xFF, vr)

    def _act(self, ds: Dataset, tag: int, action: Action | None, mode: _Mode) -> None:
        if action is Action.REMOVE:
            del ds[tag]
            return
        elem = ds[tag]
        vr = elem.VR
        if action is Action.CLEAN and vr in _BINARY_VRS:
            # Overlay and curve bitmaps (Clean Graphics, PS3.15 E.3.3) cannot be cleaned
            # of burned-in text without looking at them: removed, never kept unchecked.
            del ds[tag]
            return
        if vr == "SQ":
            self._sequence(ds, tag, action, mode)
            return
        if action is None or action is Action.KEEP:
            if mode is _Mode.DUMMY and vr in _FREE_TEXT_VRS and elem.value:
                elem.value = _DUMMY_TEXT
            elif mode is _Mode.CLEAN and vr in _TEXT_VRS:
                elem.value = self._scrub(elem.value)
            return
        if action is Action.ZERO:
            elem.value = empty_value_for_VR(vr)
        elif action is Action.DUMMY:
            elem.value = self._dummy(vr, elem.value)
        elif action is Action.UID:
            elem.value = self._map(elem.value, self.pseudonyms.uid)
        elif action is Action.CLEAN:
            elem.value = self._clean(vr, elem.value)
        # Action.REFERENCES only applies to sequences.

    def _sequence(self, ds: Dataset, tag: int, action: Action | None, mode: _Mode) -> None:
        items: Sequence = ds[tag].value
        if action is Action.ZERO:
            ds[tag].value = []
            return
        inner = mode
        if action is Action.DUMMY:
            inner = _Mode.DUMMY
        elif action is Action.CLEAN:
            inner = _Mode.CLEAN
        for item in items:
            self.walk(item, inner)

    def _dummy(self, vr: str, value: Any) -> Any:
        if vr == "UI":
            return self._map(value, self.pseudonyms.uid)
        return _DUMMIES.get(vr, _DUMMY_TEXT)

    def _clean(self, vr: str, value: Any) -> Any:
        if vr in ("DA", "DT"):
            if self.offset is None:
                return value  # C on dates exists only in the Modified Dates column
            return self._map(value, lambda v: _shift(v, vr, self.offset))
        if vr in _TEXT_VRS:
            return self._scrub(value)
        return value  # TM and numbers: nothing identifying once dates moved

    def _scrub(self, value: Any) -> Any:
        def clean(text: str) -> str:
            for secret in self.identity.secrets:
                text = re.sub(re.escape(secret), "", text, flags=re.IGNORECASE)
            return text

        return self._map(value, clean)

    @staticmethod
    def _map(value: Any, function: Any) -> Any:
        if value is None or value == "":
            return value
        if isinstance(value, MultiValue | list):
            return [function(str(v)) for v in value]
        return function(str(value))


def _shift(value: str, vr: str, offset: dt.timedelta) -> str:
    """Move a DA or DT value by ``offset`` days; an unreadable value becomes empty."""
    value = value.strip()
    try:
        date = dt.datetime.strptime(value[:8], "%Y%m%d").date()
    except ValueError:
        return ""
    shifted = (date + offset).strftime("%Y%m%d")
    return shifted if vr == "DA" else shifted + value[8:]
