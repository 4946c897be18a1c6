"""Property-based fuzzing of the archive's input parsers, with a summary per target.

Targets (each a function of generated input that raises only on a real defect):

``multipart``
    The STOW-RS ``multipart/related`` reader (:mod:`dicomweb_server.web.multipart_parser`)
    on random bodies, boundaries and chunkings, and on well-formed bodies whose parts
    must come back byte for byte however the stream is chunked.  Only
    :class:`MultipartError` (and its subclasses) may be raised.
``query``
    :meth:`Archive.search` with random keys (keywords, tags, nested paths, junk) and
    values (wildcards, ranges, lists, control characters): answers or
    :class:`InvalidQuery`, nothing else.
``qido``
    The same through HTTP (QIDO-RS on a real socket): only 200 or 400.
``ingest``
    :meth:`Archive.store` of a valid CT file mutated by bit flips, truncations, inserted
    and deleted bytes: stored (the stored file's SHA-256 equals the input's, and it is
    indexed) or refused with an :class:`ArchiveError` subclass; never another exception,
    never a partial file (every file under the data folder is a complete, indexed
    instance; the ``.tmp`` folder is empty after each case).

Run (at least 10,000 cases per target, as the reliability notes record)::

    .venv/bin/python scripts/fuzz.py --cases 10000
    .venv/bin/python scripts/fuzz.py --target ingest --cases 20000 --seed 7

``tests/test_fuzz.py`` runs the same targets with a few hundred cases each.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import io
import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dicomweb_server.archive import Archive, ArchiveError, InvalidQuery, Level, Origin, Query
from dicomweb_server.archive.index import Instance
from dicomweb_server.config import Settings, load_settings
from dicomweb_server.web.multipart_parser import MultipartError, MultipartReader

#: Outcome counters per target, printed in the summary.
COUNTS: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)


# -- multipart ----------------------------------------------------------------------------


class ChunkedStream:
    """A byte string read back in the given chunk sizes (cycled), like a socket would."""

    def __init__(self, data: bytes, sizes: list[int]) -> None:
        self._data = data
        self._sizes = sizes or [len(data) or 1]
        self._pos = 0
        self._turn = 0

    def read(self, size: int = -1, /) -> bytes:
        step = self._sizes[self._turn % len(self._sizes)]
        self._turn += 1
        if size is not None and size >= 0:
            step = min(step, size)
        data = self._data[self._pos : self._pos + step]
        self._pos += len(data)
        return data


def build_body(parts: list[tuple[dict[str, str], bytes]], boundary: bytes) -> bytes:
    out = bytearray(b"preamble\r\n")
    for headers, content in parts:
        out += b"--" + boundary + b"\r\n"
        for name, value in headers.items():
            out += f"{name}: {value}\r\n".encode("latin-1")
        out += b"\r\n" + content + b"\r\n"
    out += b"--" + boundary + b"--\r\nepilogue"
    return bytes(out)


def read_parts(
    stream: Any, boundary: bytes, read_sizes: list[int], max_parts: int = 0, chunk: int = 64
) -> list[tuple[dict[str, str], bytes]]:
    """Every part of the body, read with varying ``read`` sizes."""
    parts = []
    turn = 0
    for part in MultipartReader(stream, boundary, chunk_size=chunk, max_parts=max_parts):
        content = bytearray()
        assert part.stream.read(0) == b"", "read(0) must return b'' at once"
        while True:
            size = read_sizes[turn % len(read_sizes)] if read_sizes else -1
            turn += 1
            data = part.stream.read(size)
            if not data:
                break
            content += data
        parts.append((part.headers, bytes(content)))
    return parts


def check_multipart_random(
    body: bytes,
    boundary: bytes,
    sizes: list[int],
    read_sizes: list[int],
    chunk: int,
    max_parts: int,
) -> None:
    """Any bytes at all: parts, or a MultipartError; never another exception."""
    try:
        read_parts(ChunkedStream(body, sizes), boundary, read_sizes, max_parts, chunk)
        COUNTS["multipart"]["parsed"] += 1
    except MultipartError as exc:
        COUNTS["multipart"][f"refused: {type(exc).__name__}"] += 1


def check_multipart_roundtrip(
    parts: list[bytes], boundary: bytes, sizes: list[int], read_sizes: list[int], chunk: int
) -> None:
    """A well-formed body gives back exactly its parts, whatever the chunking."""
    body = build_body([({"Content-Type": "application/dicom"}, p) for p in parts], boundary)
    got = read_parts(ChunkedStream(body, sizes), boundary, read_sizes, 0, chunk)
    assert [c for _, c in got] == parts, "parts differ from what was sent"
    assert all(h == {"content-type": "application/dicom"} for h, _ in got)
    COUNTS["multipart"]["round trips"] += 1


boundaries = st.binary(min_size=1, max_size=70).filter(lambda b: b"\r" not in b and b"\n" not in b)
sizes_st = st.lists(st.integers(1, 300), min_size=1, max_size=8)
read_sizes_st = st.lists(st.integers(-1, 300).filter(bool), max_size=5)


@st.composite
def multipart_bodies(draw: Any) -> tuple[bytes, bytes]:
    """Bodies near the grammar: real delimiters in odd places, junk, truncations."""
    boundary = draw(boundaries)
    pieces = []
    for _ in range(draw(st.integers(0, 8))):
        pieces.append(
            draw(
                st.sampled_from(
                    [
                        b"--" + boundary + b"\r\n",
                        b"--" + boundary + b"--",
                        b"\r\n--" + boundary,
                        b"\r\n",
                        b"\r\n\r\n",
                        b"Content-Type: application/dicom\r\n",
                        b"--",
                        b" \t",
                        b"X" * draw(st.integers(0, 2000)),
                        b"Header-Without-Colon\r\n",
                    ]
                )
            )
        )
        pieces.append(draw(st.binary(max_size=200)))
    body = b"".join(pieces)
    if draw(st.booleans()):
        body = body[: draw(st.integers(0, len(body)))]
    return body, boundary


multipart_cases = st.one_of(
    multipart_bodies(),
    st.tuples(st.binary(max_size=3000), boundaries),
)


# -- query ----------------------------------------------------------------------------

KEYS = [
    "PatientName",
    "PatientID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "Modality",
    "ModalitiesInStudy",
    "SeriesNumber",
    "InstanceNumber",
    "ReferringPhysicianName",
    "StudyDescription",
    "SeriesDescription",
    "PatientBirthDate",
    "PatientSex",
    "SOPClassUID",
    "SOPClassesInStudy",
    "NumberOfStudyRelatedInstances",
    "00100010",
    "0020000D",
    "00080020",
    "7FE00010",
    "FFFFFFFF",
    "00000000",
    "RequestAttributesSequence.ScheduledProcedureStepID",
    "RequestAttributesSequence.RequestedProcedureID",
    "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime",
    "IssuerOfPatientID",
    "TimezoneOffsetFromUTC",
]
VALUE_PIECES = [
    "*",
    "?",
    "-",
    "\\",
    "^",
    "=",
    "%",
    "_",
    "'",
    '"',
    ";--",
    "1.2.3",
    "20200101",
    "2020",
    "101500",
    "10:15",
    ".",
    "0",
    "-1",
    " ",
    "\0",
    "\x7f",
    "é",
    "\u00b2",
    "DOE",
    "99999999999999999999999",
    "19000101-",
    "-20991231",
    "1.2.3\\1.2.4",
    "A*B?C",
]
values_st = st.one_of(
    st.text(max_size=40),
    st.lists(st.sampled_from(VALUE_PIECES), max_size=6).map("".join),
)
keys_st = st.one_of(
    st.sampled_from(KEYS), st.text(max_size=30), st.from_regex(r"[0-9A-Fa-f]{8}", fullmatch=True)
)
filters_st = st.dictionaries(keys_st, values_st, max_size=4)
query_cases = st.tuples(
    st.sampled_from(list(Level)),
    filters_st,
    st.lists(st.one_of(st.sampled_from([*KEYS, "all"]), st.text(max_size=12)), max_size=3),
    st.booleans(),
    st.one_of(st.none(), st.integers(0, 50)),
    st.integers(0, 10),
)


def check_query(archive: Archive, case: tuple) -> None:
    level, filters, return_keys, fuzzy, limit, offset = case
    try:
        query = Query(
            level=level,
            filters=filters,
            return_keys=tuple(return_keys),
            fuzzy=fuzzy,
            limit=limit,
            offset=offset,
        )
        archive.search(query)
        COUNTS["query"]["answered"] += 1
    except InvalidQuery:
        COUNTS["query"]["invalid query"] += 1


def check_qido(base_url: str, case: tuple) -> None:
    import requests

    level, filters, return_keys, fuzzy, limit, offset = case
    path = {
        Level.PATIENT: "/studies",
        Level.STUDY: "/studies",
        Level.SERIES: "/series",
        Level.IMAGE: "/instances",
    }[level]
    params: list[tuple[str, str]] = list(filters.items())
    params += [("includefield", k) for k in return_keys]
    params.append(("fuzzymatching", "true" if fuzzy else "false"))
    if limit is not None:
        params.append(("limit", str(limit)))
    params.append(("offset", str(offset)))
    response = requests.get(base_url + path, params=params, timeout=30)
    assert response.status_code in (200, 400), (response.status_code, params, response.text)
    COUNTS["qido"][str(response.status_code)] += 1


# -- ingest ---------------------------------------------------------------------------


def base_instance() -> bytes:
    """A valid CT file: pydicom's CT_small (never downloaded), else a synthetic one."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file("CT_small.dcm", download=False)
    if path:
        return Path(path).read_bytes()
    from tests.factory import make_instance, to_bytes

    return to_bytes(make_instance(rows=32, columns=32))


