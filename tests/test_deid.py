"""De-identification of headers: every row of PS3.15 Table E.1-1, its options, pseudonyms."""

from __future__ import annotations

import datetime as dt

import pytest
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset

from dicomweb_server.archive.deid._table import ROWS, STANDARD_EDITION
from dicomweb_server.archive.deid.apply import deidentify
from dicomweb_server.archive.deid.profile import (
    Action,
    CompoundPolicy,
    Option,
    Profile,
    rule_for,
)
from dicomweb_server.archive.deid.pseudonyms import Pseudonyms

SECRET = "test-secret"
ORIGINAL_UID = "1.2.826.0.1.3680043.10.1234.77"
_VALUES = {
    "AE": "SENDERAE",
    "AS": "045Y",
    "CS": "VALUE",
    "DA": "20200315",
    "DT": "20200315101010",
    "TM": "101010",
    "DS": "1.5",
    "IS": "7",
    "UI": ORIGINAL_UID,
    "US": 5,
    "SS": 5,
    "UL": 5,
    "SL": 5,
    "FL": 1.5,
    "FD": 1.5,
    "OB": b"\x01\x02",
    "OW": b"\x01\x02",
    "UN": b"\x01\x02",
    "UR": "http://doe.example/x",
}
_TEXT = "Doe was here"
_CONCRETE = {"50XXXXXX": 0x50003000, "60XX3000": 0x60003000, "60XX4000": 0x60004000}


def _tag(pattern: str) -> int:
    return _CONCRETE.get(pattern) or int(pattern, 16)


def _vr(tag: int) -> str:
    return dictionary_VR(tag).split(" or ")[0]


def _value(vr: str):  # type: ignore[no-untyped-def]
    if vr == "SQ":
        item = Dataset()
        item.ReferencedSOPInstanceUID = ORIGINAL_UID
        return [item]
    return _VALUES.get(vr, _TEXT)


def _base() -> Dataset:
    ds = Dataset()
    ds.PatientName = "Doe^John"
    ds.PatientID = "PID001"
    return ds


def _cases() -> list[pytest.param]:
    cases = []
    for pattern, _name, basic, options in ROWS:
        if pattern == "PRIVATE":
            continue  # tested on its own below
        cases.append(pytest.param(pattern, None, basic, id=f"{pattern}-basic"))
        for option, action in options.items():
            cases.append(pytest.param(pattern, option, action, id=f"{pattern}-{option}"))
    return cases


def test_table_is_complete_and_dated() -> None:
    assert len(ROWS) == 621
    assert STANDARD_EDITION == "2024e"
    basic = {r[2] for r in ROWS}
    assert basic == {"D", "Z", "X", "U", "X/Z", "X/D", "X/Z/D", "Z/D", "X/Z/U*"}


@pytest.mark.parametrize("compound", list(CompoundPolicy))
@pytest.mark.parametrize(("pattern", "option", "printed"), _cases())
def test_each_row_and_option_acts_as_the_standard_says(
    pattern: str, option: str | None, printed: str, compound: CompoundPolicy
) -> None:
    tag = _tag(pattern)
    vr = _vr(tag)
    options = frozenset() if option is None else frozenset({Option(option)})
    profile = Profile("p", options, compound)
    expected = rule_for(tag).action(options, compound)  # type: ignore[union-attr]
    if "/" in printed:  # compound: the configured choice among the printed ones
        assert expected.value in printed.replace("U*", "U*").split("/")
        first = printed.split("/")[0]
        if compound is CompoundPolicy.REMOVE:
            assert expected.value == first
    else:
        assert expected.value == printed
    ds = _base()
    if tag not in (0x00100010, 0x00100020):
        ds.add_new(tag, vr, _value(vr))
    original = ds[tag].value
    pseudonyms = Pseudonyms(SECRET)
    outcome = deidentify(ds, profile, pseudonyms)
    _check(ds, tag, vr, expected, original, pseudonyms, outcome.date_offset, options)


