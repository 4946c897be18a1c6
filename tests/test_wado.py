"""WADO-RS over HTTP: instances, metadata, frames and bulk data, against pydicom as oracle."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import requests
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
)

from dicomweb_server.archive import Archive, Origin
from tests.factory import make_instance, make_series, to_bytes

ORIGIN = Origin("IMPORT", address="test")
BASELINE_DICOM = f"multipart/related; type=application/dicom; transfer-syntax={JPEGBaseline8Bit}"


def store(archive: Archive, ds: Dataset | bytes) -> bytes:
    data = ds if isinstance(ds, bytes) else to_bytes(ds)
    archive.store(io.BytesIO(data), ORIGIN)
    return data


def store_file(archive: Archive, name: str) -> Dataset:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} is not bundled with this pydicom")
    data = Path(path).read_bytes()
    store(archive, data)
    ds = dcmread(io.BytesIO(data))
    ds.stored_bytes = data  # for comparisons
    return ds


def parts(response: requests.Response) -> list[tuple[str, bytes]]:
    """Split a multipart/related body by the boundary of its Content-Type."""
    boundary = re.search(r'boundary="?([^";]+)"?', response.headers["Content-Type"]).group(1)
    out = []
    for chunk in response.content.split(b"--" + boundary.encode())[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, body = chunk.partition(b"\r\n\r\n")
        ctype = re.search(rb"Content-Type: ([^\r\n]+)", head).group(1).decode()
        out.append((ctype, body[:-2] if body.endswith(b"\r\n") else body))
    return out


def url(web, ds: Dataset, level: str = "instance") -> str:  # type: ignore[no-untyped-def]
    base = f"{web.url}/studies/{ds.StudyInstanceUID}"
    if level == "study":
        return base
    base += f"/series/{ds.SeriesInstanceUID}"
    if level == "series":
        return base
    return base + f"/instances/{ds.SOPInstanceUID}"


# -- instances -------------------------------------------------------------------------


class TestInstances:
    def test_series_streams_stored_bytes(self, archive: Archive, web, dicomweb) -> None:  # type: ignore[no-untyped-def]
        series = make_series(3)
        stored = {ds.SOPInstanceUID: store(archive, ds) for ds in series}
        response = requests.get(
            url(web, series[0], "series"),
            headers={"Accept": 'multipart/related; type="application/dicom"'},
        )
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith(
            'multipart/related; type="application/dicom"'
        )
        got = parts(response)
        assert [c for c, _ in got] == [
            f"application/dicom; transfer-syntax={ExplicitVRLittleEndian}"
        ] * 3
        assert sorted(b for _, b in got) == sorted(stored.values())
        # Files sent as stored: the length is known before the first byte.
        assert int(response.headers["Content-Length"]) == len(response.content)
        assert "Transfer-Encoding" not in response.headers
        # dicomweb-client parses the same payload.
        datasets = dicomweb.retrieve_series(series[0].StudyInstanceUID, series[0].SeriesInstanceUID)
        assert {d.SOPInstanceUID for d in datasets} == set(stored)

    def test_study_and_instance_with_dicomweb_client(self, archive: Archive, dicomweb) -> None:  # type: ignore[no-untyped-def]
        ds = make_instance()
        store(archive, ds)
        [got] = dicomweb.retrieve_study(ds.StudyInstanceUID)
        assert got.SOPInstanceUID == ds.SOPInstanceUID
        one = dicomweb.retrieve_instance(
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
        )
        np.testing.assert_array_equal(one.pixel_array, ds.pixel_array)

    def test_default_syntax_decompresses_lossless(self, archive: Archive, web) -> None:  # type: ignore[no-untyped-def]
        ds = make_instance(rows=64, columns=64, transfer_syntax=RLELossless)
        store(archive, ds)
        response = requests.get(
            url(web, ds), headers={"Accept": 'multipart/related; type="application/dicom"'}
        )
        [(ctype, body)] = parts(response)
        assert ctype == f"application/dicom; transfer-syntax={ExplicitVRLittleEndian}"
        out = dcmread(io.BytesIO(body))
        assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert out.SOPInstanceUID == ds.SOPInstanceUID
        np.testing.assert_array_equal(out.pixel_array, ds.pixel_array)
        assert "Content-Length" not in response.headers  # decoded on the fly: unknown

    @pytest.mark.parametrize("which", [0, 1])
    def test_a_stored_file_that_changed_size_breaks_the_response(
        self, archive: Archive, web, which: int
    ) -> None:  # type: ignore[no-untyped-def]
        """The Content-Length comes from the index: a file that no longer matches it must
        not reach the client as a complete, shorter object.  Found before the first byte,
        that is a 500; after, a connection closed short of the promised length."""
        series = make_series(2)
        for ds in series:
            store(archive, ds)
        instance = archive.instances(series[0].StudyInstanceUID)[which]
        path = archive.path(instance)
        path.write_bytes(path.read_bytes()[:-100])
        response = requests.get(
            url(web, series[0], "series"),
            headers={"Accept": 'multipart/related; type="application/dicom"'},
            stream=True,
        )
        if which == 0:
            assert response.status_code == 500
            return
        assert response.status_code == 200
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            _ = response.content

    def test_default_syntax_keeps_lossy_as_stored(self, archive: Archive, web) -> None:  # type: ignore[no-untyped-def]
        ds = store_file(archive, "SC_rgb_jpeg_dcmtk.dcm")
        response = requests.get(url(web, ds))
        [(ctype, body)] = parts(response)
        assert ctype == f"application/dicom; transfer-syntax={JPEGBaseline8Bit}"
        assert body == ds.stored_bytes

    def test_star_returns_as_stored_and_explicit_syntax_transcodes(
        self, archive: Archive, web
    ) -> None:  # type: ignore[no-untyped-def]
        ds = make_instance(rows=64, columns=64, transfer_syntax=RLELossless)
        data = store(archive, ds)
        star = requests.get(
            url(web, ds, "study"),
            headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
        )
        assert parts(star) == [(f"application/dicom; transfer-syntax={RLELossless}", data)]
        jls = requests.get(
            url(web, ds, "series"),
            headers={
                "Accept": f"multipart/related; type=application/dicom; transfer-syntax={JPEGLSLossless}"  # noqa: E501
            },
        )
        assert jls.status_code == 200
        [(ctype, body)] = parts(jls)
        assert ctype.endswith(JPEGLSLossless)
        np.testing.assert_array_equal(dcmread(io.BytesIO(body)).pixel_array, ds.pixel_array)

    def test_implicit_and_deflated_default_to_explicit(self, archive: Archive, web) -> None:  # type: ignore[no-untyped-def]
        for syntax in (ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian):
            ds = make_instance(transfer_syntax=syntax)
            store(archive, ds)
            [(ctype, body)] = parts(requests.get(url(web, ds)))
            assert ctype.endswith(ExplicitVRLittleEndian)
            np.testing.assert_array_equal(dcmread(io.BytesIO(body)).pixel_array, ds.pixel_array)

    def test_single_part_for_one_instance(self, archive: Archive, web) -> None:  # type: ignore[no-untyped-def]
        ds = make_instance()
        data = store(archive, ds)
        response = requests.get(url(web, ds), headers={"Accept": "application/dicom"})
        assert response.status_code == 200
        assert (
            response.headers["Content-Type"]
            == f"application/dicom; transfer-syntax={ExplicitVRLittleEndian}"
        )
        assert response.headers["Content-Length"] == str(len(data))
        assert response.content == data
        # A series of two cannot be one part: 406 (PS3.18 8.6.1.1).
        store(
            archive, make_instance(study_uid=ds.StudyInstanceUID, series_uid=ds.SeriesInstanceUID)
        )
        assert (
            requests.get(
                url(web, ds, "series"), headers={"Accept": "application/dicom"}
            ).status_code
            == 406
        )

    def test_errors(self, archive: Archive, web) -> None:  # type: ignore[no-untyped-def]
        ds = make_instance()
        store(archive, ds)
        bad = f"{web.url}/studies/1.2.abc"
        assert requests.get(bad).status_code == 400
        assert requests.get(f"{web.url}/studies/1.2.3.999").status_code == 404
        assert requests.get(url(web, ds), headers={"Accept": "text/html"}).status_code == 406
        cannot = requests.get(
            url(web, ds),
            headers={"Accept": BASELINE_DICOM},
        )
        assert cannot.status_code == 406
        # q-values: the unproducible one is skipped for the acceptable one.
        mixed = requests.get(
            url(web, ds),
            headers={
                "Accept": (BASELINE_DICOM + ", multipart/related; type=application/dicom; q=0.5")
            },
        )
        assert mixed.status_code == 200


# -- metadata --------------------------------------------------------------------------


class TestMetadata:
    def test_series_metadata_and_etag(self, archive: Archive, web, dicomweb) -> None:  # type: ignore[no-untyped-def]
        series = make_series(4)
        for ds in series:
            store(archive, ds)
        target = url(web, series[0], "series") + "/metadata"
        response = requests.get(target)
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "application/dicom+json"
        body = response.json()
        assert [item["00080018"]["Value"][0] for item in body] == [d.SOPInstanceUID for d in series]
        assert body[0]["7FE00010"]["BulkDataURI"].startswith(web.url + "/studies/")
        etag = response.headers["ETag"]
        assert requests.get(target, headers={"If-None-Match": etag}).status_code == 304
        assert requests.get(target, headers={"Accept": "application/dicom+xml"}).status_code == 406
        meta = dicomweb.retrieve_series_metadata(
            series[0].StudyInstanceUID, series[0].SeriesInstanceUID
        )
        assert len(meta) == 4
        one = dicomweb.retrieve_instance_metadata(
            series[1].StudyInstanceUID, series[1].SeriesInstanceUID, series[1].SOPInstanceUID
        )
        assert one["00080018"]["Value"] == [series[1].SOPInstanceUID]
        assert len(dicomweb.retrieve_study_metadata(series[0].StudyInstanceUID)) == 4
        # A new instance changes the validator.
        store(
            archive,
            make_instance(
                study_uid=series[0].StudyInstanceUID, series_uid=series[0].SeriesInstanceUID
            ),
        )
        assert requests.get(target, headers={"If-None-Match": etag}).status_code == 200

    def test_unknown_is_404(self, archive: Archive, web) -> None:  # type: ignore[no-untyped-def]
        assert requests.get(f"{web.url}/studies/1.2.3.4/metadata").status_code == 404


# -- frames ----------------------------------------------------------------------------


class TestFrames:
    def test_native_frames_octet_stream(self, archive: Archive, web, dicomweb) -> None:  # type: ignore[no-untyped-def]
        ds = make_instance(frames=4, rows=8, columns=8)
        store(archive, ds)
        oracle = ds.pixel_array
        response = requests.get(
            url(web, ds) + "/frames/2,4",
            headers={"Accept": 'multipart/related; type="application/octet-stream"'},
        )
        assert response.status_code == 200
        assert 'type="application/octet-stream"' in response.headers["Content-Type"]
        got = parts(response)
        assert got == [
            (
                f"application/octet-stream; transfer-syntax={ExplicitVRLittleEndian}",
                oracle[n].tobytes(),
            )
            for n in (1, 3)
        ]
        frames = dicomweb.retrieve_instance_frames(
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, [1, 3]
        )
        assert frames == [oracle[0].tobytes(), oracle[2].tobytes()]
        frames = dicomweb.retrieve_instance_frames(
            ds.StudyInstanceUID,
            ds.SeriesInstanceUID,
            ds.SOPInstanceUID,
            [3],
            media_types=(("application/octet-stream", "*"),),
        )
        assert frames == [oracle[2].tobytes()]

    @pytest.mark.parametrize(
        "syntax,media",
        [
            (RLELossless, "image/dicom-rle"),
            (JPEG2000Lossless, "image/jp2"),
            (JPEGLSLossless, "image/jls"),
        ],
    )
    def test_compressed_frames(
        self, archive: Archive, web, dicomweb, syntax: str, media: str
    ) -> None:  # type: ignore[no-untyped-def]
        ds = make_instance(frames=3, rows=64, columns=64, transfer_syntax=syntax)
        store(archive, ds)
        expected = list(generate_frames(ds.PixelData, number_of_frames=3))
        # As stored, as OHIF and dicomweb-client ask by default.
        response = requests.get(
            url(web, ds) + "/frames/1,3",
            headers={
                "Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
            },
        )
        assert parts(response) == [
            (f"{media}; transfer-syntax={syntax}", expected[n]) for n in (0, 2)
        ]
        assert dicomweb.retrieve_instance_frames(
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, [2]
        ) == [expected[1]]
        # The media type itself.
        got = dicomweb.retrieve_instance_frames(
            ds.StudyInstanceUID,
            ds.SeriesInstanceUID,
            ds.SOPInstanceUID,
            [2],
            media_types=((media, syntax),),
        )
        assert got == [expected[1]]
        # Decoded to native.
        oracle = make_instance(frames=3, rows=64, columns=64, sop_uid=ds.SOPInstanceUID).pixel_array
        native = requests.get(
            url(web, ds) + "/frames/3",
            headers={"Accept": 'multipart/related; type="application/octet-stream"'},
        )
        assert parts(native) == [
            (
                f"application/octet-stream; transfer-syntax={ExplicitVRLittleEndian}",
                oracle[2].astype("<u2").tobytes(),
            )
        ]

    def test_encode_native_to_jpeg_ls(self, archive: Archive, web) -> None:  # type: ignore[no-untyped-def]
        ds = make_instance(frames=2, rows=32, columns=32)
        store(archive, ds)
        response = requests.get(
            url(web, ds) + "/frames/2", headers={"Accept": 'multipart/related; type="image/jls"'}
        )
        [(ctype, body)] = parts(response)
        assert ctype == f"image/jls; transfer-syntax={JPEGLSLossless}"
        from pydicom.pixels import get_decoder

        assert body.startswith(b"\xff\xd8")
        assert get_decoder(JPEGLSLossless).is_available

    def test_big_endian_frames_are_swapped(self, archive: Archive, web) -> None:  # type: ignore[no-untyped-def]
        ds = store_file(archive, "MR_small_bigendian.dcm")
        [(ctype, body)] = parts(
            requests.get(
                url(web, ds) + "/frames/1",
                headers={"Accept": "multipart/related; type=application/octet-stream"},
            )
        )
        assert ctype == f"application/octet-stream; transfer-syntax={ExplicitVRLittleEndian}"
        assert body == ds.pixel_array.astype("<i2").tobytes()

    def test_frame_errors(self, archive: Archive, web) -> None:  # type: ignore[no-untyped-def]
        ds = make_instance(frames=2)
        store(archive, ds)
        assert requests.get(url(web, ds) + "/frames/3").status_code == 404
        assert requests.get(url(web, ds) + "/frames/0").status_code == 400
        assert requests.get(url(web, ds) + "/frames/a,b").status_code == 400
        assert (
            requests.get(
                url(web, ds) + "/frames/1",
                headers={"Accept": BASELINE_DICOM.replace("application/dicom", "image/jpeg")},
            ).status_code
            == 406
        )


# -- bulk data -------------------------------------------------------------------------


def _bulk_uris(node: object) -> list[str]:
    found: list[str] = []
    if isinstance(node, dict):
        if "BulkDataURI" in node:
            found.append(node["BulkDataURI"])
        for value in node.values():
            found += _bulk_uris(value)
    elif isinstance(node, list):
        for value in node:
            found += _bulk_uris(value)
    return found


@pytest.mark.parametrize(
    "name",
    [
        "CT_small.dcm",
        "MR_small_RLE.dcm",
        "rtdose.dcm",
        "waveform_ecg.dcm",
        "image_dfl.dcm",
        "MR_small_bigendian.dcm",
        "JPEG2000.dcm",
    ],
)
def test_every_bulkdata_uri_resolves(archive: Archive, web, dicomweb, name: str) -> None:  # type: ignore[no-untyped-def]
    ds = store_file(archive, name)
    [meta] = requests.get(url(web, ds) + "/metadata").json()
    uris = _bulk_uris(meta)
    assert uris, "the test file should carry bulk data"
    for uri in uris:
        response = requests.get(uri)
        assert response.status_code == 200, (uri, response.text)
        key = uri.rsplit("/bulkdata/", 1)[1]
        if key != "7FE00010":
            assert dicomweb.retrieve_bulkdata(uri) == [bytes(_walk(ds, key))]
        elif ds.file_meta.TransferSyntaxUID.is_encapsulated:
            frames = int(ds.get("NumberOfFrames", 1) or 1)
            expected = list(generate_frames(ds.PixelData, number_of_frames=frames))
            assert [body for _, body in parts(response)] == expected
        else:
            [(_, body)] = parts(response)
            arr = ds.pixel_array
            assert body == arr.astype(arr.dtype.newbyteorder("<")).tobytes()


def _walk(ds: Dataset, key: str) -> bytes:
    node: object = ds
    pieces = key.split("/")
    for n, piece in enumerate(pieces):
        if n % 2 == 0:
            node = node[int(piece, 16)]  # type: ignore[index]
            if n < len(pieces) - 1:
                node = node.value  # type: ignore[attr-defined]
        else:
            node = node[int(piece)]  # type: ignore[index]
    return node.value  # type: ignore[attr-defined]


def test_native_pixel_bulkdata_is_the_whole_value(archive: Archive, web) -> None:  # type: ignore[no-untyped-def]
    ds = make_instance(frames=2, rows=8, columns=8)
    store(archive, ds)
    [(ctype, body)] = parts(requests.get(url(web, ds) + "/bulkdata/7FE00010"))
    assert ctype == "application/octet-stream"
    assert body == ds.PixelData
    assert requests.get(url(web, ds) + "/bulkdata/00091234").status_code == 404


def test_metadata_series_is_fast(archive: Archive, web) -> None:  # type: ignore[no-untyped-def]
    """Figures only; a join of stored texts should take a few ms per hundred instances."""
    import time

    series = make_series(50)
    for ds in series:
        store(archive, ds)
    target = url(web, series[0], "series") + "/metadata"
    requests.get(target)
    start = time.perf_counter()
    body = requests.get(target).content
    elapsed = time.perf_counter() - start
    assert len(json.loads(body)) == 50
    assert elapsed < 2.0  # generous: CI machines vary; the benchmark prints the real figure


def test_deflated_frames_fall_back_to_parsing(archive: Archive, web) -> None:  # type: ignore[no-untyped-def]
    ds = make_instance(frames=2, rows=8, columns=8, transfer_syntax=DeflatedExplicitVRLittleEndian)
    store(archive, ds)
    got = parts(
        requests.get(
            url(web, ds) + "/frames/2",
            headers={"Accept": "multipart/related; type=application/octet-stream"},
        )
    )
    assert got == [
        (
            f"application/octet-stream; transfer-syntax={ExplicitVRLittleEndian}",
            ds.pixel_array[1].tobytes(),
        )
    ]


def test_mpeg4_video_is_served_as_video_mp4(archive: Archive, web) -> None:  # type: ignore[no-untyped-def]
    from pydicom.encaps import encapsulate

    stream = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40
    ds = make_instance(
        rows=64,
        columns=64,
        samples=3,
        bits=8,
        frames=10,
        sop_class="1.2.840.10008.5.1.4.1.1.77.1.4.1",
    )
    ds.PixelData = encapsulate([stream[:5000], stream[5000:]], has_bot=False)
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.102"
    store(archive, ds)
    bulk = requests.get(url(web, ds) + "/bulkdata/7FE00010")
    assert parts(bulk) == [("video/mp4; transfer-syntax=1.2.840.10008.1.2.4.102", stream)]
    rendered = requests.get(url(web, ds) + "/rendered", headers={"Accept": "video/mp4"})
    assert rendered.status_code == 200
    assert rendered.headers["Content-Type"].startswith("video/mp4")
    assert rendered.content == stream


def test_accept_header_parsing() -> None:
    from dicomweb_server.web.accept import wanted

    got = wanted(
        'application/dicom+json;q=0.2, multipart/related; type="image/jls";'
        " transfer-syntax=1.2.840.10008.1.2.4.80, multipart/related;type=application/octet-stream;"
        " transfer-syntax=*;q=0.5, */*;q=0"
    )
    assert [(w.media_type, w.multipart, w.transfer_syntax) for w in got] == [
        ("image/jls", True, "1.2.840.10008.1.2.4.80"),
        ("application/octet-stream", True, "*"),
        ("application/dicom+json", False, None),
    ]
    assert [(w.media_type, w.multipart) for w in wanted(None)] == [("*/*", True)]
