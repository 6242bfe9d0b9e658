"""DICOM in, a derived DICOM instance out (optional extra: ``pip install 'pipeline[dicom]'``).

Pixel data is decoded by pydicom's own decoders, compressed syntaxes through the extra's
plugins (pylibjpeg: libjpeg for JPEG and JPEG-LS, openjpeg for JPEG 2000, rle), so what
pydicom decodes is what we decode. Colour goes to the model as RGB: YBR_FULL, YBR_FULL_422
(and JPEG 2000's YBR_RCT/ICT) by pydicom's colour conversion, PALETTE COLOR through its
lookup table (``apply_color_lut``); such output is written as RGB, since writing YBR or a
palette back would need a lossy conversion or re-quantisation of the upscaled colours.
MONOCHROME1 stays MONOCHROME1. A file without the 128-byte preamble (sniff.bare_dicom
checks its first element) is read as a bare data set and its row's note says so.

Decoding keeps the stored values (uint8, uint16 or int16, BitsStored as declared); the
model sees the modality values (RescaleSlope/RescaleIntercept, or a Modality LUT
Sequence; for Enhanced images the Pixel Value Transformation functional group), scaled
to [0, 1] as raster.py describes (``radiometric`` in the manifest, in the "modality"
domain: Hounsfield units for CT). After inference the modality LUT is inverted and the
values rounded and clipped to the BitsStored range, so the output has the input's bit
depth, signedness and rescale, and a viewer shows it with the same window.
PixelPaddingValue, when present, is nodata: padding pixels do not bleed into the image
and stay padding (frame by frame).

Multi-frame instances decode to H x W x (frames x samples) with ``raster.frames`` set;
raster.FramePlan and stages/infer.py take them through the engine frame by frame, in
groups; one derived multi-frame instance comes out.

The output is a new instance derived from the input, in a new series:

- Rows and Columns times the scale; PixelSpacing, ImagerPixelSpacing and
  NominalScannedPixelSpacing divided by it, at the top level and in the Pixel Measures
  functional groups (in-plane only: SliceThickness and slice positions are unchanged);
  ImagePositionPatient, at the top level or in each frame's Plane Position group, moved
  to the centre of the new first pixel (half an old pixel minus half a new one along
  the row and column directions of that frame's orientation: the image covers the same
  area); ultrasound regions moved into the new pixel grid (`_scale_region`).
- New SOPInstanceUID and SeriesInstanceUID. They are derived deterministically
  (``pydicom.uid.generate_uid`` with the original UID and the run's configuration key
  as entropy), so every slice of a source series lands in one new series even when
  different workers process them, and a retried image gets the same UIDs.
- ImageType (and Enhanced FrameType) DERIVED\\SECONDARY (the rest of the original values
  kept), DerivationDescription, SourceImageSequence referencing the original SOP class
  and instance (DCM 121322 "Source image for image processing operation", PS3.16 CID
  7202), SeriesDescription marked.
- Written uncompressed (Explicit VR Little Endian, ``pydicom.pixels.set_pixel_data``)
  whatever the source transfer syntax; a source that went through lossy compression
  (JPEG baseline or extended, JPEG-LS near-lossless, or LossyImageCompression 01) keeps
  LossyImageCompression 01 and its method, as the standard asks of derived images.
- Stale attributes removed: Smallest/LargestImagePixelValue, the series equivalents,
  the palette lookup tables, and overlay planes (sized for the old Rows and Columns).

32-bit samples (RT dose grids) are read and written too; the model sees them in float32.

Not supported (a failed row saying why): no pixel data, float pixel data, 1-bit (binary
segmentations) samples, other photometric interpretations, and transfer syntaxes without
an installed decoder.

Privacy: the manifest gets UIDs and spacings only (see `describe`); nothing here puts a
patient attribute (name, ID, birth date, ...) into an error message or a log.
"""

from __future__ import annotations

import copy
import datetime as dt
import io
import json
import tempfile

import numpy as np

from pipeline.errors import one_line_text
from pipeline.formats.base import DecodedImage, ImageDecodeError, ImageEncodeError, ImageTooLargeError
from pipeline.formats.base import check_size as _check_size
from pipeline.raster import RasterInfo

DICOM_DTYPES = ("uint8", "uint16", "int16", "uint32", "int32")  # decoded sample types (32-bit: dose grids)
SPACING_KEYWORDS = ("PixelSpacing", "ImagerPixelSpacing", "NominalScannedPixelSpacing")
STALE_KEYWORDS = ("SmallestImagePixelValue", "LargestImagePixelValue", "SmallestPixelValueInSeries",
                  "LargestPixelValueInSeries")