def _check(ds, tag, vr, action, original, pseudonyms, offset, options) -> None:  # type: ignore[no-untyped-def]
    new_uid = pseudonyms.uid(ORIGINAL_UID)
    pseudonym = pseudonyms.patient_id("PID001")
    if action is Action.REMOVE or (action is Action.CLEAN and vr in ("OB", "OW")):
        assert tag not in ds  # bitmaps cannot be cleaned unseen: removed
        return
    assert tag in ds
    value = ds[tag].value
    if tag in (0x00100010, 0x00100020):  # Z or D, filled with the keyed pseudonym
        assert str(value) == pseudonym
        return
    if vr == "SQ":
        if action is Action.ZERO:
            assert len(value) == 0
            return
        assert len(value) == 1
        inner = value[0].ReferencedSOPInstanceUID
        retained = Option.RETAIN_UIDS in options  # the nested UID has its own row
        assert inner == (ORIGINAL_UID if retained else new_uid)
        return
    if action is Action.KEEP:
        assert value == original
    elif action is Action.ZERO:
        assert value in ("", None, b"")
    elif action is Action.DUMMY:
        assert value not in ("", None, b"")
        assert value != original or vr in ("US", "SS", "UL", "SL", "FL", "FD")
        if vr == "UI":
            assert value == new_uid
    elif action is Action.UID:
        assert value == new_uid
        assert value.startswith("2.25.") and len(value) <= 64
    elif action is Action.CLEAN:
        if vr in ("DA", "DT"):
            assert offset is not None
            shifted = dt.datetime.strptime(original[:8], "%Y%m%d").date() + offset
            assert value[:8] == shifted.strftime("%Y%m%d")
        elif vr in ("LO", "LT", "SH", "ST", "UT", "UC", "PN"):
            assert "doe" not in str(value).lower()
    else:
        raise AssertionError(f"unexpected action {action}")


def _private_dataset() -> Dataset:
    ds = _base()
    block = ds.private_block(0x0043, "GEMS_PARM_01", create=True)
    block.add_new(0x39, "IS", "1")
    block.add_new(0x40, "LO", "Doe secret")
    ds.add_new(0x00091001, "LO", "no creator")
    return ds


def test_private_attributes_are_removed_by_the_basic_profile() -> None:
    ds = _private_dataset()
    deidentify(ds, Profile("p", frozenset()), Pseudonyms(SECRET))
    assert not any(tag.group & 1 for tag in [e.tag for e in ds])


def test_retain_safe_private_keeps_only_listed_attributes_and_their_creator() -> None:
    ds = _private_dataset()
    profile = Profile(
        "p",
        frozenset({Option.RETAIN_SAFE_PRIVATE}),
        safe_private=frozenset({("GEMS_PARM_01", 0x0043, 0x39)}),
    )
    deidentify(ds, profile, Pseudonyms(SECRET))
    assert sorted(f"{t:08X}" for t in [e.tag for e in ds] if t.group & 1) == [
        "00430010",
        "00431039",
    ]


def test_sequences_are_cleaned_recursively() -> None:
    ds = _base()
    outer = Dataset()
    inner = Dataset()
    inner.PatientName = "Doe^John"
    inner.ReferencedSOPInstanceUID = ORIGINAL_UID
    inner.InstitutionName = "General Hospital"
    outer.ReferencedImageSequence = [inner]
    outer.OperatorsName = "Smith"
    ds.add_new(0x00081115, "SQ", [outer])  # Referenced Series Sequence: not in the table
    deidentify(ds, Profile("p", frozenset()), Pseudonyms(SECRET))
    item = ds[0x00081115].value[0]
    assert item.OperatorsName == "ANONYMIZED"  # X/Z/D, resolved to D (conform)
    nested = item.ReferencedImageSequence[0]
    assert nested.ReferencedSOPInstanceUID == Pseudonyms(SECRET).uid(ORIGINAL_UID)
    assert "Doe" not in str(nested.PatientName)
    assert nested.InstitutionName == "ANONYMIZED"


