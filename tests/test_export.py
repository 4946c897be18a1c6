"""``dicomweb-server export``: stored files out, byte for byte, with a manifest.

The command runs as a real process on a real archive; the files it writes are compared
with the stored ones (the archive's own files, by path) and with the manifest.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

from dicomweb_server.archive import Archive, Origin
from dicomweb_server.config import Settings
from dicomweb_server.export import safe_component
from tests.factory import make_series, write
from tests.test_cli import run_cli


def _store(archive: Archive, tmp_path: Path, **kwargs: str) -> list:  # type: ignore[type-arg]
    series = make_series(2, **kwargs)
    for ds in series:
        archive.store(write(ds, tmp_path / "in"), Origin("IMPORT"))
    return series


def _stored(archive: Archive, study_uid: str) -> dict[str, bytes]:
    return {i.sop_uid: archive.path(i).read_bytes() for i in archive.instances(study_uid)}


def _check_manifest(manifest: dict, files: dict[str, bytes], stored: dict[str, bytes]) -> None:  # type: ignore[type-arg]
    assert manifest["instances"] == len(stored) == len(files)
    for entry in manifest["files"]:
        data = files[entry["path"]]
        assert data == stored[entry["sop_instance_uid"]]
        assert entry["size"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["transfer_syntax_uid"] == "1.2.840.10008.1.2.1"
        assert entry["path"] == "/".join(
            [
                entry["path"].split("/")[0],
                entry["study_uid"],
                entry["series_uid"],
                entry["sop_instance_uid"] + ".dcm",
            ]
        )


def test_export_study_to_folder(settings: Settings, archive: Archive, tmp_path: Path) -> None:
    series = _store(archive, tmp_path, PatientID="PAT/../7 x")
    other = make_series(1)  # another study of the same patient's archive: not exported
    for ds in other:
        archive.store(write(ds, tmp_path / "other"), Origin("IMPORT"))
    study = series[0].StudyInstanceUID
    out = tmp_path / "out"
    result = run_cli("export", "--study", study, "--to", str(out), settings=settings)
    assert result.returncode == 0, result.stderr
    assert "exported 2 instances" in result.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    files = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*.dcm")}
    # PatientID is free text: sanitised into one harmless path component.
    assert {name.split("/")[0] for name in files} == {"PAT_.._7_x"}
    _check_manifest(manifest, files, _stored(archive, study))
    assert not list(out.rglob("*.part"))


def test_export_series_to_zip_streams_stored_entries(
    settings: Settings, archive: Archive, tmp_path: Path
) -> None:
    series = _store(archive, tmp_path)
    study, series_uid = series[0].StudyInstanceUID, series[0].SeriesInstanceUID
    target = tmp_path / "export.zip"
    result = run_cli(
        "export",
        "--study",
        study,
        "--series",
        series_uid,
        "--to",
        str(target),
        settings=settings,
    )
    assert result.returncode == 0, result.stderr
    with zipfile.ZipFile(target) as zf:
        assert all(info.compress_type == zipfile.ZIP_STORED for info in zf.infolist())
        assert zf.testzip() is None
        files = {n: zf.read(n) for n in zf.namelist() if n.endswith(".dcm")}
        manifest = json.loads(zf.read("manifest.json"))
    assert {name.split("/")[0] for name in files} == {"PID001"}
    _check_manifest(manifest, files, _stored(archive, study))


def test_export_by_query(settings: Settings, archive: Archive, tmp_path: Path) -> None:
    wanted = _store(archive, tmp_path, PatientID="QX1", StudyDate="20240301")
    _store(archive, tmp_path, PatientID="QX1", StudyDate="20230301")  # outside the range
    _store(archive, tmp_path, PatientID="QX2", StudyDate="20240302")  # another patient
    out = tmp_path / "q"
    result = run_cli(
        "export",
        "--query",
        "PatientID=QX1&StudyDate=20240101-20241231",
        "--to",
        str(out),
        settings=settings,
    )
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert {e["study_uid"] for e in manifest["files"]} == {wanted[0].StudyInstanceUID}
    assert manifest["instances"] == 2


def test_export_refuses_bad_selections(settings: Settings, tmp_path: Path) -> None:
    Archive(settings).close()
    out = str(tmp_path / "x")
    assert run_cli("export", "--to", out, settings=settings).returncode == 2
    unknown = run_cli("export", "--study", "1.2.3.4", "--to", out, settings=settings)
    assert unknown.returncode == 1 and "not stored" in unknown.stderr
    bad = run_cli("export", "--study", "../etc", "--to", out, settings=settings)
    assert bad.returncode == 1 and "not a valid UID" in bad.stderr


def test_safe_component() -> None:
    assert safe_component("..", "1.2") == "1.2"
    assert safe_component("a/b\\c d", "x") == "a_b_c_d"
    assert safe_component("", "1.2.3") == "1.2.3"
    assert len(safe_component("9" * 200, "x")) == 64
