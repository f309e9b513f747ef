"""The child processes of `emotion up`: started, watched, and always stopped.

Each child is `python -m emotion <command>` in its own session (a stop signal reaches anything it
starts, and Ctrl+C in the terminal reaches only `up`, which then stops the children in order), with
its output in one log file. On Linux the kernel is also told to send the child SIGTERM when `up`
dies (PR_SET_PDEATHSIG), so not even a `kill -9` of `up` leaves a capture publishing frames into
the next run.

A child that exits while it should be running is a failure; `failure_line()` digs its own one-line
message (`emotion capture: error: …`) out of its log, so `up` can show it on the terminal.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from shared.heartbeats import read_heartbeats
from shared.lifetime import exit_with_parent
from shared.streams import Keys

log = logging.getLogger(__name__)

LOG_TAIL_BYTES = 16_384


def _die_with_parent(parent_pid: int):
    """A preexec_fn that makes the child receive SIGTERM when its parent exits (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    return lambda: exit_with_parent(parent_pid)


def failure_line(log_path: Path, returncode: int | None) -> str:
    """Why a child stopped, in one line: killed by a signal; else its own error line (`error: …` of
    `emotion <cmd>: error: …`); else the last line of its log (a traceback's exception); else its code."""
    if returncode is not None and returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    try:
        with open(log_path, "rb") as handle:
            handle.seek(max(0, handle.seek(0, os.SEEK_END) - LOG_TAIL_BYTES))
            lines = [line.strip() for line in handle.read().decode(errors="replace").splitlines() if line.strip()]
    except OSError:
        lines = []
    for line in reversed(lines):
        command, sep, message = line.partition(": ")
        if sep and command.startswith("emotion ") and message.startswith(("error: ", "invalid configuration: ")):
            return message.removeprefix("error: ")
    if lines:
        return lines[-1][:500]
    return f"exited with code {returncode} without a message"


@dataclass
class Child:
    role: str
    name: str  # what the terminal calls it: "capture cam0", "classifier 2", "dashboard"
    popen: subprocess.Popen
    log_path: Path
    may_finish: bool = False  # a capture of a finite source ends by itself (exit code 0)
    ready: bool = False
    started: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def failed(self) -> bool:
        """Exited although it should still run: any exit of a service, a non-zero exit of a capture."""
        code = self.popen.poll()
        return code is not None and not (self.may_finish and code == 0)

    def failure(self) -> str:
        code = self.popen.returncode
        return f"{self.name} exited (code {code}): {failure_line(self.log_path, code)}"


class Supervisor:
    """Starts children by role, tells which are ready or failed, and stops them (SIGTERM, then SIGKILL)."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env, self.log_dir = env, log_dir
        self.children: list[Child] = []
        log_dir.mkdir(parents=True, exist_ok=True)

    def start(self, role: str, *args: str, name: str | None = None, may_finish: bool = False,
              env: dict[str, str] | None = None) -> Child:
        """`env`: variables of this child only, over the common environment (its metrics port)."""
        index = len(self.of(role))
        log_path = self.log_dir / f"{role}-{index}.log"
        with open(log_path, "ab") as log_file:
            popen = subprocess.Popen([sys.executable, "-m", "emotion", *args], env={**self.env, **(env or {})},
                                     stdout=log_file,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                     preexec_fn=_die_with_parent(os.getpid()))
        child = Child(role, name or role, popen, log_path, may_finish=may_finish)
        self.children.append(child)
        log.debug("event=child_started role=%s pid=%d log=%s", role, popen.pid, log_path)
        return child

    def of(self, role: str) -> list[Child]:
        return [c for c in self.children if c.role == role]

    def failures(self) -> list[Child]:
        return [c for c in self.children if c.failed()]

    def not_ready(self) -> list[Child]:
        """Children still starting: neither ready nor (a capture of a finite source) finished."""
        return [c for c in self.children if not c.ready and not (c.may_finish and c.popen.poll() == 0)]

    def all_exited(self, role: str) -> bool:
        return all(not c.running() for c in self.of(role))

    def stop(self, role: str, timeout: float = 20.0) -> None:
        """SIGTERM every child of `role` (a warm stop: each finishes the batch in hand), SIGKILL after
        `timeout`; also signals the process group of a child that already exited, in case it left one."""
        children = self.of(role)
        for child in children:
            _signal_group(child.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in children:
            try:
                child.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("event=child_kill role=%s pid=%d after_s=%.0f", role, child.pid, timeout)
            _signal_group(child.pid, signal.SIGKILL)
            child.popen.wait()

    def stop_all(self, timeout: float = 10.0) -> None:
        for role in dict.fromkeys(c.role for c in self.children):
            self.stop(role, timeout)

    # --- readiness ---------------------------------------------------------------------------

    def mark_ready(self, client: redis.Redis, keys: Keys, dashboard_url: str | None) -> list[Child]:
        """Children that became ready since the last call: a stream service or capture once its
        heartbeat (which carries its pid) is in Redis, the dashboard once its /healthz answers with its pid."""
        waiting = [c for c in self.children if not c.ready and c.running()]
        if not waiting:
            return []
        pids = heartbeat_pids(client, keys)
        became = []
        for child in waiting:
            if child.role == "dashboard":
                child.ready = dashboard_url is not None and _health_pid(dashboard_url + "healthz") == child.pid
            elif child.role == "worker":
                child.ready = True  # the RQ worker has no heartbeat of ours; it is watched for failure only
            else:
                child.ready = child.pid in pids
            if child.ready:
                became.append(child)
        return became


def heartbeat_pids(client: redis.Redis, keys: Keys) -> set[int]:
    """Process ids in the live heartbeats of every service (capture included) written from this host
    (a Redis shared with other machines may hold the same pid for another process), except those of
    replicas still `starting` (a detector before it has taken its share of the shards)."""
    host = socket.gethostname()
    pids = set()
    for beat in read_heartbeats(client, keys):
        try:
            if beat.get("host") == host and not beat.get("starting"):
                pids.add(int(beat["pid"]))
        except (TypeError, ValueError, KeyError):
            continue
    return pids


def _health_pid(url: str) -> int | None:
    """The pid a /healthz answers with (None when nothing, or something not ours, answers): a foreign
    server already on the port must not pass for the dashboard before our child fails to bind it."""
    import json
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:
            body = json.loads(response.read(4096)) if response.status == 200 else None
    except (urllib.error.URLError, OSError, ValueError):
        return None
    pid = body.get("pid") if isinstance(body, dict) else None
    return pid if isinstance(pid, int) else None


def _signal_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass
