"""Helpers for tests (and bench/soak.py) that run real processes: services, a private redis-server,
a TCP proxy. Every process starts in its own session and is stopped by its pid within a bounded time.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import redis

REPO_ROOT = Path(__file__).resolve().parent.parent
FALLBACK_MODEL_DIR = Path("/tmp/model-tmp")


def find_model_dir() -> Path | None:
    """models/default once the repository ships it, else the interim /tmp/model-tmp, else None."""
    for candidate in (Path(os.environ["TEST_MODEL_DIR"]) if os.environ.get("TEST_MODEL_DIR") else None,
                      REPO_ROOT / "models" / "default", FALLBACK_MODEL_DIR):
        if candidate is not None and (candidate / "model.tflite").is_file() and (candidate / "metadata.json").is_file():
            return candidate
    return None


def copy_model(target: Path) -> Path:
    source = find_model_dir()
    if source is None:
        raise FileNotFoundError("no exported model (models/default or /tmp/model-tmp)")
    shutil.copytree(source, target)
    return target


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    """The current environment without any EMOTION_* / REDIS_URL / DATABASE_URL, plus `extra`."""
    env = {k: v for k, v in os.environ.items()
           if not k.upper().startswith("EMOTION_") and k not in ("REDIS_URL", "DATABASE_URL")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update({k: str(v) for k, v in extra.items()})
    return env


def service_env(redis_url: str, prefix: str, model_dir: Path, registry_dir: Path, **extra: str) -> dict[str, str]:
    return clean_env(EMOTION_REDIS_URL=redis_url, EMOTION_PREFIX=prefix, EMOTION_DEFAULT_MODEL_DIR=str(model_dir),
                     EMOTION_REGISTRY_DIR=str(registry_dir), **extra)


class Proc:
    """A child process in its own session, its output in a log file."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path, cwd: Path | None = None) -> None:
        self.args = args
        self.log_path = Path(log_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        self.popen = subprocess.Popen(args, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                      start_new_session=True, cwd=str(cwd or REPO_ROOT))

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill9(self) -> None:
        if self.alive():
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.popen.wait(10)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM the process group, SIGKILL it after `timeout`; returns the exit code."""
        if self.alive():
            try:
                os.killpg(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill9()
        else:
            # The leader exited; make sure nothing it left in its group survives.
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self._log.close()
        return self.popen.returncode

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def rss_kb(self) -> int | None:
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except (FileNotFoundError, ProcessLookupError):
            return None
        return None


def emotion_proc(args: list[str], env: dict[str, str], log_path: Path) -> Proc:
    return Proc([sys.executable, "-m", "emotion", *args], env, log_path)


def stop_all(procs) -> None:
    for proc in procs:
        try:
            proc.stop(timeout=5.0)
        except Exception:  # keep stopping the others
            pass


def wait_for(predicate: Callable[[], object], timeout: float, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what} (last value {last!r})")


class RedisServer:
    """A private redis-server on a free port (AOF on by default); restartable on the same port and dir."""

    def __init__(self, data_dir: Path, *extra_args: str, port: int | None = None, password: str | None = None,
                 appendonly: bool = True) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.password = password
        self.extra_args = list(extra_args)
        self.appendonly = appendonly
        self.proc: Proc | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, socket_timeout=5)

    def start(self, timeout: float = 15.0) -> "RedisServer":
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir),
                "--save", "", "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "always",
                "--protected-mode", "no", *self.extra_args]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = Proc(args, clean_env(), self.data_dir / "redis-server.log")

        def up() -> bool:
            try:
                return bool(self.client().ping())
            except redis.AuthenticationError:
                return True
            except (redis.ConnectionError, redis.TimeoutError, redis.exceptions.BusyLoadingError):
                return False

        wait_for(up, timeout, what=f"redis-server on port {self.port}")
        return self

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill9()
            self.proc.stop(1)

    def shutdown(self) -> None:
        """Graceful SHUTDOWN (AOF flushed); falls back to SIGKILL."""
        if self.proc is None:
            return
        try:
            self.client().shutdown(nosave=False)
        except (redis.ConnectionError, redis.ResponseError):
            pass
        try:
            self.proc.popen.wait(10)
        except subprocess.TimeoutExpired:
            pass
        self.proc.stop(2)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(5)


class TcpProxy:
    """A TCP forwarder to (host, port) that can be made unavailable: `down()` drops every connection
    and refuses new ones (accept + close) until `up()`."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.available = True
        self.closed = False
        self.connections: list[socket.socket] = []
        self.lock = threading.Lock()
        self.accepted = 0
        self.refused = 0
        self.thread = threading.Thread(target=self._accept_loop, daemon=True)
        self.thread.start()

    def _accept_loop(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            if not self.available:
                self.refused += 1
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            self.accepted += 1
            with self.lock:
                self.connections += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def down(self) -> None:
        self.available = False
        with self.lock:
            connections, self.connections = self.connections, []
        for sock in connections:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def up(self) -> None:
        self.available = True

    def close(self) -> None:
        self.closed = True
        self.down()
        self.listener.close()
        self.thread.join(2)


class RedisCluster:
    """A private Redis Cluster of masters on loopback `ports` (no replicas), made with
    `redis-server --cluster-enabled yes` and `redis-cli --cluster create`; stopped by pid."""

    def __init__(self, data_dir: Path, ports: list[int]) -> None:
        self.data_dir = Path(data_dir)
        self.ports = ports
        self.servers: list[RedisServer] = []

    @property
    def url(self) -> str:
        """A seed URL: any node will do, the client learns the others."""
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def node(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)

    def start(self, timeout: float = 30.0) -> "RedisCluster":
        for port in self.ports:
            busy = socket.socket()
            try:
                if busy.connect_ex(("127.0.0.1", port)) == 0:
                    raise RuntimeError(f"port {port} is taken: a cluster node cannot start there")
            finally:
                busy.close()
            node_dir = self.data_dir / str(port)
            server = RedisServer(node_dir, "--cluster-enabled", "yes", "--cluster-config-file",
                                 str(node_dir / "nodes.conf"), "--cluster-node-timeout", "5000", port=port,
                                 appendonly=False)
            self.servers.append(server.start())
        subprocess.run(["redis-cli", "--cluster", "create", *[f"127.0.0.1:{p}" for p in self.ports],
                        "--cluster-replicas", "0", "--cluster-yes"], check=True, capture_output=True, timeout=60)

        def ready() -> bool:
            for port in self.ports:
                info = self.node(port).execute_command("CLUSTER", "INFO").decode()
                if "cluster_state:ok" not in info:
                    return False
            return True

        wait_for(ready, timeout, interval=0.2, what="cluster_state:ok on every node")
        return self

    def masters(self) -> dict[str, list[tuple[int, int]]]:
        """node id -> (first, last) of each slot range it serves, from CLUSTER NODES."""
        ranges: dict[str, list[tuple[int, int]]] = {}
        for line in self.node(self.ports[0]).execute_command("CLUSTER", "NODES").decode().splitlines():
            parts = line.split()
            if "master" not in parts[2]:
                continue
            for spec in parts[8:]:
                if "-" in spec and not spec.startswith("["):
                    first, last = spec.split("-")
                    ranges.setdefault(parts[0], []).append((int(first), int(last)))
                elif spec.isdigit():
                    ranges.setdefault(parts[0], []).append((int(spec), int(spec)))
        return ranges

    def master_of(self, key: str) -> str:
        """The id of the master serving `key` (CLUSTER KEYSLOT, then the slot ranges of CLUSTER NODES)."""
        slot = int(self.node(self.ports[0]).execute_command("CLUSTER", "KEYSLOT", key))
        for node_id, spans in self.masters().items():
            if any(first <= slot <= last for first, last in spans):
                return node_id
        raise LookupError(f"no master serves slot {slot}")

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
