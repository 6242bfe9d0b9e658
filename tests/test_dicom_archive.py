"""DICOM as hospitals store it: Enhanced multi-frame CT (functional groups, frames in groups),
compressed transfer syntaxes, YBR and palette colour, MONOCHROME1, files without the
preamble. Built with pydicom here, or pydicom's bundled test files."""

import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless, generate_uid  # noqa: E402

from pipeline.inference.engine import Upscaler  # noqa: E402
from pipeline.models import load_model  # noqa: E402
from pipeline.stages import infer  # noqa: E402
from tests.test_dicom import bundled, run  # noqa: E402

ANGLE = np.deg2rad(20)
IOP = [np.cos(ANGLE), np.sin(ANGLE), 0.0, -np.sin(ANGLE), np.cos(ANGLE), 0.0]  # an oblique plane
SPACING = [0.8, 0.6]  # row, column
PADDING = -2000


def bicubic(planes: np.ndarray) -> np.ndarray:
    """The engine's bicubic x2 of stored values, as float: what a linear rescale gives back."""
    engine = Upscaler(load_model("bicubic", scale=2), device="cpu")
    return engine.upscale([np.ascontiguousarray(planes, dtype=np.float32)], 2)[0]


def enhanced_ct(frames: int = 5, rows: int = 64, cols: int = 48) -> tuple[Dataset, np.ndarray]:
    """An Enhanced CT instance: rescale, spacing and an oblique orientation in the shared functional
    groups, one position per frame, 12-bit signed values distinct per frame, padding in frame 1."""
    y, x = np.mgrid[0:rows, 0:cols]
    stack = np.stack([(300 * np.sin(x / 3 + k) + 200 * np.cos(y / 4) + 100 * k).astype(np.int16)
                      for k in range(frames)])
    stack[1, :, :6] = PADDING
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.EnhancedCTImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientName, ds.PatientID = "CT", "Enhanced^Secret", "ENH-4711"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.PixelPaddingValue = PADDING
    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing, measures.SliceThickness = SPACING, 1.5
    orientation = Dataset()
    orientation.ImageOrientationPatient = IOP
    transform = Dataset()
    transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = 1, -1024, "HU"
    frame_type = Dataset()
    frame_type.FrameType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    shared.PixelMeasuresSequence, shared.PlaneOrientationSequence = [measures], [orientation]
    shared.PixelValueTransformationSequence, shared.CTImageFrameTypeSequence = [transform], [frame_type]
    ds.SharedFunctionalGroupsSequence = [shared]
    per_frame = []
    for k in range(frames):
        group, position = Dataset(), Dataset()
        position.ImagePositionPatient = [-100.0, -80.0 + k, 1.5 * k]
        group.PlanePositionSequence = [position]
        per_frame.append(group)
    ds.PerFrameFunctionalGroupsSequence = per_frame
    ds.set_pixel_data(stack, "MONOCHROME2", 12, generate_instance_uid=False)
    return ds, stack


@pytest.fixture(scope="module")
def enhanced_run(tmp_path_factory):
    """The Enhanced CT uncompressed, RLE and JPEG 2000 lossless, x2; and uncompressed again with
    one frame per engine call."""
    root = tmp_path_factory.mktemp("enhanced")
    ds, stack = enhanced_ct()
    (root / "src").mkdir()
    ds.save_as(root / "src" / "native.dcm", enforce_file_format=True)
    for name, syntax in (("rle.dcm", RLELossless), ("j2k.dcm", JPEG2000Lossless)):
        compressed = pydicom.dcmread(root / "src" / "native.dcm")
        compressed.compress(syntax, generate_instance_uid=False)
        compressed.save_as(root / "src" / name, enforce_file_format=True)
    summary, rows = run(root / "src", root / "dst")
    assert summary["ok"] == 3, summary["failures"]
    return root, ds, stack, rows


