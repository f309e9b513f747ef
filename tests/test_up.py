"""`emotion up` / `emotion start` as a user runs them: real processes against the test Redis.

Every run is watched from outside: the pids of all its descendants are collected from /proc while
it runs, and after it ends none of them may still be alive (no orphan publishing into the next run).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from emotion.supervisor import Child, Supervisor, failure_line
from shared.streams import Keys
from tests.demo_video import write_demo_video
from tests.proc_utils import free_port
from tests.up_utils import descendants


def our_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("emotion up: ")]


# --- a child that fails at start --------------------------------------------------------------------

BAD_SOURCES = [("/nope/video.mp4", "/nope/video.mp4"), ("demo:/nope.npz", "does not exist"), ("0", "webcam 0")]


@pytest.mark.slow
@pytest.mark.parametrize("source,expected", BAD_SOURCES, ids=["missing-file", "missing-npz", "no-webcam"])
def test_bad_source_stops_the_run_with_its_own_message_and_no_orphan(start_up, source, expected):
    """Guards the front door: a bad source used to end with exit 0, zeros and stopped_by=duration, the
    message hidden in a log, and (with --classifiers 0) a capture left running."""
    if source == "0" and Path("/dev/video0").exists():
        pytest.skip("this machine has a webcam")
    run = start_up("up", "--source", source, "--json", "--no-dashboard", "--duration", "30")
    code = run.finish()
    assert code == 2, run.stderr
    errors = [line for line in our_lines(run.stderr) if line.startswith("emotion up: error: capture cam0")]
    assert len(errors) == 1 and expected in errors[0], run.stderr
    assert "Traceback" not in run.stderr
    summary = run.summary
    assert summary["stopped_by"] == "error" and summary["frames"] == 0
    assert expected in summary["errors"][0]
    assert len(run.pids) >= 3, "the run's children were not seen (detector, classifier, recorder, capture)"
    assert not run.orphans(grace_s=5), f"processes outlived the run: {run.orphans()}"


@pytest.mark.slow
def test_start_without_a_webcam_fails_clearly(start_up):
    if Path("/dev/video0").exists():
        pytest.skip("this machine has a webcam")
    run = start_up("start", "0", "--no-browser", "--port", str(free_port()))
    assert run.finish() == 2, run.stderr
    assert any("webcam 0" in line and "error" in line for line in our_lines(run.stderr)), run.stderr
    assert run.summary["stopped_by"] == "error"
    assert not any("dashboard http" in line for line in our_lines(run.stderr))
    assert not run.orphans(grace_s=5)


@pytest.mark.slow
def test_taken_dashboard_port_is_reported_and_never_announced(start_up):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = start_up("up", "--source", "demo", "--duration", "30", "--json", "--no-recorder", "--port", str(port))
        code = run.finish()
    assert code == 2, run.stderr
    lines = our_lines(run.stderr)
    assert any(line.startswith("emotion up: error: dashboard") and "already in use" in line for line in lines), lines
    assert not any("dashboard http" in line for line in lines), lines
    assert run.summary["stopped_by"] == "error"
    assert not run.orphans(grace_s=5)


@pytest.mark.slow
def test_dashboard_refusing_a_public_address_without_token_stops_the_run(start_up, up_env):
    env = dict(up_env, EMOTION_DASHBOARD__HOST="0.0.0.0")
    run = start_up("up", "--source", "demo", "--duration", "30", "--json", "--no-recorder", "--port",
                   str(free_port()), env=env)
    assert run.finish() == 2, run.stderr
    lines = our_lines(run.stderr)
    assert any("error: dashboard" in line and "EMOTION_DASHBOARD__AUTH_TOKEN" in line for line in lines), lines
    assert not any("dashboard http" in line for line in lines), lines
    assert not run.orphans(grace_s=5)


@pytest.mark.parametrize("args,expected", [(["--classifiers", "0"], "--classifiers: must be at least 1"),
                                           (["--duration", "-5"], "--duration: must be a positive number"),
                                           (["--duration", "nan"], "--duration: must be a positive number"),
                                           (["--port", "70000"], "--port: must be a port")])
def test_arguments_are_validated_before_anything_starts(start_up, args, expected):
    run = start_up("up", *args)
    assert run.finish(timeout=30) == 2
    assert f"emotion up: error: argument {expected}" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr
    assert not run.orphans()


# --- runs that go well ----------------------------------------------------------------------------

@pytest.mark.slow
def test_file_source_json_contract_and_clean_end(start_up, tmp_path):
    """`emotion up --source FILE --json`: one JSON line with the counts, the file played to its end."""
    video = tmp_path / "faces.avi"
    write_demo_video(video, frames=30)
    run = start_up("up", "--source", str(video), "--json", "--no-dashboard")
    assert run.finish() == 0, run.stderr
    assert len([line for line in run.stdout_path.read_text().splitlines() if line.strip()]) == 1
    summary = run.summary
    for field in ("session_id", "frames", "faces", "events", "frames_without_faces", "shed_frames", "lost",
                  "dead_letters", "latency_ms_p50", "latency_ms_p95", "drained", "stopped_by", "recorded"):
        assert field in summary, field
    assert summary["stopped_by"] == "sources_ended" and summary["errors"] == []
    assert summary["frames"] + summary["shed_frames"] == 30
    assert summary["faces"] == summary["events"] == summary["recorded"] > 0
    assert summary["frames_without_faces"] <= summary["frames"]
    assert all(summary["drained"].values())
    assert not run.orphans(grace_s=5)


@pytest.mark.slow
def test_sigterm_stops_cleanly_and_kill_9_leaves_no_child(start_up):
    """A SIGTERM is a draining stop (stopped_by signal, exit 0); even a SIGKILL of `up`, which can run no
    cleanup, takes every child with it (the kernel's parent-death signal)."""
    ready = "every process is running"
    run = start_up("up", "--source", "demo", "--json", "--no-dashboard", "--no-recorder")
    run.watch(until=lambda: ready in run.stderr)
    os.kill(run.proc.pid, signal.SIGTERM)
    assert run.finish() == 0, run.stderr
    assert run.summary["stopped_by"] == "signal" and run.summary["errors"] == []
    assert not run.orphans(grace_s=5)

    run = start_up("up", "--source", "demo", "--json", "--no-dashboard", "--no-recorder")
    run.watch(until=lambda: ready in run.stderr)
    run.pids |= descendants(run.proc.pid)
    assert len(run.pids) >= 3
    os.kill(run.proc.pid, signal.SIGKILL)
    run.proc.wait()
    assert not run.orphans(grace_s=30), f"children outlived a killed `up`: {run.orphans()}"


@pytest.mark.slow
def test_a_child_crash_mid_run_stops_the_run(start_up, up_env, redis_client):
    """A detector killed while the pipeline runs: reported by name, stopped_by error, nothing left."""
    run = start_up("up", "--source", "demo", "--json", "--no-dashboard", "--no-recorder")
    run.watch(until=lambda: "every process is running" in run.stderr)
    prefix = up_env["EMOTION_PREFIX"]
    beats = [json.loads(redis_client.get(key)) for key in redis_client.scan_iter(f"{prefix}:heartbeat:detector:*")]
    assert len(beats) == 1
    os.kill(beats[0]["pid"], signal.SIGKILL)
    assert run.finish() == 2, run.stderr
    assert any(line.startswith("emotion up: error: detector exited") and "SIGKILL" in line
               for line in our_lines(run.stderr)), run.stderr
    assert run.summary["stopped_by"] == "error"
    assert not run.orphans(grace_s=5)


@pytest.mark.slow
def test_capture_heartbeat_counts_capture_replicas(start_up, up_env, redis_client):
    """Capture writes a heartbeat in the services' key scheme, so Health counts it; it is gone after the run."""
    run = start_up("up", "--source", "demo", "--source", "demo", "--json", "--no-dashboard", "--no-recorder")
    run.watch(until=lambda: "every process is running" in run.stderr)
    prefix = up_env["EMOTION_PREFIX"]
    beats = [json.loads(redis_client.get(k)) for k in redis_client.scan_iter(f"{prefix}:heartbeat:capture:*")]
    assert sorted(b["camera_id"] for b in beats) == ["cam0", "cam1"]
    assert all(b["service"] == "capture" and b["pid"] in run.pids for b in beats)
    os.kill(run.proc.pid, signal.SIGINT)
    assert run.finish() == 0, run.stderr
    assert run.summary["stopped_by"] == "user"
    assert not list(redis_client.scan_iter(f"{prefix}:heartbeat:capture:*"))


@pytest.mark.slow
def test_sharded_run_gives_each_detector_a_camera(start_up, up_env, redis_client):
    """EMOTION_SHARDS=2 with --detectors 2: camera i goes to shard i, each detector replica leases one
    shard (neither stands by), and the summary covers both shards: nothing lost, all recorded."""
    env = dict(up_env, EMOTION_SHARDS="2", EMOTION_CAPTURE__FPS="8")
    run = start_up("up", "--source", "demo", "--source", "demo", "--detectors", "2", "--duration", "4", "--json",
                   "--no-dashboard", env=env)
    run.watch(until=lambda: "every process is running" in run.stderr)
    prefix = up_env["EMOTION_PREFIX"]
    beats = [json.loads(redis_client.get(k)) for k in redis_client.scan_iter(f"{prefix}:heartbeat:detector:*")]
    assert sorted(tuple(b["shards"]) for b in beats) == [(0,), (1,)], beats
    assert run.finish() == 0, run.stderr
    summary = run.summary
    assert summary["shards"] == 2 and summary["lost"] == 0 and summary["faces"] == summary["events"] > 0
    assert summary["recorded"] == summary["events"] and all(summary["drained"].values())
    keys = Keys(prefix, 2)
    published = [int(redis_client.hget(shard.stats("capture"), "published") or 0) for shard in keys.all_shards()]
    assert all(published) and sum(published) == summary["frames"]
    assert not run.orphans(grace_s=5)


# --- the supervisor's reading of a child's log -----------------------------------------------------

def test_failure_line_prefers_the_childs_own_error_line(tmp_path):
    log = tmp_path / "capture-0.log"
    log.write_text("2026-01-01 INFO x event=start\n[ WARN:0] OpenCV noise\n"
                   "emotion capture: error: cannot open video file /x.mp4 (unsupported format?)\n")
    assert failure_line(log, 2) == "cannot open video file /x.mp4 (unsupported format?)"
    log.write_text("emotion detector: invalid configuration: worker.batch_size: Input should be >= 1\n")
    assert failure_line(log, 2) == "invalid configuration: worker.batch_size: Input should be >= 1"
    log.write_text("Traceback (most recent call last):\n  File \"x\", line 1\nRuntimeError: boom\n")
    assert failure_line(log, 1) == "RuntimeError: boom"
    assert failure_line(log, -9) == "killed by SIGKILL"
    assert failure_line(tmp_path / "missing.log", 3) == "exited with code 3 without a message"


# --- the supervisor's readiness check -------------------------------------------------------------

def health_server(pid_answered: list[int | None]) -> ThreadingHTTPServer:
    """A server on a free port whose /healthz answers 200 with `pid_answered[0]` (none when None)."""
    class Health(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            body = json.dumps({"ok": True} | ({} if pid_answered[0] is None else {"pid": pid_answered[0]}))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_a_foreign_server_on_the_dashboard_port_is_not_taken_for_the_dashboard(tmp_path, redis_client, keys):
    """Another server answering /healthz with 200 on the port must not make the run announce its
    dashboard: only an answer carrying the dashboard child's own pid does."""
    answered: list[int | None] = [None]
    server = health_server(answered)
    supervisor = Supervisor(env={}, log_dir=tmp_path)
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        child = Child("dashboard", "dashboard", sleeper, tmp_path / "dashboard-0.log")
        supervisor.children.append(child)
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        assert supervisor.mark_ready(redis_client, keys, url) == [] and not child.ready
        answered[0] = sleeper.pid + 1  # someone else's pid
        assert supervisor.mark_ready(redis_client, keys, url) == [] and not child.ready
        answered[0] = sleeper.pid
        assert supervisor.mark_ready(redis_client, keys, url) == [child] and child.ready
    finally:
        sleeper.kill()
        sleeper.wait()
        server.shutdown()
