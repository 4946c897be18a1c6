"""Identifiers in and out: a C-FIND/C-MOVE/C-GET request Identifier as a :class:`Query`,
and a DICOM JSON match as the C-FIND response Identifier.

PS3.4 C.4.1.1.3 gives the shape of both: the request holds the Query/Retrieve Level,
match keys with values and return keys left empty; each response holds exactly the
requested keys (PS3.4 C.4.1.1.3.2), with Specific Character Set when a value needs more
than the default repertoire (PS3.4 C.4.1.1.3.2 and PS3.5 6.1.2.3: we answer in UTF-8,
"ISO_IR 192").
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

from pydicom.charset import convert_encodings, default_encoding
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID, ImplicitVRLittleEndian
from pynetdicom import sop_class

from dicomweb_server.archive import InvalidQuery, Level, Query

QUERY_RETRIEVE_LEVEL = Tag(0x0008, 0x0052)
SPECIFIC_CHARACTER_SET = Tag(0x0008, 0x0005)
STUDY_UID = Tag(0x0020, 0x000D)
SERIES_UID = Tag(0x0020, 0x000E)
UTF8 = "ISO_IR 192"

PATIENT_ROOT = "PATIENT_ROOT"
STUDY_ROOT = "STUDY_ROOT"

#: Information model of each Query/Retrieve SOP Class we serve (PS3.4 C.6.1 and C.6.2).
MODELS: dict[str, str] = {
    sop_class.PatientRootQueryRetrieveInformationModelFind: PATIENT_ROOT,
    sop_class.PatientRootQueryRetrieveInformationModelMove: PATIENT_ROOT,
    sop_class.PatientRootQueryRetrieveInformationModelGet: PATIENT_ROOT,
    sop_class.StudyRootQueryRetrieveInformationModelFind: STUDY_ROOT,
    sop_class.StudyRootQueryRetrieveInformationModelMove: STUDY_ROOT,
    sop_class.StudyRootQueryRetrieveInformationModelGet: STUDY_ROOT,
}

#: PS3.4 C.6.1.1 (Patient Root: four levels) and C.6.2.1 (Study Root: no PATIENT level).
LEVELS: dict[str, tuple[Level, ...]] = {
    PATIENT_ROOT: (Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE),
    STUDY_ROOT: (Level.STUDY, Level.SERIES, Level.IMAGE),
}

_SKIPPED = {QUERY_RETRIEVE_LEVEL, SPECIFIC_CHARACTER_SET}


def model_of(sop_class_uid: str) -> str:
    try:
        return MODELS[str(sop_class_uid).rstrip("\0 ")]
    except KeyError:
        raise InvalidQuery(
            f"{sop_class_uid} is not a Query/Retrieve SOP Class served here"
        ) from None


def level_of(identifier: Dataset, model: str) -> Level:
    """The Query/Retrieve Level (0008,0052), checked against the information model."""
    text = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    allowed = LEVELS[model]
    if text not in {level.value for level in allowed}:
        names = ", ".join(level.value for level in allowed)
        raise InvalidQuery(f"QueryRetrieveLevel {text!r} is not one of {names}")
    return Level(text)


def dicom_string(element: DataElement) -> str:
    """An element's value the way it travels in a match key: values joined by ``\\``."""
    value = element.value
    if value is None or isinstance(value, bytes | bytearray):
        return ""
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join("" if v is None else str(v) for v in value)
    return str(value)


def _single_uid(element: DataElement | None) -> str | None:
    """The UID of a single-value UID match key, else ``None`` (list, wildcard, empty)."""
    if element is None:
        return None
    text = dicom_string(element).strip("\0 ")
    if not text or "\\" in text or "*" in text or "?" in text:
        return None
    return text