def test_every_frame_of_an_enhanced_ct_is_upscaled_in_its_place(enhanced_run):
    root, _ds, stack, rows = enhanced_run
    out = pydicom.dcmread(root / "dst" / "native.dcm")
    assert out.NumberOfFrames == 5 and (out.Rows, out.Columns) == (128, 96)
    assert (out.BitsStored, out.PixelRepresentation) == (12, 1)
    sr = out.pixel_array
    assert sr.shape == (5, 128, 96) and sr.dtype == np.int16
    for k in (0, 2, 3, 4):  # a linear rescale: bicubic of the stored values, up to rounding
        assert np.abs(sr[k] - bicubic(stack[k][..., None])[..., 0]).max() <= 1.0, k
    assert rows["native.dcm"]["channels"] == 1 and json.loads(rows["native.dcm"]["bands"])["frames"] == 5
    assert rows["native.dcm"]["lr_psnr"] > 30


def test_padding_of_one_frame_stays_padding_and_does_not_bleed(enhanced_run):
    root, _ds, stack, _rows = enhanced_run
    sr = pydicom.dcmread(root / "dst" / "native.dcm").pixel_array
    assert (sr[1][:, :12] == PADDING).all()
    assert sr[1][:, 12:].min() >= stack[1][:, 6:].min() - 50  # no dip toward the padding value at the edge
    assert not (sr[2] == PADDING).any()  # the mask is the frame's own


def test_functional_groups_keep_frame_origins_on_the_new_first_pixel_centre(enhanced_run):
    root, ds, _stack, _rows = enhanced_run
    out = pydicom.dcmread(root / "dst" / "native.dcm")
    (shared,) = out.SharedFunctionalGroupsSequence
    assert [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing] == pytest.approx([0.4, 0.3])
    assert float(shared.PixelMeasuresSequence[0].SliceThickness) == 1.5
    assert list(shared.CTImageFrameTypeSequence[0].FrameType)[:2] == ["DERIVED", "SECONDARY"]
    # the first pixel's centre moves by half a new pixel minus half an old one along the row and
    # column directions of the (oblique) plane: the image still covers the same area
    shift = np.array(IOP[:3]) * (0.3 - 0.6) / 2 + np.array(IOP[3:]) * (0.4 - 0.8) / 2
    for k, (before, after) in enumerate(zip(ds.PerFrameFunctionalGroupsSequence, out.PerFrameFunctionalGroupsSequence)):
        old = np.array([float(v) for v in before.PlanePositionSequence[0].ImagePositionPatient])
        new = np.array([float(v) for v in after.PlanePositionSequence[0].ImagePositionPatient])
        np.testing.assert_allclose(new, old + shift, atol=1e-5, err_msg=f"frame {k}")
    assert list(out.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert out.SourceImageSequence[0].ReferencedSOPInstanceUID == ds.SOPInstanceUID
    assert out.SourceImageSequence[0].PurposeOfReferenceCodeSequence[0].CodeValue == "121322"


def test_compressed_multi_frame_gives_the_same_output_as_uncompressed(enhanced_run):
    root, _ds, _stack, rows = enhanced_run
    native = pydicom.dcmread(root / "dst" / "native.dcm")
    for name in ("rle.dcm", "j2k.dcm"):
        out = pydicom.dcmread(root / "dst" / name)
        assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        np.testing.assert_array_equal(out.pixel_array, native.pixel_array)
        assert rows[name]["lr_psnr"] == pytest.approx(rows["native.dcm"]["lr_psnr"])


def test_frames_in_groups_of_one_give_the_same_bytes_as_one_group(enhanced_run, tmp_path, monkeypatch):
    root, _ds, _stack, _rows = enhanced_run
    monkeypatch.setattr(infer, "FRAME_GROUP_VALUES", 1)  # one frame per engine call
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "native.dcm").write_bytes((root / "src" / "native.dcm").read_bytes())
    summary, _ = run(tmp_path / "src", tmp_path / "dst")
    assert summary["ok"] == 1, summary["failures"]
    one_by_one = pydicom.dcmread(tmp_path / "dst" / "native.dcm").pixel_array
    np.testing.assert_array_equal(one_by_one, pydicom.dcmread(root / "dst" / "native.dcm").pixel_array)


