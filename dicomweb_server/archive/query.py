"""One query model for QIDO-RS and C-FIND: parsed keys in, SQL out, DICOM JSON back.

A :class:`Query` holds match keys as DICOM-encoded strings, the way both protocols carry
them (``"DOE^J*"``, ``"20200101-20201231"``, ``"1.2.3\\\\1.2.4"``).  :func:`search` turns
it into one SELECT on indexed columns (PS3.4 C.2.2.2 matching: single value, list of
UIDs, wildcard, range, universal; PS3.18 8.3.4.1 fuzzy matching of person names) and
answers from the level rows' stored JSON, never opening a file.

How keys at other levels are handled (PS3.18 8.3.4, PS3.4 C.4.1.2.1):

* keys of upper levels (PatientName at the series level) match through joins; a UID key
  of an upper level scopes the search exactly as ``study_uid``/``series_uid`` do;
* keys of lower levels (Modality at the study level) match through ``EXISTS`` so that
  each study is returned once however many of its series match;
* a known attribute that has no index column is not matched: PS3.4 C.2.2.1.2 lets an
  SCP treat an unsupported optional key as a return key (universal matching).

Extensions beyond PS3.4, chosen because viewers send them: a backslash-separated list is
accepted by every key (each value matched as PS3.4 C.2.2.2.2 describes for UIDs, any of
them matching), and a lone ``*`` is universal matching (PS3.4 C.2.2.2.4).
"""

from __future__ import annotations

import datetime as dt
import functools
import itertools
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from sqlalchemy import (
    ColumnElement,
    Connection,
    Integer,
    Select,
    and_,
    bindparam,
    exists,
    func,
    or_,
    select,
    true,
)

from .attributes import LEVEL_KEYS, Level, name_key, name_words, normalise_time
from .errors import InvalidQuery
from .index import Instance, Patient, Series, Study
from .uids import is_valid_uid

P = Patient.__table__
ST = Study.__table__
SE = Series.__table__
I = Instance.__table__  # noqa: E741 - the four level tables read best as P/ST/SE/I
#: Aliases of the subqueries below, made once: condition shapes name their columns
#: (``"mis.modality"``, see :data:`_COLUMNS`), and an alias builds a proxy of every column
#: of its table when first used (~0.25 ms for the series table).
_MIS, _SIC, _FIRST = SE.alias("mis"), I.alias("sic"), I.alias("first")

_ORDER = (Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE)


@dataclass(frozen=True)
class Query:
    """A search at one level, optionally inside a study or series.

    ``filters`` maps attribute keywords (``"PatientName"``), 8-digit tags (``"00100010"``)
    or nested keyword paths (``"RequestAttributesSequence.ScheduledProcedureStepID"``) to
    match values; an empty value is universal matching and only asks for the attribute
    to be returned.  ``return_keys`` lists extra keywords or 8-digit tags to return;
    ``"all"`` returns every attribute the level knows.

    Results of a search that is not scoped to a study (series level) or to a series
    (instance level) also carry the upper levels' attributes, as PS3.18 10.6.3.3.2 and
    10.6.3.3.3 require for "All Series" and "All Instances"; C-FIND keeps only the keys
    of its identifier (PS3.4 C.4.1.2.1), so it simply ignores them.
    """

    level: Level
    filters: Mapping[str, str] = field(default_factory=dict)
    return_keys: Sequence[str] = ()
    fuzzy: bool = False
    limit: int | None = None
    offset: int = 0
    study_uid: str | None = None
    series_uid: str | None = None


# -- attribute keys ----------------------------------------------------------------------


def resolve_key(key: str) -> tuple[str, str]:
    """``"PatientName"`` or ``"00100010"`` -> ``("00100010", "PatientName")``.

    Raises :class:`InvalidQuery` naming ``key`` when it is neither a keyword of the
    PS3.6 data dictionary nor an 8-digit hexadecimal tag.
    """
    text = key.strip()
    if len(text) == 8 and all(c in "0123456789abcdefABCDEF" for c in text):
        tag = int(text, 16)
        return f"{tag:08X}", keyword_for_tag(tag) or f"{tag:08X}"
    tag = tag_for_keyword(text)
    if tag is None:
        raise InvalidQuery(
            f"unknown attribute {key!r}: use a PS3.6 keyword (PatientName) or an "
            "8-digit hexadecimal tag (00100010)"
        )
    return f"{tag:08X}", text


def vr_of(json_key: str) -> str:
    """The dictionary VR of a tag, for returning an empty attribute (PS3.18 F.2.3)."""
    try:
        vr = dictionary_VR(int(json_key, 16))
    except KeyError:
        return "UN"
    return vr.split(" or ")[0]


def _kw(keyword: str) -> str:
    return f"{tag_for_keyword(keyword):08X}"


