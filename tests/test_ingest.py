"""Ingest through the archive core, on SQLite and PostgreSQL."""

from __future__ import annotations

import io
import json
import re

import pytest
from pydicom import dcmread

from dicomweb_server.archive import Archive, Origin, StoreStatus
from tests.factory import make_instance, to_bytes

ORIGIN = Origin("IMPORT", address="test")


def test_store_writes_original_bytes_and_indexes(archive: Archive) -> None:
    ds = make_instance()
    data = to_bytes(ds)
    result = archive.store(io.BytesIO(data), ORIGIN)
    assert result.status is StoreStatus.STORED
    [stored] = archive.instances(ds.StudyInstanceUID)
    assert archive.path(stored).read_bytes() == data
    assert stored.size == len(data)
    metadata = json.loads(next(archive.metadata(ds.StudyInstanceUID)))
    assert metadata["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Doe^John"}]}
    assert metadata["7FE00010"]["BulkDataURI"].endswith(
        f"/instances/{ds.SOPInstanceUID}/bulkdata/7FE00010"
    )


def test_native_frame_offsets_point_at_each_frame(archive: Archive) -> None:
    ds = make_instance(frames=3, rows=8, columns=8)
    archive.store(io.BytesIO(to_bytes(ds)), ORIGIN)
    [stored] = archive.instances(ds.StudyInstanceUID)
    assert stored.number_of_frames == 3
    frame_size = 8 * 8 * 2
    for n in (1, 2, 3):
        data = b"".join(archive.read_ranges(stored, stored.pixels.frame_ranges(n)))
        assert data == ds.PixelData[(n - 1) * frame_size : n * frame_size]


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.90"])
def test_encapsulated_frame_fragments_match_pydicom(archive: Archive, syntax: str) -> None:
    from pydicom.encaps import generate_frames

    ds = make_instance(frames=3, rows=64, columns=64, transfer_syntax=syntax)
    archive.store(io.BytesIO(to_bytes(ds)), ORIGIN)
    [stored] = archive.instances(ds.StudyInstanceUID)
    expected = list(generate_frames(ds.PixelData, number_of_frames=3))
    for n, frame in enumerate(expected, start=1):
        assert b"".join(archive.read_ranges(stored, stored.pixels.frame_ranges(n))) == frame