SUPPORTED_PHOTOMETRIC = ("MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT",
                         "PALETTE COLOR")


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


LOSSY_SYNTAXES = {  # transfer syntaxes whose pixel data has been through lossy compression -> method
    "1.2.840.10008.1.2.4.50": "ISO_10918_1", "1.2.840.10008.1.2.4.51": "ISO_10918_1",
    "1.2.840.10008.1.2.4.81": "ISO_14495_1",
}
# --dicom-syntax: how the derived instance's pixel data is written (`output_syntax`). No JPEG
# 2000: pylibjpeg-openjpeg 2.6's encoder crashed the process (segfault, about one run in three)
# when the job's writer threads used it, while decoding in threads never did.
SYNTAX_CHOICES = ("explicit", "keep", "rle")
_ENCODED = {"rle": "1.2.840.10008.1.2.5"}  # RLE Lossless: pydicom's own encoder
_KEPT = ("1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.80")  # RLE Lossless, JPEG-LS Lossless (with pyjpegls)
PALETTE_KEYWORDS = tuple(f"{colour}PaletteColorLookupTable{part}" for colour in ("Red", "Green", "Blue")
                         for part in ("Descriptor", "Data")) + tuple(
    f"Segmented{colour}PaletteColorLookupTableData" for colour in ("Red", "Green", "Blue")) + (
    "PaletteColorLookupTableUID",)


def decode(data: bytes, label: str, max_pixels: int | None) -> DecodedImage:
    """Stored pixel values plus the dataset without its pixel data: H x W x C (C = 1, or 3 for
    colour) for one frame; H x W x (frames x C), frame-major, for a multi-frame instance
    (``raster.frames``). Colour is decoded through pydicom: YBR_FULL, YBR_FULL_422 and the JPEG
    2000 colour transforms to RGB, PALETTE COLOR through its lookup table to RGB."""
    pydicom = _pydicom(label)
    notes: list[str] = []
    ds = _read(pydicom, data, label, notes)
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
    if frames < 1:
        raise ImageDecodeError(f"{label}: corrupt DICOM file (NumberOfFrames {frames})")
    if max_pixels is not None and frames > 1 and frames * rows * cols > max_pixels:
        raise ImageTooLargeError(f"{label}: {frames} frames of {cols} x {rows} = {frames * rows * cols:,} pixels "
                                 f"is over the limit of {max_pixels:,}; raise it with --max-pixels if expected")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if photometric not in SUPPORTED_PHOTOMETRIC:
        raise ImageDecodeError(f"{label}: DICOM PhotometricInterpretation {photometric!r} is not supported "
                               f"(supported: {', '.join(SUPPORTED_PHOTOMETRIC)})")
    allocated = int(ds.BitsAllocated)
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    if (allocated, signed) not in ((8, False), (16, False), (16, True), (32, False), (32, True)):
        what = "1-bit (binary mask)" if allocated == 1 else f"{allocated}-bit {'signed' if signed else 'unsigned'}"
        raise ImageDecodeError(f"{label}: DICOM with {what} samples is not supported "
                               "(8-bit unsigned, 16- and 32-bit signed or unsigned)")
    syntax = ds.file_meta.TransferSyntaxUID
    try:
        decoder = pydicom.pixels.get_decoder(syntax)
    except NotImplementedError as error:
        raise ImageDecodeError(f"{label}: DICOM transfer syntax {syntax.name} cannot be decoded "
                               "(no pixel data decoder exists for it)") from error
    if not decoder.is_available:
        need = "; ".join(decoder.missing_dependencies)
        raise ImageDecodeError(f"{label}: DICOM transfer syntax {syntax.name} needs a decoder plugin that is not "
                               f"installed ({one_line_text(need, 200)})")
    try:
        array, meta = decoder.as_array(ds, as_rgb=True)
    except Exception as error:
        raise ImageDecodeError(f"{label}: cannot decode DICOM pixel data ({syntax.name}): "
                               f"{type(error).__name__}: {one_line_text(str(error), 300)}") from error
    decoded_as = str(meta.get("photometric_interpretation", photometric))
    if decoded_as == "PALETTE COLOR":
        try:
            array = pydicom.pixels.apply_color_lut(array, ds)
        except Exception as error:
            raise ImageDecodeError(f"{label}: cannot apply the DICOM palette colour lookup table: "
                                   f"{type(error).__name__}: {one_line_text(str(error), 300)}") from error
        decoded_as = "RGB"
    if decoded_as not in ("MONOCHROME1", "MONOCHROME2", "RGB"):
        raise ImageDecodeError(f"{label}: DICOM PhotometricInterpretation {photometric!r} decoded as "
                               f"{decoded_as!r}, which is not supported")
    if decoded_as != photometric:
        notes.append(f"DICOM {photometric} converted to RGB by pydicom; written as RGB")
    samples = 3 if decoded_as == "RGB" else 1
    array = array.reshape((frames, rows, cols, samples))  # pydicom drops the frame and sample axes of 1
    dtype = np.dtype(array.dtype.str[1:]).newbyteorder("=") if array.dtype.kind in "ui" else array.dtype
    if dtype.name not in DICOM_DTYPES:
        raise ImageDecodeError(f"{label}: DICOM pixel data decoded to {array.dtype}, which is not supported")
    array = array.astype(dtype, copy=False)
    if dtype.itemsize == 4:
        notes.append("32-bit samples: the model sees them in float32 (24 significant bits)")
    if frames == 1:
        pixels = array[0]
    else:  # H x W x (frames x samples); a view when samples == 1
        pixels = np.moveaxis(array, 0, 2).reshape(rows, cols, frames * samples)
        notes.append(f"{frames} frames, each upscaled")
    stored_bits = _stored_bits(ds, photometric, dtype)
    stored_range = (-(2 ** (stored_bits - 1)), 2 ** (stored_bits - 1) - 1) if signed else (0, 2**stored_bits - 1)
    value_map = None if samples == 3 else _modality_lut(ds, label)
    padding = ds.get("PixelPaddingValue") if samples == 1 else None
    meta_ds = ds.copy()
    del meta_ds.PixelData  # the pixels live in `pixels`; no second copy
    raster = RasterInfo(
        kind="dicom", bands=samples, frames=frames, nodata=float(padding) if padding is not None else None,
        names={0: "Red", 1: "Green", 2: "Blue"} if samples == 3 else {},
        photometric="rgb" if samples == 3 else "minisblack", value_map=value_map,
        stored_range=(float(stored_range[0]), float(stored_range[1])),
    )
    mode = f"{photometric};{stored_bits}{'S' if signed else ''}"
    info = {"dicom": meta_ds, **({"notes": notes} if notes else {})}
    return DecodedImage(pixels=pixels, format="dicom", mode=mode, info=info, raster=raster)


