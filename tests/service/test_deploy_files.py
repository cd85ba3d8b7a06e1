"""No Docker engine runs here: parse Dockerfile and docker-compose.yml and check that their
images, commands, ports, health checks and environment names agree with the code."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from urllib.parse import urlparse

import pytest
import yaml

from app.main import create_app
from conftest import REPO
from nvc.cli import build_parser
from nvc.commands import serve as serve_cmds
from service.settings import Settings, env_names

#: NVC_* variables read by the codec library itself (not service settings).
CODEC_ENV = {"NVC_DEVICE"}


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) pairs, continuation lines joined, comments dropped."""
    text = (REPO / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, rest = line.partition(" ")
            out.append((instruction.upper(), rest.strip()))
    return out


def exec_form(args: str) -> list[str]:
    return json.loads(args) if args.startswith("[") else shlex.split(args)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def routes() -> set[str]:
    return set(create_app(Settings(_env_file=None)).openapi()["paths"])


def parse_nvc(command: list[str]):
    assert command[0] == "nvc", command
    return build_parser().parse_args(command[1:])


def test_dockerfile_builds_one_image_with_a_torch_variant_argument():
    steps = dockerfile()
    args = {rest.split("=")[0]: rest.split("=", 1)[1] if "=" in rest else None for ins, rest in steps if ins == "ARG"}
    assert args["TORCH_VARIANT"] == "cpu"
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    torch_pin = [d for d in pyproject["project"]["optional-dependencies"]["codec"] if d.startswith("torch")][0]
    assert torch_pin == "torch>=2.13,<2.14" and args["TORCH_VERSION"].startswith("2.13.")
    runs = [rest for ins, rest in steps if ins == "RUN"]
    torch_step = next(i for i, r in enumerate(runs) if "torch==${TORCH_VERSION}" in r)
    project_step = next(i for i, r in enumerate(runs) if 'pip install ".[server]"' in r)
    assert torch_step < project_step and "${TORCH_VARIANT}" in runs[torch_step]
    assert "server" in pyproject["project"]["optional-dependencies"]
    copied = {exec_form(rest)[0] for ins, rest in steps if ins == "COPY"}
    assert {"codec", "app", "worker", "nvc", "pyproject.toml"} <= copied
    for package in ("codec", "app", "worker", "nvc"):
        assert (REPO / package).is_dir()


def test_dockerfile_command_port_and_healthcheck(routes):
    steps = dockerfile()
    cmd = exec_form([rest for ins, rest in steps if ins == "CMD"][-1])
    args = parse_nvc(cmd)
    assert args.handler is serve_cmds.api and args.host == "0.0.0.0"
    exposed = [int(rest) for ins, rest in steps if ins == "EXPOSE"]
    assert exposed == [args.port]
    health = [rest for ins, rest in steps if ins == "HEALTHCHECK"][0]
    url = re.search(r"http://[^'\"]+", health).group(0)
    assert urlparse(url).port == args.port and urlparse(url).path in routes
    env = " ".join(rest for ins, rest in steps if ins == "ENV")
    for name in re.findall(r"\b(NVC_[A-Z0-9_]+)=", env):
        assert name in env_names(), name


def test_compose_services_images_and_build(compose):
    services = compose["services"]
    assert set(services) == {"api", "worker", "redis", "minio"}
    assert services["redis"]["image"].startswith("redis:")
    assert services["minio"]["image"].startswith("minio/minio")
    # one image (one Dockerfile), the worker built with a CUDA torch
    for name in ("api", "worker"):
        assert services[name]["build"]["context"] == "."
        assert not (REPO / "Dockerfile").is_dir()
    assert services["api"]["build"]["args"]["TORCH_VARIANT"] == "cpu"
    assert services["worker"]["build"]["args"]["TORCH_VARIANT"].startswith("cu")
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    for name in ("api", "worker"):
        waits = services[name]["depends_on"]
        assert waits == {"redis": {"condition": "service_healthy"}, "minio": {"condition": "service_healthy"}}
    for name, service in services.items():
        assert "healthcheck" in service, name
    assert set(compose["volumes"]) >= {"redis-data", "minio-data"}


def test_compose_commands_and_ports_match_the_cli(compose, routes):
    services = compose["services"]
    api = parse_nvc(services["api"]["command"])
    assert api.handler is serve_cmds.api and api.host == "0.0.0.0"
    assert f"{api.port}:{api.port}" in services["api"]["ports"]
    health = " ".join(services["api"]["healthcheck"]["test"])
    url = urlparse(re.search(r"http://[^'\"]+", health).group(0))
    assert url.port == api.port and url.path == "/readyz" and url.path in routes
    worker = parse_nvc(services["worker"]["command"])
    assert worker.handler is serve_cmds.worker and not worker.cpu

    env = services["api"]["environment"]
    redis_url = urlparse(env["NVC_REDIS_URL"])
    assert redis_url.hostname == "redis" and str(redis_url.port) in services["redis"]["command"]
    s3 = urlparse(env["NVC_S3_ENDPOINT_URL"])
    assert s3.hostname == "minio" and f":{s3.port}" in services["minio"]["command"]
    assert f"{s3.port}:{s3.port}" in services["minio"]["ports"]
    assert env["NVC_STORAGE_BACKEND"] == "s3"
    assert env["NVC_S3_ACCESS_KEY"] == services["minio"]["environment"]["MINIO_ROOT_USER"]
    assert env["NVC_S3_SECRET_KEY"] == services["minio"]["environment"]["MINIO_ROOT_PASSWORD"]


def test_compose_environment_names_are_settings(compose):
    known = env_names() | CODEC_ENV
    for name, service in compose["services"].items():
        for var in service.get("environment", {}) or {}:
            if var.startswith("NVC_"):
                assert var in known, f"{name}: {var} is not a setting"
    # the values parse as Settings (booleans, ints, URLs)
    env = {k: v for k, v in compose["services"]["worker"]["environment"].items() if not v.startswith("${")}
    settings = Settings(_env_file=None, **{k[4:].lower(): v for k, v in env.items()})
    assert settings.storage_backend == "s3" and settings.redis_url == "redis://redis:6379/0"


def test_worker_command_is_what_nvc_worker_runs():
    command = serve_cmds.worker_command("gpu0@%h", ["nvc.gpu"])
    assert command[1:5] == ["-m", "celery", "-A", "worker.celery_app"]
    assert command[command.index("--concurrency") + 1] == "1"
    assert command[command.index("--prefetch-multiplier") + 1] == "1"
    from worker.celery_app import app as celery_app

    assert celery_app.conf.task_acks_late and celery_app.conf.task_reject_on_worker_lost
    assert celery_app.conf.worker_prefetch_multiplier == 1
    assert {"nvc.compress", "nvc.decompress"} <= set(celery_app.tasks.keys()) | set(_registered_tasks())


def _registered_tasks() -> list[str]:
    import worker.tasks  # noqa: F401  (registers the tasks on the app)
    from worker.celery_app import app as celery_app

    return list(celery_app.tasks.keys())
