"""Deterministic benchmark data: CT series, radiographs, multi-frame, compressed, tiny.

Every set is written once under ``benchmarks/out/data/<name>/`` with a ``manifest.json``
and reused by later runs; the same seeds give the same bytes on every machine.  The
"tiny" instances that grow an index to 100,000 or 1,000,000 instances are built in
memory on demand (8x8 pixels; only their index rows matter for search figures).

Pixel data is a smooth phantom with noise rather than pure noise, so that the lossless
JPEG 2000 and JPEG-LS variants compress about as real CT does.
"""

from __future__ import annotations

import datetime as dt
import io
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    generate_uid,
)

OUT = Path(__file__).resolve().parent / "out"
DATA = OUT / "data"
FORMAT = 2  #: bump when the generator changes, so stale sets are rebuilt
ROOT = "1.2.826.0.1.3680043.10.5432."  #: UID root of benchmark data
SURNAMES = [
    "SMITH",
    "JONES",
    "MILLER",
    "GARCIA",
    "MUELLER",
    "ROSSI",
    "DUBOIS",
    "TANAKA",
    "NOVAK",
    "SILVA",
    "JANSEN",
    "NILSSON",
    "KOWALSKI",
    "HORVAT",
    "PETROV",
    "OKAFOR",
    "NGUYEN",
    "KIM",
    "COHEN",
    "MARTIN",
]
MODALITIES = ["CT", "MR", "CR", "US", "DX", "MG", "PT", "NM"]


@dataclass(frozen=True)
class SeriesSet:
    """One generated series on disk."""

    name: str
    study_uid: str
    series_uid: str
    sop_uids: list[str]
    files: list[str]
    transfer_syntax: str
    bytes: int

    @property
    def paths(self) -> list[Path]:
        return [DATA / self.name / f for f in self.files]


def _uid(*parts: object) -> str:
    return generate_uid(prefix=ROOT, entropy_srcs=[str(p) for p in parts])


