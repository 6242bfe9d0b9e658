"""NIfTI through the run: volumes upscaled in-plane slice by slice, the same kind written back
(.nii / .nii.gz, NIfTI-1 / NIfTI-2), affine and zooms rescaled over the same field of view,
dtype and scaling kept. nibabel's bundled test files and volumes nibabel makes here."""

import gzip
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

nib = pytest.importorskip("nibabel")

from pipeline import formats, store  # noqa: E402
from pipeline.formats import nifti  # noqa: E402
from pipeline.formats.sniff import sniff  # noqa: E402
from pipeline.inference.engine import Upscaler  # noqa: E402
from pipeline.job.local import run_local  # noqa: E402
from pipeline.models import load_model  # noqa: E402
from pipeline.spec import RunSpec  # noqa: E402
from pipeline.stages import infer as infer_stage  # noqa: E402

DATA = Path(nib.__file__).parent / "tests" / "data"


def run(src: Path, dst: Path, **options) -> tuple[dict, dict]:
    summary = run_local(RunSpec(src=str(src), dst=str(dst), model="bicubic", **{"scale": 2.0, **options}))
    rows = {r["image_id"]: r for r in pq.read_table(dst / "_manifest").to_pylist()}
    return summary, rows


def bicubic_x2(plane: np.ndarray) -> np.ndarray:
    """The engine's bicubic x2 of one plane of values, as float (no mapping, no rounding)."""
    upscaler = Upscaler(load_model("bicubic", scale=2), device="cpu")
    return upscaler.upscale([np.ascontiguousarray(plane, dtype=np.float32)[..., None]], 2)[0][..., 0]


def corners(affine: np.ndarray, shape: tuple) -> np.ndarray:
    """World positions of the two opposite corners of the field of view: the outer faces of
    the first and last voxels (voxel coordinates -0.5 and n - 0.5 on each axis)."""
    low, high = np.full(3, -0.5), np.array(shape[:3], dtype=float) - 0.5
    return np.array([affine @ [*low, 1.0], affine @ [*high, 1.0]])[:, :3]


def two_affines() -> tuple[np.ndarray, np.ndarray]:
    """A rotated scanner qform and a different, sheared-free MNI sform."""
    angle = np.deg2rad(20)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    qform = np.eye(4)
    qform[:3, :3] = rotation @ np.diag([0.8, 0.8, 3.0])
    qform[:3, 3] = [-40.0, 12.5, 7.0]
    sform = np.diag([-0.9, 0.9, 3.1, 1.0])
    sform[:3, 3] = [50.0, -60.0, -20.0]
    return qform, sform


@pytest.fixture(scope="module")
def bundled_run(tmp_path_factory):
    """example4d.nii.gz (4-D, oblique), example_nifti2.nii.gz, functional.nii (scaled),
    anatomical.nii (big-endian), standard.nii.gz (anisotropic uint8), x2 in one run."""
    root = tmp_path_factory.mktemp("nifti")
    src = root / "src"
    src.mkdir()
    for name in ("example4d.nii.gz", "example_nifti2.nii.gz", "functional.nii", "anatomical.nii", "standard.nii.gz"):
        shutil.copy(DATA / name, src / name)
    summary, rows = run(src, root / "dst")
    assert summary["failed"] == 0, summary["failures"]
    return root, rows


def test_a_4d_series_has_every_slice_of_every_volume_upscaled_and_stays_gzipped_nifti1(bundled_run):
    root, _rows = bundled_run
    out_bytes = (root / "dst" / "example4d.nii.gz").read_bytes()
    assert sniff(out_bytes) == "nifti-gz"
    source, out = nib.load(DATA / "example4d.nii.gz"), nib.load(root / "dst" / "example4d.nii.gz")
    assert type(out) is nib.Nifti1Image and out.shape == (256, 192, 24, 2)
    assert out.get_data_dtype() == np.int16
    stored_in = np.asanyarray(source.dataobj.get_unscaled())
    stored_out = np.asanyarray(out.dataobj.get_unscaled())
    for z, t in [(0, 0), (11, 0), (23, 1), (5, 1)]:  # slices of both volumes, mapping undone up to rounding
        expected = bicubic_x2(stored_in[:, :, z, t])
        assert np.abs(stored_out[:, :, z, t] - expected).max() <= 1.0, (z, t)
    assert not np.array_equal(stored_out[..., 0], stored_out[..., 1])  # the second volume is not a copy


