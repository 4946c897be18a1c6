"""Rendered and thumbnail images of stored instances (PS3.18 8.3.5, 9.5.1.2.3, 10.4.1.1.3).

The pipeline follows the grayscale and colour pipelines of PS3.4 N.2: Modality LUT
(rescale slope and intercept, or a Modality LUT Sequence), then a VOI window (the
request's ``window`` parameter, else the instance's own window or VOI LUT, else the
frame's minimum and maximum), then the Presentation LUT (MONOCHROME1 is inverted).
Colour images (RGB, YBR decoded to RGB, PALETTE COLOR) skip the VOI step.  The result is
scaled into the ``viewport`` and encoded with Pillow.

Encapsulated documents are not images: :func:`document` returns their bytes with the
media type the instance declares (``application/pdf`` for Encapsulated PDF).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, pixel_array

from .errors import InvalidQuery, NotFound

#: Rendered media types we encode (PS3.18 Table 8.7.4-1) -> Pillow format name.
IMAGE_FORMATS = {"image/jpeg": "JPEG", "image/png": "PNG", "image/gif": "GIF"}
#: Longest side of a thumbnail when the request gives no viewport (Sup 203 leaves the
#: size to the server).
THUMBNAIL_SIZE = 128
DEFAULT_QUALITY = 90

#: SOP Classes whose instances render as a document, not an image (PS3.3 A.45, A.104).
ENCAPSULATED_DOCUMENTS = {
    "1.2.840.10008.5.1.4.1.1.104.1": "application/pdf",
    "1.2.840.10008.5.1.4.1.1.104.2": "text/xml",  # CDA
}

Source = Path | str | BinaryIO


@dataclass(frozen=True)
class Window:
    """The ``window`` query parameter: center, width and VOI LUT function (PS3.18 8.3.5.1.4)."""

    center: float
    width: float
    function: str = "LINEAR"


@dataclass(frozen=True)
class Viewport:
    """The ``viewport`` query parameter (PS3.18 8.3.5.1.3): output size and source crop."""

    width: int
    height: int
    crop: tuple[int, int, int, int] | None = None  # sx, sy, sw, sh


def parse_window(text: str | None) -> Window | None:
    """Parse ``center,width[,function]``; :class:`InvalidQuery` when malformed."""
    if not text:
        return None
    parts = [p.strip() for p in text.split(",")]
    try:
        if len(parts) not in (2, 3):
            raise ValueError
        center, width = float(parts[0]), float(parts[1])
    except ValueError:
        raise InvalidQuery(
            f"window={text!r} is malformed: PS3.18 8.3.5.1.4 wants center,width[,function]"
        ) from None
    function = parts[2].upper() if len(parts) == 3 and parts[2] else "LINEAR"
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        raise InvalidQuery(f"window function {parts[2]!r} is not LINEAR, LINEAR_EXACT or SIGMOID")
    if width <= 0 or (width < 1 and function == "LINEAR"):
        raise InvalidQuery(f"window width {width} is too small (PS3.3 C.11.2.1.2)")
    return Window(center, width, function)


def parse_viewport(text: str | None) -> Viewport | None:
    """Parse ``vw,vh[,sx,sy,sw,sh]``; :class:`InvalidQuery` when malformed."""
    if not text:
        return None
    parts = [p.strip() for p in text.split(",")]
    try:
        if len(parts) not in (2, 6):
            raise ValueError
        numbers = [int(float(p)) if p else 0 for p in parts]
        if numbers[0] <= 0 or numbers[1] <= 0 or max(numbers[:2]) > 8192:
            raise ValueError
    except ValueError:
        raise InvalidQuery(
            f"viewport={text!r} is malformed: PS3.18 8.3.5.1.3 wants vw,vh[,sx,sy,sw,sh] "
            "with a positive size of at most 8192"
        ) from None
    crop = tuple(numbers[2:]) if len(numbers) == 6 else None
    return Viewport(numbers[0], numbers[1], crop)  # type: ignore[arg-type]


def parse_quality(text: str | None) -> int:
    """Parse ``quality`` (1-100, PS3.18 8.3.5.1.2); :class:`InvalidQuery` when malformed."""
    if not text:
        return DEFAULT_QUALITY
    try:
        value = int(text)
        if not 1 <= value <= 100:
            raise ValueError
    except ValueError:
        raise InvalidQuery(f"quality={text!r} must be an integer from 1 to 100") from None
    return value


def document(source: Source) -> tuple[str, Iterator[bytes]]:
    """The encapsulated document of an instance and its media type.

    The MIME Type of Encapsulated Document (0042,0012) wins over the SOP Class default.
    Raises :class:`NotFound` when the instance holds no document.
    """
    ds = dcmread(source, force=True)
    data = ds.get("EncapsulatedDocument")
    if data is None:
        raise NotFound(f"instance {ds.get('SOPInstanceUID', '?')} holds no encapsulated document")
    media = str(ds.get("MIMETypeOfEncapsulatedDocument", "") or "").strip()
    media = media or ENCAPSULATED_DOCUMENTS.get(str(ds.SOPClassUID), "application/octet-stream")
    value = bytes(data)
    length = int(ds.get("EncapsulatedDocumentLength", 0) or 0)
    if 0 < length <= len(value):
        value = value[:length]  # drop the padding byte of odd-length documents
    elif value.endswith(b"\0") and media == "application/pdf":
        value = value[:-1]
    return media, iter([value])


def render(
    source: Source | Dataset,
    frame: int = 1,
    *,
    media_type: str = "image/jpeg",
    window: Window | None = None,
    viewport: Viewport | None = None,
    quality: int = DEFAULT_QUALITY,
    thumbnail: bool = False,
) -> bytes:
    """Frame ``frame`` (1-based) of an image instance rendered as ``media_type``.

    Raises :class:`NotFound` when the instance has no such frame or no pixel data.
    """
    ds = Dataset()
    try:
        if isinstance(source, Dataset):
            ds = source
            pixels = pixel_array(source, index=frame - 1)
        else:
            pixels = pixel_array(source, index=frame - 1, ds_out=ds)
    except (IndexError, ValueError) as exc:
        raise NotFound(f"frame {frame} cannot be rendered: {exc}") from exc
    except AttributeError as exc:
        raise NotFound(f"the instance has no pixel data to render: {exc}") from exc
    image = _to_8bit(pixels, ds, window)
    image = _fit(image, viewport, thumbnail)
    return _encode(image, media_type, quality)


def _to_8bit(pixels: np.ndarray, ds: Dataset, window: Window | None) -> Image.Image:
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR":
        pixels = apply_color_lut(pixels, ds)
        photometric = "RGB"
    if pixels.ndim == 3 and pixels.shape[-1] in (3, 4):  # colour (YBR already RGB)
        rgb = pixels[..., :3]
        if rgb.dtype != np.uint8:
            bits = int(ds.get("BitsStored", 8) or 8)
            rgb = np.clip(rgb.astype(np.float64) * (255.0 / (2**bits - 1)), 0, 255)
        return Image.fromarray(rgb.astype(np.uint8), "RGB")
    values = apply_modality_lut(pixels, ds).astype(np.float64)
    window = window or _own_window(ds)
    if window is not None:
        scaled = _window(values, window)
    elif "VOILUTSequence" in ds:
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        scaled = apply_voi_lut(values, ds, prefer_lut=True).astype(np.float64) / (2**bits - 1)
    else:
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) / max(high - low, 1e-9)
    scaled = np.clip(scaled, 0.0, 1.0)
    if photometric == "MONOCHROME1":
        scaled = 1.0 - scaled
    return Image.fromarray(np.round(scaled * 255).astype(np.uint8), "L")


def _own_window(ds: Dataset) -> Window | None:
    """The instance's first VOI window (PS3.3 C.11.2), if it has a usable one."""
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is None or width is None:
        return None

    def first(value: object) -> object:
        return value[0] if isinstance(value, MultiValue | list | tuple) else value

    try:
        c, w = float(first(center)), float(first(width))
    except (TypeError, ValueError, IndexError):
        return None
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
    if w <= 0 or function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        return None
    return Window(c, max(w, 1.0) if function == "LINEAR" else w, function)