@dataclass
class IngestTarget:
    """An archive over a temporary folder and the valid file mutations start from."""

    archive: Archive
    base: bytes
    uid: bytes = b""
    stored: int = 0
    checks: int = 0
    rng: random.Random = field(default_factory=lambda: random.Random(0))

    def __post_init__(self) -> None:
        from pydicom import dcmread

        self.uid = str(dcmread(io.BytesIO(self.base)).SOPInstanceUID).encode()

    def fresh(self) -> bytes:
        """The base file with a new SOP Instance UID of the same length (no re-encoding),
        so each case is a new instance rather than a duplicate."""
        digits = "".join(self.rng.choice("0123456789") for _ in range(12)).encode()
        new = self.uid[: -len(digits)] + digits
        if new[-len(digits)] == ord("0"):
            new = new[: -len(digits)] + b"1" + new[-len(digits) + 1 :]
        return self.base.replace(self.uid, new)


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 1 << 20), st.integers(0, 7)),
    st.tuples(st.just("truncate"), st.integers(0, 1 << 20), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 1 << 20), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("delete"), st.integers(0, 1 << 20), st.integers(1, 64)),
    st.tuples(
        st.just("set"),
        st.integers(0, 1 << 20),
        st.sampled_from(
            [
                b"\xff\xff\xff\xff",
                b"\x00\x00\x00\x00",
                b"\xfe\xff\x00\xe0",
                b"SQ\x00\x00",
                b"OB\x00\x00",
                b"UN\x00\x00",
            ]
        ),
    ),
)
# Mutations cluster in the header (the first ~1.5 kB of CT_small) half of the time.
mutations_st = st.lists(mutation, min_size=1, max_size=4)
header_bias_st = st.booleans()