def test_the_field_of_view_covers_the_same_physical_extent_through_both_affines(bundled_run):
    root, _rows = bundled_run
    source, out = nib.load(DATA / "example4d.nii.gz"), nib.load(root / "dst" / "example4d.nii.gz")
    for getter in ("get_qform", "get_sform"):
        before, after = getattr(source.header, getter)(), getattr(out.header, getter)()
        np.testing.assert_allclose(corners(after, out.shape), corners(before, source.shape),
                                   atol=1e-4)
        # the first new voxel's centre lies a quarter of an old voxel inside the old first voxel
        np.testing.assert_allclose(after @ [0, 0, 0, 1], before @ [-0.25, -0.25, 0, 1], atol=1e-4)
    assert out.header.get_zooms() == pytest.approx((1.0, 1.0, 2.2, 2000.0), abs=1e-5)
    assert (int(out.header["qform_code"]), int(out.header["sform_code"])) == (1, 1)
    assert out.header.get_xyzt_units() == source.header.get_xyzt_units() == ("mm", "sec")
    assert len(out.header.extensions) == len(source.header.extensions) == 2
    descrip = out.header["descrip"].item().decode()
    assert descrip == "FSL3.3; upscaler x2 in-plane, bicubic"  # the source's text ends at its first NUL


def test_qform_and_sform_are_each_rescaled_with_their_own_code(tmp_path):
    qform, sform = two_affines()
    volume = np.random.default_rng(1).integers(0, 4000, (12, 10, 4)).astype(np.int16)
    img = nib.Nifti1Image(volume, None)
    img.header.set_qform(qform, code=1)
    img.header.set_sform(sform, code=4)
    img.header["descrip"] = "d" * 79  # a full field: the note still fits whole
    (tmp_path / "src").mkdir()
    nib.save(img, tmp_path / "src" / "two.nii")
    summary, rows = run(tmp_path / "src", tmp_path / "dst", scale=4.0)
    assert summary["ok"] == 1, summary["failures"]
    out = nib.load(tmp_path / "dst" / "two.nii")
    assert out.shape == (48, 40, 4)
    assert (int(out.header["qform_code"]), int(out.header["sform_code"])) == (1, 4)
    np.testing.assert_allclose(corners(out.header.get_qform(), out.shape), corners(qform, volume.shape), atol=1e-4)
    np.testing.assert_allclose(corners(out.header.get_sform(), out.shape), corners(sform, volume.shape), atol=1e-4)
    assert out.header.get_zooms() == pytest.approx((0.2, 0.2, 3.0), abs=1e-6)
    descrip = out.header["descrip"].item().decode()
    assert len(descrip) == 79 and descrip.startswith("ddd") and descrip.endswith("; upscaler x4 in-plane, bicubic")
    # the row: the best affine (sform) and the zooms, in and out
    assert np.allclose(json.loads(rows["two.nii"]["transform_in"]), sform, atol=1e-6)
    assert np.allclose(json.loads(rows["two.nii"]["transform_out"]), out.affine, atol=1e-5)
    assert json.loads(rows["two.nii"]["pixel_spacing_out"]) == pytest.approx([0.2, 0.2, 3.0], abs=1e-6)


