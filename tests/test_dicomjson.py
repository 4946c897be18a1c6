"""The DICOM JSON that ingest stores equals pydicom's, value for value.

:func:`dicomjson._plain_value` decodes the commonest VRs straight from their bytes, for
speed; pydicom's ``DataElement.to_json_dict`` is the reference it must agree with, on
random values of every VR it covers and on pydicom's own corpus of real-world files.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.data import get_testdata_files
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from dicomweb_server.archive import dicomjson

TEXT_VRS = ["AE", "AS", "CS", "DA", "DT", "TM", "UI", "DS", "IS"]
#: Decoded with the Specific Character Set, which printable ASCII does not need.
CHARSET_VRS = ["LO", "SH", "UC", "LT", "ST", "UT", "PN"]
NUMBER_VRS = ["US", "SS", "UL", "SL", "UV", "SV", "FL", "FD"]
#: Characters that matter to the text decoders: padding, delimiters, digits, signs.
ALPHABET = " \0\\0123456789.+-eEabcZ_:\t"


def reference(vr: str, data: bytes, little_endian: bool = True) -> dict[str, Any] | None:
    """pydicom's JSON for the element, or None where pydicom cannot convert it."""
    raw = RawDataElement(Tag(0x00091010), vr, len(data), data, 0, False, little_endian)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            element = convert_raw_data_element(raw, ds=Dataset())
            entry = element.to_json_dict(None, 1 << 30)
        except Exception:
            return None
    return entry


def plain(vr: str, data: bytes, little_endian: bool = True) -> dict[str, Any] | None:
    value = dicomjson._plain_value(vr, data, little_endian)
    if value is None:
        return None
    return {"vr": vr, "Value": value} if value else {"vr": vr}


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(TEXT_VRS), st.text(ALPHABET, max_size=24))
def test_text_values_decode_as_pydicom_decodes_them(vr: str, text: str) -> None:
    data = text.encode("ascii")
    ours = plain(vr, data)
    if ours is not None:  # None: left to pydicom, which the caller then uses
        assert ours == reference(vr, data)


@settings(max_examples=600, deadline=None)
@given(st.sampled_from(CHARSET_VRS), st.text(ALPHABET + "AbZ^=()'", max_size=24))
def test_ascii_names_and_texts_decode_as_pydicom_decodes_them(vr: str, text: str) -> None:
    data = text.encode("ascii")
    ours = plain(vr, data)
    if ours is not None:
        assert ours == reference(vr, data)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(NUMBER_VRS), st.binary(max_size=32), st.booleans())
def test_binary_numbers_decode_as_pydicom_decodes_them(
    vr: str, data: bytes, little_endian: bool
) -> None:
    ours = plain(vr, data, little_endian)
    if ours is not None:
        assert ours == reference(vr, data, little_endian)


@pytest.mark.parametrize(
    ("vr", "data", "expected"),
    [
        ("DS", b" 1.5\\-2e3 ", [1.5, -2000.0]),
        ("IS", b"12\\-4 ", [12, -4]),
        ("CS", b"ORIGINAL\\PRIMARY\\AXIAL ", ["ORIGINAL", "PRIMARY", "AXIAL"]),
        ("UI", b"1.2.3\0", ["1.2.3"]),
        ("AE", b" STORE \\ FIND", ["STORE", "FIND"]),
        ("US", b"\x00\x02", [512]),
        ("DA", b"        ", []),
        ("LO", b"BRAIN W/O \\ CONTRAST ", ["BRAIN W/O", " CONTRAST"]),
        ("LT", b"A \\ B\0", ["A \\ B"]),
        ("PN", b"Doe^John\\Roe^Jane ", [{"Alphabetic": "Doe^John"}, {"Alphabetic": "Roe^Jane"}]),
    ],
)
def test_typical_values(vr: str, data: bytes, expected: list[Any]) -> None:
    assert dicomjson._plain_value(vr, data, True) == expected


@pytest.mark.parametrize(
    ("vr", "data"),
    [
        ("DS", b"abc "),  # not a number: pydicom keeps it, dicomjson._undecodable shows it
        ("IS", b"12.5"),  # pydicom truncates through ISfloat; let it
        ("DS", b"1\\\\2"),  # an empty value among numbers
        ("FD", b"\x00" * 6 + b"\xf8\x7f"),  # NaN: JSON has none
        ("US", b"\x01\x02\x03"),  # not a whole number of values
        ("CS", "Ä".encode("latin-1")),  # non-ASCII: the character set decides
        ("LO", "Müller".encode("latin-1")),  # non-ASCII: the character set decides
        ("LT", b"line one\r\nline two"),  # control characters
        ("PN", b"Yamada^Tarou=\x1b$B;3ED\x1b(B"),  # ISO 2022 escapes, component groups
        ("PN", b"Doe^John=Doe^John"),  # component groups
    ],
)
def test_values_left_to_pydicom(vr: str, data: bytes) -> None:
    assert dicomjson._plain_value(vr, data, True) is None


def corpus() -> list[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns when it cannot download extras
        return sorted(get_testdata_files("*.dcm"))


@pytest.mark.parametrize("path", corpus(), ids=lambda p: Path(p).name)
def test_real_world_headers_convert_as_pydicom_converts_them(path: str) -> None:
    """Every element of pydicom's test files that the fast path takes, nested ones too."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            dataset = dcmread(path, stop_before_pixels=True, defer_size=1024, force=True)
        except Exception:
            pytest.skip("pydicom cannot read this test file's header")
        ours, _ = dicomjson.to_json(dataset, "uri", 1024)
        theirs = _pydicom_json(dcmread(path, stop_before_pixels=True, force=True))
    _compare(ours, theirs)


def _pydicom_json(dataset: Dataset) -> dict[str, Any]:
    out = {}
    for element in dataset:
        try:
            out[f"{element.tag:08X}"] = (
                {"vr": "SQ", "Value": [_pydicom_json(item) for item in element.value]}
                if element.VR == "SQ"
                else element.to_json_dict(None, 1 << 30)
            )
        except Exception:
            continue  # pydicom cannot convert it: dicomjson._undecodable's business
    return out


def _compare(ours: dict[str, Any], theirs: dict[str, Any]) -> None:
    for key, entry in ours.items():
        if key not in theirs or "BulkDataURI" in entry or "InlineBinary" in entry:
            continue
        if entry["vr"] == "SQ":
            for mine, reference_item in zip(
                entry.get("Value", []), theirs[key].get("Value", []), strict=False
            ):
                _compare(mine, reference_item)
            continue
        if isinstance(theirs[key], DataElement):
            continue
        if entry["vr"] in TEXT_VRS + CHARSET_VRS + NUMBER_VRS and _finite(theirs[key]):
            assert entry == theirs[key], key


def _finite(entry: dict[str, Any]) -> bool:
    return entry == dicomjson._finite(dict(entry))