def test_enhanced_ct_patient_data_stays_out_of_the_manifest(enhanced_run):
    root, _ds, _stack, rows = enhanced_run
    texts = [json.dumps(r, default=str) for r in rows.values()]
    texts += [p.read_text() for p in (root / "dst" / "_manifest" / "_runs").glob("*.json")]
    for text in texts:
        assert "Enhanced^Secret" not in text and "ENH-4711" not in text


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless])
def test_a_ct_compressed_here_is_decoded_to_the_same_output(tmp_path, syntax):
    ds = pydicom.dcmread(bundled("CT_small.dcm"))
    ds.compress(syntax, generate_instance_uid=False)
    (tmp_path / "src").mkdir()
    ds.save_as(tmp_path / "src" / "compressed.dcm")
    (tmp_path / "src" / "native.dcm").write_bytes(bundled("CT_small.dcm").read_bytes())
    summary, _ = run(tmp_path / "src", tmp_path / "dst")
    assert summary["ok"] == 2, summary["failures"]
    compressed = pydicom.dcmread(tmp_path / "dst" / "compressed.dcm")
    assert compressed.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    np.testing.assert_array_equal(compressed.pixel_array, pydicom.dcmread(tmp_path / "dst" / "native.dcm").pixel_array)


@pytest.fixture(scope="module")
def colour_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("colour")
    (root / "src").mkdir()
    for name in ("SC_ybr_full_422_uncompressed.dcm", "SC_rgb_jpeg_dcmtk.dcm", "examples_palette.dcm",
                 "dicomdirtests/77654033/CR1/6154"):
        (root / "src" / (name.rsplit("/", 1)[-1].replace(".dcm", "") + ".dcm")).write_bytes(bundled(name).read_bytes())
    summary, rows = run(root / "src", root / "dst")
    assert summary["ok"] == 4, summary["failures"]
    return root, rows


def test_ybr_full_422_goes_to_the_model_as_rgb_and_is_written_as_rgb(colour_run):
    root, rows = colour_run
    source = pydicom.dcmread(bundled("SC_ybr_full_422_uncompressed.dcm"))
    assert source.PhotometricInterpretation == "YBR_FULL_422"
    ybr = pydicom.pixels.pixel_array(source, raw=True)  # YBR, chroma upsampled
    rgb = pydicom.pixels.convert_color_space(ybr, "YBR_FULL", "RGB")
    out = pydicom.dcmread(root / "dst" / "SC_ybr_full_422_uncompressed.dcm")
    assert (out.PhotometricInterpretation, out.SamplesPerPixel, out.PlanarConfiguration) == ("RGB", 3, 0)
    assert (out.BitsAllocated, out.BitsStored) == (8, 8)
    expected = np.clip(np.rint(bicubic(rgb)), 0, 255)
    assert np.abs(out.pixel_array.astype(np.float64) - expected).max() <= 1
    assert "YBR_FULL_422 converted to RGB" in rows["SC_ybr_full_422_uncompressed.dcm"]["metrics_note"]


def test_a_lossy_jpeg_source_marks_its_derived_image_lossy(colour_run):
    root, _rows = colour_run
    source = pydicom.dcmread(bundled("SC_rgb_jpeg_dcmtk.dcm"))
    assert source.file_meta.TransferSyntaxUID == pydicom.uid.JPEGBaseline8Bit
    out = pydicom.dcmread(root / "dst" / "SC_rgb_jpeg_dcmtk.dcm")
    assert out.PhotometricInterpretation == "RGB"
    assert out.LossyImageCompression == "01" and "ISO_10918_1" in list(
        out.LossyImageCompressionMethod if out["LossyImageCompressionMethod"].VM > 1 else
        [out.LossyImageCompressionMethod])
    np.testing.assert_array_equal(out.pixel_array.shape, (200, 200, 3))


