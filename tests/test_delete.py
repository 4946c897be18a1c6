"""DELETE of studies, series and instances over HTTP: files, rows and aggregates."""

from __future__ import annotations

import io

import pytest
import requests
from sqlalchemy import select

from dicomweb_server.archive import Archive, NotFound, Origin
from dicomweb_server.archive.index import Instance, Series, Study
from tests.conftest import WebServer
from tests.factory import make_instance, make_series, to_bytes, uid

ORIGIN = Origin("IMPORT", address="test")


def store(archive: Archive, *datasets) -> None:  # type: ignore[no-untyped-def]
    for ds in datasets:
        archive.store(io.BytesIO(to_bytes(ds)), ORIGIN)


def study_row(archive: Archive, study_uid: str) -> Study | None:
    with archive.reader() as session:
        return session.scalar(select(Study).where(Study.study_uid == study_uid))


def test_delete_instance_series_and_study(web: WebServer, archive: Archive) -> None:
    study = uid()
    ct = make_series(3, study_uid=study)
    mr = make_series(2, study_uid=study, Modality="MR")
    store(archive, *ct, *mr)
    paths = {i.sop_uid: archive.path(i) for i in archive.instances(study)}
    row = study_row(archive, study)
    assert row is not None and (row.num_series, row.num_instances) == (2, 5)
    assert row.modalities == "CT\\MR"

    victim = ct[0]
    url = (
        f"{web.url}/studies/{study}/series/{victim.SeriesInstanceUID}"
        f"/instances/{victim.SOPInstanceUID}"
    )
    response = requests.delete(url, timeout=10)
    assert response.status_code == 204 and response.content == b""
    assert not paths[victim.SOPInstanceUID].exists()
    row = study_row(archive, study)
    assert row is not None and (row.num_series, row.num_instances) == (2, 4)
    assert requests.delete(url, timeout=10).status_code == 404

    response = requests.delete(
        f"{web.url}/studies/{study}/series/{mr[0].SeriesInstanceUID}", timeout=10
    )
    assert response.status_code == 204
    row = study_row(archive, study)
    assert row is not None and (row.num_series, row.num_instances) == (1, 2)
    assert row.modalities == "CT"
    assert not any(paths[d.SOPInstanceUID].exists() for d in mr)
    with archive.reader() as session:
        assert (
            session.scalar(select(Series).where(Series.series_uid == mr[0].SeriesInstanceUID))
            is None
        )

    assert requests.delete(f"{web.url}/studies/{study}", timeout=10).status_code == 204
    assert study_row(archive, study) is None
    with pytest.raises(NotFound):
        archive.instances(study)
    with archive.reader() as session:
        assert session.scalars(select(Instance.sop_uid)).all() == []
    assert not any(p.exists() for p in paths.values())


def test_delete_leaves_other_studies_alone(web: WebServer, archive: Archive) -> None:
    keep, drop = make_instance(), make_instance()
    store(archive, keep, drop)
    assert (
        requests.delete(f"{web.url}/studies/{drop.StudyInstanceUID}", timeout=10).status_code == 204
    )
    [kept] = archive.instances(keep.StudyInstanceUID)
    assert archive.path(kept).read_bytes() == to_bytes(keep)


def test_delete_unknown_is_404_and_malformed_uid_400(web: WebServer) -> None:
    response = requests.delete(f"{web.url}/studies/{uid()}", timeout=10)
    assert response.status_code == 404 and response.json()["error"]
    response = requests.delete(f"{web.url}/studies/1.2.abc", timeout=10)
    assert response.status_code == 400 and "StudyInstanceUID" in response.json()["error"]
    response = requests.delete(f"{web.url}/studies/{uid()}/series/01.2", timeout=10)
    assert response.status_code == 400 and "SeriesInstanceUID" in response.json()["error"]