def test_scaled_int16_keeps_its_dtype_slope_and_intercept_and_the_model_sees_scaled_values(bundled_run, tmp_path):
    root, rows = bundled_run
    source, out = nib.load(DATA / "functional.nii"), nib.load(root / "dst" / "functional.nii")
    slope, inter = float(source.dataobj.slope), float(source.dataobj.inter)
    assert (slope, inter) != (1.0, 0.0)
    assert (float(out.dataobj.slope), float(out.dataobj.inter)) == (slope, inter)
    assert out.get_data_dtype() == np.int16 and out.shape == (34, 42, 3, 20)
    recorded = json.loads(rows["functional.nii"]["radiometric"])
    stored = np.asanyarray(source.dataobj.get_unscaled()).astype(np.float64)
    assert recorded["domain"] == "scaled"
    assert recorded["ranges"] == [pytest.approx([stored.min() * slope + inter, stored.max() * slope + inter])]
    values_in, values_out = source.get_fdata(), out.get_fdata()
    expected = bicubic_x2(values_in[:, :, 1, 7])
    assert np.abs(values_out[:, :, 1, 7] - expected).max() <= abs(slope) * 0.5 + 1e-3  # half a stored step


def test_big_endian_stays_big_endian_and_nifti2_stays_nifti2(bundled_run):
    root, rows = bundled_run
    anatomical = nib.load(root / "dst" / "anatomical.nii")
    assert anatomical.header.endianness == ">" and anatomical.get_data_dtype() == np.dtype(">i2")
    assert anatomical.shape == (66, 82, 25)
    two = root / "dst" / "example_nifti2.nii.gz"
    assert gzip.decompress(two.read_bytes())[4:12] == b"n+2\x00\r\n\x1a\n"
    out = nib.load(two)
    assert type(out) is nib.Nifti2Image and out.shape == (64, 40, 12, 2)
    assert rows["example_nifti2.nii.gz"]["src_mode"] == "NIfTI-2;int16"


def test_rows_record_shapes_plane_dtype_and_slice_count(bundled_run):
    _root, rows = bundled_run
    row = rows["example4d.nii.gz"]
    assert (row["height"], row["width"], row["channels"]) == (128, 96, 48)  # 24 slices x 2 volumes
    assert (row["out_height"], row["out_width"]) == (256, 192)
    assert row["dtype"] == "int16" and row["src_format"] == row["out_format"] == "nifti-gz"
    bands = json.loads(row["bands"])
    assert bands == {"kind": "NIfTI-1", "shape_in": [128, 96, 24, 2], "shape_out": [256, 192, 24, 2],
                     "plane": "axial", "in_plane_axes": [0, 1], "slices": 48}
    assert json.loads(row["pixel_spacing_in"]) == pytest.approx([2.0, 2.0, 2.2, 2000.0], abs=1e-5)
    assert "48 slices" in row["metrics_note"]
    assert row["lr_psnr"] > 50  # bicubic down after bicubic up stays close to the input
    assert row["precision"] == "fp32"


def test_auto_plane_upscales_the_finer_axes_and_named_planes_follow_the_orientation(bundled_run):
    root, rows = bundled_run
    # standard.nii.gz: zooms 1 x 3 x 2 mm, RAS: auto leaves the 3 mm (A-P) axis as the slice axis
    assert nib.load(root / "dst" / "standard.nii.gz").shape == (8, 5, 14)
    assert json.loads(rows["standard.nii.gz"]["bands"])["plane"] == "coronal"
    data = (DATA / "standard.nii.gz").read_bytes()
    shapes = {plane: formats.decode_image(data, nifti_plane=plane).pixels.shape
              for plane in ("axial", "coronal", "sagittal")}
    assert shapes == {"axial": (4, 5, 7), "coronal": (4, 7, 5), "sagittal": (5, 7, 4)}


