"""Multi-frame DICOM benchmark: seconds and peak RSS of one Enhanced CT instance of 200 frames
of 512 x 512 int16 (12 bits stored, rescale to HU in the shared functional groups, one
position per frame), made with pydicom in a temporary folder, upscaled x2 by
`upscaler run --executor local` (`run_local`): the frames go through the engine in groups
(stages/infer.py), so the float temporaries are one group's whatever the frame count.

Cases, each in a process of its own so each peak is its own:

- ct200_x2_bicubic: all 200 frames, `bicubic` (input 100 MiB, output 400 MiB);
- ct4_x2_edsr: 4 frames of the same, the bundled `edsr-x2` model.

`peak_rss_mib` is ru_maxrss of the child (it includes some 430 MiB of torch's shared-library
pages); `input_mib` / `output_mib` the pixel data. Prints one JSON object.

    python benchmarks/dicom_multiframe.py [--frames 200] [--size 512] [--cases a,b]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = {"ct200_x2_bicubic": ("bicubic", None), "ct4_x2_edsr": ("edsr-x2", 4)}


def make_ct(path: Path, frames: int, size: int) -> None:
    """An Enhanced CT instance, uncompressed, smooth anatomy-like content that differs per frame."""
    import numpy as np
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    body = ((x - 0.5) ** 2 + (y - 0.5) ** 2) < 0.18
    stack = np.empty((frames, size, size), np.int16)
    for k in range(frames):
        tissue = 40 + 300 * np.sin(12 * x + k / 9) * np.cos(9 * y - k / 13)
        stack[k] = np.where(body, tissue + 1024, 24).astype(np.int16)  # stored = HU + 1024
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.EnhancedCTImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = generate_uid(), generate_uid(), "CT"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    shared, measures, orientation, transform = Dataset(), Dataset(), Dataset(), Dataset()
    measures.PixelSpacing, measures.SliceThickness = [0.7, 0.7], 1.0
    orientation.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = 1, -1024, "HU"
    shared.PixelMeasuresSequence, shared.PlaneOrientationSequence = [measures], [orientation]
    shared.PixelValueTransformationSequence = [transform]
    ds.SharedFunctionalGroupsSequence = [shared]
    groups = []
    for k in range(frames):
        group, position = Dataset(), Dataset()
        position.ImagePositionPatient = [-179.2, -179.2, float(k)]
        group.PlanePositionSequence = [position]
        groups.append(group)
    ds.PerFrameFunctionalGroupsSequence = groups
    ds.set_pixel_data(stack, "MONOCHROME2", 12, generate_instance_uid=False)
    ds.save_as(path, enforce_file_format=True)


def run_case(src: str, dst: str, model: str) -> dict:
    """One run in this process (a child): its figures."""
    import pyarrow.parquet as pq

    from pipeline.job.local import run_local
    from pipeline.spec import RunSpec

    started = time.perf_counter()
    summary = run_local(RunSpec(src=src, dst=dst, model=model, scale=2.0))
    seconds = time.perf_counter() - started
    row = pq.read_table(os.path.join(dst, "_manifest")).to_pylist()[0]
    out = next(Path(dst).glob("*.dcm"))
    return {
        "status": row["status"], "error": row["error"], "note": row["metrics_note"],
        "seconds": round(seconds, 2), "seconds_read": round(row["seconds_read"] or 0, 2),
        "seconds_infer": round(row["seconds_infer"] or 0, 2), "seconds_write": round(row["seconds_write"] or 0, 2),
        "output_frames_per_s": None if summary["ok"] != 1 else round(_frames(out) / seconds, 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "output_file_mib": round(out.stat().st_size / 2**20, 1), "lr_psnr": row["lr_psnr"],
    }


def _frames(path: Path) -> int:
    import pydicom

    return int(pydicom.dcmread(path, stop_before_pixels=True).NumberOfFrames)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--make", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(run_case(*json.loads(args.child))))
        return
    if args.make:
        path, frames, size = json.loads(args.make)
        make_ct(Path(path), frames, size)
        return
    work = Path(tempfile.mkdtemp(prefix="dicom-multiframe-"))
    results: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
                     "input": f"Enhanced CT, {args.frames} frames of {args.size} x {args.size} int16 (12 bits stored)",
                     "input_mib": round(args.frames * args.size**2 * 2 / 2**20, 1),
                     "output_mib": round(args.frames * args.size**2 * 8 / 2**20, 1)}
    try:
        for case in args.cases.split(","):
            model, frames = CASES[case]
            src, dst = work / f"src-{case}", work / f"dst-{case}"
            src.mkdir()
            started = time.perf_counter()
            # made in a process of its own: its memory would otherwise start every child's peak
            subprocess.run([sys.executable, __file__, "--make", json.dumps(
                [str(src / "ct.dcm"), frames or args.frames, args.size])], check=True)
            made = round(time.perf_counter() - started, 1)
            child = subprocess.run([sys.executable, __file__, "--child", json.dumps([str(src), str(dst), model])],
                                   check=True, capture_output=True, text=True)
            results[case] = {"frames": frames or args.frames, "model": model, "seconds_to_make": made,
                             **json.loads(child.stdout.strip().splitlines()[-1])}
            print(json.dumps({case: results[case]}), file=sys.stderr, flush=True)  # progress
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
