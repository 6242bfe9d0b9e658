"""STAC Items beside georeferenced outputs and a Collection per run (pipeline/stages/stac.py), and
Sentinel-2 SAFE input (pipeline/formats/safe.py), on GeoTIFFs and SAFE products written by
rasterio in the test."""

import json
from pathlib import Path

import fsspec
import numpy as np
import pyarrow.parquet as pq
import pytest

rasterio = pytest.importorskip("rasterio")
pystac = pytest.importorskip("pystac")

from pyproj import Transformer  # noqa: E402
from rasterio.transform import from_origin  # noqa: E402

from pipeline import __version__, store  # noqa: E402
from pipeline.job.local import run_local  # noqa: E402
from pipeline.spec import RunSpec  # noqa: E402
from tests.sentinel2 import BANDS, EPSG, ORIGIN, PRODUCT, band_values, make_safe, write_jp2  # noqa: E402

UTM18 = (300000.0, 4500000.0)  # x0, y0 of the test GeoTIFFs (EPSG:32618), 30 m pixels


def write_geotiff(path: Path, array: np.ndarray, *, nodata=None, names=None) -> None:
    """A band-first array as a GeoTIFF in UTM 18N, written by rasterio."""
    with rasterio.open(path, "w", driver="GTiff", width=array.shape[2], height=array.shape[1], count=array.shape[0],
                       dtype=array.dtype.name, crs="EPSG:32618", transform=from_origin(*UTM18, 30.0, 30.0),
                       nodata=nodata) as ds:
        ds.write(array)
        for index, name in enumerate(names or (), 1):
            ds.set_band_description(index, name)


def rows(dst) -> dict:
    fs, root = store.open_location(str(dst))
    from pipeline.store.manifest import read_manifest

    return {r["image_id"]: r for r in read_manifest(fs, root).to_pylist()}


def read_json(uri: str) -> dict:
    with fsspec.open(uri, "rb") as f:
        return json.load(f)


def lonlat_bbox(crs: str, bounds) -> list[float]:
    """The WGS 84 box of the corners, by pyproj (not the code under test's rasterio)."""
    to_wgs84 = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    left, bottom, right, top = bounds
    xs, ys = to_wgs84.transform([left, right, right, left], [bottom, bottom, top, top])
    return [min(xs), min(ys), max(xs), max(ys)]