def mutate(data: bytes, mutations: list[tuple], header_bias: bool) -> bytes:
    out = bytearray(data)
    for kind, where, arg in mutations:
        span = min(len(out), 1600) if header_bias else len(out)
        pos = where % (span + 1)
        if kind == "flip" and pos < len(out):
            out[pos] ^= 1 << arg
        elif kind == "truncate":
            del out[pos:]
        elif kind == "insert":
            out[pos:pos] = arg
        elif kind == "delete":
            del out[pos : pos + arg]
        elif kind == "set":
            out[pos : pos + len(arg)] = arg
    return bytes(out)


def check_ingest(target: IngestTarget, mutations: list[tuple], header_bias: bool) -> None:
    data = mutate(target.fresh(), mutations, header_bias)
    archive = target.archive
    try:
        result = archive.store(io.BytesIO(data), Origin("FUZZ"))
    except ArchiveError as exc:
        COUNTS["ingest"][f"refused: {type(exc).__name__}"] += 1
    else:
        COUNTS["ingest"][f"accepted: {result.status}"] += 1
        if result.status.value == "stored":
            target.stored += 1
            with archive.reader() as session:
                row = (
                    session.query(Instance.storage_key, Instance.sha256)
                    .filter(Instance.sop_uid == result.sop_uid)
                    .one()
                )
            assert row.sha256 == hashlib.sha256(data).hexdigest(), "stored hash differs"
            stored = archive.storage.path(row.storage_key).read_bytes()
            assert stored == data, "the stored file is not the input"
    leftovers = list((archive.settings.storage.data_dir / ".tmp").iterdir())
    assert not leftovers, f"temporary files left behind: {leftovers}"
    target.checks += 1
    if target.checks % 500 == 0:
        check_consistent(archive)


def check_consistent(archive: Archive) -> None:
    """Every file under the data folder is indexed and matches its row's SHA-256."""
    with archive.reader() as session:
        rows = dict(session.query(Instance.storage_key, Instance.sha256).all())
    root = archive.settings.storage.data_dir
    files = {p.relative_to(root).as_posix() for p in root.rglob("*.dcm")}
    assert files == set(rows), (
        f"unindexed files {sorted(files - set(rows))[:5]}, "
        f"rows without files {sorted(set(rows) - files)[:5]}"
    )
    for key, sha in rows.items():
        assert hashlib.sha256((root / key).read_bytes()).hexdigest() == sha, key


