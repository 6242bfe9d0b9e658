"""DICOM through the run: a derived instance in a new series, stored bit depth kept, modality LUT
for inference, UIDs and spacings in the manifest and nothing about the patient. pydicom's
bundled test files."""

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

pydicom = pytest.importorskip("pydicom")

from pipeline import metrics  # noqa: E402
from pipeline.inference.engine import Upscaler  # noqa: E402
from pipeline.formats import decode_image  # noqa: E402
from pipeline.models import load_model  # noqa: E402
from pipeline.job.local import run_local  # noqa: E402
from pipeline.spec import RunSpec  # noqa: E402

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"  # bundled: never downloaded


def bundled(name: str) -> Path:
    return TEST_FILES / name


def run(src: Path, dst: Path, **options) -> tuple[dict, dict]:
    summary = run_local(RunSpec(src=str(src), dst=str(dst), model="bicubic", **{"scale": 2.0, **options}))
    rows = {r["image_id"]: r for r in pq.read_table(dst / "_manifest").to_pylist()}
    return summary, rows


@pytest.fixture(scope="module")
def ct_run(tmp_path_factory):
    """CT_small.dcm plus a second slice of its series (new SOPInstanceUID) and MR_small.dcm, x2."""
    root = tmp_path_factory.mktemp("dicom")
    src = root / "src"
    (src / "ct").mkdir(parents=True)
    (src / "ct" / "slice1.dcm").write_bytes(bundled("CT_small.dcm").read_bytes())
    second = pydicom.dcmread(bundled("CT_small.dcm"))
    second.SOPInstanceUID = second.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    second.ImagerPixelSpacing = [0.5, 0.4]
    second.save_as(src / "ct" / "slice2.dcm")
    (src / "MR_small.dcm").write_bytes(bundled("MR_small.dcm").read_bytes())
    summary, rows = run(src, root / "dst")
    assert summary["failed"] == 0, summary["failures"]
    return root, rows


def test_ct_output_is_a_derived_instance_at_twice_the_size_and_half_the_spacing(ct_run):
    root, _rows = ct_run
    source = pydicom.dcmread(bundled("CT_small.dcm"))
    out = pydicom.dcmread(root / "dst" / "ct" / "slice1.dcm")
    assert (out.Rows, out.Columns) == (256, 256)
    assert [float(v) for v in out.PixelSpacing] == pytest.approx([0.661468 / 2] * 2)
    assert list(out.ImageType) == ["DERIVED", "SECONDARY", "AXIAL"]
    assert out.SOPInstanceUID != source.SOPInstanceUID and out.SeriesInstanceUID != source.SeriesInstanceUID
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    assert out.StudyInstanceUID == source.StudyInstanceUID  # same study, new series
    assert out.SOPClassUID == source.SOPClassUID
    (ref,) = out.SourceImageSequence
    assert ref.ReferencedSOPClassUID == source.SOPClassUID
    assert ref.ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert "x2" in out.DerivationDescription and "bicubic" in out.DerivationDescription
    # the top-left pixel centre moves by half an old pixel minus half a new one along both axes
    shift = (0.661468 / 2 - 0.661468) / 2
    np.testing.assert_allclose([float(v) for v in out.ImagePositionPatient],
                               [float(source.ImagePositionPatient[0]) + shift,
                                float(source.ImagePositionPatient[1]) + shift,
                                float(source.ImagePositionPatient[2])], atol=1e-5)


def test_stored_bit_depth_signedness_and_rescale_are_kept(ct_run):
    root, rows = ct_run
    source = pydicom.dcmread(bundled("CT_small.dcm"))
    out = pydicom.dcmread(root / "dst" / "ct" / "slice1.dcm")
    for keyword in ("BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "RescaleSlope",
                    "RescaleIntercept", "PhotometricInterpretation"):
        assert out[keyword].value == source[keyword].value, keyword
    assert out.pixel_array.dtype == np.int16
    # the model saw Hounsfield units (modality LUT applied), scaled by their min and max
    recorded = json.loads(rows["ct/slice1.dcm"]["radiometric"])
    stored = source.pixel_array
    assert recorded["domain"] == "modality"
    assert recorded["ranges"] == [[float(stored.min()) - 1024, float(stored.max()) - 1024]]
    # the rescale is linear, so the output equals bicubic of the stored values up to rounding
    direct = Upscaler(load_model("bicubic", scale=2), device="cpu").upscale([stored.astype(np.float32)], 2)[0]
    assert np.abs(out.pixel_array.astype(np.float64) - direct[..., 0]).max() <= 1.0


def test_imager_pixel_spacing_is_divided_too_and_one_series_stays_one_series(ct_run):
    root, rows = ct_run
    one = pydicom.dcmread(root / "dst" / "ct" / "slice1.dcm")
    two = pydicom.dcmread(root / "dst" / "ct" / "slice2.dcm")
    assert [float(v) for v in two.ImagerPixelSpacing] == pytest.approx([0.25, 0.2])
    assert one.SeriesInstanceUID == two.SeriesInstanceUID  # two slices of one series: one derived series
    assert one.SOPInstanceUID != two.SOPInstanceUID
    mr = pydicom.dcmread(root / "dst" / "MR_small.dcm")
    assert mr.SeriesInstanceUID != one.SeriesInstanceUID
    assert rows["ct/slice2.dcm"]["dicom_series_uid_out"] == str(two.SeriesInstanceUID)


