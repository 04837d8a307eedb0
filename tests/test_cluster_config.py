"""The cluster files are what Ray and KubeRay accept: cluster.yaml passes the cluster launcher's own preparation and
schema validation (what `ray up` runs before it touches AWS), every Serve config parses as ServeDeploySchema, the
RayService embeds the same application, and its import_path builds the app (build only: no Ray, no GPUs)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def load(path: str) -> dict:
    return yaml.safe_load((REPO / path).read_text())


def launcher_config(raw: dict) -> dict:
    """What `ray up` does to a config before it starts anything: defaults merged in, then validated."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(raw))
    validate_config(prepared)
    return prepared


def serve_schema(raw: dict):
    from ray.serve.schema import ServeDeploySchema

    return ServeDeploySchema.model_validate(raw)


def built_deployments(app_schema) -> dict:
    """Import and call the application builder as `serve deploy` does, then build the deployment graph."""
    from ray._common.utils import import_attr
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
    from ray.serve._private.build_app import build_app

    app = call_user_app_builder_with_args_if_necessary(import_attr(app_schema.import_path), app_schema.args)
    return {d.name: d for d in build_app(app, name=app_schema.name).deployments}


# ---- cluster.yaml --------------------------------------------------------------------------------------------------


def test_cluster_yaml_passes_rays_validation():
    cfg = launcher_config(load("cluster.yaml"))
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"] == {"CPU": 0, "GPU": 0}  # the head takes no work
    assert types["cpu_worker"]["node_config"]["InstanceType"].startswith("c6i.")
    gpu_types = {n: t for n, t in types.items() if t["resources"].get("GPU", 0) > 0}
    assert {t["node_config"]["InstanceType"] for t in gpu_types.values()} == {"p5.48xlarge", "p4de.24xlarge"}
    setup = " ".join(cfg["setup_commands"])
    assert '-e ".[vllm]"' in setup
    head_start = " ".join(cfg["head_start_ray_commands"])
    assert "RAY_AUTH_MODE=token" in head_start and "RAY_AUTH_MODE=token" in " ".join(cfg["worker_start_ray_commands"])
    assert "serve deploy configs/serve_cluster.yaml" in head_start
    assert (REPO / "configs/serve_cluster.yaml").exists()


def test_rays_validation_rejects_a_broken_cluster_yaml():
    raw = load("cluster.yaml")
    raw["available_node_types"]["gpu_p5"]["min_wrokers"] = 1  # a typo: the schema allows no extra keys
    with pytest.raises(Exception, match="min_wrokers"):
        launcher_config(raw)
    raw = load("cluster.yaml")
    raw["head_node_type"] = "gpu_p6"
    with pytest.raises(ValueError, match="head_node_type"):
        launcher_config(raw)


# ---- Serve configs and the RayService -------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["configs/serve_twin.yaml", "configs/serve_cluster.yaml"])
def test_serve_configs_parse(path):
    schema = serve_schema(load(path))
    assert [a.import_path for a in schema.applications] == ["sysaware.serving.app:build"]


def test_the_rayservice_embeds_the_cluster_serve_config_with_token_auth():
    service = load("deploy/kuberay/rayservice.yaml")
    assert (service["apiVersion"], service["kind"]) == ("ray.io/v1", "RayService")
    cluster = service["spec"]["rayClusterConfig"]
    assert cluster["authOptions"] == {"mode": "token"}
    major, minor, *_ = map(int, cluster["rayVersion"].split("."))
    assert (major, minor) >= (2, 52)  # KubeRay's token auth needs Ray >= 2.52
    assert cluster["headGroupSpec"]["rayStartParams"]["num-gpus"] == "0"
    embedded = yaml.safe_load(service["spec"]["serveConfigV2"])
    serve_schema(embedded)
    on_disk = load("configs/serve_cluster.yaml")
    assert embedded["applications"] == on_disk["applications"]


def test_the_cluster_app_builds_with_one_gpu_per_tensor_parallel_rank():
    from sysaware.config import load_pool
    from sysaware.serving.app import INGRESS_NAME
    from sysaware.serving.orchestrator import ORCHESTRATOR_NAME

    service = load("deploy/kuberay/rayservice.yaml")
    (app_schema,) = serve_schema(yaml.safe_load(service["spec"]["serveConfigV2"])).applications
    deployments = built_deployments(app_schema)
    pool = load_pool(app_schema.args["pool"])
    assert {m.backend for m in pool.models} == {"vllm"}
    assert set(deployments) == {m.name for m in pool.models} | {INGRESS_NAME, ORCHESTRATOR_NAME}  # /v1/solve too
    overrides = {d.name: d.ray_actor_options for d in app_schema.deployments}
    assert set(overrides) == {m.name for m in pool.models}  # every override names a real deployment
    for m in pool.models:
        assert overrides[m.name].num_gpus == m.tensor_parallel, m.name
        assert deployments[m.name].num_replicas == m.replicas
