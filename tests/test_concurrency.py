"""Several processes ingesting into one index at once lose nothing (SQLite and PostgreSQL)."""

from __future__ import annotations

import io
import multiprocessing
from pathlib import Path

from sqlalchemy import func, select

from dicomweb_server.archive import Archive, Origin
from dicomweb_server.archive.index import Instance, Series, Study
from dicomweb_server.config import Settings
from tests.factory import make_instance, to_bytes, uid

PROCESSES = 4
PER_PROCESS = 24


def _ingest(settings: Settings, shared: list[str], worker: int) -> None:
    archive = Archive(settings, upgrade=False)
    study_uid, series_a, series_b = shared
    for i in range(PER_PROCESS):
        if i % 3 == 0:  # a study of its own for this worker
            ds = make_instance(seed=i, PatientID=f"P{worker}", InstanceNumber=i)
        else:  # everyone writes into the same study and two shared series
            ds = make_instance(
                study_uid=study_uid,
                series_uid=series_a if i % 2 else series_b,
                Modality="CT" if i % 2 else "MR",
                seed=i,
                InstanceNumber=i,
            )
        archive.store(io.BytesIO(to_bytes(ds)), Origin("IMPORT", address=f"worker {worker}"))
    archive.close()


def test_processes_writing_one_index_lose_nothing(settings: Settings, tmp_path: Path) -> None:
    Archive(settings).close()  # create the schema once, as `serve` does before forking
    shared = [uid(), uid(), uid()]
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=_ingest, args=(settings, shared, n)) for n in range(PROCESSES)
    ]
    for process in workers:
        process.start()
    for process in workers:
        process.join(120)
        assert process.exitcode == 0
    archive = Archive(settings)
    try:
        with archive.reader() as session:
            assert (
                session.scalar(select(func.count()).select_from(Instance))
                == PROCESSES * PER_PROCESS
            )
            shared_study = session.scalars(select(Study).where(Study.study_uid == shared[0])).one()
            in_shared = PROCESSES * sum(1 for i in range(PER_PROCESS) if i % 3)
            assert shared_study.num_instances == in_shared
            assert shared_study.num_series == 2
            assert shared_study.modalities == "CT\\MR"
            series_counts = session.scalars(
                select(Series.num_instances).where(Series.study_pk == shared_study.id)
            ).all()
            assert sum(series_counts) == in_shared
            keys = session.scalars(select(Instance.storage_key)).all()
        assert all(archive.storage.path(k).is_file() for k in keys)
    finally:
        archive.close()
