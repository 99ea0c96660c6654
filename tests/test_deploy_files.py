"""The Docker files stay usable: compose accepts the file, both serve the same app on 9090."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def compose_command() -> list[str] | None:
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def test_compose_config_is_accepted(tmp_path: Path) -> None:
    result = compose_config(tmp_path)
    assert result.returncode == 0, result.stderr
    assert "9090" in result.stdout and "/data" in result.stdout


def test_dockerfile_serves_the_wsgi_app_on_9090() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in dockerfile
    assert "my_ml_backend._wsgi:app" in dockerfile and "EXPOSE 9090" in dockerfile
    assert "requirements.txt" in dockerfile and "HEALTHCHECK" in dockerfile


def compose_config(tmp_path: Path, *options: str) -> subprocess.CompletedProcess[str]:
    """`docker compose [options] config` on our file, with .env.example as .env."""
    command = compose_command()
    if command is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed")
    shutil.copy(ROOT / "docker-compose.yml", tmp_path / "docker-compose.yml")
    shutil.copy(ROOT / ".env.example", tmp_path / ".env")
    return subprocess.run([*command, *options, "config"], cwd=tmp_path, capture_output=True, text=True)


def test_compose_scale_profile_adds_redis_and_workers(tmp_path: Path) -> None:
    scaled = compose_config(tmp_path, "--profile", "scale")
    assert scaled.returncode == 0, scaled.stderr
    backend, _, extra = scaled.stdout.partition("\n  redis:")  # services are listed by name
    assert "ml-backend:" in backend and "profiles" not in backend  # without the profile: as before
    assert extra.count("- scale") == 2 and "\n  worker:" in extra
    assert "redis:7" in scaled.stdout and "my_ml_backend.jobs.queue.ChunkWorker" in scaled.stdout
    assert "REDIS_URL: redis://redis:6379/0" in scaled.stdout


def test_gunicorn_gets_the_multiprocess_metrics_config() -> None:
    for path in ("Dockerfile", "scripts/start.sh"):
        assert "--config gunicorn.conf.py" in (ROOT / path).read_text(), path
    assert "COPY gunicorn.conf.py" in (ROOT / "Dockerfile").read_text()