def to_query(identifier: Dataset, model: str) -> Query:
    """The archive query asked by a C-FIND request Identifier.

    Keys with a value are match keys, empty keys are return keys (PS3.4 C.2.2.1);
    sequence match keys become ``"Sequence.Keyword"`` filters.  A single
    StudyInstanceUID below the STUDY level (and SeriesInstanceUID below SERIES) scopes
    the search, as the hierarchical model of PS3.4 C.4.1.3.1 requires.
    """
    level = level_of(identifier, model)
    filters: dict[str, str] = {}
    return_keys: list[str] = []
    study_uid = series_uid = None
    if level in (Level.SERIES, Level.IMAGE):
        study_uid = _single_uid(identifier.get(STUDY_UID))
    if level is Level.IMAGE:
        series_uid = _single_uid(identifier.get(SERIES_UID))
    for element in identifier:
        tag = element.tag
        if tag in _SKIPPED or tag.group in (0x0000, 0x0002) or tag.is_private:
            continue
        keyword = element.keyword
        if not keyword:
            continue
        if (tag == STUDY_UID and study_uid) or (tag == SERIES_UID and series_uid):
            continue
        if element.VR == "SQ":
            return_keys.append(keyword)
            for item in element.value or []:
                for sub in item:
                    if sub.keyword and not sub.is_empty and sub.VR != "SQ":
                        filters[f"{keyword}.{sub.keyword}"] = dicom_string(sub)
                break  # PS3.4 C.2.2.1.3: a sequence match key holds a single item
            continue
        if element.is_empty:
            return_keys.append(keyword)
        else:
            filters[keyword] = dicom_string(element)
    return Query(
        level=level,
        filters=filters,
        return_keys=return_keys,
        study_uid=study_uid,
        series_uid=series_uid,
    )


def _scoped_value(tag: BaseTag, query: Query) -> str | None:
    if tag == STUDY_UID:
        return query.study_uid
    if tag == SERIES_UID:
        return query.series_uid
    return None


def to_response(
    match: Mapping[str, Any],
    identifier: Dataset,
    query: Query,
    defaults: Mapping[str, str] | None = None,
    transfer_syntax: str = ImplicitVRLittleEndian,
) -> bytes:
    """The C-FIND response Identifier for one match, encoded in ``transfer_syntax``:
    exactly the requested keys.

    Keys the match lacks take their value from ``defaults`` (keyword -> value, for
    what the SCP itself knows, such as RetrieveAETitle) or are returned empty (PS3.4
    C.4.1.1.3.2: a return key without a value is sent zero length).

    Text values are encoded here, straight from the match, and only what is left
    (numbers, sequences, empty keys) goes through pydicom's element writer: a month of
    studies is hundreds of responses, and building each as a pydicom data set and
    writing it cost more than the search itself.  :mod:`.pending` sends the bytes.
    """
    defaults = defaults or {}
    syntax = UID(transfer_syntax)
    if not syntax.is_little_endian or syntax.is_deflated:
        # The Query/Retrieve contexts accept the two plain syntaxes only (server.py).
        raise ValueError(f"C-FIND responses are not encoded in {syntax.name} here")
    implicit = syntax.is_implicit_VR
    encoded: dict[BaseTag, bytes] = {}
    others: dict[BaseTag, DataElement] = {}
    utf8 = False
    for element in identifier:
        tag = element.tag
        if tag == SPECIFIC_CHARACTER_SET or tag.group in (0x0000, 0x0002):
            continue
        if tag == QUERY_RETRIEVE_LEVEL:
            encoded[tag] = _encode(tag, "CS", query.level.value, implicit)
            continue
        key = f"{int(tag):08X}"
        found = match.get(key)
        if found is not None and (found.get("Value") or element.keyword not in defaults):
            text = _text(found)
            if text is not None:
                encoded[tag] = _encode(tag, found["vr"], text, implicit)
                utf8 = utf8 or not text.isascii()
                continue
            try:
                others[tag] = Dataset.from_json({key: found})[tag]
            except (ValueError, TypeError, OverflowError):
                # A value the archive kept although its VR forbids it (a DS of "abc"):
                # returned empty rather than failing the whole match.
                others[tag] = DataElement(tag, found.get("vr") or element.VR, None)
            utf8 = utf8 or _needs_utf8(others[tag])
            continue
        scoped = _scoped_value(tag, query)
        if scoped is not None:
            encoded[tag] = _encode(tag, "UI", scoped, implicit)
            continue
        if element.keyword in defaults:
            encoded[tag] = _encode(tag, dictionary_VR(tag), defaults[element.keyword], implicit)
            continue
        vr = element.VR
        if vr in ("UN", None):
            try:
                vr = dictionary_VR(tag)
            except KeyError:
                vr = "UN"
        vr = vr.split(" or ")[0]  # an ambiguous VR ("US or SS") of an empty key: any
        others[tag] = DataElement(tag, vr, [] if vr == "SQ" else None)
    if utf8:
        encoded[SPECIFIC_CHARACTER_SET] = _encode(SPECIFIC_CHARACTER_SET, "CS", UTF8, implicit)
    if others:
        encodings = convert_encodings(UTF8) if utf8 else [default_encoding]
        encoded.update(_write(others, implicit, encodings))
    return b"".join(encoded[tag] for tag in sorted(encoded))


