"""Short property-based runs of the fuzz targets in ``scripts/fuzz.py`` (seconds each).

The long runs (10,000+ cases per target) are ``scripts/fuzz.py``; these keep every
target honest in the suite: the multipart reader raises only ``MultipartError`` and
returns exactly what was sent; QIDO answers 200 or 400, ``Archive.search`` answers or
raises ``InvalidQuery``; ingest of mutated files stores the exact input or refuses it
with an ``ArchiveError``, and leaves no partial or unindexed file.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dicomweb_server.archive import Archive
from scripts import fuzz
from tests.conftest import WebServer

QUICK = settings(
    max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck)
)


@QUICK
@given(
    fuzz.multipart_cases, fuzz.sizes_st, fuzz.read_sizes_st, st.integers(1, 256), st.integers(0, 5)
)
def test_multipart_reader_raises_only_multipart_errors(
    case: tuple[bytes, bytes],
    sizes: list[int],
    read_sizes: list[int],
    chunk: int,
    max_parts: int,
) -> None:
    fuzz.check_multipart_random(case[0], case[1], sizes, read_sizes, chunk, max_parts)


@QUICK
@given(
    st.lists(st.binary(max_size=300), max_size=5),
    fuzz.boundaries,
    fuzz.sizes_st,
    fuzz.read_sizes_st,
    st.integers(1, 256),
)
def test_multipart_reader_returns_the_parts_whatever_the_chunking(
    parts: list[bytes], boundary: bytes, sizes: list[int], read_sizes: list[int], chunk: int
) -> None:
    if any(b"\r\n--" + boundary in b"\r\n" + p + b"\r\n" for p in parts):
        return  # RFC 2046 5.1.1: the sender would have chosen another boundary
    fuzz.check_multipart_roundtrip(parts, boundary, sizes, read_sizes, chunk)


def test_part_reader_read_zero_returns_at_once() -> None:
    body = fuzz.build_body([({}, b"abc")], b"b")
    reader = fuzz.MultipartReader(fuzz.ChunkedStream(body, [3]), b"b")
    part = next(iter(reader))
    assert part.stream.read(0) == b""
    assert part.stream.read() == b"abc"


@pytest.fixture
def query_archive(tmp_path: Path) -> Iterator[Archive]:
    archive = Archive(fuzz.fuzz_settings(tmp_path / "q"))
    fuzz.seed_archive(archive)
    yield archive
    archive.close()


def test_search_answers_or_refuses_with_invalid_query(query_archive: Archive) -> None:
    @QUICK
    @given(fuzz.query_cases)
    def run(case: tuple) -> None:
        fuzz.check_query(query_archive, case)

    run()


def test_qido_over_http_answers_only_200_or_400(query_archive: Archive) -> None:
    web = WebServer(query_archive.settings, query_archive)
    try:

        @settings(QUICK, max_examples=150)
        @given(fuzz.query_cases)
        def run(case: tuple) -> None:
            fuzz.check_qido(web.url, case)

        run()
    finally:
        web.stop()


def test_mutated_instances_are_stored_exactly_or_refused(tmp_path: Path) -> None:
    archive = Archive(fuzz.fuzz_settings(tmp_path / "i"))
    target = fuzz.IngestTarget(archive, fuzz.base_instance())
    try:

        @settings(QUICK, max_examples=400)
        @given(fuzz.mutations_st, fuzz.header_bias_st)
        def run(mutations: list[tuple], header_bias: bool) -> None:
            fuzz.check_ingest(target, mutations, header_bias)

        run()
        fuzz.check_consistent(archive)
        assert target.stored > 0, "no mutation was accepted: the target tests nothing"
    finally:
        archive.close()


def test_unknown_vr_in_file_meta_is_refused_as_invalid(tmp_path: Path) -> None:
    """Found by scripts/fuzz.py: pydicom decodes lazily, so a corrupt VR in the File Meta
    Information raised NotImplementedError out of ingest instead of InvalidInstance."""
    import io

    from dicomweb_server.archive import InvalidInstance, Origin

    base = fuzz.base_instance()
    at = base.find(b"\x02\x00\x03\x00UI")
    data = base[: at + 4] + b"TI" + base[at + 6 :]
    archive = Archive(fuzz.fuzz_settings(tmp_path / "v"))
    try:
        with pytest.raises(InvalidInstance, match="Unknown Value Representation"):
            archive.store(io.BytesIO(data), Origin("TEST"))
        assert list((tmp_path / "v" / ".tmp").iterdir()) == []
    finally:
        archive.close()