def _read(pydicom, data: bytes, label: str, notes: list[str]):
    """The dataset; one without the preamble (sniff.py checked that its first element is
    DICOM's) is parsed with force, and a missing transfer syntax is taken from how the
    data set itself is encoded, which for native pixel data is the syntax."""
    bare = data[128:132] != b"DICM"
    if bare:
        data = data[4:] if data[:4] == b"DICM" else data
        notes.append("DICOM without the 128-byte preamble (not a Part 10 file): read as a bare data set")
    ds = pydicom.dcmread(io.BytesIO(data), force=bare)
    if "TransferSyntaxUID" not in ds.file_meta:
        implicit, little = ds.original_encoding
        if "PixelData" in ds and ds["PixelData"].is_undefined_length:
            raise ImageDecodeError(f"{label}: DICOM without a transfer syntax, and its pixel data is compressed "
                                   "(encapsulated): the codec cannot be known")
        from pydicom import uid

        syntax = uid.ImplicitVRLittleEndian if implicit else (
            uid.ExplicitVRLittleEndian if little else uid.ExplicitVRBigEndian)
        ds.file_meta.TransferSyntaxUID = syntax
        notes.append(f"DICOM file meta has no transfer syntax: read as {syntax.name}, as its data set is encoded")
    return ds


def _stored_bits(ds, photometric: str, dtype: np.dtype) -> int:
    """BitsStored of the decoded values: the palette's entries fill their type."""
    if photometric == "PALETTE COLOR":
        return dtype.itemsize * 8
    return min(int(ds.get("BitsStored") or dtype.itemsize * 8), dtype.itemsize * 8)


def _modality_lut(ds, label: str) -> ModalityLUT:
    if "RescaleSlope" not in ds and "ModalityLUTSequence" not in ds:  # Enhanced CT/MR: in the functional groups
        ds = _functional(ds, "PixelValueTransformationSequence") or ds
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


