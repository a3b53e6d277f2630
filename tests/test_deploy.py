"""docker-compose.yml: what its commands ask of the project works, and `docker compose config` accepts the
file where a compose binary exists (no Docker engine runs on the development machines). Its security:
tests/test_security.py."""
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from search.study.file import load_study_file

REPO = Path(__file__).resolve().parents[1]


def test_the_project_commands_of_the_compose_file_accept_their_arguments():
    """Each service that runs a project command gives arguments that command accepts, and its study file loads."""
    from search import dashboard, retrain_best, run_study
    services = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    commands = {"search/run_study.py": run_study.parser(), "search/retrain_best.py": retrain_best.parser(),
                "search/dashboard.py": dashboard.parser()}
    seen = 0
    for name, service in services.items():
        command = [c for c in service.get("command") or [] if c != "python"]
        if command and command[0] in commands:
            args = commands[command[0]].parse_args(command[1:])
            seen += 1
            if command[0] == "search/run_study.py":
                assert load_study_file(REPO / args.study_file).data_root.startswith("data/")
    assert seen == 2  # the dashboard and the search job


@pytest.mark.skipif(not (shutil.which("docker-compose") or
                         subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0
                         if shutil.which("docker") else False),
                    reason="no docker compose binary on this machine")
def test_docker_compose_config_accepts_the_file_and_publishes_on_loopback_by_default(tmp_path):
    compose_cli = ["docker-compose"] if shutil.which("docker-compose") else ["docker", "compose"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MUSE_")} | {"MUSE_SECRETS": str(tmp_path / "secrets")}
    subprocess.run(["sh", str(REPO / "deploy" / "make-secrets.sh")], env=env, check=True, capture_output=True)
    args = compose_cli + ["--project-directory", str(tmp_path), "-f", str(REPO / "docker-compose.yml"),
                          "--profile", "gpu", "--profile", "cpu", "--profile", "search", "config", "--format", "json"]
    out = subprocess.run(args, capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    services = json.loads(out.stdout)["services"]
    assert "capabilities" in out.stdout and "search/run_study.py" in out.stdout
    published = [p for s in services.values() for p in s.get("ports", [])]
    assert len(published) == 3 and all(p["host_ip"] == "127.0.0.1" for p in published), published
    chosen = subprocess.run(args, capture_output=True, text=True, env=env | {"MUSE_BIND": "10.1.2.3"})
    assert {p["host_ip"] for s in json.loads(chosen.stdout)["services"].values() for p in s.get("ports", [])} == {"10.1.2.3"}
