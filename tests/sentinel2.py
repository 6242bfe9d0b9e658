"""A small synthetic Sentinel-2 SAFE product, laid out as ESA ships them, its JPEG 2000
band files written by rasterio (GDAL's JP2OpenJPEG driver)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

PRODUCT = {"L2A": "S2A_MSIL2A_20240105T103421_N0510_R108_T32TQM_20240105T130000.SAFE",
           "L1C": "S2B_MSIL1C_20240105T103421_N0510_R108_T32TQM_20240105T120000.SAFE"}
ORIGIN = (600000.0, 5000040.0)  # UTM 32N, 10 m pixels
EPSG = 32632
BANDS = ("B02", "B03", "B04", "B08")


def band_values(band: str, size: int) -> np.ndarray:
    """Distinct, smooth, nonzero uint16 values per band (so band order shows after upscaling)."""
    offset = {"B02": 1000, "B03": 2000, "B04": 3000, "B08": 5000}.get(band, 7000)
    y, x = np.mgrid[0:size, 0:size]
    return (offset + 10 * x + 5 * y).astype(np.uint16)


def write_jp2(path: Path, array: np.ndarray, pixel: float = 10.0) -> None:
    import rasterio
    from rasterio.transform import from_origin

    array = array[None] if array.ndim == 2 else array
    with rasterio.open(path, "w", driver="JP2OpenJPEG", width=array.shape[2], height=array.shape[1],
                       count=array.shape[0], dtype=array.dtype.name, crs=f"EPSG:{EPSG}",
                       transform=from_origin(*ORIGIN, pixel, pixel), QUALITY=100, REVERSIBLE="YES") as ds:
        ds.write(array)


def make_safe(root: Path, *, level: str = "L2A", bands=BANDS, size: int = 64,
              zipped: bool = False) -> Path:
    """`root/<product>.SAFE` (or `.SAFE.zip`): MTD_MSIL*.xml, the 10 m bands, a 20 m band and,
    for L2A, the TCI image beside them (which must be left out)."""
    name = PRODUCT[level]
    tile = "T32TQM_20240105T103421"
    granule = root / name / "GRANULE" / f"{level}_T32TQM_A044000_20240105T103418"
    if level == "L2A":
        img, suffix = granule / "IMG_DATA" / "R10m", "_10m"
        (granule / "IMG_DATA" / "R20m").mkdir(parents=True)
        write_jp2(granule / "IMG_DATA" / "R20m" / f"{tile}_B05_20m.jp2", band_values("B05", size // 2), 20.0)
    else:
        img, suffix = granule / "IMG_DATA", ""
    img.mkdir(parents=True, exist_ok=True)
    for band in bands:
        write_jp2(img / f"{tile}_{band}{suffix}.jp2", band_values(band, size))
    if level == "L2A":
        write_jp2(img / f"{tile}_TCI{suffix}.jp2", np.full((3, size, size), 128, np.uint8))
    (root / name / f"MTD_MSI{level}.xml").write_text(f"""<?xml version="1.0" encoding="UTF-8"?>
<n1:Level-{level[1:]}_User_Product xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_Level-{level[1:]}.xsd">
  <n1:General_Info><Product_Info>
    <PRODUCT_START_TIME>2024-01-05T10:34:21.024Z</PRODUCT_START_TIME>
    <PRODUCT_TYPE>S2MSI{level[1:]}</PRODUCT_TYPE><PROCESSING_BASELINE>05.10</PROCESSING_BASELINE>
    <Datatake><SPACECRAFT_NAME>Sentinel-2{'A' if level == 'L2A' else 'B'}</SPACECRAFT_NAME></Datatake>
  </Product_Info>
  <Product_Image_Characteristics><Special_Values><SPECIAL_VALUE_TEXT>NODATA</SPECIAL_VALUE_TEXT>
    <SPECIAL_VALUE_INDEX>0</SPECIAL_VALUE_INDEX></Special_Values></Product_Image_Characteristics>
  </n1:General_Info>
</n1:Level-{level[1:]}_User_Product>
""")
    (root / name / "manifest.safe").write_text("<xfdu/>")
    if not zipped:
        return root / name
    archive = shutil.make_archive(str(root / name), "zip", root, name)
    shutil.rmtree(root / name)
    return Path(archive)
