"""Clean Pixel Data Option (PS3.15 E.3.1, CID 7050 code 113101): blank known regions.

Burned-in text sits where each device model draws it, so the regions to blank are
configured per device "signature" (attribute values such as Manufacturer,
Manufacturer's Model Name, SOP Class UID, Rows and Columns), as RSNA CTP's
DicomPixelAnonymizer does.  An instance that would be quarantined for possible burned-in
text and matches a signature is cleaned and published instead; one that matches none, or
whose pixels are not native (uncompressed little endian, 8, 16 or 32 bits allocated, a
photometric interpretation with one value per sample and pixel), stays quarantined.

Frames are read, blanked and handed on one at a time, so memory is bounded by one frame.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from ..frames import PixelLayout

#: CID 7050 De-identification Method.
CLEAN_PIXEL_DATA_CODE = ("113101", "Clean Pixel Data Option")
_PIXEL_DATA = 0x7FE00010
_NATIVE = {ExplicitVRLittleEndian, ImplicitVRLittleEndian}
#: One stored value per sample of each pixel (YBR_FULL_422 shares chroma: not handled).
_PHOTOMETRIC = {"MONOCHROME1", "MONOCHROME2", "PALETTE COLOR", "RGB", "YBR_FULL"}
_DTYPES = {8: np.dtype("u1"), 16: np.dtype("<u2"), 32: np.dtype("<u4")}

Rectangle = tuple[int, int, int, int]  # column, row (top left, 0-based), width, height


@dataclass(frozen=True)
class Signature:
    """Regions to blank in instances whose attributes have all the ``match`` values."""

    match: tuple[tuple[str, str], ...]  #: (keyword, value as text)
    regions: tuple[Rectangle, ...]

    def __post_init__(self) -> None:
        if not self.match:
            raise ValueError("a clean_pixel_data entry needs at least one attribute to match")
        for keyword, _value in self.match:
            if tag_for_keyword(keyword) is None:
                raise ValueError(f"clean_pixel_data: {keyword!r} is not a DICOM keyword")
        if not self.regions:
            raise ValueError("a clean_pixel_data entry needs at least one region")
        for region in self.regions:
            if len(region) != 4 or min(region) < 0 or min(region[2:]) < 1:
                raise ValueError(f"clean_pixel_data region {list(region)}: [x, y, width, height]")

    def matches(self, ds: Dataset) -> bool:
        """Every listed attribute is present with that value (compared as trimmed text)."""
        for keyword, expected in self.match:
            value = ds.get(keyword)
            if value is None or str(value).strip() != expected.strip():
                return False
        return True


@dataclass(frozen=True)
class Cleaner:
    """Blanks the regions of one instance, frame by frame."""

    layout: PixelLayout
    rows: int
    columns: int
    samples: int
    planar: bool
    dtype: np.dtype
    regions: tuple[Rectangle, ...]

    def frames(self, fp: BinaryIO) -> Iterator[bytes | bytearray]:
        """The Pixel Data value with the regions blanked; ``fp`` is the source file."""
        size = self.layout.frame_size or 0
        fp.seek(self.layout.offset)
        for _ in range(self.layout.number_of_frames):
            frame = bytearray(size)
            if fp.readinto(frame) != size:
                raise ValueError("Pixel Data is shorter than its frames")
            self.blank(frame)
            yield frame
            del frame  # the next frame is not allocated while this one is held
        rest = (self.layout.length or 0) - size * self.layout.number_of_frames
        if rest:
            yield fp.read(rest)  # padding to even length

    def blank(self, frame: bytearray) -> None:
        """Set the samples in the regions to zero, in place."""
        pixels = np.frombuffer(frame, dtype=self.dtype)  # a view: nothing copied
        if self.samples == 1:
            image = pixels.reshape(self.rows, self.columns)
        elif self.planar:
            image = pixels.reshape(self.samples, self.rows, self.columns)
        else:
            image = pixels.reshape(self.rows, self.columns, self.samples)
        for x, y, width, height in self.regions:
            if self.planar and self.samples > 1:
                image[:, y : y + height, x : x + width] = 0
            else:
                image[y : y + height, x : x + width] = 0


def plan(
    signatures: tuple[Signature, ...],
    ds: Dataset,
    layout: PixelLayout | None,
    transfer_syntax: str,
) -> Cleaner | None:
    """A cleaner for ``ds`` (the original header) when a signature matches and its pixels
    are native and understood; otherwise ``None`` (the instance stays quarantined)."""
    signature = next((s for s in signatures if s.matches(ds)), None)
    if signature is None or layout is None or transfer_syntax not in _NATIVE:
        return None
    if layout.tag != _PIXEL_DATA or layout.frame_size is None or layout.length is None:
        return None
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        samples = int(ds.get("SamplesPerPixel", 1))
        bits = int(ds.BitsAllocated)
        planar = samples > 1 and int(ds.get("PlanarConfiguration", 0)) == 1
    except (AttributeError, TypeError, ValueError):
        return None
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    dtype = _DTYPES.get(bits)
    if dtype is None or photometric not in _PHOTOMETRIC:
        return None
    if layout.frame_size != rows * columns * samples * dtype.itemsize:
        return None
    if layout.length < layout.frame_size * layout.number_of_frames:
        return None
    return Cleaner(layout, rows, columns, samples, planar, dtype, signature.regions)