def test_header_longer_than_the_head_kept_in_memory(archive: Archive) -> None:
    """Ingest parses the first storage.HEAD bytes from memory and reads the rest of a
    longer header from the file: values, bulk data ranges and frames past it are right."""
    from pydicom.dataelem import DataElement

    from dicomweb_server.archive.storage import HEAD

    ds = make_instance(rows=8, columns=8, StudyDescription="after the big value")
    blob = bytes(range(256)) * (HEAD // 256 + 40)  # straddles the head's end
    ds.add(DataElement(0x00091010, "LO", "PRIVATE CREATOR"))
    ds.add(DataElement(0x00091001, "OB", blob))
    ds.add(DataElement(0x00200060, "CS", "L"))  # Laterality, after the value
    archive.store(io.BytesIO(to_bytes(ds)), ORIGIN)
    [stored] = archive.instances(ds.StudyInstanceUID)
    metadata = json.loads(next(archive.metadata(ds.StudyInstanceUID)))
    assert metadata["00200060"] == {"vr": "CS", "Value": ["L"]}
    assert metadata["00081030"]["Value"] == ["after the big value"]
    assert b"".join(archive.read_ranges(stored, [stored.bulk["00091001"]])) == blob
    [frame] = archive.read_ranges(stored, stored.pixels.frame_ranges(1))
    assert frame == ds.PixelData


def test_reparsed_stored_file_equals_input(archive: Archive) -> None:
    ds = make_instance(PatientName="Müller^Jürgen", SpecificCharacterSet="ISO_IR 100")
    archive.store(io.BytesIO(to_bytes(ds)), ORIGIN)
    [stored] = archive.instances(ds.StudyInstanceUID)
    assert str(dcmread(archive.path(stored)).PatientName) == "Müller^Jürgen"


# -- what the index records ------------------------------------------------------------

from pathlib import Path  # noqa: E402

from sqlalchemy import select  # noqa: E402

from dicomweb_server.archive import (  # noqa: E402
    DuplicateInstance,
    InvalidInstance,
    StudyMismatch,
    UnsupportedTransferSyntax,
)
from dicomweb_server.archive.index import Instance, Patient, Series, Study  # noqa: E402
from dicomweb_server.config import Settings  # noqa: E402
from tests.conftest import make_settings  # noqa: E402
from tests.factory import make_series, uid  # noqa: E402


def _rows(archive: Archive, model: type) -> list:
    with archive.reader() as session:
        return list(session.scalars(select(model)))


def test_level_rows_hold_normalised_matching_values(archive: Archive) -> None:
    ds = make_instance(
        PatientName="O'Brien^Ann^^^",
        StudyDate="20231231",
        StudyTime="0930",
        ReferringPhysicianName="van Gogh^Vincent",
        SeriesNumber="7",
    )
    archive.store(io.BytesIO(to_bytes(ds)), Origin("STOW-RS", address="10.1.2.3:5555", user="curl"))
    [patient] = _rows(archive, Patient)
    assert patient.name_key == "o'brien^ann"
    assert patient.name_words == " o'brien ann "
    assert str(patient.birth_date) == "1970-01-01"
    [study] = _rows(archive, Study)
    assert str(study.study_date) == "2023-12-31"
    assert study.study_time == "093000.000000"
    assert study.referring_name_key == "van gogh^vincent"
    assert (study.num_series, study.num_instances, study.modalities) == (1, 1, "CT")
    assert study.sop_classes == ds.SOPClassUID
    [series] = _rows(archive, Series)
    assert series.series_number == 7
    [instance] = _rows(archive, Instance)
    assert (instance.origin_protocol, instance.origin_address, instance.origin_user) == (
        "STOW-RS",
        "10.1.2.3:5555",
        "curl",
    )
    assert instance.received_at is not None
    assert len(instance.sha256) == 64


def test_metadata_follows_the_json_model(archive: Archive) -> None:
    ds = make_instance(
        PatientName="Yamada^Tarou=山田^太郎=やまだ^たろう",
        SpecificCharacterSet=["", "ISO 2022 IR 87"],
        SliceThickness="2.5",
        ImagePositionPatient=["0", "-1.5", "3"],
        InstanceNumber="12",
    )
    ds.add_new(0x00091010, "OB", b"\x01" * 4096)  # a private binary value over the threshold
    ds.add_new(0x00091011, "OB", b"\x02" * 16)  # and a small one, inlined
    archive.store(io.BytesIO(to_bytes(ds)), ORIGIN)
    metadata = json.loads(next(archive.metadata(ds.StudyInstanceUID)))
    assert metadata["00100010"]["Value"] == [
        {"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"}
    ]
    assert metadata["00180050"] == {"vr": "DS", "Value": [2.5]}
    assert metadata["00200032"]["Value"] == [0, -1.5, 3]
    assert metadata["00200013"] == {"vr": "IS", "Value": [12]}
    assert metadata["00091010"]["BulkDataURI"].endswith("/bulkdata/00091010")
    assert metadata["00091011"]["InlineBinary"] == "AgICAgICAgICAgICAgICAg=="
    [stored] = archive.instances(ds.StudyInstanceUID)
    assert b"".join(archive.read_ranges(stored, [stored.bulk["00091010"]])) == b"\x01" * 4096
    assert list(metadata) == sorted(metadata)


@pytest.mark.parametrize("policy", ["keep", "replace", "reject"])
def test_duplicate_policy(tmp_path: Path, database_url: str, policy: str) -> None:
    archive = Archive(
        make_settings(tmp_path / "d", database_url, ingest={"duplicate_policy": policy})
    )
    try:
        first = make_instance(StudyDescription="first")
        second = first.copy()
        second.StudyDescription = "second"
        second.SeriesDescription = "changed"
        archive.store(io.BytesIO(to_bytes(first)), ORIGIN)
        if policy == "reject":
            with pytest.raises(DuplicateInstance):
                archive.store(io.BytesIO(to_bytes(second)), ORIGIN)
            expected = to_bytes(first)
        else:
            result = archive.store(io.BytesIO(to_bytes(second)), ORIGIN)
            assert (
                result.status
                == {"keep": StoreStatus.DUPLICATE, "replace": StoreStatus.REPLACED}[policy]
            )
            expected = to_bytes(first if policy == "keep" else second)
        [stored] = archive.instances(first.StudyInstanceUID)
        assert archive.path(stored).read_bytes() == expected
        assert len(_rows(archive, Instance)) == 1
        [study] = _rows(archive, Study)
        assert study.num_instances == 1 and study.num_series == 1
        files = list((tmp_path / "d").glob("*/*/*.dcm"))
        assert files == [archive.path(stored)]
    finally:
        archive.close()


def _assert_nothing_stored(archive: Archive, settings: Settings) -> None:
    assert _rows(archive, Instance) == []
    assert _rows(archive, Study) == []
    data = settings.storage.data_dir
    assert list(data.glob("*/*/*")) == []
    assert list((data / ".tmp").iterdir()) == []


@pytest.mark.parametrize(
    ("damage", "error", "message"),
    [
        (lambda ds: delattr(ds, "SOPInstanceUID"), InvalidInstance, "SOPInstanceUID is missing"),
        (lambda ds: setattr(ds, "StudyInstanceUID", "1.2.03"), InvalidInstance, "not a valid UID"),
        (
            lambda ds: setattr(ds, "SeriesInstanceUID", "../../etc"),
            InvalidInstance,
            "SeriesInstanceUID",
        ),
        (lambda ds: setattr(ds, "SOPClassUID", "1." * 40), InvalidInstance, "SOPClassUID"),
    ],
)
def test_invalid_instances_are_refused_and_leave_nothing(
    archive: Archive, settings: Settings, damage, error, message: str
) -> None:
    ds = make_instance()
    damage(ds)
    with pytest.raises(error, match=message):
        archive.store(io.BytesIO(to_bytes(ds)), ORIGIN)
    _assert_nothing_stored(archive, settings)


def test_unreadable_or_unsupported_files_are_refused(archive: Archive, settings: Settings) -> None:
    with pytest.raises(InvalidInstance, match="Part 10"):
        archive.store(io.BytesIO(b"not dicom at all" * 100), ORIGIN)
    ds = make_instance()
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    bare = DicomBytesIO()  # a data set alone, no File Meta, as some old tools store it
    bare.is_little_endian, bare.is_implicit_VR = True, True
    write_dataset(bare, ds)
    with pytest.raises(InvalidInstance, match="File Meta"):
        archive.store(io.BytesIO(bare.getvalue()), ORIGIN)
    # A private transfer syntax of the same length, patched into the File Meta.
    private = to_bytes(ds).replace(b"1.2.840.10008.1.2.1\0", b"1.2.3.4.5.6.7.8.9.10", 1)
    with pytest.raises(UnsupportedTransferSyntax, match=re.escape("1.2.3.4.5.6.7.8.9.10")):
        archive.store(io.BytesIO(private), ORIGIN)
    truncated = to_bytes(make_instance())[:200]
    with pytest.raises(InvalidInstance):
        archive.store(io.BytesIO(truncated), ORIGIN)
    _assert_nothing_stored(archive, settings)


def test_study_mismatch_is_refused(archive: Archive, settings: Settings) -> None:
    ds = make_instance()
    with pytest.raises(StudyMismatch):
        archive.store(io.BytesIO(to_bytes(ds)), ORIGIN, expected_study_uid=uid())
    _assert_nothing_stored(archive, settings)


def test_aggregates_follow_inserts_and_deletes(archive: Archive, settings: Settings) -> None:
    study = uid()
    ct = make_series(3, study_uid=study)
    sr = make_series(2, study_uid=study, Modality="SR", sop_class="1.2.840.10008.5.1.4.1.1.88.11")
    for ds in ct + sr:
        archive.store(io.BytesIO(to_bytes(ds)), ORIGIN)
    [row] = _rows(archive, Study)
    assert (row.num_series, row.num_instances, row.modalities) == (2, 5, "CT\\SR")
    assert row.sop_classes == "\\".join(sorted({ct[0].SOPClassUID, sr[0].SOPClassUID}))
    assert archive.delete(study, sr[0].SeriesInstanceUID) == 2
    [row] = _rows(archive, Study)
    assert (row.num_series, row.num_instances, row.modalities, row.sop_classes) == (
        1,
        3,
        "CT",
        ct[0].SOPClassUID,
    )
    assert archive.delete(study, ct[0].SeriesInstanceUID, ct[0].SOPInstanceUID) == 1
    [series] = _rows(archive, Series)
    assert series.num_instances == 2
    assert archive.delete(study) == 2
    assert _rows(archive, Patient) == []
    _assert_nothing_stored(archive, settings)


def test_missing_preamble_is_supplied(archive: Archive) -> None:
    """File Meta without the 128-byte preamble and "DICM" (pydicom writes such files
    when a data set has no preamble; so do some older tools): stored as Part 10."""
    ds = make_instance()
    without = to_bytes(ds)[128 + 4 :]
    assert archive.store(io.BytesIO(without), ORIGIN).status is StoreStatus.STORED
    [stored] = archive.instances(ds.StudyInstanceUID)
    assert archive.path(stored).read_bytes() == bytes(128) + b"DICM" + without


@pytest.mark.parametrize(
    ("attributes", "old", "new", "key", "expected"),
    [
        # Values real files carry although their VR forbids them: stored, never refused.
        ({"SliceThickness": "9.75"}, b"9.75", b"abc ", "00180050", ["abc"]),
        ({"SliceThickness": "9.75"}, b"9.75", b"NaN ", "00180050", ["nan"]),
        ({"SliceThickness": "9.7531"}, b"9.7531", b"1e999 ", "00180050", ["inf"]),
        ({"StudyDate": "20240115"}, b"20240115", b"2024/1/5", "00080020", ["2024/1/5"]),
    ],
)
def test_malformed_values_are_kept_and_metadata_stays_valid_json(
    archive: Archive, attributes: dict, old: bytes, new: bytes, key: str, expected: list
) -> None:
    ds = make_instance(**attributes)
    data = to_bytes(ds).replace(old, new, 1)
    archive.store(io.BytesIO(data), ORIGIN)
    text = next(archive.metadata(ds.StudyInstanceUID))
    metadata = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
    assert metadata[key]["Value"] == expected
    [stored] = archive.instances(ds.StudyInstanceUID)
    assert archive.path(stored).read_bytes() == data


def test_two_people_sharing_a_patient_id_stay_apart(archive: Archive) -> None:
    """Sites without an Issuer of Patient ID reuse IDs: a search by the second name must
    still find the second person's study, with that name."""
    from dicomweb_server.archive import Level, Query

    first = make_instance(PatientID="12345", PatientName="Smith^Jane")
    second = make_instance(PatientID="12345", PatientName="Doe^John")
    for ds in (first, second):
        archive.store(io.BytesIO(to_bytes(ds)), ORIGIN)
    [found] = archive.search(Query(Level.STUDY, {"PatientName": "DOE^JOHN"}))
    assert found["0020000D"]["Value"] == [second.StudyInstanceUID]
    assert found["00100010"]["Value"] == [{"Alphabetic": "Doe^John"}]
    assert len(archive.search(Query(Level.STUDY, {"PatientID": "12345"}))) == 2
