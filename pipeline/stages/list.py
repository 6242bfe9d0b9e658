"""List: the images a run covers, each with the output key it will be written to.

Outputs are checked against each other, and against what earlier runs wrote, before
anything is written: two sources that map to one output (`photo.png` and `photo.gif`;
`--format png` over `a.jpg` and `a.png`; `A.png` and `a.png` on a case-insensitive
destination) are both refused, each with a row naming the other, and no output
replaces another. `--keep-extension` names outputs after the whole source name
(`photo.gif.png`), so sources of one stem never meet. A source whose output an earlier
run wrote for another image is refused the same way.

Source and destination: the same location is a usage error (outputs would replace the
originals); a destination inside the source is left out of the listing.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Iterable, Iterator

import fsspec

from pipeline import formats, store

EXTENSION_FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".gif": "gif", ".webp": "webp",
                     ".bmp": "bmp", ".tif": "tiff", ".tiff": "tiff", ".dcm": "dicom", ".jp2": "jp2",
                     ".nii": "nifti", ".nii.gz": "nifti-gz",
                     ".safe": "tiff"}  # a Sentinel-2 product (formats/safe.py) is read as a GeoTIFF


@dataclass(frozen=True)
class PlannedImage:
    source: store.Source
    output_key: str  # relative to DST; "" when the key is unsafe (the read stage says why)
    refused: str = ""  # why it is not attempted: another source has the same output


def list_sources(spec) -> Iterator[store.Source]:
    """The sources under SRC (or named by --from-list), never the destination's own files."""
    relation = store.relation(spec.src, spec.dst, spec.storage_options)
    if relation == "same":
        raise ValueError(f"source and destination are the same location ({spec.dst}): the outputs would "
                         "replace the originals; give another destination")
    if spec.from_list:
        return sources_from_list(spec.from_list, spec.src, spec.storage_options)
    exclude_prefix = store.open_location(spec.dst, spec.storage_options)[1] if relation == "dst_inside_src" else None
    return store.list_sources(spec.src, include=spec.include, exclude=spec.exclude,
                              storage_options=spec.storage_options, exclude_prefix=exclude_prefix)


def output_key(key: str, spec) -> str:
    """The output key planned from the source's name (the write stage keeps to it)."""
    extension = store.split_extension(key)[1].lower()
    try:
        _fmt, out_ext = formats.output_format(EXTENSION_FORMATS.get(extension, "png"), spec.format)
    except ValueError:  # e.g. --format for DICOM: the write stage refuses it with the reason
        out_ext = extension
    return store.output_key(key, out_ext, keep_extension=spec.keep_extension)


class ToDo:
    """The images to do, in listing order, as compact as a million of them allow: the
    sources, and the reasons for the few that are refused; each image's output key is
    derived again when it is handed out."""

    def __init__(self, sources: list[store.Source], refused: dict[int, str], spec):
        self.sources, self.refused, self.spec = sources, refused, spec

    def __len__(self) -> int:
        return len(self.sources)

    def __iter__(self) -> Iterator[PlannedImage]:
        for index, source in enumerate(self.sources):
            yield PlannedImage(source, _safe_output_key(source.key, self.spec), self.refused.get(index, ""))


def _safe_output_key(key: str, spec) -> str:
    try:
        return output_key(key, spec)
    except store.UnsafeKeyError:
        return ""


def plan_outputs(sources: Iterable[store.Source], spec, *, owners: dict[str, str], dst_fs, dst_root: str,
                 case_insensitive: bool) -> ToDo:
    """Every source to do, with the ones refused that share an output key with another
    source, or with an earlier run's output of another image."""
    todo: list[store.Source] = []

    def claim_of(source: store.Source) -> str:
        key = _safe_output_key(source.key, spec)
        return store.collision_key(key, case_insensitive) if key else ""

    # By the claim's hash, not the claim, to hold a million of them in little memory; a
    # hash match is confirmed on the claims themselves (a 64-bit hash collision is kept apart).
    first: dict[int, int] = {}  # hash of a collision key -> the first source that claims it
    apart: dict[str, int] = {}  # claims whose hash another claim took
    shared: dict[str, list[int]] = {}  # collision key -> every source that claims it, where several do
    for source in sources:
        claim = claim_of(source)
        if claim:
            index, digest = len(todo), hash(claim)
            if digest not in first:
                first[digest] = index
            elif claim_of(todo[first[digest]]) == claim:
                shared.setdefault(claim, [first[digest]]).append(index)
            elif claim in apart:
                shared.setdefault(claim, [apart[claim]]).append(index)
            else:
                apart[claim] = index
        todo.append(source)
    del first, apart
    refused: dict[int, str] = {}
    for indices in shared.values():
        for i in indices:
            others = ", ".join(todo[j].key for j in indices if j != i)
            refused[i] = (f"output {_safe_output_key(todo[i].key, spec)} would also be the output of {others}; "
                          "rename one, or use --keep-extension")
    if owners:  # outputs earlier runs wrote, by the image they wrote them for
        for i, source in enumerate(todo):
            key = _safe_output_key(source.key, spec)
            owner = owners.get(store.full_uri(dst_fs, posixpath.join(dst_root, key))) if key else None
            if owner is not None and owner != source.key and i not in refused:
                refused[i] = (f"output {key} was written by an earlier run for {owner}; "
                              "rename one, or use --keep-extension")
    return ToDo(todo, refused, spec)


def sources_from_list(list_uri: str, src: str, storage_options: dict | None) -> Iterator[store.Source]:
    """Sources named in a text file (one URL or key per line) or a Parquet file
    (column `uri`, `src_uri` or `key`); keys are relative to SRC."""
    fs, root = store.open_location(src, storage_options)
    if list_uri.endswith(".parquet"):
        import pyarrow.parquet as pq

        with fsspec.open(list_uri, "rb", **(storage_options or {})) as f:
            table = pq.read_table(f)
        column = next(c for c in ("uri", "src_uri", "key") if c in table.column_names)
        names = (str(v) for v in table[column].to_pylist())
    else:
        with fsspec.open(list_uri, "rt", **(storage_options or {})) as f:
            names = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    for name in names:
        path = fs._strip_protocol(name) if "://" in name else posixpath.join(root, name)
        key = posixpath.relpath(path, root) if root else path
        try:
            yield store.source_at(fs, path, key)
        except FileNotFoundError:  # the read stage records the failure
            yield store.Source(store.full_uri(fs, path), key, None, "missing")
