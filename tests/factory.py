"""Synthetic DICOM instances for tests: small, deterministic, any transfer syntax.

Built with pydicom the way a modality would write them, so every test controls exactly
which attributes an instance carries.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

ROOT = "1.2.826.0.1.3680043.10.1234."  # a test root; generated UIDs stay unique


def uid() -> str:
    return generate_uid(prefix=ROOT)


def make_instance(
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    sop_class: str = CTImageStorage,
    rows: int = 16,
    columns: int = 16,
    frames: int = 1,
    bits: int = 16,
    samples: int = 1,
    seed: int = 0,
    transfer_syntax: str = ExplicitVRLittleEndian,
    **attributes: Any,
) -> Dataset:
    """A complete image instance; ``attributes`` (keywords) override the defaults."""
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid or uid()
    ds.StudyInstanceUID = study_uid or uid()
    ds.SeriesInstanceUID = series_uid or uid()
    ds.PatientName = "Doe^John"
    ds.PatientID = "PID001"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "M"
    ds.StudyDate = "20240115"
    ds.StudyTime = "101500"
    ds.AccessionNumber = "ACC001"
    ds.StudyID = "S1"
    ds.StudyDescription = "CT chest"
    ds.ReferringPhysicianName = "Smith^Anna"
    ds.Modality = "CT"
    ds.SeriesNumber = 1
    ds.SeriesDescription = "Axial"
    ds.InstanceNumber = 1
    ds.Rows = rows
    ds.Columns = columns
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = "MONOCHROME2" if samples == 1 else "RGB"
    if samples > 1:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.WindowCenter = 40
    ds.WindowWidth = 400
    if frames > 1:
        ds.NumberOfFrames = frames
    rng = np.random.default_rng(seed)
    dtype = {8: np.uint8, 16: np.uint16}[bits]
    shape = (frames, rows, columns, samples) if samples > 1 else (frames, rows, columns)
    pixels = rng.integers(0, 2 ** min(bits, 12), size=shape, dtype=dtype)
    ds.PixelData = pixels.tobytes()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    if UID(transfer_syntax) != ExplicitVRLittleEndian:
        if UID(transfer_syntax).is_compressed:
            ds.compress(transfer_syntax)
        else:
            ds.file_meta.TransferSyntaxUID = transfer_syntax
    return ds


def to_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def write(ds: Dataset, folder: Path, name: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (name or f"{ds.SOPInstanceUID}.dcm")
    ds.save_as(path, enforce_file_format=True)
    return path


def make_series(count: int, **kwargs: Any) -> list[Dataset]:
    """``count`` instances of one series (and study), numbered from 1."""
    study_uid = kwargs.pop("study_uid", None) or uid()
    series_uid = kwargs.pop("series_uid", None) or uid()
    return [
        make_instance(
            study_uid=study_uid, series_uid=series_uid, InstanceNumber=i + 1, seed=i, **kwargs
        )
        for i in range(count)
    ]
