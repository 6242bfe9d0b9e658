"""NIfTI-1 and NIfTI-2 volumes (.nii, .nii.gz) through nibabel (optional extra: ``pip install 'pipeline[nifti]'``).

A volume is upscaled in one plane, slice by slice: every slice of every volume of a time
series (any axes beyond the three spatial ones) goes through the model as a gray image,
and the slice axis keeps its size and voxel size.

The plane (``--nifti-plane``):

- ``auto`` (default): research volumes are mostly anisotropic acquisitions, thick slices
  of fine pixels, and super-resolution belongs in the plane of the fine pixels; so the
  slice axis is the spatial axis with the largest voxel size (zooms). Isotropic voxels
  (the three within 1%), or a tie for the largest, are broken by orientation: the axial
  plane (the axis nibabel's ``aff2axcodes`` labels S or I is the slice axis) when it is
  among the candidates, else the first of them. A spatial axis of size 1 (a single slice)
  is always the slice axis. 2-D images are upscaled in their one plane.
- ``axial`` / ``coronal`` / ``sagittal``: the slice axis is the one whose orientation
  code is S/I, A/P or L/R in the image's affine (an affine without orientation: a
  failed row).

The decoded image (``DecodedImage.pixels``) is the slice stack: H x W x N, H and W the
two in-plane axes in the array's order, N every slice (slice axis, then time, ...,
C order), in the stored type (uint8, int8, int16, uint16, int32, uint32, float32,
float64; native byte order). The model sees the stored values through the scaling
(scl_slope, scl_inter) mapped to [0, 1] by ``--radiometric`` (raster.py), with one range
for the whole volume, so every slice is mapped the same way; the output is rounded and
clipped to the stored type and written with the same slope and intercept, so a viewer
shows it with the same values. NaN voxels of float volumes are nodata (raster.py).

The output keeps the kind (.nii stays .nii, .nii.gz stays .nii.gz, NIfTI-1 stays NIfTI-1,
NIfTI-2 stays NIfTI-2) and the header, with:

- the in-plane dims times the scale, their zooms (pixdim) divided by it;
- qform and sform (each with its own code; either may be unset) mapped through the same
  voxel-to-voxel map, so the field of view covers the same physical extent: a new voxel
  i' lies at old voxel i = (i' + 0.5) / s - 0.5, i.e. the corner of the field of view
  (voxel -0.5) stays where it was while voxel centres move by (1/s - 1) / 2 old voxels;
- slope, intercept, data type, byte order, units, intent, cal_min/cal_max and header
  extensions kept; descrip ends with a note of the upscale;
- slice timing (slice_code, slice_start, slice_end, slice_duration) reset, with a note,
  when the upscaled plane contains the header's slice dimension (it no longer matches).

Not supported (a failed row naming the cause): NIfTI pairs (.hdr/.img), CIFTI-2 (intent
codes 3000-3099: not an image volume), RGB, complex and 64-bit integer voxels.
"""

from __future__ import annotations

import gzip
import io
import json
import math
from dataclasses import dataclass, replace

import numpy as np

from pipeline.errors import one_line_text
from pipeline.formats.base import DecodedImage, ImageDecodeError, ImageEncodeError, ImageTooLargeError, optional_module
from pipeline.formats.dicom import ModalityLUT
from pipeline.formats.sniff import gunzip_head
from pipeline.raster import BandStats, RasterInfo, make_plan

FORMATS = ("nifti", "nifti-gz")  # .nii, .nii.gz
EXTENSIONS = {"nifti": ".nii", "nifti-gz": ".nii.gz"}
PLANES = ("auto", "axial", "coronal", "sagittal")
DTYPES = ("uint8", "int8", "int16", "uint16", "int32", "uint32", "float32", "float64")
_NORMAL_CODES = {"axial": "SI", "coronal": "AP", "sagittal": "LR"}
_DESCRIP_BYTES = 79  # the 80-byte field, NUL-terminated for C readers


class Scaling(ModalityLUT):
    """scl_slope / scl_inter: stored values <-> the values the volume means."""

    domain = "scaled"


