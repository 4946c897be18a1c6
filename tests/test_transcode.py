"""Transfer syntax conversion (archive/transcode.py), checked against pydicom's decode."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import (
    MPEG2MPML,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
)

from dicomweb_server.archive.transcode import (
    TranscodeError,
    can_transcode,
    decode_frame,
    encode_frames,
    transcode,
)
from tests.factory import make_instance, to_bytes

LOSSLESS = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    RLELossless,
    JPEGLSLossless,
    JPEG2000Lossless,
]


def _roundtrip(data: bytes, target: str) -> bytes:
    return b"".join(transcode(io.BytesIO(data), target))


@pytest.mark.parametrize("source", [ExplicitVRLittleEndian, RLELossless, JPEG2000Lossless])
@pytest.mark.parametrize("target", LOSSLESS)
def test_lossless_conversion_keeps_pixels(source: str, target: str) -> None:
    ds = make_instance(frames=2, rows=64, columns=48, transfer_syntax=source)
    expected = make_instance(frames=2, rows=64, columns=48, sop_uid=ds.SOPInstanceUID).pixel_array
    out = dcmread(io.BytesIO(_roundtrip(to_bytes(ds), target)))
    assert out.file_meta.TransferSyntaxUID == target
    assert out.SOPInstanceUID == ds.SOPInstanceUID
    np.testing.assert_array_equal(out.pixel_array, expected)


def test_big_endian_source_becomes_little_endian() -> None:
    path = get_testdata_file("MR_small_bigendian.dcm", download=False)
    oracle = dcmread(path)
    out = dcmread(io.BytesIO(_roundtrip(Path(path).read_bytes(), ExplicitVRLittleEndian)))
    assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    np.testing.assert_array_equal(out.pixel_array, oracle.pixel_array)
    assert out.PatientName == oracle.PatientName


def test_lossy_source_decodes_to_native() -> None:
    path = get_testdata_file("SC_rgb_jpeg_dcmtk.dcm", download=False)
    oracle = dcmread(path).pixel_array
    out = dcmread(io.BytesIO(_roundtrip(Path(path).read_bytes(), ExplicitVRLittleEndian)))
    np.testing.assert_array_equal(out.pixel_array, oracle)


def test_can_transcode_by_uid_alone() -> None:
    assert can_transcode(JPEG2000Lossless, ExplicitVRLittleEndian)
    assert can_transcode(ExplicitVRLittleEndian, JPEGLSLossless)
    assert can_transcode(MPEG2MPML, MPEG2MPML)
    assert not can_transcode(MPEG2MPML, ExplicitVRLittleEndian)
    assert not can_transcode(ExplicitVRLittleEndian, ExplicitVRBigEndian)  # retired: never produced
    assert not can_transcode(ExplicitVRLittleEndian, JPEGBaseline8Bit)  # no encoder installed
    assert not can_transcode(ExplicitVRLittleEndian, "1.2.3.4")


def test_impossible_conversion_raises() -> None:
    data = to_bytes(make_instance())
    with pytest.raises(TranscodeError, match="JPEG Baseline"):
        _roundtrip(data, JPEGBaseline8Bit)


def test_decode_and_encode_single_frames() -> None:
    ds = make_instance(frames=3, rows=64, columns=64, transfer_syntax=RLELossless)
    data = to_bytes(ds)
    oracle = dcmread(io.BytesIO(data)).pixel_array
    assert decode_frame(io.BytesIO(data), 2) == oracle[1].astype("<u2").tobytes()
    with pytest.raises(IndexError):
        decode_frame(io.BytesIO(data), 4)
    [j2k] = encode_frames(io.BytesIO(data), [3], JPEG2000Lossless)
    assert j2k.startswith(b"\xff\x4f\xff\x51")
    assert UID(JPEG2000Lossless).is_compressed