def phantom(rows: int, columns: int, seed: int) -> np.ndarray:
    """A 12-bit body-like ellipse with a few dense disks and noise, as uint16."""
    rng = np.random.default_rng(seed)
    y, x = np.ogrid[-1 : 1 : rows * 1j, -1 : 1 : columns * 1j]
    image = np.where((x / 0.85) ** 2 + (y / 0.7) ** 2 < 1, 1040.0, 24.0)
    for cx, cy, r in rng.uniform([-0.5, -0.4, 0.05], [0.5, 0.4, 0.15], size=(4, 3)):
        image[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = 1700.0
    image += rng.normal(0, 12, size=(rows, columns))
    return np.clip(image, 0, 4095).astype(np.uint16)


def _base(
    sop_class: str,
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    patient: str,
    modality: str,
    number: int,
) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientName = patient
    ds.PatientID = patient.split("^")[-1]
    ds.PatientBirthDate = "19600101"
    ds.PatientSex = "O"
    ds.StudyDate = "20240115"
    ds.StudyTime = "101500"
    ds.AccessionNumber = "BENCH"
    ds.StudyID = "1"
    ds.StudyDescription = "benchmark"
    ds.ReferringPhysicianName = ""
    ds.Modality = modality
    ds.SeriesNumber = 1
    ds.SeriesDescription = "benchmark"
    ds.InstanceNumber = number
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def _pixels(ds: Dataset, pixels: np.ndarray) -> None:
    frames, rows, columns = pixels.shape
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = pixels.tobytes()


def _ct_slice(
    study_uid: str, series_uid: str, sop_uid: str, patient: str, index: int, pixels: np.ndarray
) -> Dataset:
    ds = _base(CTImageStorage, study_uid, series_uid, sop_uid, patient, "CT", index + 1)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.FrameOfReferenceUID = _uid("for", series_uid)
    ds.ImagePositionPatient = [-250.0, -250.0, -index * 1.25]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [0.9765625, 0.9765625]
    ds.SliceThickness = 1.25
    ds.KVP = 120
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
    ds.WindowCenter, ds.WindowWidth = 40, 400
    _pixels(ds, pixels[np.newaxis])
    return ds


def _write(folder: Path, number: int, ds: Dataset) -> tuple[str, int]:
    name = f"{number:05d}.dcm"
    ds.save_as(folder / name, enforce_file_format=True)
    return name, (folder / name).stat().st_size


def _load(name: str) -> SeriesSet | None:
    manifest = DATA / name / "manifest.json"
    try:
        data = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return None
    if data.pop("format", None) != FORMAT:
        return None
    return SeriesSet(**data)


def _save(series: SeriesSet) -> SeriesSet:
    (DATA / series.name / "manifest.json").write_text(
        json.dumps({"format": FORMAT, **asdict(series)})
    )
    return series


def ct_series(
    name: str, slices: int, *, size: int = 512, transfer_syntax: str = "", seed: int = 0
) -> SeriesSet:
    """A CT series of ``slices`` slices (``size``² 16-bit, ~525 KB each at 512)."""
    if (found := _load(name)) is not None:
        return found
    folder = DATA / name
    folder.mkdir(parents=True, exist_ok=True)
    study_uid, series_uid = _uid(name, "study"), _uid(name, "series")
    sop_uids, files, total = [], [], 0
    for index in range(slices):
        sop_uid = _uid(name, index)
        pixels = phantom(size, size, seed * 100_003 + index % 50)
        ds = _ct_slice(study_uid, series_uid, sop_uid, f"BENCH^{name.upper()}", index, pixels)
        if transfer_syntax:
            ds.compress(UID(transfer_syntax), generate_instance_uid=False)
        file, length = _write(folder, index, ds)
        sop_uids.append(sop_uid)
        files.append(file)
        total += length
    ts = transfer_syntax or ExplicitVRLittleEndian
    return _save(SeriesSet(name, study_uid, series_uid, sop_uids, files, ts, total))


def radiographs(name: str = "dx", rows: int = 3000, columns: int = 2500) -> SeriesSet:
    """Two large DX images of one study (about 15 MB each at the default size)."""
    if (found := _load(name)) is not None:
        return found
    folder = DATA / name
    folder.mkdir(parents=True, exist_ok=True)
    study_uid, series_uid = _uid(name, "study"), _uid(name, "series")
    sop_uids, files, total = [], [], 0
    for index in range(2):
        sop_uid = _uid(name, index)
        ds = _base(
            DigitalXRayImageStorageForPresentation,
            study_uid,
            series_uid,
            sop_uid,
            "BENCH^DX",
            "DX",
            index + 1,
        )
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.ImagerPixelSpacing = [0.15, 0.15]
        ds.WindowCenter, ds.WindowWidth = 2048, 4096
        _pixels(ds, phantom(rows, columns, 7 + index)[np.newaxis])
        file, length = _write(folder, index, ds)
        sop_uids.append(sop_uid)
        files.append(file)
        total += length
    return _save(
        SeriesSet(name, study_uid, series_uid, sop_uids, files, ExplicitVRLittleEndian, total)
    )


def multiframe(name: str = "mf", frames: int = 50, size: int = 512) -> SeriesSet:
    """One multi-frame secondary capture instance of ``frames`` 16-bit frames."""
    if (found := _load(name)) is not None:
        return found
    folder = DATA / name
    folder.mkdir(parents=True, exist_ok=True)
    study_uid, series_uid, sop_uid = _uid(name, "study"), _uid(name, "series"), _uid(name, 0)
    ds = _base(
        MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
        study_uid,
        series_uid,
        sop_uid,
        "BENCH^MF",
        "OT",
        1,
    )
    ds.ConversionType = "WSD"
    pixels = np.stack([phantom(size, size, 11 + i % 10) for i in range(frames)])
    _pixels(ds, pixels)
    file, length = _write(folder, 0, ds)
    return _save(
        SeriesSet(name, study_uid, series_uid, [sop_uid], [file], ExplicitVRLittleEndian, length)
    )


def compressed_variants(slices: int, size: int = 512) -> dict[str, SeriesSet]:
    """JPEG 2000 and JPEG-LS lossless series, for those whose encoder is installed."""
    variants = {}
    for label, syntax in (("j2k", JPEG2000Lossless), ("jls", JPEGLSLossless)):
        try:
            variants[label] = ct_series(
                f"ct{slices}_{label}_{size}", slices, size=size, transfer_syntax=syntax, seed=3
            )
        except (RuntimeError, ImportError, ValueError, NotImplementedError):
            continue  # no encoder plugin: the variant is simply not measured
    return variants


def ingest_batch(run: int, slices: int, size: int = 512) -> SeriesSet:
    """A fresh CT series for ingest run ``run``: new UIDs, so nothing is a duplicate."""
    return ct_series(f"ingest{size}_{slices}_{run:03d}", slices, size=size, seed=run)


# -- tiny instances that grow the index ---------------------------------------------


def tiny_uids(index: int) -> tuple[str, str, str]:
    """Study, series and SOP Instance UIDs of tiny instance ``index``."""
    study, series = index // 10, index // 5
    return (f"{ROOT}1.{study}", f"{ROOT}2.{series}", f"{ROOT}3.{index}")


def tiny_patient(index: int) -> tuple[str, str]:
    """Patient name and ID of tiny instance ``index``: two studies per patient."""
    patient = index // 20
    surname = SURNAMES[(patient * 7919) % len(SURNAMES)]
    return f"{surname}^P{patient}", f"TINY{patient:07d}"


def tiny_blobs(start: int, count: int) -> Iterator[bytes]:
    """Part 10 bytes of tiny instances ``start`` .. ``start + count - 1``.

    Ten instances a study in two series; twenty patient surnames; study dates spread
    over 2000-2024; modalities cycling through :data:`MODALITIES`.
    """
    template = _base(CTImageStorage, "1", "1", "1", "X", "CT", 1)
    _pixels(template, np.zeros((1, 8, 8), dtype=np.uint16))
    epoch = dt.date(2000, 1, 1)
    for index in range(start, start + count):
        study_uid, series_uid, sop_uid = tiny_uids(index)
        study = index // 10
        name, patient_id = tiny_patient(index)
        ds = template
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.PatientName, ds.PatientID = name, patient_id
        ds.StudyDate = (epoch + dt.timedelta(days=(study * 37) % 9000)).strftime("%Y%m%d")
        ds.Modality = MODALITIES[study % len(MODALITIES)]
        ds.SeriesNumber = index // 5 % 2 + 1
        ds.InstanceNumber = index % 5 + 1
        ds.AccessionNumber = f"A{study}"
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        yield buffer.getvalue()