# Attributes the archive computes rather than copies (PS3.4 C.3.4, PS3.18 Table 10.6.3-3).
MODALITIES_IN_STUDY = _kw("ModalitiesInStudy")
SOP_CLASSES_IN_STUDY = _kw("SOPClassesInStudy")
INSTANCE_AVAILABILITY = _kw("InstanceAvailability")
STUDY_UID = _kw("StudyInstanceUID")
SERIES_UID = _kw("SeriesInstanceUID")
SOP_UID = _kw("SOPInstanceUID")
NUMBER_OF_FRAMES = _kw("NumberOfFrames")
COUNTS = {
    "patient": (
        _kw("NumberOfPatientRelatedStudies"),
        _kw("NumberOfPatientRelatedSeries"),
        _kw("NumberOfPatientRelatedInstances"),
    ),
    "study": (_kw("NumberOfStudyRelatedSeries"), _kw("NumberOfStudyRelatedInstances")),
    "series": (_kw("NumberOfSeriesRelatedInstances"),),
}

#: Attributes each level always returns, empty when unknown: PS3.18 Tables 10.6.3-3 to
#: 10.6.3-5 (type R) and PS3.4 C.6.1.1 (required and unique keys).
REQUIRED: dict[Level, tuple[str, ...]] = {
    Level.PATIENT: tuple(_kw(k) for k in ("PatientName", "PatientID")),
    Level.STUDY: tuple(
        _kw(k)
        for k in (
            "StudyDate",
            "StudyTime",
            "AccessionNumber",
            "ReferringPhysicianName",
            "PatientName",
            "PatientID",
            "PatientBirthDate",
            "PatientSex",
            "StudyInstanceUID",
            "StudyID",
        )
    ),
    Level.SERIES: tuple(_kw(k) for k in ("Modality", "SeriesInstanceUID", "SeriesNumber")),
    Level.IMAGE: tuple(_kw(k) for k in ("SOPClassUID", "SOPInstanceUID", "InstanceNumber")),
}

#: Keys answered by each level's rows, its own JSON and computed values.
_OWN_KEYS: dict[Level, frozenset[str]] = {
    Level.PATIENT: frozenset(LEVEL_KEYS[Level.PATIENT]) | set(COUNTS["patient"]),
    Level.STUDY: frozenset(LEVEL_KEYS[Level.PATIENT] + LEVEL_KEYS[Level.STUDY])
    | set(COUNTS["study"])
    | {MODALITIES_IN_STUDY, SOP_CLASSES_IN_STUDY, INSTANCE_AVAILABILITY},
    Level.SERIES: frozenset(LEVEL_KEYS[Level.SERIES]) | set(COUNTS["series"]) | {STUDY_UID},
    Level.IMAGE: frozenset(LEVEL_KEYS[Level.IMAGE])
    | {STUDY_UID, SERIES_UID, INSTANCE_AVAILABILITY, NUMBER_OF_FRAMES},
}


# -- conditions as data --------------------------------------------------------------------
#
# A match condition is first a :class:`_Cond`: which SQL it is (``shape``, hashable, with
# columns named as ``"table.column"``) and the values it binds.  Queries that differ only
# in their values share one shape, so the SELECT is built once per shape
# (:func:`_statement`) and run with the values bound; building it again for every request
# cost more than the query itself on a small index.  Values reach SQL only as bound
# parameters, from ``_Cond.values``: a cached statement holds no value a request sent.


@dataclass(frozen=True, slots=True)
class _Cond:
    """A condition before it is SQL: ``shape`` names the SQL, ``values`` fills it in.

    Leaves: ``("eq" | "ge" | "le" | "glob" | "like" | "in", column)`` with one value (a
    tuple for ``"in"``); ``("true",)``; combinations ``("and" | "or", shapes)``; and
    ``("exists", link, parent, shape)``, a correlated EXISTS on a lower level's table.
    The values are listed in the order of the leaves, depth first.
    """

    shape: tuple[Any, ...]
    values: tuple[Any, ...] = ()


def _name(column: Any) -> str:
    return f"{column.table.name}.{column.name}"


def _leaf(op: str, column: Any, value: Any) -> _Cond:
    return _Cond((op, _name(column)), (value,))


def _combine(op: str, conds: list[_Cond]) -> _Cond:
    if len(conds) == 1:
        return conds[0]
    return _Cond((op, tuple(c.shape for c in conds)), tuple(v for c in conds for v in c.values))


def _any(conds: list[_Cond]) -> _Cond:
    return _combine("or", conds)


def _all(conds: list[_Cond]) -> _Cond:
    return _combine("and", conds)


_TRUE = _Cond(("true",))