def _functional(ds, keyword: str):
    """The first item of a functional group macro (e.g. PixelMeasuresSequence) in the shared
    functional groups, else in the first frame's, else None."""
    for groups in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        if ds.get(groups) and ds.get(groups)[0].get(keyword):
            return ds.get(groups)[0].get(keyword)[0]
    return None


def _spacing(ds) -> list[float] | None:
    """In-plane [row, column] spacing: top level, else the Pixel Measures functional group."""
    for holder in (ds, _functional(ds, "PixelMeasuresSequence")):
        for keyword in SPACING_KEYWORDS:
            if holder is not None and keyword in holder and holder[keyword].value:
                return [float(v) for v in holder[keyword].value]
    return None


def _item(group, keyword: str):
    sequence = group.get(keyword) if group is not None else None
    return sequence[0] if sequence else None


def _scale_geometry(ds, fy: float, fx: float) -> None:
    """Spacing divided by the scale and each plane's first pixel centre moved, wherever the
    instance keeps them: the top level (single-frame IODs), the shared and per-frame functional
    groups (Enhanced CT/MR: PixelMeasuresSequence, PlanePositionSequence with the orientation of
    the same frame), and ultrasound regions. The new first pixel's centre lies half an old pixel
    minus half a new one from the old one, along the row and column directions."""
    from pydicom.valuerep import DSfloat

    shared = _item(ds, "SharedFunctionalGroupsSequence")
    frames = list(ds.get("PerFrameFunctionalGroupsSequence") or []) or [None]
    moves = {}  # id(dataset holding ImagePositionPatient) -> (dataset, spacing, orientation)
    if "ImagePositionPatient" in ds:
        moves[id(ds)] = (ds, _spacing(ds), ds.get("ImageOrientationPatient"))
    for group in frames:
        position = _item(group, "PlanePositionSequence") or _item(shared, "PlanePositionSequence")
        if position is None or "ImagePositionPatient" not in position:
            continue
        measures = _item(group, "PixelMeasuresSequence") or _item(shared, "PixelMeasuresSequence")
        orientation = _item(group, "PlaneOrientationSequence") or _item(shared, "PlaneOrientationSequence")
        spacing = [float(v) for v in measures.PixelSpacing] if measures is not None and measures.get(
            "PixelSpacing") else _spacing(ds)
        iop = orientation.get("ImageOrientationPatient") if orientation is not None else None
        moves[id(position)] = (position, spacing, iop or ds.get("ImageOrientationPatient"))
    for holder, spacing, iop in moves.values():
        if not spacing or not iop or not holder.ImagePositionPatient:
            continue
        iop = [float(v) for v in iop]
        along_row, along_col = np.array(iop[:3]), np.array(iop[3:])  # directions of increasing column / row
        row_sp, col_sp = spacing
        shift = along_row * (col_sp / fx - col_sp) / 2 + along_col * (row_sp / fy - row_sp) / 2
        ipp = np.array([float(v) for v in holder.ImagePositionPatient]) + shift
        holder.ImagePositionPatient = [DSfloat(float(v), auto_format=True) for v in ipp]
    holders = {id(ds): ds}
    for group in [shared] + frames:
        measures = _item(group, "PixelMeasuresSequence")
        if measures is not None:
            holders[id(measures)] = measures
    for holder in holders.values():
        for keyword in SPACING_KEYWORDS:
            if keyword in holder and holder[keyword].value and len(holder[keyword].value) == 2:
                row, col = (float(v) for v in holder[keyword].value)
                setattr(holder, keyword, [DSfloat(row / fy, auto_format=True), DSfloat(col / fx, auto_format=True)])
    for region in ds.get("SequenceOfUltrasoundRegions") or []:
        _scale_region(region, fy, fx)


def _scale_region(region, fy: float, fx: float) -> None:
    """An ultrasound region in the new pixel grid: its bounds (inclusive pixel indices), the
    physical size of a pixel, and its reference pixel (moved to a whole new pixel, its physical
    value moved with it so that the calibration stays exact)."""
    for axis, f in (("X", fx), ("Y", fy)):
        low, high = f"RegionLocationMin{axis}0", f"RegionLocationMax{axis}1"
        if region.get(low) is not None:
            setattr(region, low, int(round(int(region.get(low)) * f)))
        if region.get(high) is not None:
            setattr(region, high, int(round((int(region.get(high)) + 1) * f)) - 1)
        delta = region.get(f"PhysicalDelta{axis}")
        reference, value = f"ReferencePixel{axis}0", f"ReferencePixelPhysicalValue{axis}"
        if region.get(reference) is not None:
            old = int(region.get(reference))
            new = int(round((old + 0.5) * f - 0.5))
            setattr(region, reference, new)
            if delta is not None and region.get(value) is not None:
                setattr(region, value, float(region.get(value)) + ((new + 0.5) / f - 0.5 - old) * float(delta))
        if delta is not None:
            setattr(region, f"PhysicalDelta{axis}", float(delta) / f)


