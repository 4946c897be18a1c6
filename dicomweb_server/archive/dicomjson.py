"""An instance's metadata as DICOM JSON (PS3.18 Annex F), built once at ingest.

Large binary values are not inlined: they become ``BulkDataURI`` entries, and their byte
ranges in the stored file are recorded so that ``/bulkdata`` is a seek and a read.  URIs
are stored relative to the placeholder :data:`BASE`, which the web front replaces with
the public DICOMweb root when it serves the text; the stored JSON thus stays valid when
the server moves behind another host name or proxy.
"""

from __future__ import annotations

import base64
import json
import math
import struct
from typing import Any

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

#: Stands for the DICOMweb root URL inside stored JSON text.
BASE = "{{dicomweb-base}}"

#: VRs whose values may be served as bulk data (PS3.18 F.2.7).
BULK_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})

Bulk = dict[str, tuple[int, int]]  # bulk data path -> (file offset, length)


def instance_uri(study_uid: str, series_uid: str, sop_uid: str) -> str:
    """The instance's URI under :data:`BASE`."""
    return f"{BASE}/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}"


def to_json(
    dataset: Dataset,
    uri: str,
    threshold: int,
    offsets_valid: bool = True,
    decoded: set[int] | None = None,
) -> tuple[dict[str, Any], Bulk]:
    """Convert ``dataset`` (read with deferred large values) to the DICOM JSON model.

    Returns the JSON dict and the byte ranges of the values it replaced by BulkDataURIs.
    Bulk paths are tag keys joined by ``/`` with item indexes between them
    (``"00540016/0/00181072"``); ``uri`` is the instance URI they hang under.
    ``offsets_valid`` is false for deflated files, whose element positions are in the
    inflated stream: the ranges then cannot be recorded and serving must parse.
    ``decoded`` collects the top-level tags whose values were decoded from their bytes
    here (see :func:`_plain_value`): pydicom would decode them without error too.
    """
    bulk: Bulk = {}
    out = _convert(dataset, uri + "/bulkdata/", "", threshold, bulk, offsets_valid, decoded)
    return out, bulk