def _exists(link: Any, parent: Any, inner: _Cond) -> _Cond:
    """EXISTS a row of ``link``'s table that belongs to ``parent`` and matches ``inner``."""
    return _Cond(("exists", _name(link), _name(parent), inner.shape), inner.values)


# -- matching (PS3.4 C.2.2.2) --------------------------------------------------------------


def _values(value: str) -> list[str]:
    """The values of a key: backslash separates values (PS3.5 6.4)."""
    return [v.strip() for v in value.split("\\")]


def _has_wildcard(value: str) -> bool:
    return "*" in value or "?" in value


def _wildcard(column: Any, pattern: str, dialect: str) -> _Cond:
    """Wildcard matching (PS3.4 C.2.2.2.4): ``*`` any run, ``?`` one character.

    Every other character is literal, ``%`` and ``_`` included.  SQLite's LIKE ignores
    ASCII case, so SQLite gets GLOB (case-sensitive, like PostgreSQL's LIKE): single value
    and wildcard matching are case-sensitive except for PN (PS3.4 C.2.2.2.1).
    """
    if dialect == "sqlite":
        return _leaf("glob", column, "".join(f"[{c}]" if c == "[" else c for c in pattern))
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return _leaf("like", column, escaped.replace("*", "%").replace("?", "_"))


def _match_text(column: Any, value: str, dialect: str) -> _Cond:
    """Single value or wildcard matching of a string (PS3.4 C.2.2.2.1, C.2.2.2.4)."""
    return _any(
        [
            _wildcard(column, v, dialect) if _has_wildcard(v) else _leaf("eq", column, v)
            for v in _values(value)
        ]
    )


def _match_uid(column: Any, value: str, name: str) -> _Cond:
    """Single value or list of UID matching (PS3.4 C.2.2.2.2); wildcards are not
    allowed in UIDs, so a malformed UID is an error rather than a silent non-match."""
    uids = [v for v in _values(value) if v]
    for uid in uids:
        if not is_valid_uid(uid):
            raise InvalidQuery(
                f"{name}: {uid[:80]!r} is not a valid UID (PS3.5 9.1: at most 64 "
                "characters, digits in dot-separated components)"
            )
    return _leaf("eq", column, uids[0]) if len(uids) == 1 else _leaf("in", column, tuple(uids))


def _match_name(key_column: Any, words_column: Any, value: str, fuzzy: bool, dialect: str) -> _Cond:
    """PN matching, case-insensitive on the normalised key (PS3.4 C.2.2.2.1).

    With fuzzy matching (PS3.18 8.3.4.1 ``fuzzymatching=true``) every word of the value
    must begin a word of the name, whichever component it is in: "joh" finds
    "Doe^John".
    """
    conditions = []
    for v in _values(value):
        if fuzzy:
            words = name_words(v).split()
            conditions.append(
                _all([_wildcard(words_column, f"* {w}*", dialect) for w in words])
                if words
                else _TRUE
            )
        else:
            normalised = name_key(v)
            # Exact: the whole normalised name, all component groups (PS3.5 6.2.1); an
            # OR with a group prefix would cost PostgreSQL its index (LIKE needs a
            # pattern_ops index there), so "Yamada^Tarou*" is how to ignore later groups.
            conditions.append(
                _wildcard(key_column, normalised, dialect)
                if _has_wildcard(normalised)
                else _leaf("eq", key_column, normalised)
            )
    return _any(conditions)


def _parse_da(text: str, name: str) -> dt.date:
    try:
        if len(text) != 8 or not text.isdigit():
            raise ValueError
        return dt.date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        raise InvalidQuery(
            f"{name}: {text!r} is not a date (PS3.5 6.2 DA: YYYYMMDD; ranges "
            "YYYYMMDD-YYYYMMDD, -YYYYMMDD or YYYYMMDD-)"
        ) from None


def _date(text: str, name: str, upper: bool) -> dt.date:
    return _parse_da(text, name)


def _time(text: str, name: str, upper: bool) -> str:
    normalised = normalise_time(text)
    if normalised is None:
        raise InvalidQuery(f"{name}: {text!r} is not a time (PS3.5 6.2 TM: HHMMSS.FFFFFF)")
    if upper:
        # "-1015" includes 10:15:59: fill what the value leaves out with its maximum.
        whole, _, fraction = text.replace(":", "").partition(".")
        filled = whole + "5959"[: max(6 - len(whole), 0)]
        normalised = f"{filled}.{fraction[:6].ljust(6, '9')}"
    return normalised