def _derive_frame_types(ds) -> None:
    """FrameType of the Enhanced image frame type groups (CT, MR, ...), shared and per frame:
    DERIVED\\SECONDARY like ImageType."""
    groups = [*(ds.get("SharedFunctionalGroupsSequence") or []), *(ds.get("PerFrameFunctionalGroupsSequence") or [])]
    for group in groups:
        for element in group:
            if element.keyword.endswith("FrameTypeSequence") and element.value:
                for item in element.value:
                    if item.get("FrameType"):
                        item.FrameType = ["DERIVED", "SECONDARY"] + [str(v) for v in item.FrameType][2:]


def derived_uids(ds, uid_seed: str | None) -> tuple[str, str]:
    """(new SOPInstanceUID, new SeriesInstanceUID): deterministic from the originals and
    the seed (the run's configuration key), random without a seed."""
    from pydicom.uid import generate_uid

    if not uid_seed:
        return str(generate_uid()), str(generate_uid())
    sop = generate_uid(entropy_srcs=["instance", str(ds.SOPInstanceUID), uid_seed])
    series = generate_uid(entropy_srcs=["series", str(ds.get("SeriesInstanceUID", "")), uid_seed])
    return str(sop), str(series)


def output_syntax(choice: str, source_syntax: str) -> str | None:
    """The transfer syntax UID to re-encode in, or None for Explicit VR Little Endian.
    `keep`: the source's own when it is lossless and pydicom has an encoder for it here that
    we use (RLE Lossless; JPEG-LS Lossless with pyjpegls), so an archive stays as compact as
    it was without a lossy step; otherwise uncompressed."""
    if choice not in SYNTAX_CHOICES:
        raise ValueError(f"DICOM syntax must be one of {', '.join(SYNTAX_CHOICES)}, not {choice!r}")
    if choice == "explicit":
        return None
    if choice != "keep":
        return _ENCODED[choice]
    if source_syntax not in _KEPT:
        return None
    from pydicom.pixels import get_encoder

    return source_syntax if get_encoder(source_syntax).is_available else None


