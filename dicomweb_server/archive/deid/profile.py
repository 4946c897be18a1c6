"""The Basic Application Level Confidentiality Profile and its options (PS3.15 Annex E).

The attribute table itself is data, generated from the standard into :mod:`._table`;
this module turns it into a lookup: for a tag and a set of options, which action applies.

Actions (PS3.15 Table E.1-1 legend): ``D`` replace with a dummy value, ``Z`` replace with a
zero-length value (or a dummy), ``X`` remove, ``K`` keep (sequences are still cleaned),
``C`` clean, ``U`` replace a UID consistently.  The compound actions ``Z/D``, ``X/Z``,
``X/D``, ``X/Z/D`` and ``X/Z/U*`` let the de-identifier choose the first action unless the
attribute's type in the IOD requires the later one.  This archive does not look the type up
per IOD: with :attr:`CompoundPolicy.CONFORM` (the default) it takes the action that keeps
every IOD valid (D, Z or U*), with :attr:`CompoundPolicy.REMOVE` the first one.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass

from ._table import ROWS, SOURCE, STANDARD_EDITION

__all__ = [
    "SOURCE",
    "STANDARD_EDITION",
    "Action",
    "CompoundPolicy",
    "Option",
    "Profile",
    "Rule",
    "rules",
]


class Action(enum.StrEnum):
    """A resolved action (PS3.15 Table E.1-1 legend)."""

    DUMMY = "D"
    ZERO = "Z"
    REMOVE = "X"
    KEEP = "K"
    CLEAN = "C"
    UID = "U"
    #: ``X/Z/U*``: keep the sequence, replacing the instance UIDs it contains.
    REFERENCES = "U*"


class CompoundPolicy(enum.StrEnum):
    """How ``X/Z``, ``X/D``, ``Z/D``, ``X/Z/D`` and ``X/Z/U*`` are resolved."""

    CONFORM = "conform"  #: the action that keeps a Type 1 or 2 attribute valid
    REMOVE = "remove"  #: the first action (X, or Z for ``Z/D``)


class Option(enum.StrEnum):
    """Profile options (PS3.15 E.3) with their codes in CID 7050 (PS3.16)."""

    CLEAN_GRAPHICS = "clean_graphics"
    CLEAN_STRUCTURED_CONTENT = "clean_structured_content"
    CLEAN_DESCRIPTORS = "clean_descriptors"
    RETAIN_LONGITUDINAL_FULL_DATES = "retain_longitudinal_full_dates"
    RETAIN_LONGITUDINAL_MODIFIED_DATES = "retain_longitudinal_modified_dates"
    RETAIN_PATIENT_CHARACTERISTICS = "retain_patient_characteristics"
    RETAIN_DEVICE_IDENTITY = "retain_device_identity"
    RETAIN_UIDS = "retain_uids"
    RETAIN_SAFE_PRIVATE = "retain_safe_private"
    RETAIN_INSTITUTION_IDENTITY = "retain_institution_identity"

    @property
    def code(self) -> tuple[str, str]:
        """``(CodeValue, CodeMeaning)`` in coding scheme DCM, CID 7050."""
        return _CODES[self]


#: CID 7050 De-identification Method; the profile itself is 113100.
BASIC_PROFILE_CODE = ("113100", "Basic Application Confidentiality Profile")
_CODES = {
    Option.CLEAN_GRAPHICS: ("113103", "Clean Graphics Option"),
    Option.CLEAN_STRUCTURED_CONTENT: ("113104", "Clean Structured Content Option"),
    Option.CLEAN_DESCRIPTORS: ("113105", "Clean Descriptors Option"),
    Option.RETAIN_LONGITUDINAL_FULL_DATES: (
        "113106",
        "Retain Longitudinal Temporal Information Full Dates Option",
    ),
    Option.RETAIN_LONGITUDINAL_MODIFIED_DATES: (
        "113107",
        "Retain Longitudinal Temporal Information Modified Dates Option",
    ),
    Option.RETAIN_PATIENT_CHARACTERISTICS: ("113108", "Retain Patient Characteristics Option"),
    Option.RETAIN_DEVICE_IDENTITY: ("113109", "Retain Device Identity Option"),
    Option.RETAIN_UIDS: ("113110", "Retain UIDs Option"),
    Option.RETAIN_SAFE_PRIVATE: ("113111", "Retain Safe Private Option"),
    Option.RETAIN_INSTITUTION_IDENTITY: ("113112", "Retain Institution Identity Option"),
}

_CONFORM = {
    "Z/D": Action.DUMMY,
    "X/Z": Action.ZERO,
    "X/D": Action.DUMMY,
    "X/Z/D": Action.DUMMY,
    "X/Z/U*": Action.REFERENCES,
}
_REMOVE = {
    "Z/D": Action.ZERO,
    "X/Z": Action.REMOVE,
    "X/D": Action.REMOVE,
    "X/Z/D": Action.REMOVE,
    "X/Z/U*": Action.REMOVE,
}


@dataclass(frozen=True)
class Rule:
    """One row of Table E.1-1."""

    pattern: str  #: eight hex digits, ``X`` for any digit; or ``"PRIVATE"``
    name: str
    basic: str  #: the Basic Profile column as printed, e.g. ``"X/Z/D"``
    options: dict[str, str]  #: option name -> action as printed

    def matches(self, tag: int) -> bool:
        if self.pattern == "PRIVATE":
            return bool((tag >> 16) & 1)
        text = f"{tag:08X}"
        return all(p in ("X", t) for p, t in zip(self.pattern, text, strict=True))

    def action(self, options: frozenset[Option], compound: CompoundPolicy) -> Action:
        """The action for this attribute under ``options``.

        An option's column overrides the Basic Profile column (PS3.15 E.3).  Where two
        enabled options disagree, keeping wins over cleaning, which wins over the basic
        action: each option is a statement of what the recipient may have.
        """
        chosen = [self.options[o.value] for o in options if o.value in self.options]
        if "K" in chosen:
            return Action.KEEP
        if "C" in chosen:
            return Action.CLEAN
        if chosen:  # no option column holds anything else today
            return Action(chosen[0])
        table = _CONFORM if compound is CompoundPolicy.CONFORM else _REMOVE
        return table.get(self.basic) or Action(self.basic)


@functools.cache
def rules() -> tuple[dict[int, Rule], tuple[Rule, ...]]:
    """The table as ``({tag: rule}, rules with wildcards)``."""
    exact: dict[int, Rule] = {}
    patterns: list[Rule] = []
    for pattern, name, basic, options in ROWS:
        rule = Rule(pattern, name, basic, dict(options))
        if pattern == "PRIVATE" or "X" in pattern:
            patterns.append(rule)
        else:
            exact[int(pattern, 16)] = rule
    return exact, tuple(patterns)


def rule_for(tag: int) -> Rule | None:
    """The table row governing ``tag``, or ``None`` when the profile leaves it alone."""
    exact, patterns = rules()
    found = exact.get(tag)
    if found is not None:
        return found
    private = bool((tag >> 16) & 1)  # odd groups are private even inside 50xx/60xx (PS3.5 7.8)
    for rule in patterns:
        if (rule.pattern == "PRIVATE") is private and rule.matches(tag):
            return rule
    return None


@dataclass(frozen=True)
class Profile:
    """A named selection of options, as configured in ``[deid.profiles.NAME]``."""

    name: str
    options: frozenset[Option]
    compound: CompoundPolicy = CompoundPolicy.CONFORM
    #: Private attributes kept by the Retain Safe Private option, as
    #: ``(private creator, group, element offset)``: ``("GEMS_PARM_01", 0x0043, 0x39)``.
    safe_private: frozenset[tuple[str, int, int]] = frozenset()

    def action(self, tag: int) -> Action | None:
        rule = rule_for(tag)
        return None if rule is None else rule.action(self.options, self.compound)

    @property
    def shifts_dates(self) -> bool:
        return Option.RETAIN_LONGITUDINAL_MODIFIED_DATES in self.options