def _match_range(
    column: Any, value: str, name: str, parse: Callable[[str, str, bool], Any]
) -> _Cond:
    """Single value and range matching (PS3.4 C.2.2.2.1, C.2.2.2.5) of dates or times,
    ``parse(text, name, upper)`` giving the column's value for a bound."""
    conditions = []
    for v in _values(value):
        if "-" not in v:
            conditions.append(_leaf("eq", column, parse(v, name, False)))
            continue
        low, _, high = v.partition("-")
        if not low and not high:
            raise InvalidQuery(f"{name}: a range needs at least one bound, got {v!r}")
        parts = []
        if low:
            parts.append(_leaf("ge", column, parse(low, name, False)))
        if high:
            parts.append(_leaf("le", column, parse(high, name, True)))
        conditions.append(_all(parts))
    return _any(conditions)


def _match_int(column: Any, value: str, name: str) -> _Cond:
    numbers = []
    for v in _values(value):
        try:
            numbers.append(int(v))
        except ValueError:
            raise InvalidQuery(f"{name}: {v!r} is not an integer (PS3.5 6.2 IS)") from None
    return (
        _leaf("eq", column, numbers[0])
        if len(numbers) == 1
        else _leaf("in", column, tuple(numbers))
    )


# How each indexed key matches: (table, kind, columns).  The table is the level whose
# row holds the column; "kind" picks the matching rule above.
_MATCHERS: dict[str, tuple[str, str, tuple[Any, ...]]] = {
    "PatientName": ("patient", "name", (P.c.name_key, P.c.name_words)),
    "PatientID": ("patient", "text", (P.c.patient_id,)),
    "IssuerOfPatientID": ("patient", "text", (P.c.issuer,)),
    "PatientBirthDate": ("patient", "date", (P.c.birth_date,)),
    "PatientSex": ("patient", "text", (P.c.sex,)),
    "StudyInstanceUID": ("study", "uid", (ST.c.study_uid,)),
    "StudyDate": ("study", "date", (ST.c.study_date,)),
    "StudyTime": ("study", "time", (ST.c.study_time,)),
    "AccessionNumber": ("study", "text", (ST.c.accession_number,)),
    "StudyID": ("study", "text", (ST.c.study_id,)),
    "StudyDescription": ("study", "text", (ST.c.description,)),
    "ReferringPhysicianName": (
        "study",
        "name",
        (ST.c.referring_name_key, ST.c.referring_name_words),
    ),
    "SeriesInstanceUID": ("series", "uid", (SE.c.series_uid,)),
    "Modality": ("series", "text", (SE.c.modality,)),
    "SeriesNumber": ("series", "int", (SE.c.series_number,)),
    "SeriesDescription": ("series", "text", (SE.c.description,)),
    "PerformedProcedureStepStartDate": ("series", "date", (SE.c.performed_date,)),
    "PerformedProcedureStepStartTime": ("series", "time", (SE.c.performed_time,)),
    # Sequence matching (PS3.4 C.2.2.2.6) on the first Request Attributes item.
    "RequestAttributesSequence.ScheduledProcedureStepID": (
        "series",
        "text",
        (SE.c.scheduled_step_id,),
    ),
    "RequestAttributesSequence.RequestedProcedureID": (
        "series",
        "text",
        (SE.c.requested_procedure_id,),
    ),
    "SOPInstanceUID": ("instance", "uid", (I.c.sop_uid,)),
    "SOPClassUID": ("instance", "uid", (I.c.sop_class_uid,)),
    "InstanceNumber": ("instance", "int", (I.c.instance_number,)),
}
_TABLE_LEVEL = {"patient": 0, "study": 1, "series": 2, "instance": 3}


_TABLES = tuple(_TABLE_LEVEL)


@dataclass
class _Plan:
    """Conditions per table, plus the keys the answer must carry."""

    conditions: dict[str, list[_Cond]] = field(
        default_factory=lambda: {name: [] for name in _TABLES}
    )
    extra: list[_Cond] = field(default_factory=list)  # study aggregates
    keys: list[str] = field(default_factory=list)  # JSON keys to return
    scoped_study: bool = False
    scoped_series: bool = False
    selective: bool = False  # a lower level's UID is among the keys

    def ordered(self) -> list[_Cond]:
        """Every condition, in the order :func:`_statement` binds their values."""
        return [*(c for name in _TABLES for c in self.conditions[name]), *self.extra]


def _plan(query: Query, dialect: str) -> _Plan:
    plan = _Plan()
    filters = dict(query.filters)
    if query.study_uid is not None:
        plan.conditions["study"].append(
            _match_uid(ST.c.study_uid, query.study_uid, "StudyInstanceUID")
        )
        plan.scoped_study = True
    if query.series_uid is not None:
        plan.conditions["series"].append(
            _match_uid(SE.c.series_uid, query.series_uid, "SeriesInstanceUID")
        )
        plan.scoped_series = True
    for raw_key, raw_value in filters.items():
        value = (raw_value or "").strip().strip("\0").strip()
        top, _, nested = raw_key.partition(".")
        json_key, keyword = resolve_key(top)
        if nested:
            nested_key = ".".join(resolve_key(k)[1] for k in nested.split("."))
            keyword_path = f"{keyword}.{nested_key}"
        else:
            keyword_path = keyword
        plan.keys.append(json_key)
        if not value or value == "*":
            continue  # universal matching: a return key only (PS3.4 C.2.2.2.3)
        _add_condition(plan, query, keyword_path, value, dialect)
    return plan