def _convert(
    dataset: Dataset,
    uri: str,
    prefix: str,
    threshold: int,
    bulk: Bulk,
    offsets_valid: bool,
    decoded: set[int] | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for tag in dataset.keys():  # noqa: SIM118 (iterating a Dataset would decode every element)
        key = f"{tag:08X}"
        raw = dataset.get_item(tag, keep_deferred=True)
        if isinstance(raw, RawDataElement):
            vr = raw.VR or _implicit_vr(tag)
            if type(raw.value) is bytes and (raw.VR or _unambiguous(tag)):
                value = _plain_value(vr, raw.value, raw.is_little_endian)
                if value is not None:
                    out[key] = {"vr": vr, "Value": value} if value else {"vr": vr}
                    if decoded is not None:
                        decoded.add(tag)
                    continue
            deferred = raw.value is None and raw.length not in (0, 0xFFFFFFFF)
            if vr in BULK_VRS and (deferred or raw.length > threshold) and raw.length != 0xFFFFFFFF:
                path = prefix + key
                if offsets_valid:
                    bulk[path] = (raw.value_tell, raw.length)
                out[key] = {"vr": vr, "BulkDataURI": uri + path}
                continue
        try:
            element = dataset[tag]
        except Exception:  # pydicom cannot decode this value: keep it as it came
            out[key] = _undecodable(raw)
            continue
        if element.VR == "SQ":
            entry: dict[str, Any] = {"vr": "SQ"}
            items = [
                _convert(item, uri, f"{prefix}{key}/{i}/", threshold, bulk, offsets_valid)
                for i, item in enumerate(element.value)
            ]
            if items:
                entry["Value"] = items
            out[key] = entry
            continue
        try:
            out[key] = _finite(element.to_json_dict(None, threshold))
        except Exception:
            out[key] = _undecodable(raw)
    return out


#: Text VRs whose values do not depend on the Specific Character Set, and how pydicom
#: (``pydicom.values.converters``) cleans them: AE and UI strip each value; the others
#: drop trailing spaces and NULs of the whole element only.
_PLAIN_TEXT = frozenset({"AE", "AS", "CS", "DA", "DT", "TM", "UI"})
#: Text VRs decoded with the Specific Character Set.  Printable ASCII decodes alike in
#: every character set DICOM allows (ISO 2022 switches sets with ESC, which is not
#: printable), so such values need no decoder.  Multi-valued ones (pydicom's
#: ``convert_text``) drop trailing spaces and NULs of each value; the single-valued
#: ones (``convert_single_string``) keep backslashes as text.
_CHARSET_TEXT = frozenset({"LO", "SH", "UC"})
_CHARSET_SINGLE = frozenset({"LT", "ST", "UT"})
#: Binary numbers: VR -> struct format character.
_NUMBERS = {"US": "H", "SS": "h", "UL": "L", "SL": "l", "UV": "Q", "SV": "q", "FL": "f", "FD": "d"}


def _plain_value(vr: str, data: bytes, little_endian: bool) -> list[Any] | None:
    """The JSON ``Value`` of an element straight from its bytes, as pydicom would give it.

    Covers the VRs that make up most of an image header (numbers, UIDs, codes, dates,
    times, and names and texts in printable ASCII), without building pydicom's
    DataElement: two thirds of the cost of converting a CT header.  Returns ``[]`` for
    an empty value, ``None`` where pydicom must decide (other VRs, text with characters
    other than printable ASCII before its padding, a number that does not parse, a
    length that is not a multiple of the value size); tests/test_dicomjson.py holds the
    two conversions equal.
    """
    if not data:
        return []
    if vr in _NUMBERS:
        char = _NUMBERS[vr]
        size = struct.calcsize("<" + char)  # standard sizes, not the platform's
        if len(data) % size:
            return None
        order = "<" if little_endian else ">"
        numbers = list(struct.unpack(f"{order}{len(data) // size}{char}", data))
        if vr in ("FL", "FD") and not all(map(math.isfinite, numbers)):
            return None
        return numbers
    if not data.isascii():
        return None
    text = data.decode("ascii")
    if not text.rstrip(" \0").isprintable():  # control characters: pydicom's judgement
        return None
    if vr in _PLAIN_TEXT:
        if vr == "AE":
            values = [v.strip() for v in text.split("\\")]
        elif vr == "UI":  # pydicom's UID strips each value
            values = [v.strip() for v in text.rstrip(" \0").split("\\")]
        else:
            values = text.rstrip(" \0").split("\\")
        return [] if values == [""] else values
    if vr in _CHARSET_TEXT:
        values = [v.rstrip(" \0") for v in text.split("\\")]
        return [] if values == [""] else values
    if vr in _CHARSET_SINGLE:
        value = text.rstrip(" \0")
        return [value] if value else []
    if vr == "PN":  # one component group per name; pydicom splits "=" groups itself
        names = text.rstrip(" \0").split("\\")
        if names == [""]:
            return []
        if "=" in text or not all(names):
            return None
        return [{"Alphabetic": name} for name in names]
    if vr == "DS" or vr == "IS":
        values = (text.strip() if vr == "DS" else text).rstrip(" \0").split("\\")
        if values == [""]:
            return []
        try:
            numbers = [float(v) if vr == "DS" else int(v) for v in values]
        except ValueError:
            return None
        if not all(v.strip() for v in values) or any(
            isinstance(n, float) and not math.isfinite(n) for n in numbers
        ):
            return None
        return numbers
    return None


#: VRs whose values are text, kept as strings when they are not what their VR says.
_TEXT_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}
)


def _undecodable(raw: object) -> dict[str, Any]:
    """A value pydicom cannot convert (a DS of "abc", say), as received.

    Real-world files carry such values; refusing the whole instance for one of them
    would lose data the sender trusts us with.  Text stays text (as JSON strings, even
    for DS and IS), anything else becomes InlineBinary of VR UN.
    """
    vr = getattr(raw, "VR", None) or "UN"
    value = getattr(raw, "value", None)
    if isinstance(value, bytes) and vr in _TEXT_VRS:
        text = value.decode("latin-1").rstrip(" \0")
        return {"vr": vr, "Value": [v.strip() for v in text.split("\\")]} if text else {"vr": vr}
    if isinstance(value, bytes) and value:
        return {"vr": "UN", "InlineBinary": base64.b64encode(value).decode("ascii")}
    return {"vr": vr}


def _finite(entry: dict[str, Any]) -> dict[str, Any]:
    """JSON has no NaN or Infinity: such DS, FL or FD values become strings."""
    values = entry.get("Value")
    if values and any(isinstance(v, float) and not math.isfinite(v) for v in values):
        entry["Value"] = [
            str(v) if isinstance(v, float) and not math.isfinite(v) else v for v in values
        ]
    return entry


def _unambiguous(tag: int) -> bool:
    """Whether the data dictionary gives ``tag`` (in an implicit VR data set) one VR; an
    ambiguous one ("US or SS") depends on other attributes, which pydicom resolves."""
    try:
        return " " not in dictionary_VR(Tag(tag))
    except KeyError:
        return False


def _implicit_vr(tag: int) -> str:
    try:
        vr = dictionary_VR(Tag(tag))
    except KeyError:
        return "UN"
    # Ambiguous VRs ("OB or OW", "US or SS") resolve to their binary form for bulk checks.
    return "OW" if "OW" in vr else vr.split(" ")[0]


def dumps(value: Any) -> str:
    """Compact JSON text, as stored and served; never the non-JSON ``NaN``."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
