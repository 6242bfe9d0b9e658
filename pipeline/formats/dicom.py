"""DICOM in, a derived DICOM instance out (optional extra: ``pip install 'pipeline[dicom]'``).

Decoding keeps the stored values (uint8, uint16 or int16, BitsStored as declared); the
model sees the modality values (RescaleSlope/RescaleIntercept, or a Modality LUT
Sequence), scaled to [0, 1] as raster.py describes (``radiometric`` in the manifest, in
the "modality" domain: Hounsfield units for CT). After inference the modality LUT is
inverted and the values rounded and clipped to the BitsStored range, so the output has
the input's bit depth, signedness and rescale, and a viewer shows it with the same
window. PixelPaddingValue, when present, is nodata: padding pixels do not bleed into
the image and stay padding.

The output is a new instance derived from the input, in a new series:

- Rows and Columns times the scale; PixelSpacing, ImagerPixelSpacing and
  NominalScannedPixelSpacing divided by it (in-plane only: SliceThickness and slice
  positions are unchanged); ImagePositionPatient moved to the centre of the new first
  pixel (half an old pixel minus half a new one along the row and column directions).
- New SOPInstanceUID and SeriesInstanceUID. They are derived deterministically
  (``pydicom.uid.generate_uid`` with the original UID and the run's configuration key
  as entropy), so every slice of a source series lands in one new series even when
  different workers process them, and a retried image gets the same UIDs.
- ImageType DERIVED\\SECONDARY (the rest of the original values kept),
  DerivationDescription, SourceImageSequence referencing the original SOP class and
  instance ("Source image for image processing operation"), SeriesDescription marked.
- Written uncompressed (Explicit VR Little Endian) whatever the source transfer syntax.
- Stale attributes removed: Smallest/LargestImagePixelValue, the series equivalents,
  and overlay planes (sized for the old Rows and Columns).

Not supported (a clear failed row): no pixel data, multi-frame instances, float pixel
data, photometric interpretations other than MONOCHROME1, MONOCHROME2 and RGB, and
compressed transfer syntaxes pydicom cannot decode without extra plugins.

Privacy: the manifest gets UIDs and spacings only (see `describe`); nothing here puts a
patient attribute (name, ID, birth date, ...) into an error message or a log.
"""

from __future__ import annotations

import copy
import datetime as dt
import io
import json

import numpy as np

from pipeline.formats.base import DecodedImage, ImageDecodeError, ImageEncodeError
from pipeline.formats.base import check_size as _check_size
from pipeline.raster import RasterInfo

SPACING_KEYWORDS = ("PixelSpacing", "ImagerPixelSpacing", "NominalScannedPixelSpacing")
STALE_KEYWORDS = ("SmallestImagePixelValue", "LargestImagePixelValue", "SmallestPixelValueInSeries",
                  "LargestPixelValueInSeries")
SUPPORTED_PHOTOMETRIC = ("MONOCHROME1", "MONOCHROME2", "RGB")


def _pydicom(label: str = "DICOM"):
    try:
        import pydicom
    except ImportError as error:
        raise ImageDecodeError(
            f"{label}: reading DICOM needs the optional extra: pip install 'pipeline[dicom]'"
        ) from error
    return pydicom


class ModalityLUT:
    """Stored values <-> modality values: linear rescale, or a Modality LUT Sequence
    (inverted by interpolation, which needs a monotonic table)."""

    domain = "modality"

    def __init__(self, slope: float = 1.0, intercept: float = 0.0, table=None, first: int = 0):
        self.slope, self.intercept = float(slope), float(intercept)
        self.table = None if table is None else np.asarray(table, dtype=np.float64)
        self.first = int(first)
        if self.table is not None:
            steps = np.diff(self.table)
            if not ((steps >= 0).all() or (steps <= 0).all()):
                raise ValueError("the Modality LUT is not monotonic, so it cannot be inverted")
        if self.table is None and self.slope == 0:
            raise ValueError("RescaleSlope is 0")

    def forward(self, stored) -> np.ndarray:
        stored = np.asarray(stored, dtype=np.float64)
        if self.table is None:
            return stored * self.slope + self.intercept
        index = np.clip(np.rint(stored) - self.first, 0, len(self.table) - 1).astype(np.int64)
        return self.table[index]

    def inverse(self, values) -> np.ndarray:
        values = np.asarray(values, dtype=np.float64)
        if self.table is None:
            return (values - self.intercept) / self.slope
        stored = np.arange(len(self.table), dtype=np.float64) + self.first
        table, stored = (self.table, stored) if self.table[-1] >= self.table[0] else (self.table[::-1], stored[::-1])
        return np.interp(values, table, stored)