def _add_condition(plan: _Plan, query: Query, keyword: str, value: str, dialect: str) -> None:
    level = _ORDER.index(query.level)
    if level == 0 and keyword in ("ModalitiesInStudy", "SOPClassesInStudy"):
        # Patient level: a patient matches through any of its studies' series/instances.
        if keyword == "ModalitiesInStudy":
            plan.conditions["series"].append(_match_text(SE.c.modality, value, dialect))
        else:
            plan.conditions["instance"].append(_match_uid(I.c.sop_class_uid, value, keyword))
        return
    if keyword == "ModalitiesInStudy":
        # A study matches when any of its series has one of the modalities (PS3.4
        # C.6.1.1.3.1); its own EXISTS, independent of other series keys.
        plan.extra.append(
            _exists(_MIS.c.study_pk, ST.c.id, _match_text(_MIS.c.modality, value, dialect))
        )
        return
    if keyword == "SOPClassesInStudy":
        plan.extra.append(
            _exists(_SIC.c.study_pk, ST.c.id, _match_uid(_SIC.c.sop_class_uid, value, keyword))
        )
        return
    matcher = _MATCHERS.get(keyword)
    if matcher is None:
        return  # not indexed: PS3.4 C.2.2.1.2 lets it act as a return key
    table, kind, columns = matcher
    column = columns[0]
    if kind == "name":
        condition = _match_name(columns[0], columns[1], value, query.fuzzy, dialect)
    elif kind == "uid":
        condition = _match_uid(column, value, keyword)
        if keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            plan.selective |= _TABLE_LEVEL[table] > level  # a unique key: few rows
        if len(_values(value)) == 1 and _TABLE_LEVEL[table] < level:
            # An upper level's unique key scopes the search (PS3.4 C.4.1.2.1).
            plan.scoped_study |= table == "study"
            plan.scoped_series |= table == "series"
    elif kind == "date":
        condition = _match_range(column, value, keyword, _date)
    elif kind == "time":
        condition = _match_range(column, value, keyword, _time)
    elif kind == "int":
        condition = _match_int(column, value, keyword)
    else:
        condition = _match_text(column, value, dialect)
    plan.conditions[table].append(condition)


# -- the statement -------------------------------------------------------------------------


def _below(
    level: int, conditions: dict[str, list[ColumnElement[bool]]], selective: bool
) -> list[ColumnElement[bool]]:
    """Conditions on levels below the query level as one semi-join, so that each match
    is returned once however many of its children match.

    A correlated EXISTS stops at the first matching child and suits keys that many
    children match (Modality=CT); with a UID among the keys (``selective``), an
    uncorrelated ``IN`` finds the few parents through the UID index instead of probing
    every parent row.
    """
    names = [
        n for n in ("study", "series", "instance") if _TABLE_LEVEL[n] > level and conditions[n]
    ]
    if not names:
        return []
    deepest = max(_TABLE_LEVEL[n] for n in names)
    where: list[ColumnElement[bool]] = []
    for n in ("study", "series", "instance"):
        if _TABLE_LEVEL[n] > level:
            where.extend(conditions[n])
    if level == 0:  # patient: through its studies
        link, parent = ST.c.patient_pk, P.c.id
        sub = select(link).select_from(ST)
        if deepest >= 2:
            sub = sub.join(SE, SE.c.study_pk == ST.c.id)
        if deepest == 3:
            sub = sub.join(I, I.c.series_pk == SE.c.id)
    elif level == 1:  # study
        if deepest == 3:
            link, parent = I.c.study_pk, ST.c.id
            sub = select(link).select_from(I)
            if conditions["series"]:
                sub = sub.join(SE, I.c.series_pk == SE.c.id)
        else:
            link, parent = SE.c.study_pk, ST.c.id
            sub = select(link).select_from(SE)
    else:  # series
        link, parent = I.c.series_pk, SE.c.id
        sub = select(link).select_from(I)
    sub = sub.where(*where)
    if selective:
        return [parent.in_(sub)]
    return [sub.where(link == parent).exists()]


