"""QIDO-RS over HTTP (PS3.18 10.6): dicomweb-client as users run it, and raw requests
for status codes, headers and encodings; on SQLite and PostgreSQL."""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import pytest
import requests
from dicomweb_client.api import DICOMwebClient

from dicomweb_server.archive import Archive, Origin
from dicomweb_server.web import qido
from tests.conftest import WebServer
from tests.factory import make_instance, to_bytes, uid

ORIGIN = Origin("IMPORT", address="test")


@dataclass
class Data:
    studies: list[str] = field(default_factory=list)
    ct_series: str = ""
    ct_sops: list[str] = field(default_factory=list)


@pytest.fixture
def data(archive: Archive) -> Data:
    """Study 0: two CT series (3 instances) and an MR series; studies 1-4: one US or MR
    instance each, patients with a UTF-8 name, a percent sign and an apostrophe."""
    d = Data(studies=[uid() for _ in range(5)], ct_series=uid())

    def store(**kwargs: object) -> str:
        ds = make_instance(**kwargs)  # type: ignore[arg-type]
        archive.store(io.BytesIO(to_bytes(ds)), ORIGIN)
        return str(ds.SOPInstanceUID)

    for n in (1, 2):
        d.ct_sops.append(store(study_uid=d.studies[0], series_uid=d.ct_series, InstanceNumber=n))
    store(study_uid=d.studies[0], SeriesNumber=3)
    store(study_uid=d.studies[0], Modality="MR", SeriesNumber=2)
    names = ["Müller^Jürgen", "Percent^100%", "O'Neil^Ann", "Doe^Jane"]
    for i, name in enumerate(names, start=1):
        store(
            study_uid=d.studies[i],
            PatientName=name,
            PatientID=f"P{i}",
            Modality="US" if i % 2 else "MR",
            SpecificCharacterSet="ISO_IR 100",
            AccessionNumber=f"A{i}",
            StudyDate=f"2021010{i}",
        )
    return d


def _uids(results: list[dict], key: str = "0020000D") -> list[str]:
    return [r[key]["Value"][0] for r in results]


class TestDicomwebClient:
    def test_search_for_studies_with_filters(self, dicomweb: DICOMwebClient, data: Data) -> None:
        found = dicomweb.search_for_studies(search_filters={"PatientName": "Müller^Jürgen"})
        assert _uids(found) == [data.studies[1]]
        found = dicomweb.search_for_studies(search_filters={"StudyDate": "20210102-20210103"})
        assert _uids(found) == data.studies[2:4]
        found = dicomweb.search_for_studies(search_filters={"PatientName": "o'*"})
        assert _uids(found) == [data.studies[3]]

    def test_fuzzymatching(self, dicomweb: DICOMwebClient, data: Data) -> None:
        found = dicomweb.search_for_studies(
            search_filters={"PatientName": "jürg"}, fuzzymatching=True
        )
        assert _uids(found) == [data.studies[1]]
        assert (
            dicomweb.search_for_studies(search_filters={"PatientName": "jürg"}, fuzzymatching=False)
            == []
        )

    def test_fields_limit_offset(self, dicomweb: DICOMwebClient, data: Data) -> None:
        found = dicomweb.search_for_studies(
            fields=["StudyDescription", "00081070"], limit=2, offset=1
        )
        assert _uids(found) == data.studies[1:3]
        assert found[0]["00081030"]["Value"] == ["CT chest"]
        assert found[0]["00081070"] == {"vr": "PN"}  # asked for, not stored: empty

    def test_search_for_series_and_instances(self, dicomweb: DICOMwebClient, data: Data) -> None:
        series = dicomweb.search_for_series(study_instance_uid=data.studies[0])
        assert len(series) == 3
        assert _uids(series, "0020000E")[0] == data.ct_series
        found = dicomweb.search_for_series(search_filters={"Modality": "US"})
        assert _uids(found) == [data.studies[1], data.studies[3]]
        instances = dicomweb.search_for_instances(
            study_instance_uid=data.studies[0], series_instance_uid=data.ct_series
        )
        assert _uids(instances, "00080018") == data.ct_sops
        found = dicomweb.search_for_instances(search_filters={"PatientID": "P4"})
        assert len(found) == 1 and found[0]["00100020"]["Value"] == ["P4"]

    def test_retrieve_url(self, dicomweb: DICOMwebClient, data: Data) -> None:
        # dicomweb-client sends "Host" without the port, so only the path is compared here;
        # TestHttp.test_retrieve_url checks whole URLs.
        [study] = dicomweb.search_for_studies(search_filters={"StudyInstanceUID": data.studies[0]})
        assert study["00081190"]["vr"] == "UR"
        assert study["00081190"]["Value"][0].endswith(f"/dicom-web/studies/{data.studies[0]}")