def test_isotropic_voxels_take_the_axial_plane_wherever_its_axis_is_stored():
    affine = np.array([[0, 0, 2.0, 0], [0, 2.0, 0, 0], [2.0, 0, 0, 0], [0, 0, 0, 1]])  # axis 0 runs S
    shape = (6, 7, 8)
    assert nifti.in_plane_axes(shape, (2.0, 2.0, 2.0), affine, "auto") == ((1, 2), "axial")
    assert nifti.in_plane_axes(shape, (2.0, 2.0, 2.0), affine, "sagittal") == ((0, 1), "sagittal")
    assert nifti.in_plane_axes(shape, (2.0, 2.0, 5.0), affine, "auto") == ((0, 1), "sagittal")
    assert nifti.in_plane_axes((6, 1, 8), (2.0, 2.0, 2.0), affine, "auto") == ((0, 2), "coronal")


def test_float_nan_voxels_stay_nan_and_do_not_bleed_into_their_neighbours(tmp_path):
    volume = np.tile(np.linspace(100.0, 200.0, 16)[None, :, None], (16, 1, 3))
    volume[:, :4, 1] = np.nan
    (tmp_path / "src").mkdir()
    nib.save(nib.Nifti1Image(volume, np.eye(4)), tmp_path / "src" / "nan.nii.gz")
    summary, _rows = run(tmp_path / "src", tmp_path / "dst")
    assert summary["ok"] == 1, summary["failures"]
    out = nib.load(tmp_path / "dst" / "nan.nii.gz")
    values = np.asanyarray(out.dataobj)
    assert out.get_data_dtype() == np.float64
    assert np.isnan(values[:, :8, 1]).all() and not np.isnan(values[:, 8:, 1]).any()
    assert not np.isnan(values[..., [0, 2]]).any()  # the other slices have no nodata at all
    assert values[:, 8:, 1].min() >= 100.0 - 1.0  # no dip toward a fill value at the edge


def test_slices_reach_the_engine_in_bounded_groups_with_the_same_result(bundled_run, tmp_path, monkeypatch):
    root, _rows = bundled_run
    h, w, out_pixels = 17, 21, 34 * 42
    monkeypatch.setattr(infer_stage, "VOLUME_GROUP_BYTES", 7 * 4 * (h * w + 3 * out_pixels))
    calls = []
    original = Upscaler.upscale

    def recording(self, images, *args, **kwargs):
        calls.append([image.shape for image in images])
        return original(self, images, *args, **kwargs)

    monkeypatch.setattr(Upscaler, "upscale", recording)
    (tmp_path / "src").mkdir()
    shutil.copy(DATA / "functional.nii", tmp_path / "src" / "functional.nii")
    summary, _rows = run(tmp_path / "src", tmp_path / "dst")
    assert summary["ok"] == 1, summary["failures"]
    assert [len(c) for c in calls] == [7] * 8 + [4]  # 60 slices
    assert {shape for call in calls for shape in call} == {(17, 21, 1)}
    assert (tmp_path / "dst" / "functional.nii").read_bytes() == (root / "dst" / "functional.nii").read_bytes()


def test_upscaling_a_plane_with_the_slice_dimension_resets_slice_timing_with_a_note():
    data = (DATA / "example4d.nii.gz").read_bytes()
    decoded = formats.decode_image(data, nifti_plane="coronal")  # slice dim 2 lies in the coronal plane
    assert any("slice timing reset" in note for note in decoded.info["notes"])
    sr = np.repeat(np.repeat(decoded.pixels, 2, axis=0), 2, axis=1)
    out = nib.Nifti1Image.from_bytes(gzip.decompress(formats.encode_image(sr, decoded)))
    assert out.shape == (256, 96, 48, 2)
    assert (int(out.header["slice_end"]), int(out.header["slice_code"])) == (0, 0)
    source = nib.load(DATA / "example4d.nii.gz")
    assert int(source.header["slice_end"]) == 23


