"""A two-node cluster of 1 CPU each (ray.cluster_utils.Cluster: real raylets on this
machine), two workers of 0.5 CPU: the actors leave each node 0.5 CPU, and every task the
job needs must fit in that. (Ray Data's read_parquet lists files in a task of 1 CPU that
no node could place: the run made no progress until the stall watchdog ended it.)"""

import io

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.job.ray import RayOptions, run_ray
from pipeline.spec import RunSpec

ray = pytest.importorskip("ray")
cluster_utils = pytest.importorskip("ray.cluster_utils")


@pytest.fixture(scope="module")
def two_nodes():
    cluster = cluster_utils.Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def test_half_cpu_workers_on_two_one_cpu_nodes_finish_every_image(two_nodes, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(4):
        buffer = io.BytesIO()
        Image.fromarray(np.full((8, 8, 3), 50 * i, np.uint8)).save(buffer, format="PNG")
        (src / f"{i}.png").write_bytes(buffer.getvalue())
    spec = RunSpec(src=str(src), dst=str(tmp_path / "dst"), model="bicubic", scale=2)
    summary = run_ray(spec, RayOptions(workers=2, cpus_per_worker=0.5, stall_timeout=90))
    assert (summary["ok"], summary["failed"]) == (4, 0)
    rows = pq.read_table(tmp_path / "dst" / "_manifest").to_pylist()
    assert sorted(r["image_id"] for r in rows) == ["0.png", "1.png", "2.png", "3.png"]
    assert not (tmp_path / "dst" / "_plans").exists()