def test_palette_colour_goes_through_its_lookup_table_to_rgb(colour_run):
    root, _rows = colour_run
    source = pydicom.dcmread(bundled("examples_palette.dcm"))
    rgb = pydicom.pixels.apply_color_lut(source.pixel_array, source)
    out = pydicom.dcmread(root / "dst" / "examples_palette.dcm")
    assert (out.PhotometricInterpretation, out.SamplesPerPixel) == ("RGB", 3)
    assert out.BitsAllocated == rgb.dtype.itemsize * 8 and out.PixelRepresentation == 0
    assert "RedPaletteColorLookupTableDescriptor" not in out and "RedPaletteColorLookupTableData" not in out
    sr = out.pixel_array
    assert sr.dtype == rgb.dtype and sr.shape == (700, 1600, 3)
    # the model saw the LUT's colours, mapped by their min..max: bicubic of them, up to rounding
    assert np.abs(sr.astype(np.float64) - np.clip(np.rint(bicubic(rgb)), 0, 65535)).max() <= 1


def test_ultrasound_regions_are_moved_into_the_new_pixel_grid(colour_run):
    root, _rows = colour_run
    regions = pydicom.dcmread(bundled("examples_palette.dcm")).SequenceOfUltrasoundRegions
    moved = pydicom.dcmread(root / "dst" / "examples_palette.dcm").SequenceOfUltrasoundRegions
    assert len(regions) == len(moved) >= 1
    for before, after in zip(regions, moved):
        _check_region(before, after)


def _check_region(before, after):
    assert after.RegionLocationMinX0 == 2 * before.RegionLocationMinX0
    assert after.RegionLocationMinY0 == 2 * before.RegionLocationMinY0
    assert after.RegionLocationMaxX1 == 2 * before.RegionLocationMaxX1 + 1
    assert after.RegionLocationMaxY1 == 2 * before.RegionLocationMaxY1 + 1
    assert after.PhysicalDeltaX == pytest.approx(before.PhysicalDeltaX / 2)
    assert after.PhysicalDeltaY == pytest.approx(before.PhysicalDeltaY / 2)


def test_monochrome1_stays_monochrome1_with_its_stored_values(colour_run):
    root, _rows = colour_run
    source = pydicom.dcmread(bundled("dicomdirtests/77654033/CR1/6154"))
    assert source.PhotometricInterpretation == "MONOCHROME1"
    out = pydicom.dcmread(root / "dst" / "6154.dcm")
    assert out.PhotometricInterpretation == "MONOCHROME1" and out.pixel_array.dtype == np.uint16
    expected = bicubic(source.pixel_array[..., None])[..., 0]  # not inverted
    assert np.abs(out.pixel_array - np.clip(np.rint(expected), 0, 2**source.BitsStored - 1)).max() <= 1


