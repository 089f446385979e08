"""infra/ proven, not just present: the Ray cluster launcher config against the schema that ships in the Ray
wheel, the KubeRay manifest's essentials, the IAM policy's reach, and the server scripts' defaults."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import yaml

INFRA = Path(__file__).resolve().parents[2] / "infra"


def test_cluster_yaml_is_valid_against_rays_own_schema():
    import jsonschema
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    config = yaml.safe_load((INFRA / "ray" / "cluster.yaml").read_text())
    jsonschema.validate(config, schema)  # raises on any violation
    broken = {**config, "available_node_types": {"head": {"node_config": {}}}}  # the schema does reject things
    try:
        jsonschema.validate(broken, schema)
        rejected = False
    except jsonschema.ValidationError:
        rejected = True
    assert rejected
    assert config["head_node_type"] in config["available_node_types"]
    for node in config["available_node_types"].values():
        assert node["node_config"].get("IamInstanceProfile"), "S3 through the instance role, not keys"
    start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in start
    assert not re.search(r"AWS_(SECRET_ACCESS_KEY|ACCESS_KEY_ID)", (INFRA / "ray" / "cluster.yaml").read_text())


def test_kuberay_manifest():
    docs = list(yaml.safe_load_all((INFRA / "k8s" / "raycluster.yaml").read_text()))
    kinds = {d["kind"]: d for d in docs}
    assert set(kinds) == {"ServiceAccount", "RayCluster"}
    account = kinds["ServiceAccount"]["metadata"]["name"]
    spec = kinds["RayCluster"]["spec"]
    import ray

    assert spec["rayVersion"] == ray.__version__
    assert spec["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "127.0.0.1"
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    images = set()
    for g in groups:
        pod = g["template"]["spec"]
        assert pod["serviceAccountName"] == account
        for c in pod["containers"]:
            images.add(c["image"])
            assert not c["image"].endswith(":latest") and ":" in c["image"], c["image"]
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            assert env.get("MLFLOW_TRACKING_URI", "").startswith("http"), env
            assert env.get("AWS_ENDPOINT_URL", "").startswith("http"), env
            assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} & set(env), "no keys: the service account"
            res = c["resources"]
            assert res["requests"] == res["limits"], "requests = limits: Ray's resources match the pod's"
    assert len(images) == 1, images
    gpu = spec["workerGroupSpecs"][0]
    limits = gpu["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert str(limits["nvidia.com/gpu"]) == gpu["rayStartParams"]["num-gpus"]
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == str(
        spec["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"])


def test_s3_policy_covers_what_a_sweep_touches():
    policy = json.loads((INFRA / "s3" / "policy.json").read_text())
    resources = [r for s in policy["Statement"] for r in s["Resource"]]
    writes = [s for s in policy["Statement"] if "s3:PutObject" in s["Action"]]
    assert any("mlflow-artifacts" in r for s in writes for r in s["Resource"])
    assert any(r.endswith("/afsweep/*") for s in writes for r in s["Resource"]), "run.storage: Tune/Train state"
    assert any("latents" in r for r in resources)


def test_server_scripts_bind_loopback_by_default():
    for script in (INFRA / "mlflow" / "server.sh", INFRA / "postgres" / "start.sh", INFRA / "postgres" / "stop.sh"):
        assert subprocess.run(["bash", "-n", str(script)]).returncode == 0, script
    assert '--host "${MLFLOW_HOST:-127.0.0.1}"' in (INFRA / "mlflow" / "server.sh").read_text()
    assert "LISTEN=${PG_LISTEN:-127.0.0.1}" in (INFRA / "postgres" / "start.sh").read_text()
    assert "0.0.0.0" not in (INFRA / "postgres" / "start.sh").read_text()