def _window(values: np.ndarray, window: Window) -> np.ndarray:
    """PS3.3 C.11.2.1.2 and C.11.2.1.3 windowing, output in [0, 1]."""
    c, w = window.center, window.width
    if window.function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (values - c) / w))
    if window.function == "LINEAR_EXACT":
        return (values - (c - w / 2)) / w
    return ((values - (c - 0.5)) / (w - 1)) + 0.5


def _fit(image: Image.Image, viewport: Viewport | None, thumbnail: bool) -> Image.Image:
    if viewport is not None and viewport.crop is not None:
        sx, sy, sw, sh = viewport.crop
        sw = sw or image.width - sx
        sh = sh or image.height - sy
        left, top = min(sx, sx + sw), min(sy, sy + sh)
        image = image.crop((left, top, left + abs(sw), top + abs(sh)))
        if sw < 0:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if sh < 0:
            image = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    if viewport is not None:
        box = (viewport.width, viewport.height)
    elif thumbnail:
        box = (THUMBNAIL_SIZE, THUMBNAIL_SIZE)
    else:
        return image
    scale = min(box[0] / image.width, box[1] / image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    if size != image.size:
        image = image.resize(size, Image.Resampling.LANCZOS)
    return image


def _encode(image: Image.Image, media_type: str, quality: int) -> bytes:
    buffer = io.BytesIO()
    name = IMAGE_FORMATS[media_type]
    if name == "JPEG":
        image.save(buffer, name, quality=quality)
    else:
        image.save(buffer, name)
    return buffer.getvalue()
