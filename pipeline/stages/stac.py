"""STAC: an Item beside each georeferenced output, and one Collection per run that lists them.

The Item is built (pystac) from the written output's own header, read back with rasterio,
so it describes what was written, not what was meant to be: footprint and bbox in
WGS 84, the projection extension (`proj:code`, shape, transform), the bands (eo: names
and colours; raster: data type, nodata, resolution), the processing extension
(`processing:software`: this package's version and the model's sha256;
`processing:lineage`: model and scale), the output as the `data` asset, the source file
as the `source` asset, and a `derived_from` link to the source's own STAC Item where
`--stac-source` names one. It lies at `<output>.json` (an output key is unique, so its
Item's key is too) and is written atomically through the store, like the output.

Outputs without georeference (photos, plain multiband TIFFs, DICOM) get no Item and a
null `stac_item_uri`; a failed image gets none either.

The run's Collection, `DST/_stac/<run id>/collection.json`, is written at the end of the
run, before the run record (the commit marker), with the extent of its Items. A run id is
new for every run; one given again with `--run-id` keeps the Items the earlier
Collection listed (it is merged, never replaced).

Offline validation: pystac bundles the core JSON schemas (Item, Collection) but not the
extensions' (projection, eo, raster, processing), which it would fetch from their URLs.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import functools
import importlib.util
import io
import json
import math
import posixpath
from concurrent.futures import ThreadPoolExecutor

from pipeline import __version__, store
from pipeline.formats import safe

PROCESSING = "https://stac-extensions.github.io/processing/v1.2.0/schema.json"
JSON = "application/json"


def item_path(output_path: str) -> str:
    return output_path + ".json"


def collection_path(dst_root: str, run_id: str) -> str:
    return posixpath.join(dst_root, "_stac", run_id, "collection.json")


def collection_id(run_id: str) -> str:
    return f"upscaler-{run_id}"


# --------------------------------------------------------------------------- --stac-source


def check_source(spec) -> None:
    """Refuse a --stac-source that cannot be used before any image is read (a usage error)."""
    if spec.stac_source:
        _mapping(spec.stac_source, json.dumps(spec.storage_options, sort_keys=True, default=str))


def source_item(spec, key: str, uri: str) -> str | None:
    """The URL of the STAC Item of source `key` (at `uri`), from --stac-source: a template
    with `{key}` (the source key) and `{stem}` (its name without extension: the product id
    of a `.SAFE` or `.SAFE.zip`), or a JSON object / CSV (`key,item`) file mapping source
    keys (or URLs) to Item URLs. Archives name their Items by product or scene ids that a
    file's key does not always hold, hence the file; the template saves writing one where
    it does (e.g. a SAFE's product id)."""
    if not spec.stac_source:
        return None
    mapping = _mapping(spec.stac_source, json.dumps(spec.storage_options, sort_keys=True, default=str))
    if isinstance(mapping, str):
        return mapping.format(key=key, stem=posixpath.basename(store.split_extension(key)[0]))
    return mapping.get(key) or mapping.get(uri)


@functools.lru_cache(maxsize=4)
def _mapping(value: str, options: str) -> str | dict:
    if "{" in value:
        try:
            value.format(key="k", stem="s")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"--stac-source template {value!r}: only {{key}} and {{stem}} can be filled "
                             f"({type(exc).__name__}: {exc})") from None
        return value
    try:
        text = store.read_bytes(value, json.loads(options)).decode("utf-8-sig")
    except FileNotFoundError:
        raise ValueError(f"--stac-source {value}: no such file (give a JSON or CSV mapping, or a template "
                         "with {key} or {stem})") from None
    try:
        if value.lower().endswith(".json"):
            mapping = json.loads(text)
            if not isinstance(mapping, dict):
                raise ValueError("not a JSON object of source key -> item URL")
        else:
            mapping = {row["key"]: row["item"] for row in csv.DictReader(io.StringIO(text))}
    except (ValueError, KeyError) as exc:
        raise ValueError(f"--stac-source {value}: {exc if isinstance(exc, ValueError) else 'no key,item header'}"
                         ) from None
    return {str(k): str(v) for k, v in mapping.items()}


