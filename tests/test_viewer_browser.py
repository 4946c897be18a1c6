"""The web page and OHIF in a real browser: headless Chromium driven by Playwright.

Uses the system's Chromium (``/usr/bin/chromium``, or ``DICOMWEB_TEST_CHROMIUM``);
Playwright never downloads a browser here.  The OHIF test runs when an OHIF build is
found (``DICOMWEB_TEST_OHIF_DIST``, else ``/tmp/ohif-viewer/viewer``).  Without
Chromium, Playwright or OHIF the tests are skipped, saying which is missing.

"Non-blank" is the OHIF acceptance harness's rule (``check.cjs``): at least 2 % of the
pixels not black, at least 16 distinct colours and a standard deviation of at least 5.
"""

from __future__ import annotations

import base64
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from . import factory
from .conftest import WebServer, make_settings, serving

playwright_api = pytest.importorskip(
    "playwright.sync_api", reason="the Python package playwright is not installed"
)

CHROMIUM = os.environ.get("DICOMWEB_TEST_CHROMIUM") or shutil.which("chromium") or ""
OHIF_DIST = Path(os.environ.get("DICOMWEB_TEST_OHIF_DIST") or "/tmp/ohif-viewer/viewer")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 15_000

pytestmark = pytest.mark.skipif(
    not CHROMIUM or not Path(CHROMIUM).exists(),
    reason="no Chromium (install Debian's chromium or set DICOMWEB_TEST_CHROMIUM)",
)

#: Pixel statistics of an image or canvas, computed in the page (see check.cjs).
STATS_JS = """(source) => {
  const c = document.createElement('canvas');
  let w, h;
  if (source instanceof HTMLImageElement) { w = source.naturalWidth; h = source.naturalHeight; }
  else { w = source.width; h = source.height; }
  if (!w || !h) return null;
  c.width = w; c.height = h;
  const ctx = c.getContext('2d');
  ctx.drawImage(source, 0, 0);
  const d = ctx.getImageData(0, 0, w, h).data;
  const n = d.length / 4, seen = new Set();
  let nonBlack = 0, sum = 0, sum2 = 0;
  for (let i = 0; i < d.length; i += 4) {
    const y = 0.299 * d[i] + 0.587 * d[i + 1] + 0.114 * d[i + 2];
    if (y > 8) nonBlack++;
    sum += y; sum2 += y * y;
    if (seen.size < 1000) seen.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);
  }
  const mean = sum / n;
  return {nonBlack: nonBlack / n, distinct: seen.size, std: Math.sqrt(sum2 / n - mean * mean)};
}"""


def non_blank(stats: dict[str, float] | None) -> bool:
    return bool(stats) and (
        stats["nonBlack"] >= 0.02 and stats["distinct"] >= 16 and stats["std"] >= 5  # type: ignore[index]
    )


def stow(server: WebServer, datasets: list[Any]) -> None:
    boundary = "browser-test-boundary"
    body = (
        b"".join(
            b"--"
            + boundary.encode()
            + b"\r\nContent-Type: application/dicom\r\n\r\n"
            + factory.to_bytes(ds)
            + b"\r\n"
            for ds in datasets
        )
        + b"--"
        + boundary.encode()
        + b"--\r\n"
    )
    response = requests.post(
        server.url + "/studies",
        data=body,
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'
        },
        timeout=30,
    )
    assert response.status_code == 200, response.text


def a_study(name: str, patient_id: str, count: int = 3, **attributes: Any) -> list[Any]:
    study, series = factory.uid(), factory.uid()
    return [
        factory.make_instance(
            study_uid=study,
            series_uid=series,
            rows=64,
            columns=64,
            seed=number,
            InstanceNumber=number + 1,
            PatientName=name,
            PatientID=patient_id,
            **attributes,
        )
        for number in range(count)
    ]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.errors = []  # type: ignore[attr-defined]
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    yield page
    context.close()


def _server(folder: Path, **http: Any) -> Iterator[WebServer]:
    yield from serving(make_settings(folder / "data", http=http))


@pytest.fixture
def server(tmp_path: Path) -> Iterator[WebServer]:
    """Our server without OHIF: "Open in viewer" is the built-in view."""
    yield from _server(tmp_path)


def _rows(page: Any) -> list[str]:
    return page.locator("#study-rows tr .patient-name").all_text_contents()