def decode(data: bytes, label: str, max_pixels: int | None) -> DecodedImage:
    """Stored pixel values (H x W x 1, or x 3 for RGB) plus the dataset without its pixel data."""
    pydicom = _pydicom(label)
    ds = pydicom.dcmread(io.BytesIO(data))
    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise ImageDecodeError(f"{label}: DICOM float pixel data is not supported")
        sop = getattr(ds.get("SOPClassUID"), "name", None) or "unknown SOP class"
        raise ImageDecodeError(f"{label}: DICOM without pixel data ({sop}): nothing to upscale")
    missing = [k for k in ("Rows", "Columns", "BitsAllocated") if ds.get(k) is None]
    if missing:
        raise ImageDecodeError(f"{label}: corrupt DICOM file (pixel data without {', '.join(missing)})")
    rows, cols = int(ds.Rows), int(ds.Columns)
    _check_size(cols, rows, label, max_pixels)
    frames = int(ds.get("NumberOfFrames") or 1)
    if frames > 1:
        raise ImageDecodeError(f"{label}: multi-frame DICOM ({frames} frames) is not supported")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if photometric not in SUPPORTED_PHOTOMETRIC:
        raise ImageDecodeError(f"{label}: DICOM PhotometricInterpretation {photometric!r} is not supported "
                               f"(supported: {', '.join(SUPPORTED_PHOTOMETRIC)})")
    allocated = int(ds.BitsAllocated)
    stored_bits = int(ds.get("BitsStored") or allocated)
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    dtype = {(8, False): np.uint8, (16, False): np.uint16, (16, True): np.int16}.get((allocated, signed))
    if dtype is None:
        raise ImageDecodeError(f"{label}: DICOM with {allocated}-bit {'signed' if signed else 'unsigned'} "
                               "samples is not supported (8-bit unsigned, 16-bit signed or unsigned)")
    try:
        pixels = np.asarray(ds.pixel_array)
    except Exception as error:
        syntax = getattr(ds, "file_meta", {}).get("TransferSyntaxUID", "unknown transfer syntax")
        raise ImageDecodeError(f"{label}: cannot decode DICOM pixel data ({syntax}): "
                               f"{type(error).__name__}: {error}") from error
    pixels = np.ascontiguousarray(pixels.astype(dtype, copy=False))
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.shape[:2] != (rows, cols):
        raise ImageDecodeError(f"{label}: DICOM pixel data is {pixels.shape}, Rows x Columns say {rows} x {cols}")
    stored_range = (-(2 ** (stored_bits - 1)), 2 ** (stored_bits - 1) - 1) if signed else (0, 2**stored_bits - 1)
    value_map = None
    if photometric != "RGB":
        value_map = _modality_lut(ds, label)
    padding = ds.get("PixelPaddingValue")
    meta = ds.copy()
    del meta.PixelData  # the pixels live in `pixels`; no second copy
    raster = RasterInfo(
        kind="dicom", bands=pixels.shape[2], nodata=float(padding) if padding is not None else None,
        names={0: "Red", 1: "Green", 2: "Blue"} if photometric == "RGB" else {},
        photometric="rgb" if photometric == "RGB" else "minisblack", value_map=value_map,
        stored_range=(float(stored_range[0]), float(stored_range[1])),
    )
    mode = f"{photometric};{stored_bits}{'S' if signed else ''}"
    return DecodedImage(pixels=pixels, format="dicom", mode=mode, info={"dicom": meta}, raster=raster)


def _modality_lut(ds, label: str) -> ModalityLUT:
    try:
        if "ModalityLUTSequence" in ds and len(ds.ModalityLUTSequence):
            item = ds.ModalityLUTSequence[0]
            descriptor = [int(v) for v in item.LUTDescriptor]
            raw = item.LUTData
            table = np.asarray(raw if not isinstance(raw, bytes) else np.frombuffer(raw, "<u2"), dtype=np.float64)
            return ModalityLUT(table=table, first=descriptor[1])
        return ModalityLUT(float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0))
    except ValueError as error:
        raise ImageDecodeError(f"{label}: {error}") from error


def _spacing(ds) -> list[float] | None:
    for keyword in SPACING_KEYWORDS:
        if keyword in ds and ds[keyword].value:
            return [float(v) for v in ds[keyword].value]
    return None


def derived_uids(ds, uid_seed: str | None) -> tuple[str, str]:
    """(new SOPInstanceUID, new SeriesInstanceUID): deterministic from the originals and
    the seed (the run's configuration key), random without a seed."""
    from pydicom.uid import generate_uid

    if not uid_seed:
        return str(generate_uid()), str(generate_uid())
    sop = generate_uid(entropy_srcs=["instance", str(ds.SOPInstanceUID), uid_seed])
    series = generate_uid(entropy_srcs=["series", str(ds.get("SeriesInstanceUID", "")), uid_seed])
    return str(sop), str(series)