@dataclass
class Volume:
    """What the encoder needs to write the upscaled stack back as the source's kind."""

    image_class: type  # nibabel.Nifti1Image or Nifti2Image
    header: object  # the source header (data type, byte order, codes, units, extensions)
    shape: tuple  # the stored array's shape
    axes: tuple[int, int]  # the in-plane axes: rows and columns of a slice
    plane: str  # "axial" | "coronal" | "sagittal" | "2-D" | "axes i, j" (no orientation)
    slope: float | None = None
    inter: float | None = None

    @property
    def version(self) -> int:
        return 2 if self.image_class.__name__ == "Nifti2Image" else 1


def decode(data: bytes, label: str, max_pixels: int | None, *, compressed: bool,
           plane: str = "auto") -> DecodedImage:
    """The slice stack (see the module doc) plus the source header, from a .nii or .nii.gz."""
    nib = optional_module("nibabel", "nifti", "NIfTI", label)
    if plane not in PLANES:
        raise ValueError(f"NIfTI plane must be one of {', '.join(PLANES)}, not {plane!r}")
    version = 2 if (gunzip_head(data) if compressed else data)[4:8] == b"n+2\x00" else 1
    image_class = nib.Nifti2Image if version == 2 else nib.Nifti1Image
    try:
        img = image_class.from_stream(gzip.GzipFile(fileobj=io.BytesIO(data)) if compressed else io.BytesIO(data))
        header = img.header
        shape = tuple(int(n) for n in header.get_data_shape())
        dtype = header.get_data_dtype()
        intent = int(header["intent_code"])
        affine = img.affine
    except Exception as error:
        raise ImageDecodeError(f"{label}: corrupt NIfTI-{version} header "
                               f"({type(error).__name__}: {one_line_text(str(error), 200)})") from error
    if 3000 <= intent < 3100:
        raise ImageDecodeError(f"{label}: CIFTI-2 file (NIfTI intent code {intent}): not an image volume")
    if dtype.fields is not None or dtype.name not in DTYPES:
        kind = "RGB" if dtype.fields is not None else dtype.name
        raise ImageDecodeError(f"{label}: NIfTI {kind} voxels are not supported ({', '.join(DTYPES)})")
    if len(shape) < 2 or min(shape) < 1:
        raise ImageDecodeError(f"{label}: NIfTI data of shape {shape}: no plane to upscale")
    zooms = [float(z) for z in header.get_zooms()]
    if not all(math.isfinite(z) for z in zooms):
        raise ImageDecodeError(f"{label}: corrupt NIfTI-{version} header (voxel sizes {zooms})")
    forms = {"qform": header.get_qform() if header["qform_code"] else None,
             "sform": header.get_sform() if header["sform_code"] else None, "affine": affine}
    broken = [name for name, form in forms.items() if form is not None and not np.isfinite(form).all()]
    if broken:  # caught here, not when the output is written after the model's work
        raise ImageDecodeError(f"{label}: corrupt NIfTI-{version} header (its {' and '.join(broken)} "
                               "is not finite)")
    voxels = math.prod(shape)
    if max_pixels is not None and voxels > max_pixels:
        raise ImageTooLargeError(f"{label}: {' x '.join(map(str, shape))} = {voxels:,} voxels is over the limit of "
                                 f"{max_pixels:,}; raise it with --max-pixels if the volume is expected")
    axes, plane_name = in_plane_axes(shape, zooms, affine, plane, label)
    notes = [f"NIfTI-{version} {' x '.join(map(str, shape))} {dtype.name}: {plane_name} plane "
             f"(axes {axes[0]}, {axes[1]}), {_count(voxels // (shape[axes[0]] * shape[axes[1]]), 'slice')}"]
    slice_dim = _timed_slice_dim(header, axes)
    if slice_dim is not None:
        notes.append(f"slice timing reset: the upscaled plane contains the slice dimension (axis {slice_dim})")
    try:
        stored = np.asanyarray(img.dataobj.get_unscaled())
    except Exception as error:
        expected = int(img.dataobj.offset) + voxels * dtype.itemsize
        truncated = isinstance(error, EOFError) or "Expected" in str(error)
        what = "truncated" if truncated else "corrupt"
        size = f"the header declares {expected:,} bytes" + ("" if compressed else f", the file has {len(data):,}")
        raise ImageDecodeError(f"{label}: {what} NIfTI voxel data ({size}; "
                               f"{type(error).__name__}: {one_line_text(str(error), 200)})") from error
    stored = stored.reshape(shape)
    slope, inter = (float(v) for v in (img.dataobj.slope, img.dataobj.inter))
    scaled = math.isfinite(slope) and slope != 0 and (slope, inter) != (1.0, 0.0)
    stack = np.moveaxis(stored, axes, (0, 1))
    h, w = stack.shape[:2]
    stack = np.ascontiguousarray(stack.reshape(h, w, -1), dtype=dtype.newbyteorder("="))
    volume = Volume(image_class, header, shape, axes, plane_name,
                    slope if scaled else None, inter if scaled else None)
    raster = RasterInfo(kind="nifti", bands=stack.shape[2], value_map=Scaling(slope, inter) if scaled else None)
    fmt = "nifti-gz" if compressed else "nifti"
    return DecodedImage(pixels=stack, format=fmt, mode=f"NIfTI-{version};{dtype.name}" + (";scaled" if scaled else ""),
                        info={"nifti": volume, "notes": notes}, raster=raster)


