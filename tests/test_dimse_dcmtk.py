"""The DIMSE front driven by DCMTK's command-line tools, the SCUs most sites script with.

Skipped when DCMTK is not installed (``apt-get install dcmtk``).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, RLELossless

import dimse_scp
from dicomweb_server.archive import Archive

from .dimse_fixtures import StorageSCP, require_search
from .factory import make_instance, make_series, write

pytestmark = pytest.mark.skipif(
    shutil.which("storescu") is None,
    reason="DCMTK is not installed (apt-get install dcmtk provides echoscu, storescu, "
    "findscu, movescu, getscu)",
)


def _run(tool: str, port: int, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    command = [tool, "-aet", "DCMTKSCU", "-aec", "DICOMWEB", *args, "127.0.0.1", str(port)]
    # Files to send come after host and port for storescu.
    return subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=cwd)


def _stored_study(mover: dimse_scp.ServerHandle, tmp_path: Path) -> list:
    series = make_series(2, PatientName="Dcmtk^Test", PatientID="DCMTK1")
    series.append(
        make_instance(
            study_uid=series[0].StudyInstanceUID,
            PatientID="DCMTK1",
            PatientName="Dcmtk^Test",
            transfer_syntax=RLELossless,
        )
    )
    files = [str(write(ds, tmp_path / "in")) for ds in series]
    # -xr: propose RLE Lossless too (storescu proposes only uncompressed by default).
    result = subprocess.run(
        [
            "storescu",
            "-R",
            "-xr",
            "-aet",
            "DCMTKSCU",
            "-aec",
            "DICOMWEB",
            "127.0.0.1",
            str(mover.port),
            *files,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return series


def test_echoscu(mover: dimse_scp.ServerHandle) -> None:
    result = _run("echoscu", mover.port)
    assert result.returncode == 0, result.stderr


def test_storescu(mover: dimse_scp.ServerHandle, archive: Archive, tmp_path: Path) -> None:
    series = _stored_study(mover, tmp_path)
    for ds in series:
        (instance,) = archive.instances(
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
        )
        assert instance.transfer_syntax_uid == ds.file_meta.TransferSyntaxUID
        stored = dcmread(archive.path(instance))
        assert stored == ds


def test_findscu(mover: dimse_scp.ServerHandle, archive: Archive, tmp_path: Path) -> None:
    require_search(archive)
    series = _stored_study(mover, tmp_path)
    out = tmp_path / "find"
    out.mkdir()
    result = _run(
        "findscu",
        mover.port,
        "-S",
        "-X",
        "-od",
        str(out),
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        "PatientName=DCMTK*",
        "-k",
        "StudyInstanceUID",
        "-k",
        "NumberOfStudyRelatedInstances",
    )
    assert result.returncode == 0, result.stderr
    (response,) = [dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]
    assert response.StudyInstanceUID == series[0].StudyInstanceUID
    assert str(response.PatientName) == "Dcmtk^Test"
    assert response.NumberOfStudyRelatedInstances == len(series)


def test_movescu(
    mover: dimse_scp.ServerHandle, archive: Archive, destination: StorageSCP, tmp_path: Path
) -> None:
    series = _stored_study(mover, tmp_path)
    result = _run(
        "movescu",
        mover.port,
        "-S",
        "-aem",
        "DEST",
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        f"StudyInstanceUID={series[0].StudyInstanceUID}",
    )
    assert result.returncode == 0, result.stderr
    received = {ds.SOPInstanceUID: ds for ds in destination.received.datasets}
    assert set(received) == {ds.SOPInstanceUID for ds in series}
    for ds in series:
        assert received[ds.SOPInstanceUID].PixelData == ds.PixelData


def test_movescu_unknown_destination(mover: dimse_scp.ServerHandle, tmp_path: Path) -> None:
    series = _stored_study(mover, tmp_path)
    result = _run(
        "movescu",
        mover.port,
        "-S",
        "-aem",
        "NOWHERE",
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        f"StudyInstanceUID={series[0].StudyInstanceUID}",
    )
    assert result.returncode != 0
    assert "MoveDestinationUnknown" in result.stderr  # DCMTK's name for status A801


def test_getscu(mover: dimse_scp.ServerHandle, tmp_path: Path) -> None:
    series = _stored_study(mover, tmp_path)
    out = tmp_path / "get"
    out.mkdir()
    result = _run(
        "getscu",
        mover.port,
        "-S",
        "-od",
        str(out),
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        f"StudyInstanceUID={series[0].StudyInstanceUID}",
    )
    assert result.returncode == 0, result.stderr
    got = {ds.SOPInstanceUID: ds for ds in (dcmread(p) for p in out.iterdir())}
    assert set(got) == {ds.SOPInstanceUID for ds in series}
    for ds in series:
        # getscu proposes uncompressed syntaxes only: the RLE instance arrives decoded.
        assert got[ds.SOPInstanceUID].file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert (got[ds.SOPInstanceUID].pixel_array == ds.pixel_array).all()
