"""Ingest through the archive core, on SQLite and PostgreSQL."""

from __future__ import annotations

import io
import json

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
    assert metadata["7FE00010"]["BulkDataURI"].endswith(f"/instances/{ds.SOPInstanceUID}/bulkdata/7FE00010")


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


def test_reparsed_stored_file_equals_input(archive: Archive) -> None:
    ds = make_instance(PatientName="Müller^Jürgen", SpecificCharacterSet="ISO_IR 100")
    archive.store(io.BytesIO(to_bytes(ds)), ORIGIN)
    [stored] = archive.instances(ds.StudyInstanceUID)
    assert str(dcmread(archive.path(stored)).PatientName) == "Müller^Jürgen"