# --------------------------------------------------------------------------- Items


def write_item(row, spec, dst_fs, dst_root: str, output_path: str, written) -> str | None:
    """Write the Item of the output at `output_path`, whose content is `written` (bytes, or
    a local file path); return the Item's URI, or None when the output is not georeferenced
    (or the `geo` extra is not installed: the row's note says so)."""
    if not all(importlib.util.find_spec(name) for name in ("pystac", "rasterio")):
        row.note("no STAC item: pip install 'pipeline[geo]' for one")
        return None
    item = build_item(row, spec, store.full_uri(dst_fs, output_path), posixpath.relpath(output_path, dst_root),
                      written, store.full_uri(dst_fs, collection_path(dst_root, row.run_id)))
    if item is None:
        return None
    path = item_path(output_path)
    store.write_atomic(dst_fs, path, json.dumps(item.to_dict(include_self_link=False), indent=1).encode())
    return store.full_uri(dst_fs, path)


def build_item(row, spec, output_uri: str, key: str, written, collection_uri: str):
    import pystac
    import rasterio
    from pystac.extensions.eo import Band, EOExtension
    from pystac.extensions.projection import ProjectionExtension
    from pystac.extensions.raster import DataType, NoDataStrings, RasterBand, RasterExtension
    from rasterio.io import MemoryFile
    from rasterio.warp import transform_bounds, transform_geom

    with contextlib.ExitStack() as stack:
        ds = stack.enter_context(stack.enter_context(MemoryFile(written)).open() if isinstance(written, bytes)
                                 else rasterio.open(written))
        if ds.crs is None or ds.transform.is_identity:
            return None
        left, bottom, right, top = ds.bounds
        corners = [[(left, bottom), (right, bottom), (right, top), (left, top), (left, bottom)]]
        geometry = transform_geom(ds.crs, "EPSG:4326", {"type": "Polygon", "coordinates": corners})
        bbox = list(transform_bounds(ds.crs, "EPSG:4326", *ds.bounds, densify_pts=21))
        tags, epsg = ds.tags(), ds.crs.to_epsg()
        sentinel2 = tags.get("SPACECRAFT_NAME", "").lower().startswith("sentinel-2")
        cog = ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        eo_bands = [Band.create(name=description or f"b{index}",
                                common_name=_common_name(description, colour.name, sentinel2))
                    for index, (description, colour) in enumerate(zip(ds.descriptions, ds.colorinterp), 1)]
        nodata = NoDataStrings.NAN if ds.nodata is not None and math.isnan(ds.nodata) else ds.nodata
        raster_bands = [RasterBand.create(data_type=DataType(dtype), nodata=nodata,
                                          spatial_resolution=abs(ds.res[0]))
                        for dtype in ds.dtypes]
        projection = dict(epsg=epsg, wkt2=None if epsg else ds.crs.to_wkt(), shape=[ds.height, ds.width],
                          transform=list(ds.transform)[:6], bbox=list(ds.bounds))
    made = dt.datetime.now(dt.timezone.utc)  # `datetime`: the sensing time where the source says, else this
    item = pystac.Item(id=key, geometry=geometry, bbox=bbox, datetime=_acquired(tags) or row.started_at or made,
                       properties={}, collection=collection_id(row.run_id))
    item.common_metadata.created = made
    if sentinel2:
        item.common_metadata.platform = tags["SPACECRAFT_NAME"].lower()
        item.common_metadata.constellation, item.common_metadata.instruments = "sentinel-2", ["msi"]
    ProjectionExtension.ext(item, add_if_missing=True).apply(**projection)
    item.stac_extensions.append(PROCESSING)
    factor = f"x{row.scale:g}"
    weights = f"sha256:{row.model_sha256}" if row.model_sha256 else "built in (no weights)"
    item.properties.update({
        "processing:software": {"upscaler": __version__, row.model: weights},
        "processing:lineage": (f"Super-resolution {factor} of {row.src_uri} by upscaler {__version__} with model "
                               f"{row.model} ({weights}): pixel size divided by {row.scale:g}, CRS and extent "
                               f"unchanged; band mode {spec.band_mode}, radiometric scaling {spec.radiometric}"),
        "processing:datetime": pystac.utils.datetime_to_str(made),
        "upscaler:run_id": row.run_id, "upscaler:config_key": row.config_key,
    })
    asset = pystac.Asset(href=output_uri, media_type=pystac.MediaType.COG if cog else pystac.MediaType.GEOTIFF,
                         roles=["data"], title=f"{posixpath.basename(key)} ({factor})")
    item.add_asset("data", asset)
    EOExtension.ext(asset, add_if_missing=True).bands = eo_bands
    RasterExtension.ext(asset, add_if_missing=True).bands = raster_bands
    item.add_asset("source", pystac.Asset(href=row.src_uri, roles=["source"], title="the image it was made from"))
    derived = source_item(spec, row.image_id, row.src_uri)
    if derived:
        item.add_link(pystac.Link("derived_from", derived, media_type=JSON, title="source item"))
    item.add_link(pystac.Link("collection", collection_uri, media_type=JSON, title=f"run {row.run_id}"))
    return item


