"""De-identify stored studies into new ones (a research copy of a collection).

Each instance goes through the same path as on ingest (:class:`~.deidentifier.Deidentifier`)
and is stored as a new instance under its pseudonymous UIDs, so the copy of a study is one
study however many times or in whatever order its parts are processed.  The originals stay.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tqdm import tqdm

from ..parse import parse_instance
from .deidentifier import Deidentifier
from .quarantine import DEIDENTIFIED

if TYPE_CHECKING:
    from ..core import Archive
    from ..ingest import StoreResult


@dataclass
class BatchResult:
    stored: list[StoreResult] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)  #: new SOP Instance UIDs


def deidentify_studies(
    archive: Archive,
    study_uids: Iterable[str],
    profile_name: str,
    *,
    progress: bool = True,
) -> BatchResult:
    """Store a de-identified copy of each study with the configured profile ``profile_name``.

    Needs ``[deid]`` configured (secret, the profile); ``deid.enabled`` may stay false, as
    this does not de-identify ingest.  Shows a progress bar on a terminal unless told not to.
    """
    from ..ingest import Origin  # ingest imports this package's hook lazily too

    settings = archive.settings
    deid = Deidentifier(
        settings.deid,
        archive.storage,
        archive.writer_engine,
        settings.storage.data_dir,
        settings.ingest.bulk_data_threshold,
    )
    if profile_name not in deid.profiles:
        raise ValueError(f"no profile {profile_name!r} in [deid.profiles]")
    profile = deid.profiles[profile_name]
    instances = [i for uid in study_uids for i in archive.instances(uid)]
    result = BatchResult()
    origin = Origin(DEIDENTIFIED, address="deidentify")
    for instance in tqdm(instances, unit="instance", disable=not progress):
        with archive.open(instance) as stream:
            received = archive.storage.receive(stream)
        try:
            parsed = parse_instance(received, deid.bulk_data_threshold)
        except BaseException:
            archive.storage.discard(received)
            raise
        applied = deid.apply(received, parsed, Origin("IMPORT"), profile)
        if applied.quarantined:
            result.quarantined.append(applied.parsed.sop_uid)
            continue
        try:
            result.stored.append(archive.store(applied.received.ready(), origin))
        finally:
            archive.storage.discard(applied.received)
    return result