def _representative(level: Level, pk: Any) -> Any:
    """The metadata of the first stored instance of the match whose primary key is
    ``pk``, for return keys that the level rows do not hold (a correlated subquery:
    still one statement)."""
    if level is Level.IMAGE:
        return select(_FIRST.c.metadata_json).where(_FIRST.c.id == pk).scalar_subquery()
    # Each ORDER BY follows an index whose leading column is the correlated key, so the
    # first row is one index probe (ordering by the primary key alone lets PostgreSQL
    # walk the whole instances table instead).
    if level is Level.SERIES:
        sub = (
            select(I.c.metadata_json)
            .where(I.c.series_pk == pk)
            .order_by(I.c.series_pk, I.c.instance_number, I.c.id)
        )
    elif level is Level.STUDY:
        sub = select(I.c.metadata_json).where(I.c.study_pk == pk).order_by(I.c.study_pk, I.c.id)
    else:
        sub = (
            select(I.c.metadata_json)
            .join(ST, I.c.study_pk == ST.c.id)
            .where(ST.c.patient_pk == pk)
            .order_by(ST.c.id, I.c.study_pk, I.c.id)
        )
    return sub.limit(1).scalar_subquery()


@dataclass(frozen=True)
class _Shape:
    """What the statement selects and how a row becomes DICOM JSON."""

    level: Level
    upper: bool  # merge the upper levels' attributes (unscoped series/instance search)
    keys: tuple[str, ...]  # requested keys (filters and return keys)
    all_keys: bool
    representative: bool


@dataclass(frozen=True)
class _Spec:
    """Everything the SELECT depends on except the values it binds: the key of the
    statement cache (:func:`_statement`)."""

    level: Level
    conditions: tuple[tuple[tuple[Any, ...], ...], ...]  # shapes, per table of _TABLES
    extra: tuple[tuple[Any, ...], ...]
    keys: tuple[str, ...]
    all_keys: bool
    scoped_study: bool
    scoped_series: bool
    selective: bool
    limited: bool


#: Columns by the name a condition's shape gives them (``"mis.modality"``).
_COLUMNS = {_name(c): c for t in (P, ST, SE, I, _MIS, _SIC) for c in t.c}


def _sql(shape: tuple[Any, ...], names: Iterator[str]) -> ColumnElement[bool]:
    """The SQL of a condition's shape, its values as bind parameters named by ``names``."""
    op = shape[0]
    if op == "true":
        return true()
    if op in ("and", "or"):
        parts = [_sql(s, names) for s in shape[1]]
        return and_(*parts) if op == "and" else or_(*parts)
    if op == "exists":
        link, parent = _COLUMNS[shape[1]], _COLUMNS[shape[2]]
        return exists().where(link == parent).where(_sql(shape[3], names))
    column = _COLUMNS[shape[1]]
    value = bindparam(next(names), type_=column.type, expanding=op == "in")
    if op == "eq":
        return column == value
    if op == "ge":
        return column >= value
    if op == "le":
        return column <= value
    if op == "in":
        return column.in_(value)
    if op == "glob":
        return column.op("GLOB")(value)
    return column.like(value, escape="\\")


def build(
    query: Query, dialect: str = "postgresql"
) -> tuple[Select[Any], dict[str, Any], Callable[[Any], dict[str, Any]]]:
    """The SELECT answering ``query``, the values to run it with, and the function
    turning each row into DICOM JSON.

    Nothing touches a database here, so the statement can be inspected or run on any
    backend.  The SELECT is shared by every query of the same shape (:class:`_Spec`),
    and built on the first of them.  Raises
    :class:`InvalidQuery` for a malformed key, value, limit or offset.
    """
    if query.limit is not None and query.limit < 0:
        raise InvalidQuery(f"limit: must not be negative, got {query.limit}")
    if query.offset < 0:
        raise InvalidQuery(f"offset: must not be negative, got {query.offset}")
    level = query.level
    plan = _plan(query, dialect)
    all_keys = any(k.strip().lower() == "all" for k in query.return_keys)
    keys = list(plan.keys)
    for key in query.return_keys:
        if key.strip().lower() != "all" and key.strip():
            keys.append(resolve_key(key)[0])
    spec = _Spec(
        level=level,
        conditions=tuple(tuple(c.shape for c in plan.conditions[n]) for n in _TABLES),
        extra=tuple(c.shape for c in plan.extra),
        keys=tuple(k for k in dict.fromkeys(keys) if not _is_lower(k, level)),
        all_keys=all_keys,
        scoped_study=plan.scoped_study,
        scoped_series=plan.scoped_series,
        selective=plan.selective,
        limited=query.limit is not None,
    )
    stmt, shape = _statement(spec)
    values = [v for c in plan.ordered() for v in c.values]
    params = {f"v{n}": v for n, v in enumerate(values)}
    params["offset"] = query.offset
    if query.limit is not None:
        params["limit"] = query.limit
    return stmt, params, lambda row: _to_json(row, shape)