def _common_name(description: str | None, colour: str, sentinel2: bool) -> str | None:
    """eo's common band name: a Sentinel-2 band's (B08: nir), else red/green/blue from its colour."""
    if sentinel2 and description in safe.COMMON_NAMES:
        return safe.COMMON_NAMES[description]
    return colour if colour in ("red", "green", "blue") else None


def _acquired(tags: dict) -> dt.datetime | None:
    """The sensing time a Sentinel-2 product carries (formats/safe.py), else None."""
    import pystac

    try:
        return pystac.utils.str_to_datetime(tags["PRODUCT_START_TIME"])
    except (KeyError, ValueError):
        return None


# --------------------------------------------------------------------------- the run's Collection


def write_collection(dst_fs, dst_root: str, run_id: str, item_uris: list[str],
                     storage_options: dict | None) -> str | None:
    """The run's Collection, listing `item_uris` (read back for their extent) and those an
    earlier Collection of the same run id listed; returns its URI (None without any Item)."""
    import pystac

    path = collection_path(dst_root, run_id)
    uris = list(dict.fromkeys(item_uris))
    if dst_fs.exists(path):  # the same --run-id again: what it listed stays listed
        earlier = json.loads(store.read_bytes(store.full_uri(dst_fs, path), storage_options))
        uris = list(dict.fromkeys([link["href"] for link in earlier.get("links", ()) if link.get("rel") == "item"]
                                  + uris))
    if not uris:
        return None
    with ThreadPoolExecutor(8) as pool:
        items = list(pool.map(lambda uri: json.loads(store.read_bytes(uri, storage_options)), uris))
    boxes = [item["bbox"] for item in items]
    times = sorted(pystac.utils.str_to_datetime(item["properties"]["datetime"]) for item in items)
    extent = pystac.Extent(
        pystac.SpatialExtent([[min(b[0] for b in boxes), min(b[1] for b in boxes),
                               max(b[2] for b in boxes), max(b[3] for b in boxes)]]),
        pystac.TemporalExtent([[times[0], times[-1]]]))
    collection = pystac.Collection(collection_id(run_id), f"Outputs of upscaler run {run_id} (upscaler {__version__})",
                                   extent, title=f"upscaler run {run_id}", license="other")
    for uri, item in zip(uris, items):
        collection.add_link(pystac.Link("item", uri, media_type=JSON, title=item["id"]))
    store.write_atomic(dst_fs, path, json.dumps(collection.to_dict(include_self_link=False), indent=1).encode())
    return store.full_uri(dst_fs, path)
