"""docker-compose.yml and the Dockerfile, validated without a Docker engine (none runs on the dev machines)."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from sqlalchemy.engine import make_url

from search.study_file import load_study_file

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def _env(service: dict) -> dict:
    env = service.get("environment", {})
    return env if isinstance(env, dict) else dict(item.split("=", 1) for item in env)


def _command(service: dict) -> list[str]:
    return list(service.get("entrypoint") or []) + list(service.get("command") or [])


def test_the_services_of_a_cluster(compose):
    assert set(compose["services"]) == {"postgres", "dashboard", "ray-head", "ray-worker", "ray-worker-cpu", "search"}
    assert set(compose["volumes"]) == {"studies", "cache"}
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/", "$")):
                assert source in compose["volumes"], f"{name}: undeclared volume {source}"


def test_one_image_built_from_the_repo_the_way_the_readme_installs(compose):
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "pip install --no-cache-dir -e ." in dockerfile
    assert re.search(r"^FROM python:3\.11", dockerfile, re.M)
    for copied in re.findall(r"^COPY (\S+)", dockerfile, re.M):
        assert (REPO / copied).exists(), copied
    project = [s for n, s in compose["services"].items() if n != "postgres"]
    assert all(s["image"] == "muse-search:latest" and s["build"] == "." for s in project)


def test_every_command_resolves_to_something_that_exists(compose):
    for name, service in compose["services"].items():
        command = _command(service)
        if name == "postgres":
            continue
        programs = [c for c in command if c in ("optuna-dashboard", "ray", "python", "sh")]
        assert programs, f"{name}: {command}"
        for program in programs:
            assert (BIN / program).exists() or shutil.which(program), f"{name}: {program} is not installed"
        for path in (c for c in command if c.endswith((".py", ".yaml"))):
            assert (REPO / path).is_file(), f"{name}: {path} does not exist"
    search = compose["services"]["search"]
    spec = load_study_file(REPO / search["command"][1])
    mount = next(v for v in search["volumes"] if ":/app/data" in v)
    assert spec.data_root.startswith("data/") and mount.endswith(":ro")  # the study reads the mounted data


def test_urls_and_ports_agree_between_services(compose):
    services = compose["services"]
    postgres_env = _env(services["postgres"])
    urls = [c for c in _command(services["dashboard"]) if c.startswith("postgresql://")]
    urls.append(_env(services["search"])["MUSE_STORAGE"])
    for url in urls:
        assert "${POSTGRES_PASSWORD:?" in url
        parsed = make_url(re.sub(r"\$\{POSTGRES_PASSWORD:\?[^}]*\}", "pw", url))
        assert parsed.host == "postgres" and parsed.port == 5432
        assert parsed.username == postgres_env["POSTGRES_USER"] and parsed.database == postgres_env["POSTGRES_DB"]
    assert "5432:5432" in services["postgres"]["ports"]
    healthcheck = " ".join(services["postgres"]["healthcheck"]["test"])
    assert f"-U {postgres_env['POSTGRES_USER']} -d {postgres_env['POSTGRES_DB']}" in healthcheck

    dashboard = _command(services["dashboard"])
    port = dashboard[dashboard.index("--port") + 1]
    assert f"{port}:{port}" in services["dashboard"]["ports"] and "0.0.0.0" in dashboard

    head = " ".join(_command(services["ray-head"]))
    head_port = re.search(r"--port=(\d+)", head).group(1)
    ray_dashboard = re.search(r"--dashboard-port=(\d+)", head).group(1)
    assert f"{head_port}:{head_port}" in services["ray-head"]["ports"]
    assert f"{ray_dashboard}:{ray_dashboard}" in services["ray-head"]["ports"]
    for name in ("ray-worker", "ray-worker-cpu", "search"):
        assert f"--address=ray-head:{head_port}" in " ".join(_command(services[name]))
    assert _env(services["search"])["RAY_ADDRESS"] == "auto"


def test_gpu_workers_reserve_gpus_and_a_cpu_profile_exists(compose):
    gpu, cpu = compose["services"]["ray-worker"], compose["services"]["ray-worker-cpu"]
    device = gpu["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["capabilities"] == ["gpu"] and device["driver"] == "nvidia"
    assert gpu["profiles"] == ["gpu"] and cpu["profiles"] == ["cpu"]
    assert "--num-gpus=0" in _command(cpu) and "deploy" not in cpu
    assert "--profile cpu" in (REPO / "docker-compose.yml").read_text()  # what to do on a CPU-only host


def test_the_database_password_must_be_set(compose):
    text = (REPO / "docker-compose.yml").read_text()
    uses = re.findall(r"\$\{POSTGRES_PASSWORD([^}]*)\}", text)
    assert uses and all(u.startswith(":?set POSTGRES_PASSWORD in .env") for u in uses)
    assert "POSTGRES_PASSWORD=" in (REPO / ".env.example").read_text()


@pytest.mark.skipif(not (shutil.which("docker-compose") or
                         subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0
                         if shutil.which("docker") else False),
                    reason="no docker compose binary on this machine (the static checks above still ran)")
def test_docker_compose_config_accepts_the_file_and_refuses_a_missing_password(tmp_path):
    compose_cli = ["docker-compose"] if shutil.which("docker-compose") else ["docker", "compose"]
    env = {k: v for k, v in os.environ.items() if k != "POSTGRES_PASSWORD"}
    args = compose_cli + ["--project-directory", str(tmp_path), "-f", str(REPO / "docker-compose.yml"),
                          "--profile", "gpu", "--profile", "cpu", "--profile", "search", "config"]
    ok = subprocess.run(args, capture_output=True, text=True, env=env | {"POSTGRES_PASSWORD": "x"})
    assert ok.returncode == 0, ok.stderr
    assert "capabilities" in ok.stdout and "search/run_study.py" in ok.stdout
    missing = subprocess.run(args, capture_output=True, text=True, env=env)
    assert missing.returncode != 0 and "set POSTGRES_PASSWORD in .env" in missing.stderr