def test_search_upload_and_view(server: WebServer, page: Any, tmp_path: Path) -> None:
    alice = a_study("Browser^Alice", "P-ALICE", StudyDescription="Chest CT")
    stow(server, alice)
    stow(server, a_study("Other^Bob", "P-BOB", count=1, Modality="MR", StudyDate="20230301"))

    page.goto(server.root + "/")
    page.wait_for_function("document.querySelectorAll('#study-rows tr').length === 2")
    assert sorted(_rows(page)) == ["Browser, Alice", "Other, Bob"]
    page.wait_for_function(  # thumbnails arrive through /thumbnail
        "[...document.querySelectorAll('#study-rows img')].every(i => i.complete && i.naturalWidth)"
    )

    # Search by part of the patient name (sent as PatientName=*lic*).
    page.fill("#patient-name", "lic")
    page.click("#search-button")
    page.wait_for_function("document.querySelectorAll('#study-rows tr').length === 1")
    assert _rows(page) == ["Browser, Alice"]
    # A date range and a modality narrow too.
    page.fill("#patient-name", "")
    page.fill("#date-from", "2023-01-01")
    page.fill("#date-to", "2023-12-31")
    page.select_option("#modality", "MR")
    page.click("#search-button")
    page.wait_for_function(
        "document.querySelector('#study-rows .patient-name')?.textContent === 'Other, Bob'"
    )
    assert _rows(page) == ["Other, Bob"]
    page.click("#reset-button")
    page.wait_for_function("document.querySelectorAll('#study-rows tr').length === 2")

    # Upload through the file input: STOW-RS from the page, then the list shows it.
    upload = factory.write(a_study("Upload^Carol", "P-CAROL", count=1)[0], tmp_path / "up")
    page.set_input_files("#file-input", str(upload))
    page.wait_for_selector("#stored-count")
    assert page.text_content("#upload-status").startswith("Stored 1, failed 0")
    page.wait_for_function("document.querySelectorAll('#study-rows tr').length === 3")
    assert "Upload, Carol" in _rows(page)

    # ...and by dropping files on the drop zone; a file that is not DICOM is refused.
    dropped = factory.to_bytes(a_study("Dropped^Dan", "P-DAN", count=1)[0])
    page.evaluate(
        """([b64]) => {
            const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
            const data = new DataTransfer();
            data.items.add(new File([bytes], 'dan.dcm', {type: 'application/dicom'}));
            data.items.add(new File(['not dicom'], 'notes.txt', {type: 'text/plain'}));
            document.getElementById('dropzone').dispatchEvent(
                new DragEvent('drop', {dataTransfer: data, bubbles: true, cancelable: true}));
        }""",
        [base64.b64encode(dropped).decode()],
    )
    page.wait_for_function(
        "document.getElementById('upload-status').textContent.startsWith('Stored 1, failed 1')"
    )
    page.wait_for_function("document.querySelectorAll('#study-rows tr').length === 4")
    assert "Dropped, Dan" in _rows(page)

    # Open Alice's study: without OHIF, the built-in view with /rendered images.
    row = page.locator("#study-rows tr", has_text="Browser, Alice")
    row.get_by_text("Open in viewer").click()
    page.wait_for_selector("#view:not([hidden])")
    page.wait_for_function(
        "(() => { const i = document.getElementById('frame');"
        " return i.complete && i.naturalWidth > 0; })()"
    )
    assert page.text_content("#position") == "2 / 3"  # the middle image first
    assert non_blank(page.eval_on_selector("#frame", STATS_JS))
    page.keyboard.press("ArrowDown")
    assert page.text_content("#position") == "3 / 3"
    frame = page.get_attribute("#frame", "src")
    assert frame.endswith(f"/instances/{alice[2].SOPInstanceUID}/rendered")
    page.screenshot(path=str(tmp_path / "view.png"))
    assert page.errors == []  # type: ignore[attr-defined]


@pytest.mark.skipif(
    not (OHIF_DIST / "index.html").is_file(),
    reason=f"no OHIF build at {OHIF_DIST} (set DICOMWEB_TEST_OHIF_DIST or run install-viewer)",
)
def test_open_in_ohif_shows_the_image(tmp_path: Path, page: Any) -> None:
    for server in _server(tmp_path, viewer_dir=str(OHIF_DIST)):
        study = a_study("Ohif^Olga", "P-OLGA")
        stow(server, study)
        page.goto(server.root + "/")
        link = page.locator("#study-rows tr", has_text="Ohif, Olga").get_by_text("Open in viewer")
        assert link.get_attribute("href") == (
            f"/ohif/viewer?StudyInstanceUIDs={study[0].StudyInstanceUID}"
        )
        link.click()
        page.wait_for_url("**/ohif/viewer?**")
        canvas = '[data-cy="viewport-pane"] canvas'
        page.wait_for_selector(canvas, state="attached")
        stats = None
        for _ in range(60):
            stats = page.eval_on_selector(canvas, STATS_JS)
            if non_blank(stats):
                break
            page.wait_for_timeout(250)
        page.screenshot(path=str(tmp_path / "ohif.png"))
        assert non_blank(stats), stats
