"""One query model for QIDO-RS and C-FIND: parsed keys in, SQL out, DICOM JSON back.

A :class:`Query` holds match keys as DICOM-encoded strings, the way both protocols carry
them (``"DOE^J*"``, ``"20200101-20201231"``, ``"1.2.3\\\\1.2.4"``).  :func:`search` turns
it into one SELECT on indexed columns (PS3.4 C.2.2.2 matching: single value, list of
UIDs, wildcard, range, universal; PS3.18 8.3.4 fuzzy matching of person names) and
answers from the level rows' stored JSON, never opening a file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from .attributes import Level


@dataclass(frozen=True)
class Query:
    """A search at one level, optionally inside a study or series.

    ``filters`` maps attribute keywords (``"PatientName"``) or nested keyword paths
    (``"RequestAttributesSequence.ScheduledProcedureStepID"``) to match values; an
    empty value is universal matching and only asks for the attribute to be returned.
    ``return_keys`` lists extra keywords or 8-digit tags to return; ``"all"`` returns
    every attribute the level knows.
    """

    level: Level
    filters: Mapping[str, str] = field(default_factory=dict)
    return_keys: Sequence[str] = ()
    fuzzy: bool = False
    limit: int | None = None
    offset: int = 0
    study_uid: str | None = None
    series_uid: str | None = None


def search(session: Session, query: Query) -> list[dict[str, Any]]:
    """Run ``query`` and return one DICOM JSON dict per match, in a stable order."""
    raise NotImplementedError