@functools.lru_cache(maxsize=128)
def _statement(spec: _Spec) -> tuple[Select[Any], _Shape]:
    """The SELECT of every query shaped as ``spec``, its values left as bind parameters
    ``v0``, ``v1``... in the order of :meth:`_Plan.ordered`; ``offset`` and ``limit``.

    Cached: building it took longer (0.1 ms and SQLAlchemy's cache key of a new statement
    0.03 ms more) than running it on a small index, and a statement object run again
    skips both.  The cache is bounded, as a client can send any number of shapes.
    """
    level = spec.level
    depth = _ORDER.index(level)
    names = (f"v{n}" for n in itertools.count())
    where = {
        n: [_sql(s, names) for s in shapes]
        for n, shapes in zip(_TABLES, spec.conditions, strict=True)
    }
    extra = [_sql(s, names) for s in spec.extra]
    keys = spec.keys
    upper = (level is Level.SERIES and not spec.scoped_study) or (
        level is Level.IMAGE and not (spec.scoped_study and spec.scoped_series)
    )
    known = set(_OWN_KEYS[level])
    if level in (Level.SERIES, Level.IMAGE):
        known |= _OWN_KEYS[Level.STUDY]  # upper JSON is selected when a key needs it
    if level is Level.IMAGE:
        known |= _OWN_KEYS[Level.SERIES]
    representative = any(k not in known for k in keys)

    columns: list[Any] = []
    if level is Level.PATIENT:
        columns += [
            P.c.attributes.label("patient_json"),
            select(func.count())
            .select_from(ST)
            .where(ST.c.patient_pk == P.c.id)
            .scalar_subquery()
            .label("n_studies"),
            select(func.coalesce(func.sum(ST.c.num_series), 0))
            .where(ST.c.patient_pk == P.c.id)
            .scalar_subquery()
            .label("n_series"),
            select(func.coalesce(func.sum(ST.c.num_instances), 0))
            .where(ST.c.patient_pk == P.c.id)
            .scalar_subquery()
            .label("n_instances"),
        ]
        stmt = select(*columns).select_from(P)
        order = [P.c.id]
    elif level is Level.STUDY:
        stmt = select(
            ST.c.study_uid,
            P.c.attributes.label("patient_json"),
            ST.c.attributes.label("study_json"),
            ST.c.modalities,
            ST.c.sop_classes,
            ST.c.num_series,
            ST.c.num_instances,
        )
        stmt = stmt.select_from(ST.join(P, ST.c.patient_pk == P.c.id))
        order = [ST.c.id]
    elif level is Level.SERIES:
        stmt = select(
            SE.c.series_uid,
            ST.c.study_uid,
            SE.c.attributes.label("series_json"),
            SE.c.num_instances,
        ).select_from(SE.join(ST, SE.c.study_pk == ST.c.id))
        order = [ST.c.id, SE.c.id]
    else:
        stmt = select(
            I.c.sop_uid,
            SE.c.series_uid,
            ST.c.study_uid,
            I.c.attributes.label("instance_json"),
            I.c.number_of_frames,
        ).select_from(I.join(SE, I.c.series_pk == SE.c.id).join(ST, SE.c.study_pk == ST.c.id))
        order = [ST.c.id, SE.c.id, I.c.id]
    need_upper = upper or any(k in known - _OWN_KEYS[level] for k in keys)
    if level in (Level.SERIES, Level.IMAGE):
        if need_upper or where["patient"]:
            stmt = stmt.join(P, ST.c.patient_pk == P.c.id)
        if need_upper:
            stmt = stmt.add_columns(
                P.c.attributes.label("patient_json"),
                ST.c.attributes.label("study_json"),
                ST.c.modalities,
                ST.c.num_series,
                ST.c.num_instances.label("study_instances"),
            )
        if level is Level.IMAGE and need_upper:
            stmt = stmt.add_columns(
                SE.c.attributes.label("series_json"), SE.c.num_instances.label("series_instances")
            )
    for name, conditions in where.items():
        if _TABLE_LEVEL[name] <= depth:
            stmt = stmt.where(*conditions)
    stmt = stmt.where(*_below(depth, where, spec.selective), *extra)
    stmt = stmt.order_by(*order).offset(bindparam("offset", type_=Integer))
    if spec.limited:
        stmt = stmt.limit(bindparam("limit", type_=Integer))
    if representative:
        # Page first, then look the representative up for the page's rows only:
        # PostgreSQL would otherwise evaluate it for every row skipped by OFFSET.
        stmt = stmt.add_columns(*[c.label(f"o{n}") for n, c in enumerate(order)])
        page = stmt.subquery("page")
        keys_in_page = [page.c[f"o{n}"] for n in range(len(order))]
        stmt = select(page, _representative(level, keys_in_page[-1]).label("representative"))
        stmt = stmt.order_by(*keys_in_page)
    return stmt, _Shape(level, upper, keys, spec.all_keys, representative)