def encode(pixels: np.ndarray, like: DecodedImage, *, description: str | None = None,
           uid_seed: str | None = None, syntax: str = "explicit") -> bytes:
    """The derived instance (see the module doc) as DICOM Part 10 bytes; `syntax` one of
    SYNTAX_CHOICES (lossless only: a lossy step would be a second, silent derivation)."""
    pydicom = _pydicom()
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian

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
    _scale_geometry(ds, fy, fx)

    sop_uid, series_uid = derived_uids(src, uid_seed)
    ds.SOPInstanceUID = sop_uid
    ds.SeriesInstanceUID = series_uid
    image_type = [str(v) for v in (src.get("ImageType") or [])]
    ds.ImageType = ["DERIVED", "SECONDARY"] + image_type[2:]
    _derive_frame_types(ds)
    text = description or f"Upscaled x{fx:g}; in-plane pixel spacing divided by {fx:g}"
    ds.DerivationDescription = text[:1024]
    source = Dataset()
    source.ReferencedSOPClassUID = src.SOPClassUID
    source.ReferencedSOPInstanceUID = src.SOPInstanceUID
    purpose = Dataset()  # PS3.16 CID 7202 "Source Image Purposes of Reference"
    purpose.CodeValue, purpose.CodingSchemeDesignator = "121322", "DCM"
    purpose.CodeMeaning = "Source image for image processing operation"
    source.PurposeOfReferenceCodeSequence = Sequence([purpose])
    ds.SourceImageSequence = Sequence([source])
    series_text = str(src.get("SeriesDescription", "") or "").strip()
    ds.SeriesDescription = (f"{series_text} " if series_text else "") + f"SR x{fx:g}"
    ds.SeriesDescription = ds.SeriesDescription[-64:]
    now = dt.datetime.now()
    ds.InstanceCreationDate, ds.InstanceCreationTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    source_syntax = str(src.file_meta.TransferSyntaxUID)
    if source_syntax in LOSSY_SYNTAXES or str(src.get("LossyImageCompression", "")) == "01":
        ds.LossyImageCompression = "01"  # once lossy, every derived image says so (PS3.3 C.7.6.1.1.5)
        methods = [str(v) for v in (src.get("LossyImageCompressionMethod") or [])] if src.get(
            "LossyImageCompressionMethod") else []
        if source_syntax in LOSSY_SYNTAXES and LOSSY_SYNTAXES[source_syntax] not in methods:
            methods.append(LOSSY_SYNTAXES[source_syntax])
        if methods:
            ds.LossyImageCompressionMethod = methods
    for keyword in STALE_KEYWORDS + PALETTE_KEYWORDS + ("ExtendedOffsetTable", "ExtendedOffsetTableLengths"):
        if keyword in ds:
            delattr(ds, keyword)
    for tag in [t for t in ds.keys() if 0x6000 <= t.group <= 0x601E and t.group % 2 == 0]:
        del ds[tag]  # overlay planes: sized for the old Rows x Columns

    frames, samples = like.raster.frames, like.raster.bands
    data = np.moveaxis(pixels.reshape(out_h, out_w, frames, samples), 2, 0)  # frames x H x W x samples
    data = data[..., 0] if samples == 1 else data
    data = data[0] if frames == 1 else data
    photometric = "RGB" if samples == 3 else str(src.PhotometricInterpretation).strip()
    low, high = like.raster.stored_range
    bits = int(high - low + 1).bit_length() - 1  # BitsStored, as decoded
    ds.PhotometricInterpretation = photometric  # set_pixel_data checks the dataset's own values too
    ds.file_meta = copy.deepcopy(src.file_meta) if getattr(src, "file_meta", None) is not None else FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if data.dtype.itemsize == 4:
        _set_32_bit_pixel_data(ds, np.ascontiguousarray(data), frames, samples, bits)
    else:
        pydicom.pixels.set_pixel_data(ds, np.ascontiguousarray(data), photometric, bits, generate_instance_uid=False)
    if "NumberOfFrames" in src:
        ds.NumberOfFrames = frames  # set_pixel_data drops it for one frame; multi-frame IODs require it
    target = output_syntax(syntax, source_syntax)
    if target is not None:
        try:
            ds.compress(target, generate_instance_uid=False)
        except Exception as error:
            name = pydicom.uid.UID(target).name
            raise ImageEncodeError(f"cannot encode the derived DICOM as {name}: {type(error).__name__}: "
                                   f"{one_line_text(str(error), 200)}; --dicom-syntax explicit writes it "
                                   "uncompressed") from error
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.MediaStorageSOPClassUID = src.SOPClassUID
    for _element in ds.iterall():  # parses every raw element (one read as implicit VR gets its VR here)
        pass
    # Memory, for large multi-frame outputs: a buffered value is written straight from its
    # buffer (which shares the bytes; pydicom otherwise copies an element into a buffer of its
    # own first), and a file read back is one allocation of its size, where a growing BytesIO
    # reallocates and copies as it grows.
    pixel_data = io.BytesIO(ds.PixelData) if target is None else None  # (compressed: smaller, as pydicom made it)
    if pixel_data is not None:
        ds["PixelData"].value = pixel_data
    with tempfile.TemporaryFile() as fh:
        pydicom.dcmwrite(fh, ds, enforce_file_format=True, little_endian=True, implicit_vr=False)
        if pixel_data is not None:
            pixel_data.close()  # frees the pixel bytes (the dataset's reference cycles would keep them)
        fh.seek(0)
        return fh.read()


def _set_32_bit_pixel_data(ds, data: np.ndarray, frames: int, samples: int, bits: int) -> None:
    """What set_pixel_data does for 8 and 16 bits (it refuses 32): the Image Pixel module's
    attributes from the array, native little-endian pixel data."""
    ds.Rows, ds.Columns = data.shape[1:3] if frames > 1 else data.shape[:2]
    ds.SamplesPerPixel = samples
    if samples > 1:
        ds.PlanarConfiguration = 0
    elif "PlanarConfiguration" in ds:
        del ds.PlanarConfiguration
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 32, bits, bits - 1
    ds.PixelRepresentation = int(data.dtype.kind == "i")
    ds.PixelData = data.astype(data.dtype.newbyteorder("<"), copy=False).tobytes()
    ds["PixelData"].VR = "OW"


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
