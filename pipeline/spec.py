"""A run's settings, grouped, and the resume key derived from them.

Each field says which group it belongs to (source, model, inference, output, raster,
execution) and whether it changes an output. The resume key (`config_key`) is the hash
of the output-changing fields *as resolved* for the engine that runs them: a default
written out (`--scale 4` when the model is x4, `--precision fp32` on a CPU) gives the
same key as leaving it out, while the same command on another kind of device (fp32 on a
CPU, bf16 on a GPU) gives another key, so neither run takes the other's outputs as done.

The device is not in the key: at one precision, devices differ by float rounding only.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields

from pipeline.formats import DEFAULT_MAX_PIXELS
from pipeline.formats.nifti import PLANES as NIFTI_PLANES
from pipeline.formats.dicom import SYNTAX_CHOICES as DICOM_SYNTAXES
from pipeline.raster import BAND_MODES, RADIOMETRIC_MODES, RASTER_COMPRESSIONS, RASTER_FORMATS

DEFAULT_STREAM_THRESHOLD = 4096 * 4096


def _setting(default=None, *, group: str, output: bool = False, later: bool = False, **kwargs):
    """`later`: an output setting added after runs were recorded, in the resume key only
    when it is not its default, so that those runs keep their key."""
    if "default_factory" not in kwargs:
        kwargs["default"] = default
    return field(metadata={"group": group, "output": output, "later": later}, **kwargs)


@dataclass
class RunSpec:
    # source: what is read
    src: str = _setting(group="source")
    include: tuple[str, ...] = _setting((), group="source")
    exclude: tuple[str, ...] = _setting((), group="source")
    from_list: str | None = _setting(group="source")  # text or Parquet list of URLs/keys under src
    max_pixels: int | None = _setting(DEFAULT_MAX_PIXELS, group="source")
    limit: int | None = _setting(group="source")  # pilot runs: the first N images to do ...
    sample: int | None = _setting(group="source")  # ... or a random N of them
    storage_options: dict = _setting(group="source", default_factory=dict, repr=False)  # never recorded
    # model
    model: str | None = _setting(group="model", output=True)  # None: the bundled model for `scale`
    scale: float | None = _setting(group="model", output=True)  # None: the model's own
    # inference
    tile: int | None = _setting(group="inference", output=True)  # None = auto (deterministic), 0 = whole image
    overlap: int | None = _setting(group="inference", output=True)  # None = the model's
    precision: str = _setting("auto", group="inference", output=True)
    compile: bool = _setting(False, group="inference", output=True, later=True)  # torch.compile: kernels differ in rounding
    device: str = _setting("auto", group="inference")
    time_limit: float | None = _setting(group="inference")  # seconds per image
    batch_images: int = _setting(4, group="inference")
    # output: what is written, and where
    dst: str = _setting(group="output")
    format: str | None = _setting(group="output", output=True)  # None: the input's (GIF becomes PNG)
    quality: int = _setting(95, group="output", output=True)
    compress_level: int = _setting(1, group="output", output=True)  # zlib level for PNG/TIFF
    keep_extension: bool = _setting(False, group="output", output=True)  # photo.gif -> photo.gif.png
    # STAC Items: the source's Item for `derived_from` (a template or a key -> URL file); only the
    # Items' links depend on it, not the outputs, so it is not in the resume key
    stac_source: str | None = _setting(group="output")
    dicom_syntax: str = _setting("explicit", group="output", output=True, later=True)  # DICOM_SYNTAXES; lossless only
    # georeferenced rasters (formats/gdal.py): Cloud-Optimized GeoTIFF or tiled GeoTIFF, codec, block side
    raster_format: str = _setting("cog", group="output", output=True, later=True)
    raster_compress: str = _setting("deflate", group="output", output=True, later=True)
    raster_blocksize: int = _setting(512, group="output", output=True, later=True)
    # raster
    band_mode: str = _setting("rgb+gray", group="raster", output=True)
    radiometric: str = _setting("auto", group="raster", output=True)
    stream_threshold: int = _setting(DEFAULT_STREAM_THRESHOLD, group="raster", output=True)  # 0: never stream
    nifti_plane: str = _setting("auto", group="raster", output=True, later=True)  # the plane NIfTI slices are upscaled in
    # execution
    reference: str | None = _setting(group="execution")  # HR references for PSNR/SSIM/LPIPS
    run_id: str | None = _setting(group="execution")
    force: bool = _setting(False, group="execution")
    include_quarantined: bool = _setting(False, group="execution")
    storage_failures: int = _setting(5, group="execution")  # images in a row failing on storage; 0: never stop

    def __post_init__(self):
        if not self.model:
            from pipeline.models import default_model

            self.model = default_model(self.scale)
        self.include, self.exclude = tuple(self.include), tuple(self.exclude)
        if self.band_mode not in BAND_MODES:
            raise ValueError(f"band mode must be one of {', '.join(BAND_MODES)}, not {self.band_mode!r}")
        if self.radiometric not in RADIOMETRIC_MODES:
            raise ValueError(f"radiometric scaling must be one of {', '.join(RADIOMETRIC_MODES)}, "
                             f"not {self.radiometric!r}")
        if self.nifti_plane not in NIFTI_PLANES:
            raise ValueError(f"NIfTI plane must be one of {', '.join(NIFTI_PLANES)}, not {self.nifti_plane!r}")
        if self.raster_format not in RASTER_FORMATS:
            raise ValueError(f"raster format must be one of {', '.join(RASTER_FORMATS)}, not {self.raster_format!r}")
        if self.raster_compress not in RASTER_COMPRESSIONS:
            raise ValueError(f"raster compression must be one of {', '.join(RASTER_COMPRESSIONS)}, "
                             f"not {self.raster_compress!r}")
        if not isinstance(self.raster_blocksize, int) or self.raster_blocksize < 16 or self.raster_blocksize % 16:
            raise ValueError(f"raster block size must be a multiple of 16 pixels, not {self.raster_blocksize!r}")
        if self.stream_threshold is None or self.stream_threshold < 0:
            raise ValueError(f"stream threshold must be a pixel count >= 0, not {self.stream_threshold!r}")
        if self.scale is not None and self.scale <= 0:
            raise ValueError(f"scale must be positive, not {self.scale}")
        if self.dicom_syntax not in DICOM_SYNTAXES:
            raise ValueError(f"DICOM syntax must be one of {', '.join(DICOM_SYNTAXES)}, not {self.dicom_syntax!r}")

    @classmethod
    def from_record(cls, recorded: dict, **overrides) -> "RunSpec":
        """The spec of an earlier run's record (unknown or removed keys ignored)."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in recorded.items() if k in known and k != "storage_options"}
        return cls(**{**values, **overrides})

    def public(self) -> dict:
        """The settings as recorded: storage options (credentials) left out."""
        record = asdict(self)
        record.pop("storage_options")
        record["storage_option_keys"] = sorted(self.storage_options)
        return record

    def model_scale_hint(self) -> int:
        """The scale a scale-free model (bicubic) is loaded at."""
        return max(1, round(self.scale)) if self.scale else 4

    def resolved(self, model, engine: dict) -> dict:
        """The output-changing settings as the engine will apply them."""
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.metadata["output"]}
        values.update(model=model.sha256 or model.name, scale=float(self.scale or model.scale),
                      tile=engine["tile"], overlap=engine["overlap"], precision=engine["precision"])
        for f in fields(self):  # settings added later: at their default, keys made before them hold
            if f.metadata.get("later") and values.get(f.name) == f.default:
                del values[f.name]
        deep = engine.get("precision_above_8_bits", engine["precision"])
        if deep != engine["precision"]:  # `auto`'s bf16 with 16-bit images in fp32 is not `--precision bf16`
            values["precision_above_8_bits"] = deep
        return values

    def config_key(self, model, engine: dict) -> str:
        """The resume key: a stable hash of `resolved`."""
        text = json.dumps(self.resolved(model, engine), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def groups() -> dict[str, list[str]]:
    """Field names by group, in order (for documentation and the CLI)."""
    out: dict[str, list[str]] = {}
    for f in fields(RunSpec):
        out.setdefault(f.metadata["group"], []).append(f.name)
    return out
