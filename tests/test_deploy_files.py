"""The Docker files stay usable: compose accepts the file, both serve the same app on 9090."""

from __future__ import annotations

import os
import re
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


def compose_stdout(tmp_path: Path, env_file: str | None, **env: str) -> str:
    command = compose_command()
    if command is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed")
    shutil.copy(ROOT / "docker-compose.yml", tmp_path / "docker-compose.yml")
    if env_file is not None:
        (tmp_path / ".env").write_text(env_file)
    clean = {k: v for k, v in os.environ.items() if k not in ("PORT", "MODELSCOPE_MODEL")}
    result = subprocess.run([*command, "config"], cwd=tmp_path, capture_output=True, text=True, env={**clean, **env})
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_compose_config_is_accepted(tmp_path: Path) -> None:
    result = compose_config(tmp_path)
    assert result.returncode == 0, result.stderr
    assert "9090" in result.stdout and "/data" in result.stdout


def published(config: str, port: int) -> bool:
    """Port `port` published to the same port in the container (compose v1 and v2 print it differently)."""
    if re.search(rf"\b{port}:{port}\b", config):
        return True
    return bool(re.search(rf"published: ['\"]?{port}\b", config) and re.search(rf"target: {port}\b", config))


def test_compose_config_is_accepted_without_a_dotenv(tmp_path: Path) -> None:
    out = compose_stdout(tmp_path, None)
    assert published(out, 9090) and "/data" in out and "GUNICORN_TIMEOUT" in out


def test_compose_reads_dotenv_and_follows_port(tmp_path: Path) -> None:
    dotenv = (ROOT / ".env.example").read_text() + "MODELSCOPE_MODEL=Qwen/Qwen3-8B\n"
    out = compose_stdout(tmp_path, dotenv, PORT="9191")
    assert "Qwen/Qwen3-8B" in out and published(out, 9191) and "PORT: '9191'" in out
    # The healthcheck reads PORT inside the container, where compose has set it.
    assert "os.environ.get('PORT'" in (ROOT / "docker-compose.yml").read_text()


def test_compose_passes_every_setting_of_env_example() -> None:
    compose = (ROOT / "docker-compose.yml").read_text()
    names = {m.group(1) for m in re.finditer(r"^#?\s*([A-Z][A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.M)}
    missing = {n for n in names - {"DATA_DIR", "LOG_DIR"} if f"{n}: ${{{n}:-" not in compose}
    assert not missing, f"docker-compose.yml does not pass {sorted(missing)} from .env"


def test_image_has_the_command_line_jobs_and_follows_the_timeout() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "batch_predict.py evaluate.py" in dockerfile
    assert "--timeout ${GUNICORN_TIMEOUT}" in dockerfile and "GUNICORN_TIMEOUT=120" in dockerfile


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


def test_build_context_leaves_out_secrets_and_the_venv_but_not_what_the_image_copies() -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".env", ".venv", ".git"} <= ignored
    copied = {
        source
        for line in (ROOT / "Dockerfile").read_text().splitlines()
        if line.startswith("COPY ")
        for source in line.split()[1:-1]
    }
    assert copied and not copied & ignored, copied & ignored