def in_plane_axes(shape: tuple, zooms, affine, plane: str, label: str = "NIfTI") -> tuple[tuple[int, int], str]:
    """(rows axis, columns axis) of the slices and the plane's name, by the rules of the module doc."""
    if len(shape) == 2:
        return (0, 1), "2-D"
    from nibabel.orientations import aff2axcodes

    codes = tuple(aff2axcodes(affine))
    zooms = [float(z) for z in zooms[:3]]
    if plane == "auto":
        flat = _flat_axis(shape)
        if flat is not None:
            candidates = [flat]
        else:
            largest = max(zooms)
            candidates = [k for k in range(3) if zooms[k] >= largest / 1.01]
            if min(zooms) >= largest / 1.01:
                candidates = [0, 1, 2]
        axial = [k for k in candidates if codes[k] and codes[k] in "SI"]
        normal = axial[0] if axial else candidates[0]
    else:
        matches = [k for k in range(3) if codes[k] and codes[k] in _NORMAL_CODES[plane]]
        if not matches:
            raise ImageDecodeError(f"{label}: cannot find the {plane} plane: the affine gives no orientation "
                                   f"(axis codes {codes}); use --nifti-plane auto")
        normal = matches[0]
    axes = tuple(k for k in range(3) if k != normal)
    name = next((p for p, letters in _NORMAL_CODES.items() if codes[normal] and codes[normal] in letters),
                f"axes {axes[0]}, {axes[1]}")
    return axes, name


def _flat_axis(shape: tuple) -> int | None:
    """The one spatial axis of size 1 (a single slice), if there is exactly one."""
    flat = [k for k in range(3) if shape[k] == 1]
    return flat[0] if len(flat) == 1 else None


def plan(decoded: DecodedImage, radiometric: str):
    """The volume's band plan: one gray band, one range over every slice (raster.py), applied
    to each slice in turn (stages/infer.py). The range is taken on the stored values and then
    scaled (the scaling is linear: the extremes map to the extremes), so the volume is never
    copied as float64."""
    info = replace(decoded.raster, bands=1)
    stats = BandStats(1).update(decoded.pixels.reshape(decoded.pixels.shape[0], -1))
    if info.value_map is not None and np.isfinite(stats.lo[0]):
        stats.lo[0], stats.hi[0] = sorted(info.value_map.forward(np.array([stats.lo[0], stats.hi[0]])))
    return make_plan(info, decoded.dtype, 1, stats, band_mode="each", radiometric=radiometric)


def voxel_map(axes: tuple[int, int], factors: tuple[float, float]) -> np.ndarray:
    """4 x 4: new voxel coordinates -> old ones; the corner of the field of view is kept."""
    m = np.eye(4)
    for axis, factor in zip(axes, factors):
        m[axis, axis] = 1.0 / factor
        m[axis, 3] = (1.0 / factor - 1.0) / 2.0
    return m


