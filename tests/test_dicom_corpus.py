"""Every file of pydicom's bundled test data through a run (bicubic x2): each one pydicom
decodes is upscaled with its geometry right or refused with a reason naming what is not
supported; every other file is a failed row with a one-line message, never a Python
built-in exception. Read from pydicom's data folder (nothing is downloaded)."""

import builtins
import functools
import shutil
import warnings
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

pydicom = pytest.importorskip("pydicom")
from pipeline.job.local import run_local  # noqa: E402
from pipeline.spec import RunSpec  # noqa: E402

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
FILES = sorted(str(p.relative_to(TEST_FILES)) for p in TEST_FILES.rglob("*") if p.is_file())
# Reached on 2026-12-02 with pydicom 3.0.2 and the pylibjpeg plugins: 87 of the 89 files pydicom
# decodes (the 2 others, 1-bit segmentations, are refused).
MIN_UPSCALED = 87


def source_name(name: str) -> str:
    return name.replace("/", "__") + ".dcm"  # flat, and every file listed (extensionless ones too)


@functools.lru_cache(maxsize=None)
def read_source(name: str):
    """The file as pydicom reads it, and its pixels when pydicom decodes them (else None)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(TEST_FILES / name, force=True)
        except Exception:
            return None, None
        try:
            return ds, ds.pixel_array
        except Exception:
            return ds, None


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    src = root / "src"
    src.mkdir()
    for name in FILES:
        shutil.copyfile(TEST_FILES / name, src / source_name(name))
    summary = run_local(RunSpec(src=str(src), dst=str(root / "dst"), model="bicubic", scale=2.0))
    rows = {r["image_id"]: r for r in pq.read_table(root / "dst" / "_manifest").to_pylist()}
    return root, summary, rows


def test_every_bundled_file_has_one_row_and_none_fails_with_a_builtin_exception(corpus):
    _root, summary, rows = corpus
    assert sorted(rows) == sorted(source_name(n) for n in FILES)
    assert summary["ok"] + summary["failed"] == len(FILES)
    for key, row in rows.items():
        assert row["status"] in ("ok", "failed"), key
        if row["status"] == "failed":
            assert row["error"] and "\n" not in row["error"], key
            assert not hasattr(builtins, row["error_type"]), (key, row["error_type"], row["error"])


def test_the_count_upscaled_does_not_drop(corpus):
    _root, summary, rows = corpus
    decodable = [n for n in FILES if read_source(n)[1] is not None]
    upscaled = [n for n in FILES if rows[source_name(n)]["status"] == "ok"]
    refused = [n for n in decodable if rows[source_name(n)]["status"] == "failed"]
    print(f"\npydicom test files: {len(FILES)}; pydicom decodes {len(decodable)}; upscaled {len(upscaled)}; "
          f"refused with a reason {len(refused)}; failed rows for the {len(FILES) - len(decodable)} others")
    assert len(upscaled) >= MIN_UPSCALED
    assert set(upscaled) <= set(decodable)


@pytest.mark.parametrize("name", FILES)
def test_bundled_file_is_upscaled_with_its_geometry_or_refused_with_a_reason(corpus, name):
    root, _summary, rows = corpus
    row = rows[source_name(name)]
    ds, pixels = read_source(name)
    if row["status"] == "failed":
        if pixels is not None:  # pydicom decodes it: refused, saying what is not supported
            assert row["error_type"] == "ImageDecodeError" and "not supported" in row["error"], row["error"]
        return
    out = pydicom.dcmread(root / "dst" / source_name(name))
    frames = int(ds.get("NumberOfFrames") or 1)
    rgb = pixels.ndim == (4 if frames > 1 else 3) or ds.PhotometricInterpretation == "PALETTE COLOR"
    assert (out.Rows, out.Columns) == (2 * ds.Rows, 2 * ds.Columns)
    assert int(out.get("NumberOfFrames") or 1) == frames
    if "NumberOfFrames" in ds:
        assert out.NumberOfFrames == frames
    sr = out.pixel_array
    assert sr.shape == ((frames,) if frames > 1 else ()) + (2 * ds.Rows, 2 * ds.Columns) + ((3,) if rgb else ())
    photometric = str(ds.PhotometricInterpretation)
    if photometric == "PALETTE COLOR":
        assert out.PhotometricInterpretation == "RGB" and "RedPaletteColorLookupTableData" not in out
    else:
        assert sr.dtype == pixels.dtype.newbyteorder("=")
        assert out.PhotometricInterpretation == (photometric if photometric.startswith("MONO") else "RGB")
    if rgb:
        assert out.SamplesPerPixel == 3 and out.PlanarConfiguration == 0
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        if ds.get(keyword):
            assert [float(v) for v in out[keyword].value] == pytest.approx([float(v) / 2 for v in ds[keyword].value])
    if ds.get("ImagePositionPatient") and ds.get("ImageOrientationPatient") and ds.get("PixelSpacing"):
        iop = np.array([float(v) for v in ds.ImageOrientationPatient])
        row_sp, col_sp = (float(v) for v in ds.PixelSpacing)
        expected = np.array([float(v) for v in ds.ImagePositionPatient]) - iop[:3] * col_sp / 4 - iop[3:] * row_sp / 4
        np.testing.assert_allclose([float(v) for v in out.ImagePositionPatient], expected, atol=1e-4)
    assert out.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert list(out.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert out.SOPInstanceUID != ds.SOPInstanceUID and out.SeriesInstanceUID != ds.get("SeriesInstanceUID")
    (reference,) = out.SourceImageSequence
    assert reference.ReferencedSOPInstanceUID == ds.SOPInstanceUID
    assert reference.PurposeOfReferenceCodeSequence[0].CodeValue == "121322"
    assert row["out_width"] == 2 * ds.Columns and row["out_height"] == 2 * ds.Rows