def encode(pixels: np.ndarray, like: DecodedImage, *, description: str | None = None,
           uid_seed: str | None = None) -> bytes:
    """The derived instance (see the module doc) as DICOM Part 10 bytes."""
    pydicom = _pydicom()
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian
    from pydicom.valuerep import DSfloat

    src = like.info.get("dicom")
    if src is None:
        raise ImageEncodeError("DICOM output needs the source dataset (decode the input with decode_image)")
    missing = [k for k in ("SOPClassUID", "SOPInstanceUID") if not src.get(k)]
    if missing:
        raise ImageEncodeError(f"cannot write a derived DICOM instance: the source has no {' or '.join(missing)} "
                               "to reference")
    ds = copy.deepcopy(src)
    in_h, in_w = like.pixels.shape[:2]
    out_h, out_w = pixels.shape[:2]
    fy, fx = out_h / in_h, out_w / in_w

    ds.Rows, ds.Columns = out_h, out_w
    old_spacing = _spacing(src)
    for keyword in SPACING_KEYWORDS:
        if keyword in ds and ds[keyword].value:
            row, col = (float(v) for v in ds[keyword].value)
            setattr(ds, keyword, [DSfloat(row / fy, auto_format=True), DSfloat(col / fx, auto_format=True)])
    if old_spacing and "ImagePositionPatient" in ds and "ImageOrientationPatient" in ds:
        iop = [float(v) for v in ds.ImageOrientationPatient]
        along_row, along_col = np.array(iop[:3]), np.array(iop[3:])  # directions of increasing column / row
        row_sp, col_sp = old_spacing
        shift = along_row * (col_sp / fx - col_sp) / 2 + along_col * (row_sp / fy - row_sp) / 2
        ipp = np.array([float(v) for v in ds.ImagePositionPatient]) + shift
        ds.ImagePositionPatient = [DSfloat(float(v), auto_format=True) for v in ipp]

    sop_uid, series_uid = derived_uids(src, uid_seed)
    ds.SOPInstanceUID = sop_uid
    ds.SeriesInstanceUID = series_uid
    image_type = [str(v) for v in (src.get("ImageType") or [])]
    ds.ImageType = ["DERIVED", "SECONDARY"] + image_type[2:]
    text = description or f"Upscaled x{fx:g}; in-plane pixel spacing divided by {fx:g}"
    ds.DerivationDescription = text[:1024]
    source = Dataset()
    source.ReferencedSOPClassUID = src.SOPClassUID
    source.ReferencedSOPInstanceUID = src.SOPInstanceUID
    purpose = Dataset()
    purpose.CodeValue, purpose.CodingSchemeDesignator = "121322", "DCM"
    purpose.CodeMeaning = "Source image for image processing operation"
    source.PurposeOfReferenceCodeSequence = Sequence([purpose])
    ds.SourceImageSequence = Sequence([source])
    series_text = str(src.get("SeriesDescription", "") or "").strip()
    ds.SeriesDescription = (f"{series_text} " if series_text else "") + f"SR x{fx:g}"
    ds.SeriesDescription = ds.SeriesDescription[-64:]
    now = dt.datetime.now()
    ds.InstanceCreationDate, ds.InstanceCreationTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    for keyword in STALE_KEYWORDS:
        if keyword in ds:
            delattr(ds, keyword)
    for tag in [t for t in ds.keys() if 0x6000 <= t.group <= 0x601E and t.group % 2 == 0]:
        del ds[tag]  # overlay planes: sized for the old Rows x Columns

    data = np.ascontiguousarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels)
    if pixels.shape[2] == 3:
        ds.PlanarConfiguration = 0
    if "NumberOfFrames" in ds:
        ds.NumberOfFrames = 1
    ds.PixelData = data.astype(data.dtype.newbyteorder("<"), copy=False).tobytes()
    ds["PixelData"].VR = "OW" if int(ds.BitsAllocated) > 8 else "OB"

    meta = getattr(src, "file_meta", None)
    ds.file_meta = copy.deepcopy(meta) if meta is not None else FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.MediaStorageSOPClassUID = src.SOPClassUID
    out = io.BytesIO()
    pydicom.dcmwrite(out, ds, enforce_file_format=True, little_endian=True, implicit_vr=False)
    return out.getvalue()


def describe(like: DecodedImage, out_shape: tuple, uid_seed: str | None) -> dict:
    """Manifest columns of a DICOM image: UIDs and spacings, and nothing about the patient."""
    src = like.info["dicom"]
    in_h, in_w = like.pixels.shape[:2]
    out_h, out_w = out_shape[:2]
    sop_uid, series_uid = derived_uids(src, uid_seed)
    spacing = _spacing(src)
    return {
        "dicom_sop_uid_in": str(src.SOPInstanceUID),
        "dicom_sop_uid_out": sop_uid,
        "dicom_series_uid_in": str(src.get("SeriesInstanceUID", "")) or None,
        "dicom_series_uid_out": series_uid,
        "pixel_spacing_in": json.dumps(spacing) if spacing else None,
        "pixel_spacing_out": json.dumps([spacing[0] * in_h / out_h, spacing[1] * in_w / out_w]) if spacing else None,
    }
