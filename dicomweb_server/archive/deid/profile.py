"""The Basic Application Level Confidentiality Profile and its options (PS3.15 Annex E).

The attribute table itself is data, generated from the standard into :mod:`._table`;
this module turns it into a lookup: for a tag and a set of options, which action applies.

Actions (PS3.15 Table E.1-1 legend): ``D`` replace with a dummy value, ``Z`` replace with a
zero-length value (or a dummy), ``X`` remove, ``K`` keep (sequences are still cleaned),
``C`` clean, ``U`` replace a UID consistently.  The compound actions ``Z/D``, ``X/Z``,
``X/D``, ``X/Z/D`` and ``X/Z/U*`` let the de-identifier choose the first action unless the
attribute's type in the IOD requires the later one (PS3.15 E.3.1).  With
:attr:`CompoundPolicy.IOD` (the default) the type is looked up for the instance's SOP Class
in :mod:`._iod_types` (generated from PS3.3); an unknown SOP Class, or an attribute nested in
a sequence, falls back to :attr:`CompoundPolicy.CONFORM`, the action that keeps every IOD
valid (D, Z or U*).  :attr:`CompoundPolicy.REMOVE` takes the first action.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass

from . import _iod_types, _safe_private
from ._table import ROWS, SOURCE, STANDARD_EDITION
from .pixels import Signature

__all__ = [
    "SOURCE",
    "STANDARD_EDITION",
    "Action",
    "CompoundPolicy",
    "Option",
    "Profile",
    "Rule",
    "iod_type",
    "rules",
    "safe_private",
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

    IOD = "iod"  #: by the attribute's type in the instance's IOD (PS3.15 E.3.1)
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
#: E.3.1 by IOD type: "1" (Type 1/1C), "2" (Type 2/2C), "3" (Type 3 or not in the IOD).
#: ``X/Z`` on a Type 1 attribute: Z allows "a non-zero length value that may be a dummy
#: value" (Table E.1-1 legend), so a dummy (D); ``X/D`` on Type 2: D, as X is not allowed.
_BY_TYPE = {
    "Z/D": {"1": Action.DUMMY, "2": Action.ZERO, "3": Action.ZERO},
    "X/Z": {"1": Action.DUMMY, "2": Action.ZERO, "3": Action.REMOVE},
    "X/D": {"1": Action.DUMMY, "2": Action.DUMMY, "3": Action.REMOVE},
    "X/Z/D": {"1": Action.DUMMY, "2": Action.ZERO, "3": Action.REMOVE},
    "X/Z/U*": {"1": Action.REFERENCES, "2": Action.ZERO, "3": Action.REMOVE},
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

    def action(
        self, options: frozenset[Option], compound: CompoundPolicy, iod_type: str | None = None
    ) -> Action:
        """The action for this attribute under ``options``.

        An option's column overrides the Basic Profile column (PS3.15 E.3).  Where two
        enabled options disagree, keeping wins over cleaning, which wins over the basic
        action: each option is a statement of what the recipient may have.  ``iod_type``
        ("1", "2" or "3", see :func:`iod_type`) resolves a compound action under
        :attr:`CompoundPolicy.IOD`; ``None`` (unknown) resolves it as ``CONFORM`` does.
        """
        chosen = [self.options[o.value] for o in options if o.value in self.options]
        if "K" in chosen:
            return Action.KEEP
        if "C" in chosen:
            return Action.CLEAN
        if chosen:  # no option column holds anything else today
            return Action(chosen[0])
        if compound is CompoundPolicy.IOD and iod_type is not None and self.basic in _BY_TYPE:
            return _BY_TYPE[self.basic][iod_type]
        table = _REMOVE if compound is CompoundPolicy.REMOVE else _CONFORM
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


def iod_type(sop_class: str, tag: int) -> str | None:
    """The type of top-level ``tag`` in the IOD of ``sop_class``: "1" (Type 1 or 1C),
    "2" (Type 2 or 2C), "3" (Type 3 or not in the IOD); ``None`` for an unknown SOP Class.

    Only the attributes with a compound action in Table E.1-1 are known (see
    :mod:`.generate_iod_types`); for others the answer means nothing.
    """
    number = _iod_types.SOP_CLASSES.get(sop_class)
    if number is None:
        return None
    return _iod_types.MAPPINGS[number].get(tag, "3")


@functools.cache
def safe_private() -> dict[tuple[str, int, int], str]:
    """PS3.15 Table E.3.10-1 as ``{(private creator, group, element offset): VR}``.

    Rows with a condition are left out: a condition is text for a human, and keeping an
    attribute on a condition that is not checked would not be safe.
    """
    return {
        (creator, group, offset): vr
        for group, offset, creator, vr, _vm, _meaning, condition in _safe_private.ROWS
        if not condition
    }


@dataclass(frozen=True)
class Profile:
    """A named selection of options, as configured in ``[deid.profiles.NAME]``."""

    name: str
    options: frozenset[Option]
    compound: CompoundPolicy = CompoundPolicy.IOD
    #: Private attributes kept by the Retain Safe Private option, as
    #: ``(private creator, group, element offset)``: ``("GEMS_PARM_01", 0x0043, 0x39)``.
    safe_private: frozenset[tuple[str, int, int]] = frozenset()
    #: Clean Pixel Data Option (PS3.15 E.3.1): regions to blank per device signature.
    clean_pixel_data: tuple[Signature, ...] = ()

    def action(self, tag: int, sop_class: str | None = None) -> Action | None:
        """The action on ``tag``; ``sop_class`` is given for top-level attributes only,
        as IOD types are known for those (nested ones resolve as ``CONFORM``)."""
        rule = rule_for(tag)
        if rule is None:
            return None
        kind = None
        if self.compound is CompoundPolicy.IOD and sop_class and "/" in rule.basic:
            kind = iod_type(sop_class, tag)
        return rule.action(self.options, self.compound, kind)

    def keeps_private(self, creator: str, group: int, offset: int, vr: str) -> bool:
        """Whether Retain Safe Private (PS3.15 E.3.10) keeps this private attribute.

        Matched by private creator, group and element offset within the block (the block
        number, ``xx`` in ``(gggg,xxee)``, is whatever the creator was given in the
        instance): the profile's own ``safe_private`` list, then Table E.3.10-1, whose VR
        must agree unless the value's VR is unknown (UN, or read implicitly).
        """
        if Option.RETAIN_SAFE_PRIVATE not in self.options:
            return False
        key = (creator, group, offset)
        if key in self.safe_private:
            return True
        expected = safe_private().get(key)
        return expected is not None and vr in (expected, "UN")

    @property
    def shifts_dates(self) -> bool:
        return Option.RETAIN_LONGITUDINAL_MODIFIED_DATES in self.options