def _is_lower(json_key: str, level: Level) -> bool:
    """Whether a key belongs to a level below ``level``: PS3.18 10.6.3.3 says such
    includefield keys are not returned."""
    below = _ORDER[_ORDER.index(level) + 1 :]
    if level is Level.PATIENT:
        below = (Level.STUDY, Level.SERIES, Level.IMAGE)
    return any(json_key in LEVEL_KEYS[b] for b in below) and not any(
        json_key in LEVEL_KEYS[a] for a in _ORDER[: _ORDER.index(level) + 1]
    )


def search(connection: Connection, query: Query) -> list[dict[str, Any]]:
    """Run ``query`` and return one DICOM JSON dict per match, in a stable order.

    The order is by primary keys, from the top of the hierarchy down (study, series,
    instance), so paging with ``offset`` and ``limit`` walks
    the matches once each (PS3.18 8.3.4.4.1: search requests are idempotent).
    """
    return list(iter_search(connection, query, batch=None))


def iter_search(
    connection: Connection, query: Query, batch: int | None = 200
) -> Iterator[dict[str, Any]]:
    """As :func:`search`, one match at a time, the rows fetched ``batch`` at a time
    (a server-side cursor on PostgreSQL): for a C-FIND, which has no paging."""
    stmt, params, to_json = build(query, connection.dialect.name)
    options = {"yield_per": batch} if batch else {}
    for row in connection.execute(stmt, params, execution_options=options):
        yield to_json(row)


# -- rows to DICOM JSON ------------------------------------------------------------------------


def _loads(text: str | None) -> dict[str, Any]:
    return json.loads(text) if text else {}


def _multi(vr: str, joined: str) -> dict[str, Any]:
    values = [v for v in (joined or "").split("\\") if v]
    return {"vr": vr, "Value": values} if values else {"vr": vr}


def _study_part(row: Any, instances: int) -> dict[str, Any]:
    out = {**_loads(row.patient_json), **_loads(row.study_json)}
    out[MODALITIES_IN_STUDY] = _multi("CS", row.modalities)
    out[COUNTS["study"][0]] = {"vr": "IS", "Value": [row.num_series]}
    out[COUNTS["study"][1]] = {"vr": "IS", "Value": [instances]}
    return out


def _to_json(row: Any, shape: _Shape) -> dict[str, Any]:
    level = shape.level
    mapping = row._mapping
    out: dict[str, Any]
    if level is Level.PATIENT:
        out = _loads(row.patient_json)
        counts = (row.n_studies, row.n_series, row.n_instances)
        for key, value in zip(COUNTS["patient"], counts, strict=True):
            out[key] = {"vr": "IS", "Value": [int(value or 0)]}
        available = dict(out)
    elif level is Level.STUDY:
        out = _study_part(row, row.num_instances)
        out[SOP_CLASSES_IN_STUDY] = _multi("UI", row.sop_classes)
        out[INSTANCE_AVAILABILITY] = {"vr": "CS", "Value": ["ONLINE"]}
        available = dict(out)
    else:
        upper: dict[str, Any] = {}
        if "study_json" in mapping:
            upper = _study_part(row, row.study_instances)
        if level is Level.SERIES:
            own = _loads(row.series_json)
            own[COUNTS["series"][0]] = {"vr": "IS", "Value": [row.num_instances]}
        else:
            if "series_json" in mapping:
                upper.update(_loads(row.series_json))
                upper[COUNTS["series"][0]] = {"vr": "IS", "Value": [row.series_instances]}
            own = _loads(row.instance_json)
            own[INSTANCE_AVAILABILITY] = {"vr": "CS", "Value": ["ONLINE"]}
            if NUMBER_OF_FRAMES not in own and row.number_of_frames:
                own[NUMBER_OF_FRAMES] = {"vr": "IS", "Value": [row.number_of_frames]}
            own[SOP_UID] = {"vr": "UI", "Value": [row.sop_uid]}
            own[SERIES_UID] = {"vr": "UI", "Value": [row.series_uid]}
        own[STUDY_UID] = {"vr": "UI", "Value": [row.study_uid]}
        available = {**upper, **own}
        out = {**upper, **own} if shape.upper else own
    if shape.all_keys:
        out = dict(available)
    representative = _loads(mapping["representative"]) if shape.representative else {}
    for key in (*REQUIRED[level], *shape.keys):
        if key in out:
            continue
        found = available.get(key) or representative.get(key)
        out[key] = found if found is not None else {"vr": vr_of(key)}
    return dict(sorted(out.items()))
