"""Deployment files: every YAML parses, every entry point is accepted by the CLI,
names and images agree across files; `upscaler submit` against a real Ray job server."""

import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
IMAGE = "ghcr.io/upscaler/upscaler:0.1.0"


def documents() -> dict[str, list[dict]]:
    return {p.name: [d for d in yaml.safe_load_all(p.read_text()) if d] for p in sorted(DEPLOY.glob("*.yaml"))}


def rayjob_specs() -> list[tuple[str, dict]]:
    specs = []
    for name, docs in documents().items():
        for doc in docs:
            if doc["kind"] == "RayJob":
                specs.append((name, doc["spec"]))
            elif doc["kind"] == "RayCronJob":
                specs.append((name, doc["spec"]["jobTemplate"]))
            elif doc["kind"] == "ConfigMap":
                for text in doc["data"].values():
                    specs += [(name, d["spec"]) for d in yaml.safe_load_all(text) if d and d["kind"] == "RayJob"]
    return specs


def test_every_yaml_parses_and_names_its_kind():
    docs = documents()
    assert set(docs) == {"rayjob.yaml", "raycronjob.yaml", "cronjob.yaml", "rayservice.yaml"}
    kinds = {d["kind"] for ds in docs.values() for d in ds}
    assert {"RayJob", "RayCronJob", "CronJob", "ConfigMap", "ServiceAccount", "Role", "RoleBinding",
            "RayService"} <= kinds


def test_every_entrypoint_is_accepted_by_the_run_parser():
    specs = rayjob_specs()
    assert len(specs) == 3  # rayjob.yaml, raycronjob.yaml, and the RayJob inside cronjob.yaml's ConfigMap
    for name, spec in specs:
        argv = shlex.split(spec["entrypoint"])
        assert argv[:2] == ["python", "jobs/upscale.py"], name
        args = build_parser().parse_args(["run", *argv[2:]])
        assert args.src.startswith("s3://") and args.dst.startswith("s3://")


def test_clusters_have_a_gpu_free_head_and_an_autoscaling_gpu_group_that_shuts_down():
    for name, spec in rayjob_specs():
        assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0, name
        cluster = spec["rayClusterSpec"]
        assert cluster["enableInTreeAutoscaling"] is True
        head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
        assert "nvidia.com/gpu" not in head["resources"]["limits"]
        (group,) = cluster["workerGroupSpecs"]
        assert group["minReplicas"] == 0 and group["maxReplicas"] >= 1
        assert group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_rayservice_builds_the_served_app_on_gpu_replicas_with_keys_from_a_secret():
    pytest.importorskip("ray.serve", reason="the Ray Serve deployment needs ray[serve]")
    import importlib

    (service,) = [d for d in documents()["rayservice.yaml"] if d["kind"] == "RayService"]
    (app,) = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"]
    module, name = app["import_path"].split(":")
    assert type(getattr(importlib.import_module(module), name)(app["args"])).__name__ == "Application"
    (deployment,) = app["deployments"]
    assert deployment["name"] == "upscaler" and deployment["ray_actor_options"]["num_gpus"] == 1
    assert deployment["autoscaling_config"]["min_replicas"] >= 1
    cluster = service["spec"]["rayClusterSpec"]
    assert cluster["enableInTreeAutoscaling"] is True
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head["resources"]["limits"]
    (group,) = cluster["workerGroupSpecs"]
    worker = group["template"]["spec"]
    assert group["maxReplicas"] >= 1 and worker["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    mount = worker["containers"][0]["volumeMounts"][0]
    assert app["args"]["keys_file"].startswith(mount["mountPath"] + "/")
    assert worker["volumes"][0]["secret"]["secretName"] == "upscaler-keys" and "no_auth" not in app["args"]


def test_images_secrets_and_names_agree_across_files_and_no_credential_is_inline():
    text = "\n".join(p.read_text() for p in DEPLOY.glob("*.yaml"))
    images = set(re.findall(r"image:\s*(\S+)", text)) - {"bitnami/kubectl:1.31"}
    assert images == {IMAGE}
    assert set(re.findall(r"secretRef:\s*\n\s*name:\s*(\S+)", text)) == {"upscaler-storage"}
    assert not re.search(r"AWS_SECRET_ACCESS_KEY\s*[:=]\s*(?!\.\.\.)\S", text)
    assert "--storage-option" not in text  # credentials come from the Secret, never the entrypoint
    cron = documents()["cronjob.yaml"]
    account = next(d for d in cron if d["kind"] == "ServiceAccount")["metadata"]["name"]
    job = next(d for d in cron if d["kind"] == "CronJob")
    assert job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["serviceAccountName"] == account
    volume = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["volumes"][0]["configMap"]["name"]
    assert volume == next(d for d in cron if d["kind"] == "ConfigMap")["metadata"]["name"]
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert "USER 1000" in dockerfile and IMAGE in dockerfile and "cuda" in dockerfile.split("\n", 3)[2].lower()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A real Ray head with its job server, in its own processes."""
    pytest.importorskip("aiohttp_cors", reason="the Ray job server needs ray[default]")
    ray_bin = Path(sys.executable).with_name("ray")
    gcs, dashboard = _free_port(), _free_port()
    env = {"RAY_AUTH_MODE": "disabled", "PATH": f"{ray_bin.parent}:/usr/bin:/bin"}
    subprocess.run([str(ray_bin), "start", "--head", "--num-cpus=2", f"--port={gcs}", f"--dashboard-port={dashboard}",
                    "--include-dashboard=true", "--disable-usage-stats"], check=True, env=env, capture_output=True)
    yield f"http://127.0.0.1:{dashboard}"
    subprocess.run([str(ray_bin), "stop", "--force"], env=env, capture_output=True)


def test_submit_sends_the_run_to_a_ray_job_server_and_prints_the_job_id(ray_head, tmp_path, monkeypatch, capsys):
    from PIL import Image

    from pipeline.cli import main

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    src = tmp_path / "src"
    src.mkdir()
    Image.new("RGB", (8, 6), (200, 30, 60)).save(src / "one.png")
    code = main(["submit", "--address", ray_head, "--working-dir", str(ROOT), "--wait", "--",
                 str(src), str(tmp_path / "dst"), "--model", "bicubic", "--workers", "1", "--json"])
    job_id = capsys.readouterr().out.strip().splitlines()[0]
    assert code == 0 and job_id.startswith("raysubmit_")
    assert Image.open(tmp_path / "dst" / "one.png").size == (32, 24)


def test_submit_refuses_credentials_in_the_entrypoint_and_bad_options_before_sending(capsys):
    from pipeline.cli import main

    assert main(["submit", "--address", "http://127.0.0.1:9", "--", "s3://a", "s3://b",
                 "--storage-option", "secret=abc"]) == 2
    assert "credential" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["submit", "--address", "http://127.0.0.1:9", "--", "s3://a", "s3://b", "--precision", "fp64"])
    assert exit_info.value.code == 2
