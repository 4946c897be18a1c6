"""Which attributes belong to which query level, and how values are normalised for matching.

The level lists hold the attributes that QIDO-RS (PS3.18 Tables 10.6.1-5, 10.6.3-3 to
10.6.3-5) and C-FIND (PS3.4 C.6.1.1 and C.6.2.1) match on or return at each level, plus a
few that viewers ask for by ``includefield`` (StudyDescription, SeriesDescription...).
Ingest copies them, as DICOM JSON, into each level's row so that a query answers from
the index alone.
"""

from __future__ import annotations

import datetime as dt
import enum
import re
from typing import Any

from pydicom.datadict import keyword_for_tag, tag_for_keyword


class Level(enum.StrEnum):
    """Query/Retrieve levels (PS3.4 C.3), which are also the index's tables."""

    PATIENT = "PATIENT"
    STUDY = "STUDY"
    SERIES = "SERIES"
    IMAGE = "IMAGE"


PATIENT_ATTRIBUTES = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "OtherPatientIDsSequence",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientSex",
    "EthnicGroup",
    "PatientComments",
)
STUDY_ATTRIBUTES = (
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "IssuerOfAccessionNumberSequence",
    "ReferringPhysicianName",
    "TimezoneOffsetFromUTC",
    "StudyDescription",
    "StudyInstanceUID",
    "StudyID",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "AdditionalPatientHistory",
    "InstitutionName",
)
SERIES_ATTRIBUTES = (
    "Modality",
    "SeriesDescription",
    "SeriesInstanceUID",
    "SeriesNumber",
    "SeriesDate",
    "SeriesTime",
    "BodyPartExamined",
    "Laterality",
    "ProtocolName",
    "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime",
    "RequestAttributesSequence",
    "Manufacturer",
    "StationName",
)
INSTANCE_ATTRIBUTES = (
    "SOPClassUID",
    "SOPInstanceUID",
    "InstanceNumber",
    "Rows",
    "Columns",
    "BitsAllocated",
    "NumberOfFrames",
    "ContentDate",
    "ContentTime",
    "AcquisitionNumber",
    "ImageType",
    "AvailableTransferSyntaxUID",
)

LEVEL_ATTRIBUTES: dict[Level, tuple[str, ...]] = {
    Level.PATIENT: PATIENT_ATTRIBUTES,
    Level.STUDY: STUDY_ATTRIBUTES,
    Level.SERIES: SERIES_ATTRIBUTES,
    Level.IMAGE: INSTANCE_ATTRIBUTES,
}


def json_key(keyword: str) -> str:
    """``"PatientName"`` -> ``"00100010"``, the key of the DICOM JSON model."""
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(keyword)
    return f"{tag:08X}"


LEVEL_KEYS: dict[Level, tuple[str, ...]] = {
    level: tuple(json_key(k) for k in keywords) for level, keywords in LEVEL_ATTRIBUTES.items()
}


def keyword_of(key: str) -> str:
    """``"00100010"`` -> ``"PatientName"`` (or the key itself for private tags)."""
    return keyword_for_tag(int(key, 16)) or key


# -- normalisation for matching --------------------------------------------------------

_SPACES = re.compile(r"\s+")


def name_key(value: str | None) -> str:
    """A person name as compared by matching: case-folded, components trimmed.

    PS3.5 6.2 lets trailing component separators and padding vary ("Doe^John^^^" is
    "Doe^John"), and PS3.4 C.2.2.2.1 lets PN matching ignore case; both are folded here.
    """
    if not value:
        return ""
    groups = []
    for group in str(value).split("="):
        parts = [p.strip() for p in group.split("^")]
        while parts and not parts[-1]:
            parts.pop()
        groups.append("^".join(parts))
    while groups and not groups[-1]:
        groups.pop()
    return "=".join(groups).casefold()


def name_words(value: str | None) -> str:
    """Every name component as a space-delimited word list, for fuzzy matching.

    ``" doe john "``: a fuzzy query matches when one word starts with the query, so
    "joh" finds "Doe^John" whichever component it is in.
    """
    words = _SPACES.split(re.sub(r"[\^=]", " ", str(value or "")).casefold().strip())
    return f" {' '.join(w for w in words if w)} "


def parse_date(value: object) -> dt.date | None:
    """A DA value as a date; ``None`` when empty or malformed (it then matches nothing
    but universal matching, rather than failing the whole instance)."""
    text = str(value or "").strip().replace(".", "")
    if len(text) != 8 or not text.isdigit():
        return None
    try:
        return dt.date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None


def normalise_time(value: object) -> str | None:
    """A TM value as fixed-width ``HHMMSS.FFFFFF`` text, so ranges compare as strings.

    Missing minutes, seconds or fractions are zero (PS3.5 6.2: "HH" is a valid TM);
    the legacy ``HH:MM:SS`` form is accepted.
    """
    text = str(value or "").strip().replace(":", "")
    if not text:
        return None
    whole, _, fraction = text.partition(".")
    if (
        not whole.isdigit()
        or len(whole) % 2
        or len(whole) > 6
        or (fraction and not fraction.isdigit())
    ):
        return None
    return f"{whole.ljust(6, '0')}.{fraction[:6].ljust(6, '0')}"


def parse_int(value: object) -> int | None:
    """An IS value as an int, or ``None``."""
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


def first_int(metadata: dict[str, Any], key: str) -> int | None:
    """The first value of ``key`` in DICOM JSON as an int, or ``None``: for values that
    ingest decoded into the metadata already, which asking pydicom would decode again."""
    values = metadata.get(key, {}).get("Value")
    return parse_int(values[0]) if values else None
