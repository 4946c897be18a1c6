"""De-identification on ingest: real archives, files, STOW-RS over HTTP, C-STORE over TCP."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydicom import config as pydicom_config
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)
from pydicom.valuerep import validate_value

from dicomweb_server.archive import Archive, Origin
from dicomweb_server.archive.deid import batch, crosswalk, quarantine
from dicomweb_server.archive.deid.pseudonyms import Pseudonyms
from dicomweb_server.archive.errors import NotFound
from dicomweb_server.archive.ingest import StoreStatus
from dicomweb_server.config import Settings

from .conftest import make_settings
from .factory import make_instance, make_series, to_bytes, uid, write

SECRET = "ingest-test-secret"
_STRING_VRS = {
    "AE",
    "AS",
    "CS",
    "DA",
    "DS",
    "DT",
    "IS",
    "LO",
    "LT",
    "PN",
    "SH",
    "ST",
    "TM",
    "UC",
    "UI",
    "UR",
    "UT",
}
DEID: dict[str, Any] = {
    "enabled": True,
    "secret": SECRET,
    "default_profile": "research",
    "profiles": {
        "research": {
            "options": ["retain_longitudinal_modified_dates", "clean_descriptors"],
            "clean_pixel_data": [
                {
                    "match": {
                        "Manufacturer": "ACME",
                        "ManufacturerModelName": "Scope 9",
                        "Rows": 64,
                        "Columns": 48,
                    },
                    "regions": [[0, 0, 48, 8], [30, 50, 10, 10]],
                },
                {"match": {"ManufacturerModelName": "Big 1"}, "regions": [[0, 0, 100, 100]]},
            ],
        },
        "safe": {"options": ["retain_safe_private"], "safe_private": ["ACME 1.0,0029,10"]},
    },
    "sources": {"MODALITY1": "research", "RAW": "", "SAFEPRIV": "safe"},
}


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return make_settings(tmp_path / "data", database_url, deid=DEID)


def _stored(archive: Archive, study_uid: str) -> list[Dataset]:
    return [dcmread(archive.path(i)) for i in archive.instances(study_uid)]


def _pixel_bytes(ds: Dataset) -> bytes:
    return bytes(ds.PixelData)


def test_two_parts_of_a_study_over_stow_and_c_store_become_one_study(
    settings: Settings, archive: Archive, web: Any, dicomweb: Any
) -> None:
    dimse_fixtures = pytest.importorskip("tests.dimse_fixtures")
    from pydicom.uid import CTImageStorage

    originals = make_series(2)
    study = originals[0].StudyInstanceUID
    originals[1].SeriesInstanceUID = uid()  # the second part is another series
    # Part 1: STOW-RS over HTTP (no source name: the default profile applies); the
    # answer says the instance was coerced (PS3.18 Annex I WarningReason B000).
    answer = dicomweb.store_instances([originals[0]])
    assert answer.ReferencedSOPSequence[0].WarningReason == 0xB000
    # Part 2: C-STORE from calling AE MODALITY1, mapped to the same profile.
    handle = dimse_fixtures.dimse_scp.start(settings, archive)
    try:
        assoc = dimse_fixtures.associate(handle.port, [CTImageStorage], ae_title="MODALITY1")
        assert assoc.is_established
        status = assoc.send_c_store(originals[1])
        assoc.release()
        assert status.Status == 0xB000  # coercion of data elements, PS3.4 Table B.2-1
    finally:
        handle.shutdown()
    pseudo_study = Pseudonyms(SECRET).uid(study)
    with pytest.raises(NotFound):
        archive.instances(study)
    stored = _stored(archive, pseudo_study)
    assert len(stored) == 2
    assert {ds.PatientID for ds in stored} == {Pseudonyms(SECRET).patient_id("PID001")}
    assert {ds.SeriesInstanceUID for ds in stored} == {
        Pseudonyms(SECRET).uid(o.SeriesInstanceUID) for o in originals
    }
    by_sop = {ds.SOPInstanceUID: ds for ds in stored}
    for original in originals:
        copy = by_sop[Pseudonyms(SECRET).uid(original.SOPInstanceUID)]
        assert _pixel_bytes(copy) == _pixel_bytes(original)
        assert copy.file_meta.MediaStorageSOPInstanceUID == copy.SOPInstanceUID
        assert copy.PatientIdentityRemoved == "YES"
        assert copy.StudyDate != original.StudyDate  # shifted, per patient
        assert "Doe" not in str(copy.PatientName)
        assert "ReferringPhysicianName" in copy and not copy.ReferringPhysicianName
    # The index and the metadata JSON reflect the de-identified header.
    metadata = "".join(archive.metadata(pseudo_study))
    assert "PID001" not in metadata and "Doe" not in metadata and study not in metadata


def test_same_patient_gets_the_same_pseudonym_after_a_restart(settings: Settings) -> None:
    first = Archive(settings)
    a = make_instance()
    first.store(_path(a, settings), Origin("DIMSE", ae_title="MODALITY1"))
    first.close()
    second = Archive(settings)  # a new process would build exactly this
    b = make_instance()
    c = make_instance(PatientID="OTHER")
    for ds in (b, c):
        second.store(_path(ds, settings), Origin("DIMSE", ae_title="MODALITY1"))
    p = Pseudonyms(SECRET)
    ids = [_stored(second, p.uid(ds.StudyInstanceUID))[0].PatientID for ds in (a, b, c)]
    dates = [_stored(second, p.uid(ds.StudyInstanceUID))[0].StudyDate for ds in (a, b, c)]
    second.close()
    assert ids[0] == ids[1] != ids[2]
    assert dates[0] == dates[1]  # one offset per patient: intervals survive


def _path(ds: Dataset, settings: Settings) -> Path:
    return write(ds, settings.storage.data_dir.parent / "in")


def test_a_source_mapped_to_no_profile_is_stored_unchanged(archive: Archive) -> None:
    ds = make_instance()
    result = archive.store(_path(ds, archive.settings), Origin("DIMSE", ae_title="RAW"))
    assert result.study_uid == ds.StudyInstanceUID
    assert result.warnings == () and not result.coerced
    changed = archive.store(_path(make_instance(), archive.settings), Origin("STOW-RS"))
    assert "de-identified on ingest" in changed.warnings[0]
    assert changed.coerced  # coercion of data elements, PS3.4 B.2.3
    assert _stored(archive, ds.StudyInstanceUID)[0].PatientID == "PID001"


def test_encapsulated_pixel_data_is_copied_without_decoding(archive: Archive) -> None:
    # A kept value above the bulk data threshold is read lazily (deferred) by parse.
    ds = make_instance(frames=3, transfer_syntax=RLELossless, ICCProfile=b"\x07" * 4096)
    ds.file_meta.SourceApplicationEntityTitle = "CT_ROOM_3"
    result = archive.store(_path(ds, archive.settings), Origin("DIMSE", ae_title="MODALITY1"))
    copy = _stored(archive, result.study_uid)[0]
    assert copy.file_meta.TransferSyntaxUID == RLELossless
    assert _pixel_bytes(copy) == _pixel_bytes(ds)
    assert (copy.pixel_array == ds.pixel_array).all()
    assert copy.ICCProfile == b"\x07" * 4096
    assert "SourceApplicationEntityTitle" not in copy.file_meta
    frames = archive.instances(result.study_uid)[0]
    assert frames.sop_uid == copy.SOPInstanceUID


def test_burned_in_text_is_quarantined_then_released_or_rejected(archive: Archive) -> None:
    us = make_instance(Modality="US")
    flagged = make_instance(BurnedInAnnotation="YES")
    origin = Origin("DIMSE", ae_title="MODALITY1")
    results = [archive.store(_path(ds, archive.settings), origin) for ds in (us, flagged)]
    assert [r.status for r in results] == [StoreStatus.QUARANTINED] * 2
    for result in results:
        with pytest.raises(NotFound):
            archive.instances(result.study_uid)
    held = quarantine.listing(archive)
    assert [h.sop_uid for h in held] == [r.sop_uid for r in results]
    assert "US" in held[0].reason and "Burned In Annotation" in held[1].reason
    assert dcmread(held[0].path).PatientIdentityRemoved == "YES"
    released = quarantine.release(archive, held[0].sop_uid)
    assert released.status is StoreStatus.STORED
    assert _stored(archive, released.study_uid)[0].SOPInstanceUID == held[0].sop_uid
    quarantine.reject(archive, held[1].sop_uid)
    assert not held[1].path.exists()
    assert quarantine.listing(archive) == []


@pytest.fixture
def admin_key(tmp_path: Path) -> Iterator[tuple[Path, bytes]]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = tmp_path / "crosswalk.pub.pem"
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    yield public, private


def test_encrypted_crosswalk_is_readable_only_with_the_admin_key(
    tmp_path: Path, database_url: str, admin_key: tuple[Path, bytes]
) -> None:
    public, private = admin_key
    deid = {**DEID, "crosswalk": "encrypted", "crosswalk_public_key": public}
    settings = make_settings(tmp_path / "data", database_url, deid=deid)
    archive = Archive(settings)
    try:
        ds = make_instance()
        result = archive.store(_path(ds, settings), Origin("DIMSE", ae_title="MODALITY1"))
        pseudonym = Pseudonyms(SECRET).patient_id("PID001")
        found = crosswalk.reveal(archive.writer_engine, private, "patient", pseudonym)
        assert found == {"PatientID": "PID001", "IssuerOfPatientID": "", "PatientName": "Doe^John"}
        study = crosswalk.reveal(archive.writer_engine, private, "study", result.study_uid)
        assert study == {"StudyInstanceUID": ds.StudyInstanceUID}
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        with pytest.raises(ValueError):
            crosswalk.reveal(archive.writer_engine, other, "patient", pseudonym)
    finally:
        archive.close()


def test_existing_study_is_copied_into_a_deidentified_one(
    tmp_path: Path, database_url: str
) -> None:
    settings = make_settings(tmp_path / "data", database_url, deid={**DEID, "enabled": False})
    archive = Archive(settings)
    try:
        originals = make_series(3)
        for ds in originals:
            archive.store(_path(ds, settings), Origin("IMPORT"))
        study = originals[0].StudyInstanceUID
        result = batch.deidentify_studies(archive, [study], "research", progress=False)
        assert len(result.stored) == 3
        pseudo = Pseudonyms(SECRET).uid(study)
        assert {r.study_uid for r in result.stored} == {pseudo}
        assert len(archive.instances(study)) == 3  # the originals stay
        assert {ds.PatientID for ds in _stored(archive, pseudo)} == {
            Pseudonyms(SECRET).patient_id("PID001")
        }
    finally:
        archive.close()


def test_output_passes_pydicom_and_dciodvfy(archive: Archive, tmp_path: Path) -> None:
    ds = make_instance(InstitutionName="General Hospital", OperatorsName="Smith^Bob")
    source = _path(ds, archive.settings)
    result = archive.store(source, Origin("DIMSE", ae_title="MODALITY1"))
    stored = archive.path(archive.instances(result.study_uid)[0])
    # Operators' Name is X/Z/D, Type 3 in the CT Image IOD: removed (PS3.15 E.3.1).
    assert "OperatorsName" not in dcmread(stored)
    with pydicom_config.strict_reading():
        copy = dcmread(stored)
        for element in copy.iterall():
            values = element.value if element.VM > 1 else [element.value]
            for value in values:
                if element.VR in _STRING_VRS:
                    validate_value(element.VR, str(value), pydicom_config.RAISE)
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy not installed (apt package dicom3tools)")

    def errors(path: Path) -> set[str]:
        run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
        lines = (run.stdout + run.stderr).splitlines()
        return {line for line in lines if line.startswith("Error")}

    # De-identification must not make an instance less valid than it arrived.
    assert errors(stored) <= errors(source)


def test_invalid_profile_configuration_fails_at_start(tmp_path: Path) -> None:
    bad = {**DEID, "profiles": {"research": {"options": ["retain_everything"]}}}
    with pytest.raises(ValueError, match="retain_everything"):
        Archive(make_settings(tmp_path / "d1", deid=bad))
    no_secret = {**DEID, "secret": ""}
    with pytest.raises(ValueError, match="secret"):
        Archive(make_settings(tmp_path / "d2", deid=no_secret))


def test_pixel_data_is_never_loaded_into_memory(archive: Archive) -> None:
    ds = make_instance(rows=2048, columns=2048, frames=4)  # 32 MiB of Pixel Data
    path = _path(ds, archive.settings)
    expected = hashlib.sha256(ds.PixelData).hexdigest()
    del ds
    tracemalloc.start()
    try:
        result = archive.store(path, Origin("DIMSE", ae_title="MODALITY1"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20, f"peak {peak / 2**20:.1f} MiB while storing 32 MiB"
    copy = dcmread(archive.path(archive.instances(result.study_uid)[0]))
    assert copy.PatientIdentityRemoved == "YES"
    assert hashlib.sha256(copy.PixelData).hexdigest() == expected


def test_cli_deidentify_and_quarantine_commands(settings: Settings, tmp_path: Path) -> None:
    config = tmp_path / "deid.toml"
    config.write_text(
        f"[storage]\ndata_dir = {str(settings.storage.data_dir)!r}\n"
        f"[database]\nurl = {settings.database.url!r}\n"
        f'[deid]\nsecret = "{SECRET}"\n'
        '[deid.profiles.research]\noptions = ["retain_longitudinal_modified_dates"]\n'
    )
    plain = Archive(make_settings(settings.storage.data_dir, settings.database.url))
    try:
        originals = [*make_series(2), make_instance(Modality="US")]
        for ds in originals:
            plain.store(_path(ds, settings), Origin("IMPORT"))
    finally:
        plain.close()

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        run = subprocess.run(
            [sys.executable, "-m", "dicomweb_server", *args, "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert run.returncode == 0, run.stderr
        return run

    studies = [originals[0].StudyInstanceUID, originals[2].StudyInstanceUID]
    out = cli("deidentify", *studies, "--profile", "research").stdout
    assert "2 stored, 1 quarantined" in out
    assert Pseudonyms(SECRET).uid(studies[0]) in out
    held = Pseudonyms(SECRET).uid(originals[2].SOPInstanceUID)
    assert held in cli("quarantine", "list").stdout
    assert f"rejected {held}" in cli("quarantine", "reject", held).stdout
    assert held not in cli("quarantine", "list").stdout


@pytest.mark.parametrize(
    "syntax",
    [ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian],
)
def test_every_native_transfer_syntax_keeps_its_pixels(archive: Archive, syntax: str) -> None:
    ds = make_instance(frames=2, transfer_syntax=syntax)
    result = archive.store(_path(ds, archive.settings), Origin("DIMSE", ae_title="MODALITY1"))
    copy = _stored(archive, result.study_uid)[0]
    assert copy.file_meta.TransferSyntaxUID == syntax
    assert _pixel_bytes(copy) == _pixel_bytes(ds)
    assert copy.PatientID == Pseudonyms(SECRET).patient_id("PID001")


def test_stow_source_route_selects_the_profile(archive: Archive, web: Any) -> None:
    """``/sources/{name}/studies`` picks the profile as a calling AE title does."""
    import requests

    raw, default = make_instance(), make_instance()
    boundary = "b0undary"

    def post(path: str, ds: Dataset) -> requests.Response:
        body = (
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            + to_bytes(ds)
            + f"\r\n--{boundary}--\r\n".encode()
        )
        content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
        return requests.post(
            web.url + path, data=body, headers={"Content-Type": content_type}, timeout=30
        )

    assert post("/sources/RAW/studies", raw).status_code == 200  # mapped to no profile
    assert _stored(archive, raw.StudyInstanceUID)[0].PatientID == "PID001"
    answer = post("/studies", default)  # the default profile
    assert answer.status_code == 202  # stored, with coercion warnings
    with pytest.raises(NotFound):
        archive.instances(default.StudyInstanceUID)
    assert post("/sources/bad%20name/studies", raw).status_code == 400


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_retain_safe_private_through_ingest(archive: Archive, syntax: str) -> None:
    """Table E.3.10-1 and the profile's list are kept, whatever the block; nothing else."""
    ds = make_instance(transfer_syntax=syntax)
    ds.private_block(0x0019, "SIEMENS MR HEADER", create=True).add_new(0x0C, "IS", "1000")
    ds.private_block(0x0019, "OTHER", create=True).add_new(0x0C, "LO", "Doe^John")
    pet = ds.private_block(0x7053, "Philips PET Private Group", create=True)
    pet.add_new(0x00, "DS", "0.000276")
    pet.add_new(0x10, "LO", "Doe^John")  # not in the table
    ds.private_block(0x0029, "ACME 1.0", create=True).add_new(0x10, "LO", "kept")
    ds.private_block(0x0029, "ACME 2.0", create=True).add_new(0x10, "LO", "Doe^John")
    result = archive.store(_path(ds, archive.settings), Origin("DIMSE", ae_title="SAFEPRIV"))
    copy = _stored(archive, result.study_uid)[0]
    private = {
        f"{e.tag:08X}": str(e.value, "latin-1") if isinstance(e.value, bytes) else str(e.value)
        for e in copy
        if e.tag.group & 1
    }
    assert {k: v.strip() for k, v in private.items()} == {
        "00190010": "SIEMENS MR HEADER",
        "0019100C": "1000",
        "00290010": "ACME 1.0",
        "00291010": "kept",
        "70530010": "Philips PET Private Group",
        "70531000": "0.000276",
    }
    codes = [i.CodeValue for i in copy.DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113111"]  # Retain Safe Private Option, CID 7050
    assert "Doe" not in to_bytes(copy).decode("latin-1")


US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"
SCOPE_9 = {"Manufacturer": "ACME", "ManufacturerModelName": "Scope 9", "Modality": "US"}


def _dciodvfy_errors(path: Path) -> set[str]:
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    return {line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")}


@pytest.mark.parametrize(("samples", "bits"), [(1, 16), (3, 8)])
def test_clean_pixel_data_blanks_the_regions_of_a_known_device(
    archive: Archive, dicomweb: Any, samples: int, bits: int
) -> None:
    """PS3.15 E.3.1 Clean Pixel Data: blanked over STOW-RS, checked over WADO-RS."""
    ds = make_instance(
        sop_class=US_MULTIFRAME,
        rows=64,
        columns=48,
        frames=3,
        samples=samples,
        bits=bits,
        seed=7,
        **SCOPE_9,
    )
    ds.PixelData = (
        np.frombuffer(ds.PixelData, dtype=ds.pixel_array.dtype) | 1
    ).tobytes()  # no zeros
    source = _path(ds, archive.settings)
    original = ds.pixel_array.copy()
    answer = dicomweb.store_instances([ds])
    assert answer.ReferencedSOPSequence[0].WarningReason == 0xB000
    p = Pseudonyms(SECRET)
    copy = dicomweb.retrieve_instance(
        p.uid(ds.StudyInstanceUID), p.uid(ds.SeriesInstanceUID), p.uid(ds.SOPInstanceUID)
    )
    assert quarantine.listing(archive) == []  # published, not held
    assert copy.BurnedInAnnotation == "NO"
    codes = [i.CodeValue for i in copy.DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113101", "113105", "113107"]
    assert "Clean Pixel Data Option" in copy.DeidentificationMethod
    pixels = copy.pixel_array
    assert pixels.shape == original.shape
    mask = np.zeros(original.shape[1:3], dtype=bool)  # rows x columns
    mask[0:8, 0:48] = True
    mask[50:60, 30:40] = True
    assert (pixels[:, mask] == 0).all()
    assert (pixels[:, ~mask] == original[:, ~mask]).all()
    if shutil.which("dciodvfy") is not None:
        stored = archive.path(archive.instances(copy.StudyInstanceUID)[0])
        assert _dciodvfy_errors(stored) <= _dciodvfy_errors(source)


def test_clean_pixel_data_leaves_compressed_or_unknown_instances_quarantined(
    archive: Archive,
) -> None:
    compressed = make_instance(rows=64, columns=48, transfer_syntax=RLELossless, **SCOPE_9)
    other = make_instance(rows=64, columns=48, Manufacturer="OTHER", Modality="US")
    origin = Origin("DIMSE", ae_title="MODALITY1")
    results = [archive.store(_path(ds, archive.settings), origin) for ds in (compressed, other)]
    assert [r.status for r in results] == [StoreStatus.QUARANTINED] * 2
    for held, ds in zip(quarantine.listing(archive), (compressed, other), strict=True):
        copy = dcmread(held.path)
        assert "BurnedInAnnotation" not in copy
        assert "113101" not in [i.CodeValue for i in copy.DeidentificationMethodCodeSequence]
        assert _pixel_bytes(copy) == _pixel_bytes(ds)


def test_clean_pixel_data_holds_one_frame_at_a_time(archive: Archive) -> None:
    ds = make_instance(
        rows=2048, columns=2048, frames=4, Modality="US", ManufacturerModelName="Big 1"
    )  # 32 MiB of Pixel Data, 8 MiB per frame
    path = _path(ds, archive.settings)
    last = ds.pixel_array[3].copy()
    del ds
    tracemalloc.start()
    try:
        result = archive.store(path, Origin("DIMSE", ae_title="MODALITY1"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.status is StoreStatus.STORED
    # One frame (8 MiB) plus the ~3 MiB of storing without cleaning; two would be ~19 MiB.
    assert peak < 15 * 2**20, f"peak {peak / 2**20:.1f} MiB while cleaning 4 frames of 8 MiB"
    pixels = dcmread(archive.path(archive.instances(result.study_uid)[0])).pixel_array
    assert (pixels[:, :100, :100] == 0).all()
    assert (pixels[3, 100:, :] == last[100:, :]).all()
