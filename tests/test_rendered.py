"""Rendered resources and thumbnails over HTTP (PS3.18 10.4.1.1.3, Sup 203).

The oracle is pydicom's Modality LUT on the same pixels and the PS3.3 C.11.2.1.2 linear
window formula, compared on lossless PNG output.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import requests
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_modality_lut
from pydicom.uid import ExplicitVRLittleEndian, RLELossless

from dicomweb_server.archive import Archive, Origin
from tests.factory import make_instance, make_series, to_bytes, uid

ORIGIN = Origin("IMPORT", address="test")
PDF_STORAGE = "1.2.840.10008.5.1.4.1.1.104.1"


def store(archive: Archive, ds: Dataset) -> None:
    archive.store(io.BytesIO(to_bytes(ds)), ORIGIN)


def instance_url(web, ds: Dataset) -> str:  # type: ignore[no-untyped-def]
    return (
        f"{web.url}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )


def image(response: requests.Response) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(response.content)))


def expected_linear(ds: Dataset, frame: int, center: float, width: float) -> np.ndarray:
    values = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    if values.ndim == 3:
        values = values[frame - 1]
    scaled = np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0, 1)
    return np.round(scaled * 255).astype(np.uint8)


def test_default_jpeg_of_instance(archive: Archive, web, dicomweb) -> None:  # type: ignore[no-untyped-def]
    ds = make_instance(rows=40, columns=30)
    store(archive, ds)
    response = requests.get(instance_url(web, ds) + "/rendered")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "image/jpeg"
    assert Image.open(io.BytesIO(response.content)).size == (30, 40)
    data = dicomweb.retrieve_instance_rendered(
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, media_types=("image/png",)
    )
    assert data.startswith(b"\x89PNG")


def test_png_uses_window_of_instance_and_of_query(archive: Archive, web) -> None:  # type: ignore[no-untyped-def]
    ds = make_instance(rows=16, columns=16, WindowCenter=-500, WindowWidth=2000)
    store(archive, ds)
    png = {"Accept": "image/png"}
    own = image(requests.get(instance_url(web, ds) + "/rendered", headers=png))
    np.testing.assert_array_equal(own, expected_linear(ds, 1, -500, 2000))
    asked = requests.get(instance_url(web, ds) + "/rendered?window=0,1000,LINEAR", headers=png)
    np.testing.assert_array_equal(image(asked), expected_linear(ds, 1, 0, 1000))


def test_monochrome1_is_inverted(archive: Archive, web) -> None:  # type: ignore[no-untyped-def]
    ds = make_instance(rows=16, columns=16, PhotometricInterpretation="MONOCHROME1")
    store(archive, ds)
    got = image(requests.get(instance_url(web, ds) + "/rendered", headers={"Accept": "image/png"}))
    np.testing.assert_array_equal(got, 255 - expected_linear(ds, 1, 40, 400))


def test_rgb_and_compressed_source(archive: Archive, web) -> None:  # type: ignore[no-untyped-def]
    ds = make_instance(rows=32, columns=32, samples=3, bits=8, transfer_syntax=RLELossless)
    store(archive, ds)
    got = image(requests.get(instance_url(web, ds) + "/rendered", headers={"Accept": "image/png"}))
    oracle = make_instance(
        rows=32, columns=32, samples=3, bits=8, sop_uid=ds.SOPInstanceUID
    ).pixel_array
    # 8-bit RGB: make_instance draws 12-bit noise into 8 bits, so values are as stored.
    np.testing.assert_array_equal(got, oracle)


def test_frame_rendered_and_viewport(archive: Archive, web) -> None:  # type: ignore[no-untyped-def]
    ds = make_instance(frames=3, rows=64, columns=32, WindowCenter=2000, WindowWidth=4096)
    store(archive, ds)
    base = instance_url(web, ds)
    png = {"Accept": "image/png"}
    frame2 = image(requests.get(base + "/frames/2/rendered", headers=png))
    np.testing.assert_array_equal(frame2, expected_linear(ds, 2, 2000, 4096))
    scaled = requests.get(base + "/rendered?viewport=16,16", headers=png)
    assert Image.open(io.BytesIO(scaled.content)).size == (8, 16)  # aspect kept
    assert requests.get(base + "/frames/4/rendered").status_code == 404
    several = requests.get(
        base + "/frames/1,3/rendered", headers={"Accept": "multipart/related; type=image/png"}
    )
    assert several.status_code == 200
    assert several.headers["Content-Type"].startswith('multipart/related; type="image/png"')


def test_thumbnails_of_series_and_study(archive: Archive, web) -> None:  # type: ignore[no-untyped-def]
    series = make_series(3, rows=300, columns=200)
    for ds in series:
        store(archive, ds)
    study = f"{web.url}/studies/{series[0].StudyInstanceUID}"
    for target in (study, f"{study}/series/{series[0].SeriesInstanceUID}"):
        response = requests.get(target + "/thumbnail")
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "image/jpeg"
        assert Image.open(io.BytesIO(response.content)).size == (85, 128)
        rendered = requests.get(target + "/rendered", headers={"Accept": "image/png"})
        assert Image.open(io.BytesIO(rendered.content)).size == (200, 300)
    sized = requests.get(instance_url(web, series[0]) + "/thumbnail?viewport=64,64")
    assert Image.open(io.BytesIO(sized.content)).size == (43, 64)


def test_rendered_errors(archive: Archive, web) -> None:  # type: ignore[no-untyped-def]
    ds = make_instance()
    store(archive, ds)
    base = instance_url(web, ds) + "/rendered"
    assert requests.get(base + "?window=abc").status_code == 400
    assert requests.get(base + "?viewport=0,10").status_code == 400
    assert requests.get(base + "?quality=0").status_code == 400
    assert requests.get(base, headers={"Accept": "text/html"}).status_code == 406
    assert requests.get(f"{web.url}/studies/1.2.3/rendered").status_code == 404


def make_pdf_instance(pdf: bytes) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = PDF_STORAGE
    ds.SOPInstanceUID = uid()
    ds.StudyInstanceUID = uid()
    ds.SeriesInstanceUID = uid()
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "PDF1"
    ds.Modality = "DOC"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = pdf + (b"\0" if len(pdf) % 2 else b"")
    ds.EncapsulatedDocumentLength = len(pdf)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = PDF_STORAGE
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


@pytest.mark.parametrize("size", [5000, 5001])
def test_encapsulated_pdf_renders_as_pdf(archive: Archive, web, size: int) -> None:  # type: ignore[no-untyped-def]
    pdf = b"%PDF-1.4\n" + bytes(range(256)) * (size // 256) + b"\n%%EOF"
    pdf = pdf[:size]
    ds = make_pdf_instance(pdf)
    store(archive, ds)
    response = requests.get(instance_url(web, ds) + "/rendered")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/pdf"
    assert response.content == pdf
    assert (
        requests.get(
            instance_url(web, ds) + "/rendered", headers={"Accept": "image/png"}
        ).status_code
        == 406
    )