def test_manifest_records_uids_and_spacings_and_nothing_about_the_patient(ct_run):
    root, rows = ct_run
    source = pydicom.dcmread(bundled("CT_small.dcm"))
    row = rows["ct/slice1.dcm"]
    out = pydicom.dcmread(root / "dst" / "ct" / "slice1.dcm")
    assert row["dicom_sop_uid_in"] == source.SOPInstanceUID and row["dicom_sop_uid_out"] == out.SOPInstanceUID
    assert row["dicom_series_uid_in"] == source.SeriesInstanceUID
    assert row["dicom_series_uid_out"] == out.SeriesInstanceUID
    assert json.loads(row["pixel_spacing_in"]) == pytest.approx([0.661468, 0.661468])
    assert json.loads(row["pixel_spacing_out"]) == pytest.approx([0.330734, 0.330734])
    assert row["src_format"] == "dicom" and row["out_format"] == "dicom" and row["dtype"] == "int16"
    assert row["src_mode"] == "MONOCHROME2;16S"
    secrets = [str(source.PatientName), str(source.PatientID), str(source.PatientAge)]
    secrets += [str(item.PatientID) for item in source.OtherPatientIDsSequence]
    assert secrets == ["CompressedSamples^CT1", "1CT1", "000Y", "ABCD1234", "1234ABCD"]
    texts = [json.dumps(r, default=str) for r in rows.values()]
    texts += [p.read_text() for p in (root / "dst" / "_manifest" / "_runs").glob("*.json")]
    for text in texts:
        for secret in secrets:
            assert secret not in text


def test_dicom_without_pixel_data_is_a_clear_failed_row(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "plan.dcm").write_bytes(bundled("rtplan.dcm").read_bytes())
    summary, rows = run(tmp_path / "src", tmp_path / "dst")
    assert summary["failed"] == 1
    row = rows["plan.dcm"]
    assert row["status"] == "failed" and row["error_type"] == "ImageDecodeError"
    assert "DICOM without pixel data (RT Plan Storage)" in row["error"]


def test_another_output_format_for_dicom_is_refused(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "ct.dcm").write_bytes(bundled("CT_small.dcm").read_bytes())
    summary, rows = run(tmp_path / "src", tmp_path / "dst", format="png")
    assert summary["failed"] == 1
    assert "written as a derived DICOM instance" in rows["ct.dcm"]["error"]


def test_12_bit_unsigned_stays_in_its_12_bits_and_lr_psnr_uses_that_peak(tmp_path):
    ds = pydicom.dcmread(bundled("MR_small.dcm"))
    pixels = np.clip(ds.pixel_array.astype(np.int32) * 2, 0, 4095).astype(np.uint16)
    pixels[20:28, 20:28] = 4095  # bright block: bicubic overshoots, the output must clip at 4095
    ds.PixelRepresentation, ds.BitsStored, ds.HighBit = 0, 12, 11
    ds.PixelData = pixels.tobytes()
    (tmp_path / "src").mkdir()
    ds.save_as(tmp_path / "src" / "mr12.dcm")
    summary, rows = run(tmp_path / "src", tmp_path / "dst")
    assert summary["ok"] == 1, summary["failures"]
    out = pydicom.dcmread(tmp_path / "dst" / "mr12.dcm")
    assert out.BitsStored == 12 and out.PixelRepresentation == 0
    sr = out.pixel_array
    assert sr.dtype == np.uint16 and sr.max() == 4095
    assert rows["mr12.dcm"]["lr_psnr"] == pytest.approx(metrics.lr_psnr(sr, pixels, data_range=4095), abs=1e-9)


def test_pixel_padding_is_nodata_that_stays_padding_and_does_not_bleed(tmp_path):
    ds = pydicom.dcmread(bundled("CT_small.dcm"))
    pixels = ds.pixel_array.copy()
    pixels[:, :32] = -2000  # PixelPaddingValue of this file: outside the field of view
    ds.PixelData = pixels.tobytes()
    (tmp_path / "src").mkdir()
    ds.save_as(tmp_path / "src" / "padded.dcm")
    summary, rows = run(tmp_path / "src", tmp_path / "dst")
    assert summary["ok"] == 1, summary["failures"]
    sr = pydicom.dcmread(tmp_path / "dst" / "padded.dcm").pixel_array
    assert (sr[:, :64] == -2000).all()
    assert sr[:, 64:].min() >= pixels[:, 32:].min() - 50  # no dip toward -2000 at the edge
    assert rows["padded.dcm"]["nodata"] == "-2000"


@pytest.mark.parametrize("name", ["MR_small_implicit.dcm", "MR_small_bigendian.dcm", "MR_small_RLE.dcm"])
def test_other_transfer_syntaxes_are_read_and_written_uncompressed_little_endian(name):
    decoded = decode_image(bundled(name).read_bytes(), name=name)
    reference = decode_image(bundled("MR_small.dcm").read_bytes())
    np.testing.assert_array_equal(decoded.pixels, reference.pixels)
    from pipeline.formats import encode_image

    out = pydicom.dcmread(__import__("io").BytesIO(encode_image(decoded.pixels, decoded)))
    assert out.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    np.testing.assert_array_equal(out.pixel_array, reference.pixels[..., 0])
