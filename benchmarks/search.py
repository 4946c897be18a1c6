"""Search clients: QIDO-RS (PS3.18 section 10.6) and C-FIND (PS3.4 Annex C).

The queries are what a viewer and a research script send: OHIF's study list, a
patient-name wildcard, a date range, a modality, the series of a study and the
instances of a large series.  Each call returns the seconds one query took, with the
whole response read.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import requests
from pydicom.dataset import Dataset

from .ingest import associate
from .timing import NotAvailable, check

STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
#: what OHIF's study list asks for (limit, offset, StudyDescription, Modality)
OHIF_INCLUDE = "includefield=00081030,00080060"


@dataclass(frozen=True)
class Qido:
    """A QIDO-RS query: a path under the DICOMweb root and its query string."""

    label: str
    path: str
    query: str = ""


def qido_queries(study_uid: str, big_series: tuple[str, str, int]) -> dict[str, Qido]:
    """The QIDO-RS queries measured, keyed by result name."""
    big_study, big_uid, big_count = big_series
    limit = "limit=101&offset=0"
    return {
        "qido_study_list": Qido("QIDO OHIF study list", "/studies", f"{limit}&{OHIF_INCLUDE}"),
        "qido_patient_name": Qido(
            "QIDO PatientName=SMI*", "/studies", f"PatientName=SMI*&{limit}&{OHIF_INCLUDE}"
        ),
        "qido_date_range": Qido(
            "QIDO StudyDate range (1 year)",
            "/studies",
            f"StudyDate=20100101-20101231&{limit}&{OHIF_INCLUDE}",
        ),
        "qido_modality": Qido(
            "QIDO ModalitiesInStudy=MR", "/studies", f"ModalitiesInStudy=MR&{limit}&{OHIF_INCLUDE}"
        ),
        "qido_series_of_study": Qido("QIDO series of a study", f"/studies/{study_uid}/series"),
        "qido_instances_of_series": Qido(
            f"QIDO instances of a {big_count}-instance series",
            f"/studies/{big_study}/series/{big_uid}/instances",
        ),
    }


def qido(session: requests.Session, root: str, query: Qido) -> float:
    url = f"{root}{query.path}" + (f"?{query.query}" if query.query else "")
    start = time.perf_counter()
    response = session.get(url, headers={"Accept": "application/dicom+json"}, timeout=120)
    check(response, query.label)
    if response.status_code == 200:  # 204: no match, no body (PS3.18 10.6.3)
        response.json()
    return time.perf_counter() - start


def _find_identifier(level: str, **values: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword in (
        "StudyInstanceUID",
        "PatientName",
        "PatientID",
        "StudyDate",
        "ModalitiesInStudy",
        "StudyDescription",
        "AccessionNumber",
    ):
        setattr(ds, keyword, values.get(keyword, ""))
    if level == "SERIES":
        for keyword in (
            "SeriesInstanceUID",
            "Modality",
            "SeriesNumber",
            "NumberOfSeriesRelatedInstances",
        ):
            setattr(ds, keyword, values.get(keyword, ""))
    return ds


def cfind_queries(study_uid: str) -> dict[str, tuple[str, Dataset]]:
    """The C-FIND queries measured (Study Root), keyed by result name."""
    return {
        "cfind_study_patient": (
            "C-FIND studies of one patient ID",
            _find_identifier("STUDY", PatientID="TINY0000010"),
        ),
        "cfind_study_date": (
            "C-FIND studies in one month",
            _find_identifier("STUDY", StudyDate="20100101-20100131"),
        ),
        "cfind_series_of_study": (
            "C-FIND series of a study",
            _find_identifier("SERIES", StudyInstanceUID=study_uid),
        ),
    }


class FindClient:
    """One association reused for every C-FIND, as a PACS client would."""

    def __init__(self, port: int | None, aet: str) -> None:
        self.assoc = associate(port, aet, [STUDY_ROOT_FIND])

    def find(self, identifier: Dataset) -> float:
        start = time.perf_counter()
        for status, _match in self.assoc.send_c_find(identifier, STUDY_ROOT_FIND):
            if not status:
                raise NotAvailable("C-FIND: no response (association lost)")
            if status.Status not in (0x0000, 0xFF00, 0xFF01):
                raise RuntimeError(f"C-FIND failed with status 0x{status.Status:04X}")
        return time.perf_counter() - start

    def close(self) -> None:
        if self.assoc.is_established:
            self.assoc.release()
