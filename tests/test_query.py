"""The shared query model (QIDO-RS and C-FIND) through ``Archive.search``, on both backends.

Each test stores a few synthetic instances through the real ingest path and queries
them; the matching rules checked are PS3.4 C.2.2.2 and PS3.18 8.3.4.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset

from dicomweb_server.archive import Archive, InvalidQuery, Level, Origin, Query, query
from tests.factory import make_instance, to_bytes, uid

ORIGIN = Origin("IMPORT", address="test")


@dataclass
class Data:
    a: str  # study UIDs
    b: str
    c: str
    a_ct: str  # series UIDs
    a_mr: str
    a_ct2: str
    a_sops: list[str]


def _store(archive: Archive, ds: Dataset) -> None:
    archive.store(io.BytesIO(to_bytes(ds)), ORIGIN)


def _request(sps: str, rp: str) -> list[Dataset]:
    item = Dataset()
    item.ScheduledProcedureStepID = sps
    item.RequestedProcedureID = rp
    return [item]


@pytest.fixture
def data(archive: Archive) -> Data:
    """Three patients, three studies; study A has two CT series and an MR series."""
    d = Data(uid(), uid(), uid(), uid(), uid(), uid(), [])
    for n in (1, 2):
        ds = make_instance(
            study_uid=d.a, series_uid=d.a_ct, InstanceNumber=n, OperatorsName="Op^One"
        )
        d.a_sops.append(ds.SOPInstanceUID)
        _store(archive, ds)
    ds = make_instance(study_uid=d.a, series_uid=d.a_ct2, SeriesNumber=3, InstanceNumber=1)
    d.a_sops.append(ds.SOPInstanceUID)
    _store(archive, ds)
    _store(
        archive,
        make_instance(
            study_uid=d.a,
            series_uid=d.a_mr,
            Modality="MR",
            SeriesNumber=2,
            SeriesDescription="T1 sag",
            PerformedProcedureStepStartDate="20240115",
            PerformedProcedureStepStartTime="103000",
            RequestAttributesSequence=_request("SPS1", "RP1"),
        ),
    )
    _store(
        archive,
        make_instance(
            study_uid=d.b,
            PatientName="Smith^Jane",
            PatientID="PID002",
            PatientSex="F",
            StudyDate="20230601",
            StudyTime="083000",
            AccessionNumber="A%C_1",
            Modality="MR",
            ReferringPhysicianName="O'Brien^Pat",
            StudyDescription="Knee 100%",
            RequestAttributesSequence=_request("SPS2", "RP2"),
        ),
    )
    _store(
        archive,
        make_instance(
            study_uid=d.c,
            PatientName="Müller^Jürgen",
            PatientID="P_03",
            StudyDate="20220301",
            StudyTime="140000",
            AccessionNumber="AXC11",
            Modality="US",
            SpecificCharacterSet="ISO_IR 100",
        ),
    )
    return d


def _search(archive: Archive, level: Level, **kwargs: Any) -> list[dict[str, Any]]:
    return archive.search(Query(level, **kwargs))


def _studies(archive: Archive, **filters: str) -> list[str]:
    return [r["0020000D"]["Value"][0] for r in _search(archive, Level.STUDY, filters=filters)]


def _value(result: dict[str, Any], key: str) -> Any:
    return result[key].get("Value", [None])[0]


class TestLevels:
    def test_patient_level_counts_studies_series_instances(
        self, archive: Archive, data: Data
    ) -> None:
        results = _search(archive, Level.PATIENT, filters={"PatientID": ""})
        by_id = {_value(r, "00100020"): r for r in results}
        assert set(by_id) == {"PID001", "PID002", "P_03"}
        doe = by_id["PID001"]
        assert _value(doe, "00201200") == 1  # NumberOfPatientRelatedStudies
        assert _value(doe, "00201202") == 3  # ...Series
        assert _value(doe, "00201204") == 4  # ...Instances
        assert doe["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Doe^John"}]}

    def test_patient_level_matches_on_study_keys(self, archive: Archive, data: Data) -> None:
        results = _search(archive, Level.PATIENT, filters={"AccessionNumber": "AXC11"})
        assert [_value(r, "00100020") for r in results] == ["P_03"]

    def test_patient_level_matches_on_modalities_in_study(
        self, archive: Archive, data: Data
    ) -> None:
        results = _search(archive, Level.PATIENT, filters={"ModalitiesInStudy": "US"})
        assert [_value(r, "00100020") for r in results] == ["P_03"]

    def test_study_level_returns_required_and_aggregate_attributes(
        self, archive: Archive, data: Data
    ) -> None:
        [a] = _search(archive, Level.STUDY, filters={"StudyInstanceUID": data.a})
        assert a["00080061"] == {"vr": "CS", "Value": ["CT", "MR"]}  # ModalitiesInStudy
        assert _value(a, "00201206") == 3 and _value(a, "00201208") == 4
        assert _value(a, "00080056") == "ONLINE"
        assert _value(a, "00081030") == "CT chest"  # StudyDescription from the study JSON
        assert _value(a, "00100020") == "PID001"  # patient attributes merged
        required = (
            "00080020",
            "00080030",
            "00080050",
            "00080090",
            "00100030",
            "00100040",
            "00200010",
        )
        for key in required:
            assert key in a
        assert list(a) == sorted(a)

    def test_series_level_scoped_to_a_study(self, archive: Archive, data: Data) -> None:
        results = _search(archive, Level.SERIES, study_uid=data.a)
        assert [_value(r, "0020000E") for r in results] == [data.a_ct, data.a_ct2, data.a_mr]
        ct, _, mr = results
        assert _value(ct, "00201209") == 2  # NumberOfSeriesRelatedInstances
        assert _value(ct, "0020000D") == data.a
        assert "00100010" not in ct  # scoped: no study attributes (PS3.18 10.6.3.3.2)
        sequence = mr["00400275"]["Value"][0]
        assert sequence["00400009"]["Value"] == ["SPS1"]

    def test_all_series_carry_study_attributes(self, archive: Archive, data: Data) -> None:
        results = _search(archive, Level.SERIES, filters={"Modality": "US"})
        [us] = results
        assert _value(us, "00100020") == "P_03"
        assert _value(us, "0020000D") == data.c

    def test_instance_level_scoped_to_a_series(self, archive: Archive, data: Data) -> None:
        results = _search(archive, Level.IMAGE, study_uid=data.a, series_uid=data.a_ct)
        assert [_value(r, "00080018") for r in results] == data.a_sops[:2]
        first = results[0]
        assert _value(first, "00200013") == 1
        assert _value(first, "00280010") == 16 and _value(first, "00280100") == 16
        assert _value(first, "0020000E") == data.a_ct and _value(first, "0020000D") == data.a
        assert _value(first, "00080056") == "ONLINE"
        assert "00100010" not in first and "00080060" not in first

    def test_all_instances_carry_study_and_series_attributes(
        self, archive: Archive, data: Data
    ) -> None:
        [b] = _search(archive, Level.IMAGE, filters={"PatientID": "PID002"})
        assert _value(b, "00100020") == "PID002"
        assert _value(b, "00080060") == "MR"


class TestMatching:
    def test_person_name_is_case_insensitive(self, archive: Archive, data: Data) -> None:
        assert _studies(archive, PatientName="doe^JOHN") == [data.a]
        assert _studies(archive, PatientName="Doe") == []  # single value: whole name

    def test_names_with_ideographic_groups(self, archive: Archive, data: Data) -> None:
        ds = make_instance(
            PatientName="Yamada^Tarou=山田^太郎", PatientID="JP1", SpecificCharacterSet="ISO_IR 192"
        )
        _store(archive, ds)
        assert _studies(archive, PatientName="Yamada^Tarou=山田^太郎") == [ds.StudyInstanceUID]
        assert _studies(archive, PatientName="yamada^tarou*") == [ds.StudyInstanceUID]
        assert _studies(archive, PatientName="*=山田*") == [ds.StudyInstanceUID]
        assert _studies(archive, PatientName="yamada") == []

    def test_wildcards(self, archive: Archive, data: Data) -> None:
        assert _studies(archive, PatientName="sm*") == [data.b]
        assert _studies(archive, PatientName="?oe^john") == [data.a]
        assert _studies(archive, PatientName="*") == [data.a, data.b, data.c]
        assert _studies(archive, AccessionNumber="AXC1?") == [data.c]
        assert _studies(archive, PatientID="pid*") == []  # not PN: case-sensitive

    def test_sql_wildcards_in_values_are_literal(self, archive: Archive, data: Data) -> None:
        assert _studies(archive, AccessionNumber="A%C_1") == [data.b]
        assert _studies(archive, AccessionNumber="A%C*") == [data.b]
        assert _studies(archive, AccessionNumber="A_C*") == []  # "_" is not "any character"
        assert _studies(archive, AccessionNumber="%") == []
        assert _studies(archive, PatientID="P_03") == [data.c]
        assert _studies(archive, PatientID="P_0*") == [data.c]
        assert _studies(archive, PatientID="PI_*") == []
        assert _studies(archive, StudyDescription="*100%") == [data.b]

    def test_quotes_and_brackets_do_not_break_sql(self, archive: Archive, data: Data) -> None:
        assert _studies(archive, ReferringPhysicianName="O'Brien^Pat") == [data.b]
        assert _studies(archive, ReferringPhysicianName="o'b*") == [data.b]
        assert _studies(archive, PatientID="x' OR '1'='1") == []
        assert _studies(archive, PatientID="[P]*") == []

    def test_date_ranges(self, archive: Archive, data: Data) -> None:
        assert _studies(archive, StudyDate="20240115") == [data.a]
        assert _studies(archive, StudyDate="20240101-") == [data.a]
        assert _studies(archive, StudyDate="-20230101") == [data.c]
        assert _studies(archive, StudyDate="20230101-20231231") == [data.b]
        assert _studies(archive, PatientBirthDate="19700101") == [data.a, data.b, data.c]

    def test_time_ranges(self, archive: Archive, data: Data) -> None:
        assert _studies(archive, StudyTime="1000-1030") == [data.a]
        assert _studies(archive, StudyTime="-08") == [data.b]  # up to 08:59:59
        assert _studies(archive, StudyTime="1200-") == [data.c]
        assert _studies(archive, StudyTime="083000") == [data.b]

    @pytest.mark.parametrize(
        "key, value",
        [
            ("StudyDate", "2023-01"),
            ("StudyDate", "20231340"),
            ("StudyDate", "-"),
            ("StudyTime", "25x"),
            ("StudyInstanceUID", "1.2.abc"),
            ("SeriesNumber", "one"),
            ("NoSuchKeyword", "x"),
        ],
    )
    def test_malformed_values_name_the_key(
        self, archive: Archive, data: Data, key: str, value: str
    ) -> None:
        with pytest.raises(InvalidQuery, match=key):
            _studies(archive, **{key: value})

    def test_uid_list(self, archive: Archive, data: Data) -> None:
        assert _studies(archive, StudyInstanceUID=f"{data.a}\\{data.c}") == [data.a, data.c]
        assert _studies(archive, **{"0020000D": data.b}) == [data.b]  # a tag as key

    def test_universal_matching_returns_the_key_empty_when_absent(
        self, archive: Archive, data: Data
    ) -> None:
        [c] = _search(archive, Level.STUDY, filters={"PatientID": "P_03", "IssuerOfPatientID": ""})
        assert c["00100021"] == {"vr": "LO"}

    def test_fuzzy_person_names(self, archive: Archive, data: Data) -> None:
        fuzzy = {"level": Level.STUDY, "fuzzy": True}
        assert [
            r["0020000D"]["Value"][0]
            for r in archive.search(Query(filters={"PatientName": "joh"}, **fuzzy))
        ] == [data.a]
        assert [
            r["0020000D"]["Value"][0]
            for r in archive.search(Query(filters={"PatientName": "JÜRG"}, **fuzzy))
        ] == [data.c]
        assert [
            r["0020000D"]["Value"][0]
            for r in archive.search(Query(filters={"ReferringPhysicianName": "pat"}, **fuzzy))
        ] == [data.b]
        assert _studies(archive, PatientName="joh") == []

    def test_series_keys_at_study_level_return_each_study_once(
        self, archive: Archive, data: Data
    ) -> None:
        assert _studies(archive, Modality="CT") == [data.a]
        assert _studies(archive, Modality="MR") == [data.a, data.b]
        assert _studies(archive, SOPInstanceUID=data.a_sops[0]) == [data.a]

    def test_modalities_in_study(self, archive: Archive, data: Data) -> None:
        assert _studies(archive, ModalitiesInStudy="MR") == [data.a, data.b]
        assert _studies(archive, ModalitiesInStudy="US\\CT") == [data.a, data.c]
        assert _studies(archive, ModalitiesInStudy="XA") == []

    def test_sequence_matching_on_request_attributes(self, archive: Archive, data: Data) -> None:
        key = "RequestAttributesSequence.ScheduledProcedureStepID"
        results = _search(archive, Level.SERIES, filters={key: "SPS1"})
        assert [_value(r, "0020000E") for r in results] == [data.a_mr]
        results = _search(
            archive, Level.SERIES, filters={"RequestAttributesSequence.RequestedProcedureID": "RP*"}
        )
        assert len(results) == 2

    def test_upper_level_keys_at_lower_levels(self, archive: Archive, data: Data) -> None:
        results = _search(archive, Level.IMAGE, filters={"PatientName": "Doe^John"})
        assert len(results) == 4
        results = _search(archive, Level.SERIES, filters={"StudyDate": "20220301"})
        assert [_value(r, "0020000D") for r in results] == [data.c]

    def test_upper_level_uid_filter_scopes_like_cfind(self, archive: Archive, data: Data) -> None:
        results = _search(
            archive, Level.SERIES, filters={"StudyInstanceUID": data.b, "Modality": ""}
        )
        [series] = results
        assert _value(series, "0020000D") == data.b
        assert "00100010" not in series  # scoped: C-FIND gets no unasked study keys

    def test_instance_keys(self, archive: Archive, data: Data) -> None:
        results = _search(archive, Level.IMAGE, study_uid=data.a, filters={"InstanceNumber": "2"})
        assert [_value(r, "00080018") for r in results] == [data.a_sops[1]]
        ct_image = "1.2.840.10008.5.1.4.1.1.2"
        results = _search(archive, Level.IMAGE, filters={"SOPClassUID": ct_image})
        assert len(results) == 6


class TestReturnKeys:
    def test_key_outside_the_level_json_comes_from_an_instance(
        self, archive: Archive, data: Data
    ) -> None:
        [a] = _search(archive, Level.STUDY, study_uid=data.a, return_keys=["OperatorsName"])
        assert a["00081070"]["Value"] == [{"Alphabetic": "Op^One"}]
        [inst] = _search(
            archive,
            Level.IMAGE,
            study_uid=data.a,
            series_uid=data.a_ct,
            filters={"InstanceNumber": "1"},
            return_keys=["00281050"],
        )
        assert inst["00281050"]["Value"] == [40]

    def test_requested_absent_key_is_returned_empty(self, archive: Archive, data: Data) -> None:
        [b] = _search(archive, Level.STUDY, study_uid=data.b, return_keys=["PatientComments"])
        assert b["00104000"] == {"vr": "LT"}

    def test_lower_level_include_is_not_returned(self, archive: Archive, data: Data) -> None:
        [b] = _search(archive, Level.STUDY, study_uid=data.b, return_keys=["Rows", "Modality"])
        assert "00280010" not in b and "00080060" not in b

    def test_all(self, archive: Archive, data: Data) -> None:
        [mr] = _search(
            archive, Level.SERIES, study_uid=data.a, series_uid=data.a_mr, return_keys=["all"]
        )
        assert _value(mr, "0008103E") == "T1 sag"
        assert _value(mr, "00400244") == "20240115"

    def test_unknown_return_key_is_invalid(self, archive: Archive, data: Data) -> None:
        with pytest.raises(InvalidQuery, match="NotAKeyword"):
            _search(archive, Level.STUDY, return_keys=["NotAKeyword"])


class TestPaging:
    def test_offset_walk_returns_every_match_once(self, archive: Archive, data: Data) -> None:
        seen = []
        for offset in range(0, 10, 2):
            page = _search(archive, Level.SERIES, limit=2, offset=offset)
            seen += [_value(r, "0020000E") for r in page]
        assert len(seen) == 5 and len(set(seen)) == 5
        assert seen == [_value(r, "0020000E") for r in _search(archive, Level.SERIES)]

    def test_negative_limit_is_invalid(self, archive: Archive) -> None:
        with pytest.raises(InvalidQuery, match="limit"):
            _search(archive, Level.STUDY, limit=-1)


class TestStatementCache:
    """Queries of one shape share one cached SELECT (``query._statement``); each must
    still be answered with its own values, whatever was asked before it."""

    def test_one_shape_many_values(self, archive: Archive, data: Data) -> None:
        for name, expected in (("smi*", [data.b]), ("DOE*", [data.a]), ("x*", [])):
            assert _studies(archive, PatientName=name) == expected
        for dates, expected in (
            ("20230101-20231231", [data.b]),
            ("20220101-20221231", [data.c]),
            ("20220101-20231231", [data.b, data.c]),
        ):
            assert _studies(archive, StudyDate=dates) == expected
        assert _studies(archive, ModalitiesInStudy="US") == [data.c]
        assert _studies(archive, ModalitiesInStudy="CT") == [data.a]

    def test_uid_lists_of_other_lengths(self, archive: Archive, data: Data) -> None:
        assert _studies(archive, StudyInstanceUID=f"{data.a}\\{data.c}") == [data.a, data.c]
        assert _studies(archive, StudyInstanceUID=f"{data.b}\\{data.c}") == [data.b, data.c]
        three = f"{data.c}\\{data.b}\\{data.a}"
        assert _studies(archive, StudyInstanceUID=three) == [data.a, data.b, data.c]

    def test_paging_values_are_bound(self, archive: Archive, data: Data) -> None:
        everything = [_value(r, "0020000E") for r in _search(archive, Level.SERIES)]
        for limit, offset in ((1, 0), (2, 1), (3, 2), (1, 4), (2, 9)):
            page = _search(archive, Level.SERIES, limit=limit, offset=offset)
            assert [_value(r, "0020000E") for r in page] == everything[offset : offset + limit]

    @settings(
        max_examples=60,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(
        queries=st.lists(
            st.fixed_dictionaries(
                {},
                optional={
                    "PatientName": st.sampled_from(["*", "doe*", "SMITH^JANE", "m*", "?mi*"]),
                    "PatientID": st.sampled_from(["PID001", "PID00?", "P_03", "*1"]),
                    "StudyDate": st.sampled_from(
                        ["20230601", "20220101-", "-20221231", "20220101-20231231"]
                    ),
                    "Modality": st.sampled_from(["CT", "MR", "US", "CT\\US"]),
                    "AccessionNumber": st.sampled_from(["A%C_1", "AXC11", "A*"]),
                    "ModalitiesInStudy": st.sampled_from(["MR", "CT\\US"]),
                },
            ),
            min_size=2,
            max_size=6,
        ),
        level=st.sampled_from([Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE]),
    )
    def test_answer_does_not_depend_on_earlier_queries(
        self, archive: Archive, data: Data, queries: list[dict[str, str]], level: Level
    ) -> None:
        """Every query answered after others of any shape equals its answer from an
        empty cache."""
        answers = [_search(archive, level, filters=f) for f in queries]
        for filters, answer in zip(queries, answers, strict=True):
            query._statement.cache_clear()
            assert _search(archive, level, filters=filters) == answer
