"""One archive, two fronts: what arrives over DIMSE is served over DICOMweb and back."""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless
from pynetdicom import evt
from pynetdicom.sop_class import (
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
)

import dimse_scp
from dicomweb_server.archive import Archive, Level, Query

from .dimse_fixtures import QR_CLASSES, associate, require_search
from .factory import make_instance, make_series


def _c_store(port: int, datasets: list[Dataset]) -> None:
    syntaxes = sorted({str(ds.file_meta.TransferSyntaxUID) for ds in datasets})
    assoc = associate(port, [CTImageStorage], syntaxes=syntaxes)
    try:
        assert [assoc.send_c_store(ds).Status for ds in datasets] == [0] * len(datasets)
    finally:
        assoc.release()


def test_c_store_then_search_and_wado(
    dimse_server: dimse_scp.ServerHandle,
    archive: Archive,
    web,
    dicomweb,  # type: ignore[no-untyped-def]
) -> None:
    require_search(archive)
    series = make_series(2, PatientName="Cross^Dimse")
    series.append(
        make_instance(
            study_uid=series[0].StudyInstanceUID,
            series_uid=series[0].SeriesInstanceUID,
            InstanceNumber=3,
            rows=64,
            columns=64,
            transfer_syntax=JPEG2000Lossless,
            PatientName="Cross^Dimse",
        )
    )
    _c_store(dimse_server.port, series)
    study_uid = series[0].StudyInstanceUID
    (study,) = archive.search(
        Query(Level.STUDY, filters={"PatientName": "Cross*"}, return_keys=["StudyInstanceUID"])
    )
    assert study["0020000D"]["Value"] == [study_uid]
    found = dicomweb.search_for_instances(study_instance_uid=study_uid)
    assert len(found) == 3
    for ds in series:
        retrieved = dicomweb.retrieve_instance(
            study_uid,
            ds.SeriesInstanceUID,
            ds.SOPInstanceUID,
            media_types=(("application/dicom", "*"),),
        )
        assert retrieved.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
        assert retrieved.PixelData == ds.PixelData
        assert retrieved == ds


def test_stow_then_c_find_and_c_get(
    dimse_server: dimse_scp.ServerHandle,
    archive: Archive,
    web,
    dicomweb,  # type: ignore[no-untyped-def]
) -> None:
    require_search(archive)
    series = make_series(2, PatientName="Cross^Stow", PatientID="STOW1")
    dicomweb.store_instances(series)
    study_uid = series[0].StudyInstanceUID

    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.PatientID = "STOW1"
    query.StudyInstanceUID = ""
    query.NumberOfStudyRelatedInstances = ""
    assoc = associate(dimse_server.port, QR_CLASSES)
    try:
        responses = assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)
        matches = [m for s, m in responses if s.Status == 0xFF00]
    finally:
        assoc.release()
    assert [m.StudyInstanceUID for m in matches] == [study_uid]
    assert int(matches[0].NumberOfStudyRelatedInstances) == 2

    received: list[Dataset] = []

    def on_store(event: evt.Event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        received.append(ds)
        return 0x0000

    retrieve = Dataset()
    retrieve.QueryRetrieveLevel = "STUDY"
    retrieve.StudyInstanceUID = study_uid
    assoc = associate(
        dimse_server.port,
        QR_CLASSES,
        storage_roles=[(CTImageStorage, [ExplicitVRLittleEndian])],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    try:
        responses = assoc.send_c_get(retrieve, StudyRootQueryRetrieveInformationModelGet)
        statuses = [s.Status for s, _ in responses]
    finally:
        assoc.release()
    assert statuses[-1] == 0x0000
    sent = {ds.SOPInstanceUID: ds for ds in series}
    assert sorted(ds.SOPInstanceUID for ds in received) == sorted(sent)
    for ds in received:
        assert ds == sent[ds.SOPInstanceUID]