def _without_meta(ds: Dataset) -> bytes:
    """The data set alone, implicit VR little endian: no preamble, no "DICM", no file meta."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, True
    plain = Dataset()
    plain.update(ds)
    write_dataset(buffer, plain)
    return buffer.getvalue()


def test_files_without_the_preamble_are_read_and_said_so(tmp_path):
    part10 = bundled("CT_small.dcm").read_bytes()
    assert part10[128:132] == b"DICM"
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "ct.dcm").write_bytes(part10)
    (tmp_path / "src" / "no_preamble.dcm").write_bytes(part10[132:])  # starts with the file meta group
    (tmp_path / "src" / "no_meta.dcm").write_bytes(_without_meta(pydicom.dcmread(bundled("CT_small.dcm"))))
    (tmp_path / "src" / "fake.dcm").write_bytes(b"\x08\x00\x05\x00XY" + bytes(range(200)))  # no DICOM VR
    summary, rows = run(tmp_path / "src", tmp_path / "dst")
    assert summary["ok"] == 3, summary["failures"]
    reference = pydicom.dcmread(tmp_path / "dst" / "ct.dcm").pixel_array
    for name in ("no_preamble.dcm", "no_meta.dcm"):
        assert "without the 128-byte preamble" in rows[name]["metrics_note"], name
        np.testing.assert_array_equal(pydicom.dcmread(tmp_path / "dst" / name).pixel_array, reference)
    assert "read as Implicit VR Little Endian" in rows["no_meta.dcm"]["metrics_note"]
    assert rows["ct.dcm"]["metrics_note"] is None or "preamble" not in rows["ct.dcm"]["metrics_note"]
    assert rows["fake.dcm"]["status"] == "failed" and "not a supported image" in rows["fake.dcm"]["error"]


def test_multi_frame_over_the_pixel_limit_is_refused_from_its_frame_count(tmp_path):
    ds, _stack = enhanced_ct(frames=5, rows=24, cols=20)
    (tmp_path / "src").mkdir()
    ds.save_as(tmp_path / "src" / "ct.dcm", enforce_file_format=True)
    summary, rows = run(tmp_path / "src", tmp_path / "dst", max_pixels=24 * 20 * 4)
    assert summary["failed"] == 1
    assert rows["ct.dcm"]["error_type"] == "ImageTooLargeError" and "5 frames of 20 x 24" in rows["ct.dcm"]["error"]


@pytest.mark.parametrize("choice, expected", [("rle", {"ct.dcm": RLELossless, "mr_rle.dcm": RLELossless}),
                                               ("keep", {"ct.dcm": ExplicitVRLittleEndian, "mr_rle.dcm": RLELossless})])
def test_dicom_syntax_re_encodes_losslessly(tmp_path, choice, expected):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "ct.dcm").write_bytes(bundled("CT_small.dcm").read_bytes())
    (tmp_path / "src" / "mr_rle.dcm").write_bytes(bundled("MR_small_RLE.dcm").read_bytes())
    _summary, plain = run(tmp_path / "src", tmp_path / "plain")
    summary, rows = run(tmp_path / "src", tmp_path / "dst", dicom_syntax=choice)
    assert summary["ok"] == 2, summary["failures"]
    for name, syntax in expected.items():
        out = pydicom.dcmread(tmp_path / "dst" / name)
        assert out.file_meta.TransferSyntaxUID == syntax, name
        np.testing.assert_array_equal(out.pixel_array, pydicom.dcmread(tmp_path / "plain" / name).pixel_array)
        assert rows[name]["config_key"] != plain[name]["config_key"]  # another output: not taken as done


def test_the_default_dicom_syntax_leaves_the_resume_key_as_it_was():
    from pipeline.spec import RunSpec

    engine = {"tile": 0, "overlap": 0, "precision": "fp32"}
    model = load_model("bicubic", scale=2)
    assert "dicom_syntax" not in RunSpec(src="a", dst="b", model="bicubic").resolved(model, engine)
    assert RunSpec(src="a", dst="b", model="bicubic", dicom_syntax="rle").resolved(model, engine)["dicom_syntax"] == "rle"
    with pytest.raises(ValueError, match="DICOM syntax must be one of explicit, keep, rle"):
        RunSpec(src="a", dst="b", model="bicubic", dicom_syntax="jpeg2000")


def test_32_bit_samples_at_the_top_of_their_range_stay_there(tmp_path):
    ds = pydicom.dcmread(bundled("SC_rgb_rle_32bit.dcm"))
    pixels = ds.pixel_array.copy()
    pixels[20:40, 20:40] = 2**32 - 1  # float32 rounds this up to 2**32, which would wrap to 0
    ds.PixelData = pixels.astype("<u4").tobytes()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    (tmp_path / "src").mkdir()
    ds.save_as(tmp_path / "src" / "rgb32.dcm")
    summary, rows = run(tmp_path / "src", tmp_path / "dst")
    assert summary["ok"] == 1, summary["failures"]
    out = pydicom.dcmread(tmp_path / "dst" / "rgb32.dcm")
    assert (out.BitsAllocated, out.BitsStored, out.SamplesPerPixel) == (32, 32, 3)
    sr = out.pixel_array
    assert sr.dtype == np.uint32 and sr.shape == (200, 200, 3)
    assert (sr[44:76, 44:76] == 2**32 - 1).all()
    expected = np.clip(np.rint(bicubic(pixels.astype(np.float64))), 0, 2**32 - 1)
    assert np.abs(sr.astype(np.float64) - expected).max() <= 2**32 * 2**-23  # float32 model precision
    assert "32-bit samples" in rows["rgb32.dcm"]["metrics_note"]