class TestHttp:
    def test_retrieve_url(self, web: WebServer, data: Data) -> None:
        study, ct = data.studies[0], data.ct_series
        [found] = requests.get(f"{web.url}/studies?StudyInstanceUID={study}").json()
        assert found["00081190"] == {"vr": "UR", "Value": [f"{web.url}/studies/{study}"]}
        series = requests.get(f"{web.url}/studies/{study}/series?SeriesInstanceUID={ct}").json()
        assert series[0]["00081190"]["Value"] == [f"{web.url}/studies/{study}/series/{ct}"]
        instances = requests.get(f"{web.url}/studies/{study}/series/{ct}/instances").json()
        expected = f"{web.url}/studies/{study}/series/{ct}/instances/{data.ct_sops[0]}"
        assert instances[0]["00081190"]["Value"] == [expected]
        # RetrieveURL answers WADO-RS metadata of that instance.
        metadata = requests.get(expected + "/metadata")
        assert metadata.status_code == 200
        assert metadata.json()[0]["00080018"]["Value"] == [data.ct_sops[0]]

    def test_content_type_and_empty_result(self, web: WebServer, data: Data) -> None:
        response = requests.get(f"{web.url}/studies", params={"PatientID": "nobody"})
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "application/dicom+json"
        assert response.json() == []
        assert "Warning" not in response.headers

    @pytest.mark.parametrize(
        "accept, status, media_type",
        [
            (None, 200, "application/dicom+json"),
            ("*/*", 200, "application/dicom+json"),
            ("application/dicom+json", 200, "application/dicom+json"),
            ("application/json", 200, "application/json"),
            ('multipart/related; type="application/dicom+xml"', 406, None),
            ("image/png", 406, None),
        ],
    )
    def test_accept(
        self, web: WebServer, accept: str | None, status: int, media_type: str | None
    ) -> None:
        headers = {"Accept": accept} if accept else {}
        response = requests.get(f"{web.url}/studies", headers=headers)
        assert response.status_code == status
        if media_type:
            assert response.headers["Content-Type"] == media_type

    @pytest.mark.parametrize(
        "query, parameter",
        [
            ("StudyDate=2020-01", "StudyDate"),
            ("NotAnAttribute=1", "NotAnAttribute"),
            ("StudyInstanceUID=1.2.x", "StudyInstanceUID"),
            ("limit=-1", "limit"),
            ("limit=ten", "limit"),
            ("offset=x", "offset"),
            ("fuzzymatching=maybe", "fuzzymatching"),
            ("includefield=NoSuchKeyword", "includefield"),
        ],
    )
    def test_invalid_parameter_is_400_naming_it(
        self, web: WebServer, query: str, parameter: str
    ) -> None:
        response = requests.get(f"{web.url}/studies?{query}")
        assert response.status_code == 400
        assert parameter in response.json()["error"]

    @pytest.mark.parametrize(
        "path",
        [
            "/studies/1.2.abc/series",
            "/studies/01.2/instances",
            "/studies/1.2/series/x/instances",
        ],
    )
    def test_malformed_uid_in_path_is_400(self, web: WebServer, path: str) -> None:
        response = requests.get(web.url + path)
        assert response.status_code == 400
        assert "UID" in response.json()["error"]

    def test_warning_when_limit_cuts_the_results(self, web: WebServer, data: Data) -> None:
        response = requests.get(f"{web.url}/studies", params={"limit": "2"})
        assert len(response.json()) == 2
        assert response.headers["Warning"] == (
            f'299 {web.url}: "There are additional results that can be requested"'
        )
        last = requests.get(f"{web.url}/studies", params={"limit": "2", "offset": "3"})
        assert len(last.json()) == 2 and "Warning" not in last.headers
        exact = requests.get(f"{web.url}/studies", params={"limit": "5"})
        assert len(exact.json()) == 5 and "Warning" not in exact.headers

    def test_limit_is_capped(self, web: WebServer, data: Data) -> None:
        response = requests.get(f"{web.url}/studies", params={"limit": str(qido.MAX_LIMIT * 10)})
        assert response.status_code == 200 and len(response.json()) == 5

    def test_offset_walk_returns_every_study_once(self, web: WebServer, data: Data) -> None:
        seen: list[str] = []
        for offset in range(0, 6, 2):
            page = requests.get(f"{web.url}/studies", params={"limit": 2, "offset": offset})
            seen += _uids(page.json())
        assert seen == data.studies

    def test_series_key_at_study_level_returns_each_study_once(
        self, web: WebServer, data: Data
    ) -> None:
        # Study 0 has two CT series and three CT instances: still one result.
        response = requests.get(f"{web.url}/studies", params={"Modality": "CT"})
        assert _uids(response.json()) == [data.studies[0]]
        response = requests.get(f"{web.url}/studies?Modality=MR")
        assert _uids(response.json()) == [data.studies[0], data.studies[2], data.studies[4]]

    def test_modalities_in_study(self, web: WebServer, data: Data) -> None:
        response = requests.get(f"{web.url}/studies?ModalitiesInStudy=US")
        assert _uids(response.json()) == [data.studies[1], data.studies[3]]
        [first] = requests.get(f"{web.url}/studies?00080061=CT").json()
        assert first["00080061"]["Value"] == ["CT", "MR"]

    def test_percent_encoded_values(self, web: WebServer, data: Data) -> None:
        # %2A is "*": a wildcard; %25 is a literal "%" in the stored name.
        response = requests.get(f"{web.url}/studies?PatientName=Percent%5E100%25")
        assert _uids(response.json()) == [data.studies[2]]
        response = requests.get(f"{web.url}/studies?PatientName=M%C3%BCller%2A")
        assert _uids(response.json()) == [data.studies[1]]
        response = requests.get(f"{web.url}/studies?PatientName=%25%2A")
        assert response.json() == []  # "%" is not a SQL wildcard here
        response = requests.get(f"{web.url}/studies?PatientID=P1&includefield=00081030%2C00080060")
        [study] = response.json()
        assert study["00081030"]["Value"] == ["CT chest"]
        assert "00080060" not in study  # a series attribute is not returned for studies

    def test_uid_list_comma_separated_and_repeated(self, web: WebServer, data: Data) -> None:
        a, b, c = data.studies[:3]
        response = requests.get(f"{web.url}/studies?StudyInstanceUID={a},{c}")
        assert _uids(response.json()) == [a, c]
        response = requests.get(f"{web.url}/studies?0020000D={b}&0020000D={c}")
        assert _uids(response.json()) == [b, c]

    def test_dotted_sequence_key(self, web: WebServer, archive: Archive) -> None:
        from pydicom.dataset import Dataset

        item = Dataset()
        item.ScheduledProcedureStepID = "SPS9"
        item.RequestedProcedureID = "RP9"
        ds = make_instance(RequestAttributesSequence=[item])
        archive.store(io.BytesIO(to_bytes(ds)), ORIGIN)
        archive.store(io.BytesIO(to_bytes(make_instance())), ORIGIN)
        for key in ("RequestAttributesSequence.ScheduledProcedureStepID", "00400275.00400009"):
            response = requests.get(f"{web.url}/series", params={key: "SPS9"})
            assert _uids(response.json(), "0020000E") == [ds.SeriesInstanceUID]

    def test_scoped_instances(self, web: WebServer, data: Data) -> None:
        response = requests.get(
            f"{web.url}/studies/{data.studies[0]}/instances", params={"InstanceNumber": "2"}
        )
        assert _uids(response.json(), "00080018") == [data.ct_sops[1]]
        other = requests.get(
            f"{web.url}/studies/{data.studies[1]}/series/{data.ct_series}/instances"
        )
        assert other.status_code == 200 and other.json() == []