#: VRs whose value length is 32 bits in explicit VR (PS3.5 Table 7.1-1); 16 for the rest.
_LONG_VRS = frozenset(
    {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
)


def _encode(tag: BaseTag, vr: str, text: str, implicit: bool) -> bytes:
    """One text element, little endian: UTF-8, padded to even length with NUL for UI
    and space otherwise (PS3.5 6.2), after its tag, VR (explicit) and length."""
    value = text.encode()
    if len(value) % 2:
        value += b"\0" if vr == "UI" else b" "
    if implicit:
        header = struct.pack("<HHL", tag.group, tag.element, len(value))
    elif vr in _LONG_VRS:
        header = struct.pack("<HH2s2xL", tag.group, tag.element, vr.encode(), len(value))
    elif len(value) <= 0xFFFF:
        header = struct.pack("<HH2sH", tag.group, tag.element, vr.encode(), len(value))
    else:
        raise ValueError(f"a {vr} value of {len(value)} bytes in {tag}: too long for its VR")
    return header + value


def _write(
    elements: Mapping[BaseTag, DataElement], implicit: bool, encodings: list[str]
) -> dict[BaseTag, bytes]:
    """Elements encoded by pydicom, each on its own."""
    written: dict[BaseTag, bytes] = {}
    for tag, element in elements.items():
        fp = DicomBytesIO()
        fp.is_little_endian, fp.is_implicit_VR = True, implicit
        write_data_element(fp, element, encodings)
        written[tag] = fp.getvalue()
    return written


#: VRs whose DICOM JSON value is the DICOM string itself (PS3.18 F.2.3), so it can be
#: encoded once, here.  DS is left to pydicom: a JSON number is not always a valid DS.
_TEXT_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DT", "IS", "LO", "LT", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}
)


def _text(found: Mapping[str, Any]) -> str | None:
    """The DICOM string of a DICOM JSON text attribute, or ``None`` for anything else
    (sequences, binary values, bulk data, values of unexpected types)."""
    vr = found.get("vr")
    values = found.get("Value")
    if not values:
        return "" if vr in _TEXT_VRS or vr == "PN" else None
    if vr == "PN":
        if not all(isinstance(v, dict) for v in values):
            return None
        return "\\".join(_person_name(v) for v in values)
    if vr not in _TEXT_VRS:
        return None
    if vr == "IS":
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            return None
    elif not all(isinstance(v, str) for v in values):
        return None
    return "\\".join(str(v) for v in values)


def _person_name(value: Mapping[str, str]) -> str:
    """A PN value from its DICOM JSON groups (PS3.18 F.2.2): ``A=I=P``, trailing ``=``
    removed (PS3.5 6.2.1)."""
    groups = [value.get(g) or "" for g in ("Alphabetic", "Ideographic", "Phonetic")]
    return "=".join(groups).rstrip("=")


def _needs_utf8(element: DataElement) -> bool:
    """Whether a decoded element holds text beyond ASCII, in itself or its items."""
    if element.VR == "SQ":
        return any(_needs_utf8(sub) for item in element.value or [] for sub in item)
    return not dicom_string(element).isascii()
