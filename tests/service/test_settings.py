"""One settings object; every variable it reads is documented in the README."""

from __future__ import annotations

import re

from conftest import REPO
from service.settings import Settings, env_names


def test_every_setting_is_documented_in_the_readme():
    readme = (REPO / "README.md").read_text()
    documented = set(re.findall(r"\| `(NVC_[A-Z0-9_]+)` \|", readme))
    assert env_names() <= documented, sorted(env_names() - documented)
    stale = documented - env_names() - {"NVC_DEVICE"}
    assert not stale, f"README documents variables the code does not read: {sorted(stale)}"


def test_defaults_run_on_one_machine():
    settings = Settings(_env_file=None)
    assert settings.redis_url is None  # nvc serve starts its own Redis
    assert settings.storage_backend == "local"
    assert settings.resolved_storage_dir == settings.data_dir / "objects"
    assert settings.resolved_submit_queue == settings.gpu_queue


def test_environment_overrides(monkeypatch):
    monkeypatch.setenv("NVC_REDIS_URL", "redis://cache:6379/2")
    monkeypatch.setenv("NVC_JOB_TTL_SECONDS", "60")
    monkeypatch.setenv("NVC_S3_REDIRECT_RESULTS", "false")
    monkeypatch.setenv("NVC_SUBMIT_QUEUE", "nvc.cpu")
    settings = Settings()
    assert settings.redis_url == "redis://cache:6379/2" and settings.job_ttl_seconds == 60
    assert settings.s3_redirect_results is False and settings.resolved_submit_queue == "nvc.cpu"
