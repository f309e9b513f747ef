"""`emotion up` / `emotion start` runs in the tests: one run as a process whose descendants are
recorded from /proc while it runs, so that none may outlive it (the up_env and start_up fixtures
that make them are in tests/conftest.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

UP_TIMEOUT_S = 150.0


def descendants(pid: int) -> set[int]:
    """Every live descendant of `pid`, from the parent pids in /proc/<pid>/stat."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


class UpRun:
    """One `emotion <args>` process (up or start), its output in files, its descendants recorded."""

    def __init__(self, args: list[str], env: dict[str, str], workdir: Path) -> None:
        self.stdout_path, self.stderr_path = workdir / "stdout.txt", workdir / "stderr.txt"
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "emotion", *args], env=env, stdout=out, stderr=err,
                                         stdin=subprocess.DEVNULL, cwd=workdir, start_new_session=True)
        self.pids: set[int] = set()

    def watch(self, until=None, timeout: float = UP_TIMEOUT_S) -> None:
        """Collect descendants until the process exits (or `until()` is true)."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and not (until and until()):
            self.pids |= descendants(self.proc.pid)
            if time.monotonic() > deadline:
                self.proc.kill()
                pytest.fail(f"`emotion` did not finish within {timeout:.0f} s:\n{self.stderr[-3000:]}")
            time.sleep(0.05)

    def finish(self, timeout: float = UP_TIMEOUT_S) -> int:
        self.watch(timeout=timeout)
        return self.proc.wait()

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    @property
    def summary(self) -> dict:
        lines = [line for line in self.stdout_path.read_text().splitlines() if line.strip()]
        assert lines, f"no summary on stdout; stderr:\n{self.stderr[-3000:]}"
        return json.loads(lines[-1]) if len(lines) == 1 else json.loads("\n".join(lines))

    def orphans(self, grace_s: float = 0.0) -> set[int]:
        deadline = time.monotonic() + grace_s
        while True:
            left = {pid for pid in self.pids if alive(pid)}
            if not left or time.monotonic() >= deadline:
                return left
            time.sleep(0.1)

    def kill_leftovers(self) -> None:
        for pid in self.orphans():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