@pytest.fixture(scope="module")
def geo_run(tmp_path_factory):
    """A 3-band uint8 GeoTIFF with nodata and band names, a float32 one with NaN nodata, a
    photo and a corrupt TIFF, x2 bicubic."""
    root = tmp_path_factory.mktemp("stac")
    src = root / "src"
    (src / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    scene = rng.integers(1, 255, (3, 40, 48), dtype=np.uint8)
    scene[:, :4, :4] = 0
    write_geotiff(src / "sub" / "scene.tif", scene, nodata=0, names=("red", "green", "blue"))
    dem = rng.normal(100, 10, (1, 32, 32)).astype(np.float32)
    dem[0, 0, 0] = np.nan
    write_geotiff(src / "dem.tif", dem, nodata=float("nan"))
    from PIL import Image

    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(src / "photo.png")
    (src / "broken.tif").write_bytes(b"II*\x00" + b"\x00" * 40)
    mapping = root / "items.json"
    mapping.write_text(json.dumps({"sub/scene.tif": "https://example.test/items/scene-1"}))
    summary = run_local(RunSpec(src=str(src), dst=str(root / "dst"), model="bicubic", scale=2.0,
                                stac_source=str(mapping)))
    return root, summary


def test_a_georeferenced_output_gets_an_item_describing_the_written_file(geo_run):
    root, _ = geo_run
    row = rows(root / "dst")["sub/scene.tif"]
    assert row["status"] == "ok" and row["stac_item_uri"] == row["dst_uri"] + ".json"
    item = pystac.Item.from_file(row["stac_item_uri"])  # round trip through pystac
    with rasterio.open(root / "dst" / "sub" / "scene.tif") as out:
        transform, bounds, shape = list(out.transform)[:6], out.bounds, [out.height, out.width]
        cog = out.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"  # GDAL's word on the layout
    assert shape == [80, 96] and transform == [15.0, 0.0, UTM18[0], 0.0, -15.0, UTM18[1]]
    proj = item.ext.proj
    assert (proj.code, proj.shape, proj.transform) == ("EPSG:32618", shape, transform)
    np.testing.assert_allclose(item.bbox, lonlat_bbox("EPSG:32618", bounds), atol=1e-9)
    assert item.geometry["type"] == "Polygon" and len(item.geometry["coordinates"][0]) == 5
    data = item.assets["data"]
    assert data.href == row["dst_uri"]
    assert data.media_type == (pystac.MediaType.COG if cog else pystac.MediaType.GEOTIFF)
    assert [b.name for b in data.ext.eo.bands] == ["red", "green", "blue"]
    assert [(b.data_type, b.nodata, b.spatial_resolution) for b in data.ext.raster.bands] == [("uint8", 0, 15.0)] * 3
    assert item.assets["source"].href == row["src_uri"]
    software = item.properties["processing:software"]
    assert software == {"upscaler": __version__, "bicubic": "built in (no weights)"}
    assert "x2" in item.properties["processing:lineage"] and "bicubic" in item.properties["processing:lineage"]
    assert [link.href for link in item.links if link.rel == "derived_from"] == ["https://example.test/items/scene-1"]
    assert item.collection_id == f"upscaler-{row['run_id']}"


def test_nan_nodata_is_written_as_the_string_stac_allows(geo_run):
    root, _ = geo_run
    item = read_json(rows(root / "dst")["dem.tif"]["stac_item_uri"])
    assert item["assets"]["data"]["raster:bands"] == [{"nodata": "nan", "data_type": "float32",
                                                       "spatial_resolution": 15.0}]
    # a source the --stac-source file does not name: the source file only, no derived_from link
    assert [link["rel"] for link in item["links"]] == ["collection"]


def test_photos_and_failed_images_get_no_item(geo_run):
    root, _ = geo_run
    by_image = rows(root / "dst")
    assert by_image["photo.png"]["status"] == "ok" and by_image["photo.png"]["stac_item_uri"] is None
    assert by_image["broken.tif"]["status"] == "failed" and by_image["broken.tif"]["stac_item_uri"] is None
    assert sorted(p.name for p in (root / "dst").rglob("*.json") if "_manifest" not in p.parts) == \
        ["collection.json", "dem.tif.json", "scene.tif.json"]


def test_the_run_collection_lists_its_items_with_their_extent(geo_run):
    root, summary = geo_run
    by_image = rows(root / "dst")
    run_id = by_image["dem.tif"]["run_id"]
    uri = summary["stac_collection"]
    assert uri == store.full_uri(fsspec.filesystem("file"), str(root / "dst" / "_stac" / run_id / "collection.json"))
    collection = pystac.Collection.from_file(uri)
    items = {link.href for link in collection.links if link.rel == "item"}
    assert items == {by_image["dem.tif"]["stac_item_uri"], by_image["sub/scene.tif"]["stac_item_uri"]}
    boxes = [read_json(u)["bbox"] for u in items]
    assert collection.extent.spatial.bboxes[0] == [min(b[0] for b in boxes), min(b[1] for b in boxes),
                                                   max(b[2] for b in boxes), max(b[3] for b in boxes)]
    record = read_json(str(root / "dst" / "_manifest" / "_runs" / f"{run_id}.json"))
    assert record["stac_collection"] == uri


def test_items_and_the_collection_validate_against_the_bundled_core_schemas(geo_run):
    from pystac.validation import JsonSchemaSTACValidator

    root, summary = geo_run
    validator = JsonSchemaSTACValidator()
    item = read_json(rows(root / "dst")["sub/scene.tif"]["stac_item_uri"])
    assert validator.validate_core(item, pystac.STACObjectType.ITEM, "1.1.0").endswith("item.json")
    collection = read_json(summary["stac_collection"])
    assert validator.validate_core(collection, pystac.STACObjectType.COLLECTION, "1.1.0").endswith("collection.json")
    with pytest.raises(Exception):  # the validator does check: an Item without its geometry fails
        validator.validate_core({k: v for k, v in item.items() if k != "geometry"}, pystac.STACObjectType.ITEM,
                                "1.1.0")


def test_items_validate_against_the_extension_schemas_where_they_can_be_fetched(geo_run):
    from pystac.validation.stac_validator import GetSchemaError

    root, _ = geo_run
    item = pystac.Item.from_file(rows(root / "dst")["sub/scene.tif"]["stac_item_uri"])
    try:
        validated = item.validate()
    except GetSchemaError as error:
        pytest.skip(f"pystac bundles no extension schemas (projection, eo, raster, processing) and fetching them "
                    f"failed here: {str(error)[:120]}")
    assert len(validated) == 5  # the core schema and four extensions


def test_a_second_run_writes_its_own_collection_and_the_same_run_id_keeps_what_it_listed(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("a.tif", "b.tif"):
        write_geotiff(src / name, np.full((1, 8, 8), 7, np.uint8))
    dst = str(tmp_path / "dst")
    spec = dict(src=str(src), dst=dst, model="bicubic", scale=2.0, force=True)
    first = run_local(RunSpec(**spec, include=("a.tif",), run_id="R1"))
    second = run_local(RunSpec(**spec, run_id="R2"))
    again = run_local(RunSpec(**spec, include=("b.tif",), run_id="R1"))
    assert first["stac_collection"] == again["stac_collection"] != second["stac_collection"]

    def listed(uri):
        return sorted(Path(link["href"]).name for link in read_json(uri)["links"] if link["rel"] == "item")

    assert listed(second["stac_collection"]) == ["a.tif.json", "b.tif.json"]
    assert listed(again["stac_collection"]) == ["a.tif.json", "b.tif.json"]  # R1's a.tif kept, b.tif added


def test_an_unreadable_stac_source_is_refused_before_anything_is_written(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    write_geotiff(src / "a.tif", np.full((1, 8, 8), 7, np.uint8))
    with pytest.raises(ValueError, match="no such file"):
        run_local(RunSpec(src=str(src), dst=str(tmp_path / "dst"), model="bicubic", scale=2.0,
                          stac_source=str(tmp_path / "missing.csv")))
    with pytest.raises(ValueError, match="only {key} and {stem}"):
        run_local(RunSpec(src=str(src), dst=str(tmp_path / "dst"), model="bicubic", scale=2.0,
                          stac_source="https://example.test/{product}"))
    assert not (tmp_path / "dst").exists()


@pytest.mark.parametrize("where", ["memory", "s3"])
def test_items_and_the_collection_reach_an_object_store(tmp_path, where, request):
    src = tmp_path / "src"
    src.mkdir()
    write_geotiff(src / "a.tif", np.arange(64, dtype=np.uint16).reshape(1, 8, 8) + 1)
    mapping = tmp_path / "items.csv"
    mapping.write_text("key,item\na.tif,https://example.test/items/a\n")
    if where == "s3":
        options, bucket = request.getfixturevalue("s3")
        dst = f"{bucket}/out"
    else:
        options, dst = {}, f"memory://stac-{tmp_path.name}/out"
    summary = run_local(RunSpec(src=str(src), dst=dst, model="bicubic", scale=2.0, storage_options=options,
                                stac_source=str(mapping)))
    assert summary["failed"] == 0, summary["failures"]
    fs, root = store.open_location(dst, options)
    fs.invalidate_cache()
    item = pystac.Item.from_dict(json.loads(fs.cat_file(f"{root}/a.tif.json")))
    assert item.assets["data"].href == store.full_uri(fs, f"{root}/a.tif")
    assert item.ext.proj.shape == [16, 16] and item.ext.proj.code == "EPSG:32618"
    assert [link.href for link in item.links if link.rel == "derived_from"] == ["https://example.test/items/a"]
    collection = json.loads(fs.cat_file(root + f"/_stac/{summary['run_id']}/collection.json"))
    assert [link["href"] for link in collection["links"] if link["rel"] == "item"] == \
        [store.full_uri(fs, f"{root}/a.tif.json")]
    assert not [p for p in fs.find(root) if p.endswith(".tmp")]


def test_a_streamed_output_gets_its_item_too_and_a_mapping_may_name_sources_by_url(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    write_geotiff(src / "big.tif", np.arange(3 * 64 * 64, dtype=np.uint16).reshape(3, 64, 64) % 4000 + 1)
    source_url = next(store.list_sources(str(src))).uri
    (tmp_path / "items.json").write_text(json.dumps({source_url: "https://example.test/items/big"}))
    summary = run_local(RunSpec(src=str(src), dst=str(tmp_path / "dst"), model="bicubic", scale=2.0,
                                stream_threshold=1000, stac_source=str(tmp_path / "items.json")))
    row = rows(tmp_path / "dst")["big.tif"]
    assert summary["failed"] == 0 and row["stream_windows"] >= 1
    item = read_json(row["stac_item_uri"])
    assert item["properties"]["proj:shape"] == [128, 128]
    assert item["properties"]["proj:transform"] == [15.0, 0.0, UTM18[0], 0.0, -15.0, UTM18[1]]
    derived = [link["href"] for link in item["links"] if link["rel"] == "derived_from"]
    assert derived == ["https://example.test/items/big"]


# ------------------------------------------------------------------ Sentinel-2 SAFE


@pytest.fixture(scope="module")
def safe_run(tmp_path_factory):
    """An L2A .SAFE folder, an L1C .SAFE.zip and an L2A folder without B04, x2 bicubic."""
    root = tmp_path_factory.mktemp("safe")
    src = root / "src"
    src.mkdir()
    make_safe(src, level="L2A")
    (src / "zips").mkdir()
    make_safe(src / "zips", level="L1C", zipped=True)
    (src / "broken").mkdir()
    make_safe(src / "broken", level="L2A", bands=("B02", "B03", "B08"))
    sources = sorted(s.key for s in store.list_sources(str(src)))
    summary = run_local(RunSpec(src=str(src), dst=str(root / "dst"), model="bicubic", scale=2.0,
                                stac_source="https://example.test/sentinel-2/items/{stem}"))
    return root, sources, summary


def test_a_safe_folder_and_a_safe_zip_are_each_one_source(safe_run):
    _, sources, summary = safe_run
    assert sources == sorted([f"broken/{PRODUCT['L2A']}", PRODUCT["L2A"], f"zips/{PRODUCT['L1C']}.zip"])
    assert summary["ok"] + summary["failed"] == 3


@pytest.mark.parametrize("level", ["L2A", "L1C"])
def test_a_safe_becomes_one_4_band_georeferenced_output_with_its_band_names(safe_run, level):
    root, _, _ = safe_run
    key = PRODUCT["L2A"] if level == "L2A" else f"zips/{PRODUCT['L1C']}.zip"
    row = rows(root / "dst")[key]
    assert row["status"] == "ok", row["error"]
    assert row["dst_uri"].endswith(PRODUCT[level][:-len(".SAFE")] + ".tif") and row["src_format"] == "safe"
    assert (row["width"], row["height"], row["channels"], row["dtype"]) == (64, 64, 4, "uint16")
    with rasterio.open(row["dst_uri"].removeprefix("file://")) as out:
        assert (out.count, out.dtypes, out.descriptions) == (4, ("uint16",) * 4, BANDS)
        assert out.crs.to_epsg() == EPSG and out.nodata == 0
        assert list(out.transform)[:6] == [5.0, 0.0, ORIGIN[0], 0.0, -5.0, ORIGIN[1]]
        pixels = out.read()
    assert pixels.shape == (4, 128, 128)
    for k, band in enumerate(BANDS):  # each output band is its own band upscaled: bicubic keeps the mean
        assert abs(pixels[k].astype(float).mean() - band_values(band, 64).mean()) < 3, band


def test_a_safe_output_equals_the_output_of_its_bands_stacked_into_a_geotiff(safe_run, tmp_path):
    root, _, _ = safe_run
    from rasterio.enums import ColorInterp

    src = tmp_path / "src"
    src.mkdir()
    with rasterio.open(src / "stack.tif", "w", driver="GTiff", width=64, height=64, count=4, dtype="uint16",
                       crs=f"EPSG:{EPSG}", transform=from_origin(*ORIGIN, 10.0, 10.0), nodata=0) as ds:
        ds.write(np.stack([band_values(b, 64) for b in BANDS]))
        ds.colorinterp = [ColorInterp.blue, ColorInterp.green, ColorInterp.red, ColorInterp.undefined]
    run_local(RunSpec(src=str(src), dst=str(tmp_path / "dst"), model="bicubic", scale=2.0))
    with rasterio.open(tmp_path / "dst" / "stack.tif") as a, \
            rasterio.open(root / "dst" / (PRODUCT["L2A"][:-5] + ".tif")) as b:
        np.testing.assert_array_equal(a.read(), b.read())


def test_a_safe_missing_a_band_is_one_failed_row_naming_it(safe_run):
    root, _, summary = safe_run
    row = rows(root / "dst")[f"broken/{PRODUCT['L2A']}"]
    assert summary["failed"] == 1
    assert row["status"] == "failed" and row["error_type"] == "ImageDecodeError"
    assert row["error"].startswith("read: ") and "10 m band B04" in row["error"] and "\n" not in row["error"]
    assert not (root / "dst" / "broken").exists()


def test_a_safe_item_has_the_sensing_time_platform_band_names_and_its_source_item(safe_run):
    root, _, _ = safe_run
    item = pystac.Item.from_file(rows(root / "dst")[PRODUCT["L2A"]]["stac_item_uri"])
    assert item.datetime.isoformat() == "2024-01-05T10:34:21.024000+00:00"
    assert (item.common_metadata.platform, item.common_metadata.constellation) == ("sentinel-2a", "sentinel-2")
    assert [(b.name, b.common_name) for b in item.assets["data"].ext.eo.bands] == \
        [("B02", "blue"), ("B03", "green"), ("B04", "red"), ("B08", "nir")]
    assert [link.href for link in item.links if link.rel == "derived_from"] == \
        [f"https://example.test/sentinel-2/items/{PRODUCT['L2A'][:-5]}"]


def test_broken_safe_products_are_failed_rows_that_say_why(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "junk.SAFE.zip").write_bytes(b"PK\x03\x04 not a zip after all")
    (src / "file.SAFE").write_text("a file, not a product folder")
    product = make_safe(src / "p", level="L1C")
    next(product.rglob("*_B03.jp2")).write_bytes(b"\x00\x00\x00\x0cjP  \r\n\x87\n" + b"\x00" * 64)
    other = make_safe(src / "q", level="L2A")
    write_jp2(next(other.rglob("*_B08_10m.jp2")), band_values("B08", 32), pixel=20.0)
    summary = run_local(RunSpec(src=str(src), dst=str(tmp_path / "dst"), model="bicubic", scale=2.0))
    assert summary["failed"] == 4 and summary["ok"] == 0
    errors = {key: (row["error_type"], row["error"]) for key, row in rows(tmp_path / "dst").items()}
    assert {key: kind for key, (kind, _) in errors.items()} == dict.fromkeys(
        ["junk.SAFE.zip", "file.SAFE", f"p/{PRODUCT['L1C']}", f"q/{PRODUCT['L2A']}"], "ImageDecodeError")
    assert "band B08 is not on the grid of B02 (32 x 32 at 20 m, not 64 x 64 at 10 m)" in \
        errors[f"q/{PRODUCT['L2A']}"][1]
    assert "not a readable zip" in errors["junk.SAFE.zip"][1]
    assert "no MTD_MSIL1C.xml or MTD_MSIL2A.xml" in errors["file.SAFE"][1]
    corrupt = errors[f"p/{PRODUCT['L1C']}"][1]
    assert "band B03" in corrupt and "not a readable JPEG 2000" in corrupt


def test_a_safe_named_in_a_list_has_the_version_its_listing_gives_and_a_changed_band_changes_it(tmp_path):
    from pipeline.stages.list import sources_from_list

    product = make_safe(tmp_path, level="L2A")
    listed = next(store.list_sources(str(tmp_path)))
    (tmp_path / "list.txt").write_text(product.name + "\n")
    assert next(sources_from_list(str(tmp_path / "list.txt"), str(tmp_path), None)) == listed
    band = next(product.rglob("*_B08_10m.jp2"))
    band.write_bytes(band.read_bytes() + b"\x00")
    assert next(store.list_sources(str(tmp_path))).version != listed.version



def test_safe_products_on_an_object_store_are_read_folder_and_zip_alike(tmp_path):
    local = tmp_path / "local"
    local.mkdir()
    make_safe(local, level="L2A")
    make_safe(local, level="L1C", zipped=True)
    memory = fsspec.filesystem("memory")
    src = f"memory://safe-{tmp_path.name}/src"
    for path in local.rglob("*"):
        if path.is_file():
            memory.pipe_file(f"{src}/{path.relative_to(local).as_posix()}", path.read_bytes())
    assert sorted(s.key for s in store.list_sources(src)) == sorted([PRODUCT["L1C"] + ".zip", PRODUCT["L2A"]])
    summary = run_local(RunSpec(src=src, dst=str(tmp_path / "dst"), model="bicubic", scale=2.0))
    assert summary["ok"] == 2, summary["failures"]
    outputs = {}
    for level in ("L2A", "L1C"):
        with rasterio.open(tmp_path / "dst" / (PRODUCT[level][:-5] + ".tif")) as out:
            assert out.descriptions == BANDS and out.crs.to_epsg() == EPSG
            outputs[level] = out.read()
    np.testing.assert_array_equal(outputs["L2A"], outputs["L1C"])  # the same bands, either layout


def test_the_cli_takes_stac_source_and_refuses_an_unreadable_one_with_status_2(tmp_path, capsys):
    from pipeline.cli import main

    src = tmp_path / "src"
    src.mkdir()
    write_geotiff(src / "a.tif", np.full((1, 8, 8), 7, np.uint8))
    dst = tmp_path / "dst"
    common = ["run", str(src), str(dst), "--executor", "local", "-m", "bicubic", "-s", "2", "--no-progress"]
    assert main(common + ["--stac-source", str(tmp_path / "none.json")]) == 2
    assert "--stac-source" in capsys.readouterr().err and not dst.exists()
    assert main(common + ["--stac-source", "https://example.test/items/{stem}", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    item = read_json(rows(dst)["a.tif"]["stac_item_uri"])
    assert [link["href"] for link in item["links"] if link["rel"] == "derived_from"] == ["https://example.test/items/a"]
    assert read_json(str(dst / "_manifest" / "_runs" / f"{summary['run_id']}.json"))["config"]["stac_source"] == \
        "https://example.test/items/{stem}"


def test_plan_reads_a_safe_size_from_its_b02_header_folder_and_zip_alike(tmp_path):
    from pipeline.ops.plan import estimate

    make_safe(tmp_path / "src", level="L2A", size=48)
    make_safe(tmp_path / "src", level="L1C", size=32, zipped=True)
    planned = estimate(RunSpec(src=str(tmp_path / "src"), dst=str(tmp_path / "dst"), model="bicubic", scale=2.0))
    assert (planned.todo, planned.unknown_size) == (2, 0)
    assert planned.megapixels_in == pytest.approx((48 * 48 + 32 * 32) / 1e6)
    assert not (tmp_path / "dst").exists()
