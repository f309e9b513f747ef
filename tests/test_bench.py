"""Smoke tests of `emotion bench`: the commands run end to end and keep their JSON contract.

No timing is asserted (machines differ); what is asserted is that the classifier benchmark's
service run turns every face into exactly one event. They use a real Redis (TEST_REDIS_URL, else
db 7) under a key prefix of their own, and the test model (TEST_MODEL_DIR, else models/default).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import redis

from bench.common import format_table, percentiles

pytestmark = pytest.mark.slow


@pytest.fixture
def bench_env(tmp_path, model_dir) -> dict[str, str]:
    url = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/7")
    try:
        redis.Redis.from_url(url).ping()
    except redis.ConnectionError as exc:
        pytest.fail(f"tests need a real Redis at {url} (.ci/run starts one): {exc}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMOTION_") and k not in ("REDIS_URL", "DATABASE_URL")}
    env.update(EMOTION_REDIS_URL=url, EMOTION_PREFIX="tbench", EMOTION_DEFAULT_MODEL_DIR=str(model_dir),
               EMOTION_REGISTRY_DIR=str(tmp_path / "registry"), EMOTION_LOG_LEVEL="WARNING")
    return env


def _bench(env: dict, cwd, *args: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "emotion", "bench", *args, "--json"], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, f"--json prints exactly one line on stdout, got {lines!r}"
    return json.loads(lines[-1])


def test_classifier_bench_json_and_no_face_lost(bench_env, tmp_path):
    result = _bench(bench_env, tmp_path, "classifier", "--faces", "200", "--batch-sizes", "16", "--threads", "1")
    for key in ("service_faces_per_s", "bare_faces_per_s", "ratio", "table", "events", "lost", "run"):
        assert key in result, key
    assert result["faces"] == 208  # rounded up to whole batches of 16
    assert result["events"] == result["faces"] and result["lost"] == 0
    (row,) = result["table"]
    assert (row["batch"], row["threads"]) == (16, 1)
    assert result["default_config"] == {"batch": 16, "threads": 1, "overlap_batches": True, "flip_tta": False}
    assert row["events"] == row["faces"] == 208 and row["service_faces_per_s"] > 0 and row["bare_faces_per_s"] > 0
    assert {"date", "machine", "commit", "command"} <= set(result["run"])
    leftovers = list(redis.Redis.from_url(bench_env["EMOTION_REDIS_URL"]).scan_iter(match="tbench-bench-*"))
    assert leftovers == [], "the benchmark deletes its isolated keys"


def test_pipeline_bench_with_detector_replicas_splits_the_cameras_into_shards(bench_env, tmp_path):
    result = _bench(bench_env, tmp_path, "pipeline", "--cameras", "2", "--detectors", "2", "--duration", "4",
                    "--warmup", "1", "--no-sweep")
    (run,) = result["runs"]
    assert (run["cameras"], run["detectors"], run["shards"]) == (2, 2, 2)
    assert run["exit_code"] == 0 and all(run["drained"].values())
    assert run["frames"] > 0 and run["faces"] > 0 and run["events"] == run["faces"] and run["lost"] == 0


def test_detector_bench_json(bench_env, tmp_path):
    result = _bench(bench_env, tmp_path, "detector", "--frames", "4", "--repeats", "1", "--recall-faces", "10")
    assert result["frames_per_s_640x480"] > 0 and result["frames_per_s_1280x720"] > 0
    assert "recall" in result  # None (with the reason in recall_detail) when FER-2013 is absent
    if result["recall"] is not None:
        assert result["recall_detail"]["faces"] == 10
        assert [row["angle"] for row in result["recall_detail"]["by_angle"]] == [0.0, 15.0, -15.0]
        assert [row["angle"] for row in result["recall_detail"]["photo_by_angle"]] == [0.0, 15.0, -15.0]
        rows = result["recall_detail"]["by_angle"] + result["recall_detail"]["photo_by_angle"]
        assert all(row["recall"] <= row["recall_either_square"] <= 1 for row in rows)
        assert result["recall_detail"]["roll_search"] == "photos"
    names = [b["backend"] for b in result["backends"]]
    assert names == ["yunet", "haar"]  # every backend in the same run (yunet marked skipped where absent)
    assert result["ratio_to_haar"] is None or result["ratio_to_haar"]["640x480"] > 0
    assert isinstance(result["id_switches"], int)


def test_bench_helpers():
    assert percentiles([]) == {"p50": None, "p95": None, "p99": None}
    assert percentiles(list(range(101)))["p95"] == 95.0
    text = format_table(("a", "bb"), [(1, None), (22, 3.5)])
    assert text.splitlines()[1] == "--  ---" and text.splitlines()[2].split() == ["1"]


def _clip(tmp_path):
    from tests.analysis_media import write_video

    video = tmp_path / "clip.mp4"
    write_video(video, frames=10, fps=15.0)
    return video


def test_analyze_bench_json_and_fer_skipped_cleanly_without_its_venv(bench_env, tmp_path):
    env = {k: v for k, v in bench_env.items() if k != "FER_PYTHON"}
    result = _bench(env, tmp_path, "analyze", "--video", str(_clip(tmp_path)), "--fer-python", "/nonexistent/python")
    assert result["fer"] is None and "FER_PYTHON" in result["fer_skipped"]
    assert result["ratio_frames_per_s"] is None and result["target_met"] is None
    ours = result["ours"]
    assert ours["frames"] == 10
    if ours["detector"] == "yunet":
        assert ours["faces"] == 20 and ours["frames_with_faces"] == 10  # two pasted faces per frame
    assert ours["frames_per_s"] > 0 and ours["wall_s"] > 0 and ours["cpu_s"] > 0
    assert {"date", "machine", "commit", "command"} <= set(result["run"])


@pytest.mark.skipif(not os.environ.get("FER_PYTHON"), reason="set FER_PYTHON to a virtualenv with fer (bench/README.md)")
def test_analyze_bench_runs_fer_on_the_same_video(bench_env, tmp_path):
    result = _bench({**bench_env, "FER_PYTHON": os.environ["FER_PYTHON"]}, tmp_path, "analyze", "--plain",
                    "--video", str(_clip(tmp_path)))
    assert result["fer"]["frames"] == result["ours"]["frames"] == 10
    assert result["fer"]["faces"] > 0 and result["ratio_frames_per_s"] > 0


def test_sharded_scaling_bench_drives_every_shard_and_loses_nothing(bench_env, tmp_path):
    result = _bench(bench_env, tmp_path, "scaling", "--shards", "2", "--replicas", "1,2", "--frames", "12",
                    "--repeats", "1")
    assert result["mode"] == "shards" and result["shards"] == 2 and result["lost"] == 0
    assert [row["replicas"] for row in result["table"]] == [1, 2]
    for row in result["table"]:
        assert row["frames"] == 24 and row["faces"] > 0 and row["frames_per_s"] > 0
    leftovers = list(redis.Redis.from_url(bench_env["EMOTION_REDIS_URL"]).scan_iter(match="tbench-bench-*"))
    assert leftovers == [], "the benchmark deletes its isolated keys"