def test_corrupt_truncated_and_unsupported_files_are_one_failed_row_each(tmp_path):
    anatomical, example = (DATA / "anatomical.nii").read_bytes(), (DATA / "example4d.nii.gz").read_bytes()
    bad_type = bytearray(anatomical)
    bad_type[70:72] = (77).to_bytes(2, "big")  # datatype code 77 does not exist
    rgb = nib.Nifti1Image(np.zeros((4, 4, 2), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")]), np.eye(4))
    files = {
        "cut.nii": (anatomical[:20000],
                    "truncated NIfTI voxel data (the header declares 68,002 bytes, the file has 20,000"),
        "cut.nii.gz": (example[:100000], "truncated NIfTI voxel data"),
        "header.nii": (anatomical[:200], "truncated NIfTI header (200 bytes)"),
        "text.nii.gz": (gzip.compress(b"not a volume\n" * 50), "gzip data that is not a NIfTI volume"),
        "type.nii": (bytes(bad_type), "corrupt NIfTI-1 header (HeaderDataError: data code 77 not recognized"),
        "rgb.nii": (rgb.to_bytes(), "NIfTI RGB voxels are not supported"),
        "cifti.nii": ((DATA / "row_major.dconn.nii").read_bytes(), "CIFTI-2 file (NIfTI intent code 3001)"),
    }
    (tmp_path / "src").mkdir()
    for name, (data, _message) in files.items():
        (tmp_path / "src" / name).write_bytes(data)
    shutil.copy(DATA / "standard.nii.gz", tmp_path / "src" / "good.nii.gz")
    summary, rows = run(tmp_path / "src", tmp_path / "dst")
    assert (summary["ok"], summary["failed"]) == (1, len(files))
    assert rows["good.nii.gz"]["status"] == "ok"
    for name, (_data, message) in files.items():
        row = rows[name]
        assert row["status"] == "failed" and row["error_type"] == "ImageDecodeError", name
        assert message in row["error"] and "\n" not in row["error"], (name, row["error"])


def test_without_nibabel_a_nifti_file_is_one_failed_row_naming_the_extra(tmp_path, monkeypatch):
    (tmp_path / "src").mkdir()
    shutil.copy(DATA / "anatomical.nii", tmp_path / "src" / "a.nii")
    monkeypatch.setitem(sys.modules, "nibabel", None)  # import nibabel now raises ImportError
    summary, rows = run(tmp_path / "src", tmp_path / "dst")
    assert summary["failed"] == 1
    assert rows["a.nii"]["error_type"] == "ImageDecodeError"
    assert "reading NIfTI needs the optional extra: pip install 'pipeline[nifti]'" in rows["a.nii"]["error"]


def test_nii_gz_is_one_extension_for_output_keys_and_other_formats_are_refused(tmp_path):
    assert store.output_key("sub/brain.nii.gz", ".nii.gz") == "sub/brain.nii.gz"
    assert store.output_key("sub/brain.NII.GZ", ".nii.gz") == "sub/brain.nii.gz"
    assert store.output_key("brain.nii.gz", ".nii.gz", keep_extension=True) == "brain.nii.gz.nii.gz"
    assert store.output_key("archive.tar.gz", ".png") == "archive.tar.png"
    (tmp_path / "src").mkdir()
    shutil.copy(DATA / "standard.nii.gz", tmp_path / "src" / "brain.nii.gz")
    shutil.copy(DATA / "anatomical.nii", tmp_path / "src" / "brain.nii")  # another output: no collision
    summary, rows = run(tmp_path / "src", tmp_path / "dst")
    assert summary["ok"] == 2, summary["failures"]
    assert sorted(p.name for p in (tmp_path / "dst").iterdir() if p.is_file()) == ["brain.nii", "brain.nii.gz"]
    summary, rows = run(tmp_path / "src", tmp_path / "png", format="png")
    assert summary["failed"] == 2
    assert "NIfTI input is written as NIfTI; --format png would drop its affine" in rows["brain.nii.gz"]["error"]


def _hostile_cases() -> dict:
    """nibabel's NIfTI test files whole, then with header fields overwritten and cut short."""
    cases = {path.name: path.read_bytes() for path in sorted(DATA.glob("*.nii*"))}
    plain = (DATA / "anatomical.nii").read_bytes()
    packed = gzip.decompress((DATA / "standard.nii.gz").read_bytes())
    for offset in (0, 40, 42, 44, 46, 48, 56, 70, 72, 76, 80, 108, 112, 116, 252, 254, 256, 280, 344):
        for value in (0x00, 0xFF, 0x80):
            damaged = bytearray(plain)
            damaged[offset : offset + 2] = bytes([value, value])
            cases[f"anatomical@{offset}={value:02x}.nii"] = bytes(damaged)
            damaged = bytearray(packed)
            damaged[offset : offset + 2] = bytes([value, value])
            cases[f"standard@{offset}={value:02x}.nii.gz"] = gzip.compress(bytes(damaged), mtime=0)
    for length in (1, 4, 347, 348, 352, 353, 1000, len(plain) - 1):
        cases[f"anatomical[:{length}].nii"] = plain[:length]
    return cases


HOSTILE = _hostile_cases()


@pytest.mark.parametrize("name", list(HOSTILE))
def test_damaged_headers_decode_as_declared_or_fail_in_one_line_without_a_bug_of_ours(name):
    from tests.formats.test_hostile_corpus import our_own_bug

    data = HOSTILE[name]
    try:
        decoded = formats.decode_image(data, name=name, max_pixels=50_000_000)
    except formats.ImageDecodeError as error:
        assert str(error).startswith(f"{name}: ") and "\n" not in str(error), str(error)
        assert our_own_bug(error) is None, our_own_bug(error)
        return
    volume = decoded.info["nifti"]
    assert decoded.pixels.dtype.name in nifti.DTYPES
    assert decoded.pixels.shape[:2] == (volume.shape[volume.axes[0]], volume.shape[volume.axes[1]])
    assert decoded.pixels.size == int(np.prod(volume.shape))
    try:
        out = formats.encode_image(decoded.pixels, decoded)
    except formats.ImageEncodeError as error:
        assert our_own_bug(error) is None, our_own_bug(error)
        return
    again = formats.decode_image(out, name=f"{name} (output)")
    assert again.pixels.shape == decoded.pixels.shape and again.pixels.dtype == decoded.pixels.dtype


def test_a_single_nii_gz_destination_names_the_file_and_nifti_plane_reaches_the_decoder(tmp_path, capsys):
    from pipeline.cli import main

    source = tmp_path / "standard.nii.gz"
    shutil.copy(DATA / "standard.nii.gz", source)
    target = tmp_path / "out" / "standard.nii.gz"
    code = main(["run", str(source), str(target), "-m", "bicubic", "-s", "2", "--executor", "local",
                 "--no-progress", "--nifti-plane", "sagittal"])
    assert code == 0, capsys.readouterr()
    assert nib.load(target).shape == (4, 10, 14)  # sagittal: the L-R axis keeps its 4 voxels
    assert sorted(p.name for p in target.parent.iterdir()) == ["_manifest", "standard.nii.gz"]
    assert main(["run", str(source), str(tmp_path / "out2" / "standard.nii"), "-m", "bicubic",
                 "--executor", "local", "--no-progress"]) == 2  # the output would be standard.nii.gz
    assert "can be written as" in capsys.readouterr().err


def test_another_plane_redoes_the_volume_and_the_default_plane_redoes_nothing(tmp_path):
    (tmp_path / "src").mkdir()
    shutil.copy(DATA / "standard.nii.gz", tmp_path / "src" / "s.nii.gz")
    first, _rows = run(tmp_path / "src", tmp_path / "dst")
    again, _rows = run(tmp_path / "src", tmp_path / "dst", nifti_plane="auto")
    other, rows = run(tmp_path / "src", tmp_path / "dst", nifti_plane="axial")
    assert (first["ok"], again["ok"], again["skipped"], other["ok"]) == (1, 0, 1, 1)
    assert nib.load(tmp_path / "dst" / "s.nii.gz").shape == (8, 10, 7)


def test_max_pixels_counts_every_voxel_before_any_is_read():
    data = (DATA / "example4d.nii.gz").read_bytes()  # 128 x 96 x 24 x 2 = 589,824 voxels
    assert formats.decode_image(data, max_pixels=589_824).pixels.shape == (128, 96, 48)
    with pytest.raises(formats.ImageTooLargeError, match=r"128 x 96 x 24 x 2 = 589,824 voxels is over the limit"):
        formats.decode_image(data[:2000], max_pixels=589_823)  # the header alone decides: the data is cut here


VOXEL_TYPES = {"uint8": (0, 255), "int8": (-128, 127), "uint16": (0, 60000), "int32": (-500000, 900000),
               "uint32": (0, 3_000_000), "float32": (-1.5, 2.5)}


def test_every_supported_voxel_type_comes_back_in_its_type_with_its_values(tmp_path):
    rng = np.random.default_rng(3)
    (tmp_path / "src").mkdir()
    volumes = {}
    for name, (lo, hi) in VOXEL_TYPES.items():
        smooth = np.kron(rng.uniform(0, 1, (4, 4, 2)), np.ones((4, 4, 1)))  # 16 x 16 x 2, blocks
        volume = (lo + smooth * (hi - lo)).astype(name)
        volumes[name] = volume
        nib.save(nib.Nifti1Image(volume, np.eye(4)), tmp_path / "src" / f"{name}.nii")
    summary, rows = run(tmp_path / "src", tmp_path / "dst")
    assert summary["ok"] == len(VOXEL_TYPES), summary["failures"]
    for name, volume in volumes.items():
        out = nib.load(tmp_path / "dst" / f"{name}.nii")
        assert out.get_data_dtype() == np.dtype(name) and rows[f"{name}.nii"]["dtype"] == name
        values = np.asanyarray(out.dataobj.get_unscaled())
        lo, hi = VOXEL_TYPES[name]
        expected = bicubic_x2(volume[..., 1].astype(np.float64))  # overshoot kept, up to the type's limits
        step = 0.0
        if name != "float32":
            expected, step = np.clip(expected, np.iinfo(name).min, np.iinfo(name).max), 1.0  # and rounded
        assert np.abs(values[..., 1] - expected).max() <= step + (hi - lo) * 2e-6, name


def test_a_reference_folder_gives_volumes_a_note_not_a_failure(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "hr").mkdir()
    shutil.copy(DATA / "standard.nii.gz", tmp_path / "src" / "s.nii.gz")
    shutil.copy(DATA / "standard.nii.gz", tmp_path / "hr" / "s.nii.gz")
    summary, rows = run(tmp_path / "src", tmp_path / "dst", reference=str(tmp_path / "hr"))
    assert summary["ok"] == 1, summary["failures"]
    row = rows["s.nii.gz"]
    assert row["psnr"] is None and row["lr_psnr"] is not None
    assert "reference metrics are not computed for volumes" in row["metrics_note"]


def test_a_negative_slope_is_kept_and_its_range_is_ordered(tmp_path):
    stored = np.kron(np.random.default_rng(5).integers(-3000, 3000, (4, 4, 2)), np.ones((4, 4, 1))).astype(np.int16)
    img = nib.Nifti1Image(stored, np.eye(4))
    img.header.set_slope_inter(-0.5, 100.0)
    (tmp_path / "src").mkdir()
    nib.save(img, tmp_path / "src" / "neg.nii")
    summary, rows = run(tmp_path / "src", tmp_path / "dst")
    assert summary["ok"] == 1, summary["failures"]
    out = nib.load(tmp_path / "dst" / "neg.nii")
    assert (float(out.dataobj.slope), float(out.dataobj.inter)) == (-0.5, 100.0)
    lo, hi = json.loads(rows["neg.nii"]["radiometric"])["ranges"][0]
    assert (lo, hi) == (stored.max() * -0.5 + 100.0, stored.min() * -0.5 + 100.0)
    expected = bicubic_x2(stored[..., 0].astype(np.float64))
    assert np.abs(np.asanyarray(out.dataobj.get_unscaled())[..., 0] - expected).max() <= 1.0