def test_what_was_done_is_recorded_with_cid_7050_codes() -> None:
    ds = _base()
    options = frozenset({Option.RETAIN_LONGITUDINAL_MODIFIED_DATES, Option.CLEAN_DESCRIPTORS})
    deidentify(ds, Profile("p", options), Pseudonyms(SECRET))
    assert ds.PatientIdentityRemoved == "YES"
    codes = [item.CodeValue for item in ds.DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113105", "113107"]
    assert {i.CodingSchemeDesignator for i in ds.DeidentificationMethodCodeSequence} == {"DCM"}
    assert ds.LongitudinalTemporalInformationModified == "MODIFIED"
    assert len(ds.DeidentificationMethod) == 3


def test_pseudonyms_are_keyed_and_stable() -> None:
    a, b = Pseudonyms(SECRET), Pseudonyms(SECRET)
    assert a.uid("1.2.3") == b.uid("1.2.3") != a.uid("1.2.4")
    assert Pseudonyms("other").uid("1.2.3") != a.uid("1.2.3")
    assert a.patient_id("P1") == b.patient_id("P1") != a.patient_id("P2")
    assert a.date_offset("P1") == b.date_offset("P1")
    assert -dt.timedelta(days=3650) <= a.date_offset("P1") < dt.timedelta(0)
    rooted = Pseudonyms(SECRET, uid_root="1.2.826.0.1.3680043.10.99")
    uid = rooted.uid("1.2.3")
    assert uid.startswith("1.2.826.0.1.3680043.10.99.") and len(uid) <= 64
    with pytest.raises(ValueError, match="secret"):
        Pseudonyms("")


def test_content_sequence_is_replaced_or_cleaned_as_the_option_says() -> None:
    def report() -> Dataset:
        ds = _base()
        item = Dataset()
        item.ValueType = "TEXT"
        item.TextValue = "John Doe, PID001, has a nodule"
        item.PersonName = "Doe^John"
        ds.ContentSequence = [item]
        return ds

    basic = report()
    deidentify(basic, Profile("p", frozenset()), Pseudonyms(SECRET))
    item = basic.ContentSequence[0]
    assert item.TextValue == "ANONYMIZED" and item.ValueType == "TEXT"  # D: dummy content
    assert str(item.PersonName) == "ANONYMIZED"  # (0040,A123) D
    cleaned = report()
    options = frozenset({Option.CLEAN_STRUCTURED_CONTENT})
    deidentify(cleaned, Profile("p", options), Pseudonyms(SECRET))
    text = cleaned.ContentSequence[0].TextValue
    assert "nodule" in text and "Doe" not in text and "PID001" not in text


CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2.1"


@pytest.mark.parametrize(
    ("sop_class", "keyword", "vr", "expected"),
    [
        # Content Date, Z/D: Type 2C in the General Image Module, Type 1 in Enhanced CT.
        (CT_IMAGE, "ContentDate", "DA", ""),
        (ENHANCED_CT_IMAGE, "ContentDate", "DA", "19000101"),
        # Operators' Name, X/Z/D: Type 3 (General Series Module): removed.
        (CT_IMAGE, "OperatorsName", "PN", None),
        # Device Serial Number, X/Z/D: Type 1 in the Enhanced General Equipment Module.
        (CT_IMAGE, "DeviceSerialNumber", "LO", None),
        (ENHANCED_CT_IMAGE, "DeviceSerialNumber", "LO", "ANONYMIZED"),
        # An unknown SOP Class keeps every IOD valid, as "conform" does.
        ("1.2.3.4.5.6", "OperatorsName", "PN", "ANONYMIZED"),
        ("1.2.3.4.5.6", "ContentDate", "DA", "19000101"),
    ],
)
def test_compound_actions_follow_the_type_in_the_iod_of_the_sop_class(
    sop_class: str, keyword: str, vr: str, expected: str | None
) -> None:
    """PS3.15 E.3.1: X unless Z (Type 2) or D (Type 1) keeps the IOD conformant."""
    ds = _base()
    ds.SOPClassUID = sop_class
    setattr(ds, keyword, "20200315" if vr == "DA" else "Doe^Operator")
    deidentify(ds, Profile("p", frozenset(), CompoundPolicy.IOD), Pseudonyms(SECRET))
    if expected is None:
        assert keyword not in ds
    else:
        assert str(ds[keyword].value) == expected
    # Nested in a sequence, where the IOD type is not known: as "conform".
    nested = _base()
    nested.SOPClassUID = sop_class
    item = Dataset()
    item.OperatorsName = "Doe^Operator"
    nested.add_new(0x00081115, "SQ", [item])
    deidentify(nested, Profile("p", frozenset(), CompoundPolicy.IOD), Pseudonyms(SECRET))
    assert nested[0x00081115].value[0].OperatorsName == "ANONYMIZED"


def test_iod_types_are_generated_from_the_standard() -> None:
    """The data module is exactly what the generator makes of highdicom's PS3.3 tables."""
    from pathlib import Path

    import highdicom

    from dicomweb_server.archive.deid import _iod_types
    from dicomweb_server.archive.deid.generate_iod_types import convert

    if f"highdicom {highdicom.__version__} " not in _iod_types.SOURCE:
        # A newer highdicom may carry a newer edition of the standard: not a fault of
        # this code, but a reason to regenerate the table (the README says how).
        pytest.skip(f"_iod_types.py was made from another highdicom: {_iod_types.SOURCE}")
    mappings, index = convert(Path(highdicom.__file__).parent / "_standard")
    assert tuple(mappings) == _iod_types.MAPPINGS
    assert index == _iod_types.SOP_CLASSES
    assert len(index) > 150 and _iod_types.STANDARD_EDITION == "2026b"
    assert len(mappings) < len(index) / 3  # SOP Classes of one IOD share an entry
    assert index["1.2.840.10008.5.1.4.1.1.1.1"] == index["1.2.840.10008.5.1.4.1.1.1.1.1"]  # DX


def test_table_e_3_10_1_is_built_in_and_dated() -> None:
    from dicomweb_server.archive.deid import _safe_private
    from dicomweb_server.archive.deid.profile import safe_private

    assert _safe_private.STANDARD_EDITION == "2020c" and len(_safe_private.ROWS) == 130
    table = safe_private()
    assert table[("Philips PET Private Group", 0x7053, 0x00)] == "DS"  # SUV factor
    assert table[("SIEMENS MR HEADER", 0x0019, 0x0C)] == "IS"  # B value
    assert table[("GEMS_PARM_01", 0x0043, 0x39)] == "IS"


def test_retain_safe_private_keeps_table_e_3_10_1_attributes_in_any_block() -> None:
    ds = _base()
    # GE puts GEMS_PARM_01 in block 0x10; here it is in block 0x11, after another creator.
    ds.private_block(0x0043, "OTHER_VENDOR", create=True).add_new(0x27, "SH", "Doe")
    ge = ds.private_block(0x0043, "GEMS_PARM_01", create=True)
    ge.add_new(0x27, "SH", "0.984:1")  # Scan Pitch Ratio: in the table
    ge.add_new(0x6F, "LO", "Doe")  # in the table as DS: another attribute, removed
    ge.add_new(0x40, "LO", "Doe")  # not in the table
    siemens = ds.private_block(0x0019, "SIEMENS MR HEADER", create=True)
    siemens.add_new(0x0C, "IS", "1000")
    siemens.add_new(0x08, "CS", "DOE")
    ds.add_new(0x00291010, "LO", "configured")  # kept only through the profile's list
    ds.add_new(0x00290010, "LO", "ACME 1.0")
    kept = Profile(
        "p",
        frozenset({Option.RETAIN_SAFE_PRIVATE}),
        safe_private=frozenset({("ACME 1.0", 0x0029, 0x10)}),
    )
    deidentify(ds, kept, Pseudonyms(SECRET))
    private = {f"{e.tag:08X}": e.value for e in ds if e.tag.group & 1}
    assert private == {
        "00190010": "SIEMENS MR HEADER",
        "0019100C": "1000",
        "00290010": "ACME 1.0",
        "00291010": "configured",
        "00430011": "GEMS_PARM_01",
        "00431127": "0.984:1",
    }
    plain = _base()
    plain.private_block(0x0043, "GEMS_PARM_01", create=True).add_new(0x27, "SH", "0.984:1")
    deidentify(plain, Profile("p", frozenset()), Pseudonyms(SECRET))
    assert not [e for e in plain if e.tag.group & 1]  # without the option: all removed


def test_clean_pixel_data_planar_frames_and_bad_signatures() -> None:
    import numpy as np

    from dicomweb_server.archive.deid.pixels import Signature, plan
    from dicomweb_server.archive.frames import PixelLayout

    ds = _base()
    ds.update({"Rows": 4, "Columns": 5, "SamplesPerPixel": 3, "BitsAllocated": 8})
    ds.PlanarConfiguration = 1  # R plane, G plane, B plane
    ds.PhotometricInterpretation = "RGB"
    ds.Manufacturer = "ACME"
    layout = PixelLayout(0x7FE00010, "OB", 0, 60, 1, frame_size=60)
    signature = Signature((("Manufacturer", "ACME"),), ((1, 2, 2, 5),))  # clipped to the image
    cleaner = plan((signature,), ds, layout, "1.2.840.10008.1.2.1")
    assert cleaner is not None
    frame = bytearray(range(1, 61))
    cleaner.blank(frame)
    planes = np.frombuffer(frame, dtype=np.uint8).reshape(3, 4, 5)
    assert (planes[:, 2:, 1:3] == 0).all() and np.count_nonzero(planes) == 60 - 3 * 4
    assert plan((signature,), ds, layout, "1.2.840.10008.1.2.5") is None  # RLE: not cleaned
    ds.Manufacturer = "OTHER"
    assert plan((signature,), ds, layout, "1.2.840.10008.1.2.1") is None
    with pytest.raises(ValueError, match="keyword"):
        Signature((("Manufactuer", "ACME"),), ((0, 0, 1, 1),))
    with pytest.raises(ValueError, match="at least one attribute"):
        Signature((), ((0, 0, 1, 1),))
    with pytest.raises(ValueError, match="width"):
        Signature((("Manufacturer", "ACME"),), ((0, 0, 0, 1),))