def encode(pixels: np.ndarray, like: DecodedImage, *, compressed: bool, compress_level: int = 1,
           description: str | None = None) -> bytes:
    """The upscaled stack as a volume of the source's kind (see the module doc)."""
    volume: Volume = like.info.get("nifti")
    if volume is None:
        raise ImageEncodeError("NIfTI output needs the source header (decode the input with decode_image)")
    in_h, in_w = like.pixels.shape[:2]
    out_h, out_w = pixels.shape[:2]
    factors = (out_h / in_h, out_w / in_w)
    rest = [n for k, n in enumerate(volume.shape) if k not in volume.axes]
    data = np.moveaxis(pixels.reshape(out_h, out_w, *rest), (0, 1), volume.axes)
    header = volume.header.copy()
    _update_grid(header, volume, factors)
    img = volume.image_class(data, None, header=header)
    header = img.header
    if volume.slope is not None:  # written as given: nibabel keeps a header's explicit scaling
        header.set_slope_inter(volume.slope, volume.inter)
    header["descrip"] = _descrip(header["descrip"], description or f"upscaled x{factors[1]:g} in-plane")
    out = img.to_bytes()
    return gzip.compress(out, compresslevel=compress_level, mtime=0) if compressed else out


def _update_grid(header, volume: Volume, factors: tuple[float, float]) -> None:
    """Zooms, qform and sform of the upscaled grid (codes kept); slice timing reset when the
    plane holds the slice dimension (decode noted it)."""
    m = voxel_map(volume.axes, factors)
    qcode, scode = int(header["qform_code"]), int(header["sform_code"])
    zooms = list(header.get_zooms())
    for axis, factor in zip(volume.axes, factors):
        zooms[axis] = zooms[axis] / factor
    if qcode:
        header.set_qform(header.get_qform() @ m, code=qcode)
    if scode:
        header.set_sform(header.get_sform() @ m, code=scode)
    header.set_zooms(zooms)
    if _timed_slice_dim(header, volume.axes) is not None:
        for field in ("slice_code", "slice_start", "slice_end", "slice_duration"):
            header[field] = 0


def _count(n: int, what: str) -> str:
    return f"{n} {what}" if n == 1 else f"{n} {what}s"


def _timed_slice_dim(header, axes: tuple[int, int]) -> int | None:
    """The header's slice dimension when it has slice timing and lies in the upscaled plane."""
    slice_dim = header.get_dim_info()[2]
    if slice_dim in axes and (header["slice_end"] or header["slice_code"]):
        return slice_dim
    return None


def _descrip(current, note: str) -> bytes:
    """The source's descrip (up to its first NUL, where C readers stop) with the note
    appended, the note kept whole within the field."""
    text = bytes(np.asarray(current).item() or b"").split(b"\x00")[0].decode("ascii", "replace").rstrip()
    note = note.encode("ascii", "replace")[:_DESCRIP_BYTES].decode()
    room = _DESCRIP_BYTES - len(note) - 2
    text = f"{text[:room]}; {note}" if text and room > 0 else note
    return text.encode("ascii", "replace")


def describe(like: DecodedImage, out_shape: tuple) -> dict:
    """Manifest columns of a volume: shapes, plane, affines (the best one, as nibabel picks it)
    and zooms, in and out."""
    volume: Volume = like.info["nifti"]
    in_h, in_w = like.pixels.shape[:2]
    factors = (out_shape[0] / in_h, out_shape[1] / in_w)
    shape_out = list(volume.shape)
    shape_out[volume.axes[0]], shape_out[volume.axes[1]] = out_shape[0], out_shape[1]
    header = volume.header.copy()
    affine_in = header.get_best_affine()
    zooms_in = [float(z) for z in header.get_zooms()]
    _update_grid(header, volume, factors)
    header.set_data_shape(shape_out)
    return {
        "bands": json.dumps({"kind": f"NIfTI-{volume.version}", "shape_in": list(volume.shape), "shape_out": shape_out,
                             "plane": volume.plane, "in_plane_axes": list(volume.axes),
                             "slices": like.pixels.shape[2]}),
        "transform_in": json.dumps(np.round(affine_in, 6).tolist()),
        "transform_out": json.dumps(np.round(header.get_best_affine(), 6).tolist()),
        "pixel_spacing_in": json.dumps(zooms_in),
        "pixel_spacing_out": json.dumps([float(z) for z in header.get_zooms()]),
    }