def fuzz_settings(folder: Path) -> Settings:
    return load_settings(
        None,
        storage={"data_dir": folder, "fsync": False},
        database={"url": "", "sqlite_synchronous": "OFF"},
        http={"host": "127.0.0.1", "port": 0},
        dimse={"host": "127.0.0.1", "port": 0},
    )


# -- runner ---------------------------------------------------------------------------


def run(name: str, test: Callable[..., None], cases: int, rng_seed: int) -> float:
    """Run a hypothesis-wrapped ``test`` for ``cases`` examples; returns seconds."""
    configured = settings(
        max_examples=cases,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )
    start = time.perf_counter()
    seed(rng_seed)(configured(test))()
    return time.perf_counter() - start


def targets(folder: Path) -> Iterator[tuple[str, Callable[..., None], Callable[[], None]]]:
    """(name, hypothesis test, cleanup) for every target."""

    @given(multipart_cases, sizes_st, read_sizes_st, st.integers(1, 256), st.integers(0, 5))
    def multipart(
        case: tuple[bytes, bytes],
        sizes: list[int],
        read_sizes: list[int],
        chunk: int,
        max_parts: int,
    ) -> None:
        check_multipart_random(case[0], case[1], sizes, read_sizes, chunk, max_parts)

    @given(
        st.lists(st.binary(max_size=300), max_size=5),
        boundaries,
        sizes_st,
        read_sizes_st,
        st.integers(1, 256),
    )
    def roundtrip(
        parts: list[bytes], boundary: bytes, sizes: list[int], read_sizes: list[int], chunk: int
    ) -> None:
        # A part that holds the delimiter cannot be sent with this boundary (RFC 2046
        # 5.1.1 obliges the sender to choose another).
        if any(b"\r\n--" + boundary in b"\r\n" + p + b"\r\n" for p in parts):
            return
        check_multipart_roundtrip(parts, boundary, sizes, read_sizes, chunk)

    yield "multipart", multipart, lambda: None
    yield "multipart-roundtrip", roundtrip, lambda: None

    query_archive = Archive(fuzz_settings(folder / "query"))
    seed_archive(query_archive)

    @given(query_cases)
    def query(case: tuple) -> None:
        check_query(query_archive, case)

    yield "query", query, query_archive.close

    from tests.conftest import WebServer

    web_archive = Archive(fuzz_settings(folder / "qido"))
    seed_archive(web_archive)
    web = WebServer(web_archive.settings, web_archive)

    @given(query_cases)
    def qido(case: tuple) -> None:
        check_qido(web.url, case)

    def stop_web() -> None:
        web.stop()
        web_archive.close()

    yield "qido", qido, stop_web

    ingest_archive = Archive(fuzz_settings(folder / "ingest"))
    target = IngestTarget(ingest_archive, base_instance())

    @given(mutations_st, header_bias_st)
    def ingest(mutations: list[tuple], header_bias: bool) -> None:
        check_ingest(target, mutations, header_bias)

    def finish_ingest() -> None:
        check_consistent(ingest_archive)
        ingest_archive.close()

    yield "ingest", ingest, finish_ingest


def seed_archive(archive: Archive) -> None:
    """A few instances, so that queries have something to match and join."""
    from tests.factory import make_instance, to_bytes

    for n in range(6):
        ds = make_instance(
            PatientName=f"Doe^{n}", PatientID=f"P{n % 3}", Modality=("CT", "MR")[n % 2]
        )
        archive.store(io.BytesIO(to_bytes(ds)), Origin("FUZZ"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=10_000, help="cases per target")
    parser.add_argument("--target", action="append", help="run only these targets")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    import logging

    logging.disable(logging.WARNING)  # refusals are logged by design; keep the output short
    import warnings

    warnings.simplefilter("ignore")
    failed = False
    with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
        for name, test, cleanup in targets(Path(tmp)):
            if args.target and name not in args.target and name.split("-")[0] not in args.target:
                cleanup()
                continue
            try:
                seconds = run(name, test, args.cases, args.seed)
                outcome = "ok"
            except Exception as exc:  # report and go on with the next target
                seconds, outcome, failed = float("nan"), f"FAILED: {exc!r}", True
            finally:
                cleanup()
            counts = COUNTS[name.split("-")[0]]
            print(f"{name:20} {args.cases:>7} cases {seconds:8.1f} s  {outcome}", flush=True)
            for label, count in sorted(counts.items()):
                print(f"{'':22}{label}: {count}")
            counts.clear()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
