"""No cluster here: render deploy/ (kustomize base + overlays), validate every object against
the Kubernetes schemas (kubernetes-validate) and check images, commands, ports, probes,
settings and queue names against the code. The KEDA ScaledObject's list is checked against a
real Redis: queueing jobs through the real API makes exactly that key grow."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from urllib.parse import urlparse

import jsonschema
import kubernetes_validate
import pytest
import yaml

import k8s_render
from app.main import create_app
from service.settings import Settings, env_names
from conftest import REPO, npy_bytes
from nvc.cli import build_parser
from nvc.commands import serve as serve_cmds

DEPLOY = REPO / "deploy"
OVERLAYS = ("gpu", "cpu")
#: Kubernetes version the manifests are validated against (kubernetes-validate ships its schemas).
K8S_VERSION = "1.30"
#: NVC_* variables read by the codec library itself, not service settings.
CODEC_ENV = {"NVC_DEVICE"}
#: A typical job: a ~35 MB study at the README's slowest measured CPU speed (2.0 MB/s encode,
#: 2.2 MB/s verification decode), about 33 s. The worker's shutdown grace must cover many.
TYPICAL_JOB_SECONDS = 35 / 2.0 + 35 / 2.2

#: The part of KEDA's ScaledObject CRD (keda.sh/v1alpha1) deploy/ uses, with the redis-lists
#: trigger's metadata keys (keda.sh/docs/scalers/redis-lists). kubernetes-validate knows only
#: built-in kinds; this keeps a typo in the CRD object from passing silently.
SCALED_OBJECT_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {
                    "type": "object", "required": ["name"], "additionalProperties": False,
                    "properties": {"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                                   "name": {"type": "string"}},
                },
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": {"type": "integer", "minimum": 0},
                "advanced": {"type": "object"},
                "triggers": {
                    "type": "array", "minItems": 1,
                    "items": {
                        "type": "object", "required": ["type", "metadata"], "additionalProperties": False,
                        "properties": {
                            "type": {"const": "redis"},
                            "metadata": {
                                "type": "object", "required": ["listName", "listLength"],
                                "additionalProperties": False,
                                "properties": {
                                    key: {"type": "string"} for key in (
                                        "address", "addressFromEnv", "host", "port", "hostFromEnv", "portFromEnv",
                                        "usernameFromEnv", "passwordFromEnv", "listName", "listLength",
                                        "activationListLength", "enableTLS", "unsafeSsl", "databaseIndex",
                                    )
                                },
                            },
                            "authenticationRef": {"type": "object"},
                        },
                    },
                },
            },
        },
    },
}


def objects(overlay: str) -> list[dict]:
    return k8s_render.render(DEPLOY / "overlays" / overlay)


def by_kind(docs: list[dict], kind: str, name: str | None = None) -> list[dict] | dict:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    if name is not None:
        assert len(found) == 1, f"{kind}/{name}: {len(found)} objects"
        return found[0]
    return found


def container(deployment: dict, name: str) -> dict:
    return next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name)


def config_env(docs: list[dict]) -> dict[str, str]:
    """The NVC_* environment a pod gets from the ConfigMap and the Secret."""
    env = dict(by_kind(docs, "ConfigMap", "nvc-config")["data"])
    env.update(by_kind(docs, "Secret", "nvc-secrets")["stringData"])
    return env


def settings_of(docs: list[dict], **overrides) -> Settings:
    values: dict = {k[4:].lower(): v for k, v in config_env(docs).items()}
    values.update(overrides)
    return Settings(_env_file=None, **values)


def parse_nvc(c: dict):
    command = c["command"] + c.get("args", [])
    assert command[0] == "nvc", command
    return build_parser().parse_args(command[1:])


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {overlay: objects(overlay) for overlay in OVERLAYS}


@pytest.fixture(scope="module")
def routes() -> set[str]:
    return set(create_app(Settings(_env_file=None)).openapi()["paths"])


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


@pytest.mark.skipif(k8s_render.kubectl() is None, reason="kubectl is not installed: only the fallback renders")
@pytest.mark.parametrize("folder", ["base", "overlays/gpu", "overlays/cpu"])
def test_fallback_renderer_agrees_with_kubectl(folder):
    def key(doc):
        return (doc["kind"], doc["metadata"]["name"])

    by_kubectl = sorted(k8s_render.render_with_kubectl(DEPLOY / folder), key=key)
    by_python = sorted(k8s_render.render_in_python(DEPLOY / folder), key=key)
    assert [key(d) for d in by_python] == [key(d) for d in by_kubectl]
    for ours, theirs in zip(by_python, by_kubectl):
        assert ours == theirs, key(ours)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates_against_the_kubernetes_schemas(rendered, overlay):
    docs = rendered[overlay]
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ConfigMap", "Secret",
            "StatefulSet", "ScaledObject"} <= kinds
    for doc in docs:
        if doc["kind"] == "ScaledObject":
            jsonschema.validate(doc, SCALED_OBJECT_SCHEMA)
        else:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_validators_refuse_a_misspelt_field(rendered):
    deployment = copy.deepcopy(by_kind(rendered["gpu"], "Deployment", "nvc-worker"))
    deployment["spec"]["template"]["spec"]["terminationGracePeriod"] = 900
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    scaled = copy.deepcopy(by_kind(rendered["gpu"], "ScaledObject", "nvc-worker"))
    scaled["spec"]["triggers"][0]["metadata"]["listname"] = "nvc.gpu"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(scaled, SCALED_OBJECT_SCHEMA)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_environment_names_are_settings_and_parse(rendered, overlay):
    docs = rendered[overlay]
    known = env_names() | CODEC_ENV
    for name in config_env(docs):
        assert name in known, f"{name} is not a setting of service/settings.py"
    for deployment in by_kind(docs, "Deployment"):
        for c in deployment["spec"]["template"]["spec"]["containers"]:
            for var in c.get("env", []):
                if var["name"].startswith("NVC_"):
                    assert var["name"] in known, var["name"]
            sources = {(s.get("configMapRef") or s.get("secretRef"))["name"] for s in c["envFrom"]}
            assert sources == {"nvc-config", "nvc-secrets"}
    settings = settings_of(docs)
    assert settings.storage_backend == "s3" and settings.redis_url.startswith("redis://")
    # credentials only in the Secret
    assert not {"NVC_S3_SECRET_KEY", "NVC_S3_ACCESS_KEY", "NVC_API_KEYS"} & set(
        by_kind(docs, "ConfigMap", "nvc-config")["data"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_api_command_port_probes_and_autoscaler(rendered, routes, compose, overlay):
    docs = rendered[overlay]
    api = by_kind(docs, "Deployment", "nvc-api")
    c = container(api, "api")
    assert c["image"] == compose["services"]["api"]["image"]  # the CPU image (Dockerfile default variant)
    args = parse_nvc(c)
    assert args.handler is serve_cmds.api and args.host == "0.0.0.0"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": args.port}
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = c[probe]["httpGet"]
        assert get["path"] == path and path in routes
        assert ports.get(get["port"], get["port"]) == args.port
    service = by_kind(docs, "Service", "nvc-api")
    assert service["spec"]["selector"] == api["spec"]["selector"]["matchLabels"]
    assert ports[service["spec"]["ports"][0]["targetPort"]] == args.port
    hpa = by_kind(docs, "HorizontalPodAutoscaler", "nvc-api")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "nvc-api"}
    assert hpa["spec"]["minReplicas"] >= 2 and hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert "cpu" in c["resources"]["requests"]  # utilisation is measured against the request


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_worker_one_process_per_pod_with_a_grace_period_longer_than_a_job(rendered, compose, overlay):
    docs = rendered[overlay]
    worker = by_kind(docs, "Deployment", "nvc-worker")
    assert "replicas" not in worker["spec"]  # KEDA owns the replica count
    c = container(worker, "worker")
    args = parse_nvc(c)
    assert args.handler is serve_cmds.worker
    pod = worker["spec"]["template"]["spec"]
    assert len(pod["containers"]) == 1
    settings = settings_of(docs)
    if overlay == "gpu":
        assert c["image"] == compose["services"]["worker"]["image"]
        assert c["resources"]["limits"]["nvidia.com/gpu"] == 1 and not args.cpu and args.gpus == 1
        # the device plugin exposes one GPU to the pod: one worker process, pinned to it
        plan = serve_cmds.plan_workers(settings, cpu=args.cpu, gpus=args.gpus, processes=args.processes,
                                       queues=args.queues, env={"CUDA_VISIBLE_DEVICES": "0"})
    else:
        assert c["image"] == compose["services"]["api"]["image"] and "nvidia.com/gpu" not in str(c["resources"])
        assert args.cpu and args.processes == 1
        plan = serve_cmds.plan_workers(settings, cpu=args.cpu, gpus=args.gpus, processes=args.processes,
                                       queues=args.queues, env={})
    assert len(plan) == 1
    assert TYPICAL_JOB_SECONDS * 10 < args.shutdown_grace < pod["terminationGracePeriodSeconds"] - 30
    command = serve_cmds.worker_command(plan[0][0], plan[0][1])
    assert command[command.index("--concurrency") + 1] == "1"
    scratch = next(m for m in c["volumeMounts"] if m["name"] == "scratch")
    assert str(settings.work_dir) == scratch["mountPath"]
    pdb = by_kind(docs, "PodDisruptionBudget", "nvc-worker")
    assert pdb["spec"]["selector"]["matchLabels"] == worker["spec"]["selector"]["matchLabels"]
    assert pdb["spec"]["maxUnavailable"] == 1  # not minAvailable: that would forbid scaling to zero
    assert worker["spec"]["selector"]["matchLabels"].items() <= worker["spec"]["template"]["metadata"]["labels"].items()


def scaler_queues(docs: list[dict]) -> tuple[dict, list[str]]:
    scaled = by_kind(docs, "ScaledObject", "nvc-worker")
    return scaled, [t["metadata"]["listName"] for t in scaled["spec"]["triggers"]]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_scaled_object_watches_the_queues_the_workers_consume(rendered, overlay):
    docs = rendered[overlay]
    scaled, lists = scaler_queues(docs)
    assert scaled["spec"]["scaleTargetRef"]["name"] == "nvc-worker"
    assert scaled["spec"]["minReplicaCount"] == 0  # scale to zero
    settings = settings_of(docs)
    c = container(by_kind(docs, "Deployment", "nvc-worker"), "worker")
    args = parse_nvc(c)
    env = {"CUDA_VISIBLE_DEVICES": "0"} if overlay == "gpu" else {}
    plan = serve_cmds.plan_workers(settings, cpu=args.cpu, gpus=args.gpus, processes=args.processes,
                                   queues=args.queues, env=env)
    consumed = set(plan[0][1])
    assert set(lists) == consumed
    assert settings.resolved_submit_queue in lists  # where the API puts new jobs
    redis_url = urlparse(settings.redis_url)
    redis_service = by_kind(docs, "Service", "nvc-redis")
    for trigger in scaled["spec"]["triggers"]:
        meta = trigger["metadata"]
        assert meta["address"] == f"{redis_url.hostname}:{redis_url.port}"
        assert meta["databaseIndex"] == (redis_url.path.strip("/") or "0")
        assert int(meta["listLength"]) >= 1
        # 0: the first queued job wakes a worker at zero replicas; more would strand a lone job
        assert meta["activationListLength"] == "0"
    assert redis_url.hostname == redis_service["metadata"]["name"]
    assert redis_url.port == redis_service["spec"]["ports"][0]["port"]


def test_queueing_jobs_grows_exactly_the_scaled_objects_list(rendered, redis_server, tmp_path, small_volume):
    """The real API (its real Celery publisher) on a real Redis, configured by the ConfigMap's
    queue names and key prefix: each submitted job adds one message to the list KEDA reads,
    and no other list in the database changes."""
    import redis
    from fastapi.testclient import TestClient

    docs = rendered["gpu"]
    _, lists = scaler_queues(docs)
    database = 11  # a database no other test uses: the ConfigMap's queue names are not unique per test
    settings = settings_of(
        docs, redis_url=f"{redis_server}/{database}", storage_backend="local", storage_dir=tmp_path / "objects",
        data_dir=tmp_path / "data", api_keys=[], orphan_sweep_seconds=0, watchdog_seconds=0,
    )
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    client.flushdb()

    def list_lengths() -> dict[str, int]:
        return {key: client.llen(key) for key in client.scan_iter() if client.type(key) == "list"}

    before = list_lengths()
    body = npy_bytes(small_volume)
    with TestClient(create_app(settings)) as api:
        for n in range(3):
            answer = api.post("/compress", content=body, params={"filename": f"v{n}.npy"})
            assert answer.status_code == 202, answer.text
    after = list_lengths()
    assert lists == [settings.gpu_queue]
    grown = {key: after[key] - before.get(key, 0) for key in after if after[key] != before.get(key, 0)}
    assert grown == {lists[0]: 3}
    messages = [yaml.safe_load(m) for m in client.lrange(lists[0], 0, -1)]  # JSON is YAML
    assert {m["headers"]["task"] for m in messages} == {"nvc.compress"}
    client.flushdb()
    client.close()


def test_docs_name_every_overlay():
    text = (REPO / "docs" / "deployment.md").read_text()
    for overlay in OVERLAYS:
        assert f"deploy/overlays/{overlay}" in text
    assert re.search(r"kubectl apply -k deploy/overlays/gpu", text)
    assert Path(DEPLOY / "base" / "kustomization.yaml").exists()
