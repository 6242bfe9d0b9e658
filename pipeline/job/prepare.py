"""Before the first image: the model (for its sha256), the resume key from the resolved
settings, what earlier runs did, and the to-do list with its outputs checked. Shared by
both executors and by `upscaler plan` (which runs nothing and writes nothing)."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline import store
from pipeline.models import LoadedModel, load_model
from pipeline.job import resume
from pipeline.job.sink import RunInfo, now
from pipeline.stages import stac
from pipeline.stages.list import ToDo, list_sources, plan_outputs


@dataclass
class Prepared:
    info: RunInfo
    engine: dict  # the resolved engine settings (device, precision, tile, overlap)
    todo: ToDo  # iterates PlannedImage
    counts: resume.Plan


def load_spec_model(spec) -> LoadedModel:
    return load_model(spec.model, scale=spec.model_scale_hint(), storage_options=spec.storage_options)


def prepare(spec, model: LoadedModel, engine: dict) -> Prepared:
    """`engine` is the `Upscaler.info` of the engine that will run (or of one like it)."""
    stac.check_source(spec)  # a --stac-source that cannot be read is a usage error, before any image
    key = spec.config_key(model, engine)
    dst_fs, dst_root = store.open_location(spec.dst, spec.storage_options)
    dst_fs.invalidate_cache()  # other processes (workers, earlier runs) changed it
    prior = resume.PriorIndex.load(dst_fs, dst_root, key)
    if spec.force:
        prior = resume.PriorIndex({}, owners=prior.owners)
    counts = resume.Plan()
    sources = resume.to_do(list_sources(spec), prior, dst_fs, spec.force, counts,
                           include_quarantined=spec.include_quarantined, limit=spec.limit, sample=spec.sample)
    todo = plan_outputs(sources, spec, owners=prior.owners, dst_fs=dst_fs, dst_root=dst_root,
                        case_insensitive=store.is_case_insensitive(dst_fs, dst_root))
    info = RunInfo(spec.run_id or store.new_run_id(), now(), spec, key, model, dst_fs, dst_root,
                   skipped=counts.skipped, quarantined=counts.quarantined)
    return Prepared(info, engine, todo, counts)
