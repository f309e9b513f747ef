"""The RQ training job against a real Redis: a tiny real training run, progress, failures, cancellation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
from rq.job import Job, JobStatus

from shared.registry import ModelRegistry
from shared.training import TrainConfig
from tests.trainer_fixtures import copy_model, write_fer_folder
from trainer.jobs import (JOB_TIMEOUT_S, JobSettings, _better_than_current, cancel_training,
                          enqueue_training, run_training_job, run_worker, serializer, training_queue)

pytestmark = pytest.mark.slow
REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def job_settings(settings, tmp_path):
    # No shipped default model: "if-better" must compare against this test's registry only.
    return JobSettings.from_settings(settings.model_copy(update={"default_model_dir": tmp_path / "no default"}))


@pytest.fixture
def tiny_config(tmp_path):
    data = write_fer_folder(tmp_path / "fer data", n_train=140, n_val=70)
    return TrainConfig(data=data, model="compact16", epochs=2, batch_size=32, augment=False,
                       run_dir=tmp_path / "run dir", promote="if-better")


def start_worker(redis_url: str, prefix: str, cwd: Path, log_path: Path) -> subprocess.Popen:
    """`emotion worker --burst` as its own process (a forking RQ worker, as deployed)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMOTION_") and k not in ("REDIS_URL",)}
    env.update(EMOTION_REDIS_URL=redis_url, EMOTION_PREFIX=prefix, PYTHONPATH=str(REPO_ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.Popen([sys.executable, "-m", "emotion", "worker", "--burst"], cwd=cwd, env=env,
                            stdout=open(log_path, "wb"), stderr=subprocess.STDOUT)


def watch(job: Job, process: subprocess.Popen, timeout_s: float, until=None) -> list[dict]:
    """Poll job.meta while the worker runs; returns every distinct meta seen."""
    seen: list[dict] = []
    deadline = time.monotonic() + timeout_s
    while process.poll() is None and time.monotonic() < deadline:
        meta = job.get_meta(refresh=True)
        if meta and (not seen or meta != seen[-1]):
            seen.append(dict(meta))
            if until is not None and until(meta):
                break
        time.sleep(0.3)
    return seen


def test_training_job_end_to_end(redis_client, redis_url, tiny_config, job_settings, tmp_path, keys):
    """Enqueue -> worker trains (progress in job.meta) -> export -> evaluate -> register -> promote."""
    job = enqueue_training(redis_client, tiny_config, job_settings)
    assert job.origin == keys.training_queue == "t:training" and job.timeout == JOB_TIMEOUT_S and job.result_ttl > 0
    assert all(isinstance(arg, (str, type(None))) for arg in job.args)  # JSON strings only
    stored = json.loads(zlib.decompress(redis_client.hget(job.key, "data")))  # JSON serializer, no pickle
    assert stored[0] == "trainer.jobs.run_training_job"

    process = start_worker(redis_url, keys.prefix, tmp_path, tmp_path / "worker.log")
    seen = watch(job, process, timeout_s=400)
    process.wait(timeout=60)
    log = (tmp_path / "worker.log").read_text(errors="replace")
    assert process.returncode == 0, log[-3000:]
    job.refresh()
    assert job.get_status() == JobStatus.FINISHED, log[-3000:]

    epochs_seen = [m for m in seen if m.get("stage") == "training" and "epoch" in m]
    assert epochs_seen, f"no training progress observed in job.meta: {seen}"
    final = job.get_meta()
    assert final["stage"] == "done" and final["epoch"] == 2 and final["epochs"] == 2
    assert {"accuracy", "val_accuracy", "loss"} <= set(final["metrics"]) and "eta_s" in final

    result = job.return_value()
    registry = ModelRegistry(job_settings.registry_dir, redis_client, keys)
    assert [m.version for m in registry.versions()] == [result["version"]]
    assert result["promoted"] and registry.current_version() == result["version"]
    metadata = registry.versions()[0]
    assert metadata.metrics["PublicTest"]["n"] == 70 and "top1_tta" in metadata.metrics["PublicTest"]
    assert (registry.path(result["version"]) / "report.md").exists()


def test_failed_job_keeps_its_traceback(redis_client, tmp_path, job_settings, keys):
    """A dataset error inside the job surfaces as a failed job with the traceback stored by RQ."""
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"this is not an archive")
    job = enqueue_training(redis_client, TrainConfig(data=broken, model="compact16", epochs=1), job_settings)
    run_worker(redis_client, keys, burst=True, simple=True)
    job.refresh()
    assert job.get_status() == JobStatus.FAILED
    error = job.latest_result().exc_string
    assert "Traceback" in error and "not a readable .npz archive" in error


def test_job_arguments_are_validated_in_the_worker(redis_client, job_settings, tmp_path, keys):
    """Whatever reaches the queue is validated again: unknown fields are refused, nothing is unpickled."""
    bad = json.dumps({"data": str(tmp_path), "model": "compact16", "exec": "rm -rf /"})
    job = training_queue(redis_client, keys).enqueue(run_training_job, args=(bad, job_settings.model_dump_json()))
    run_worker(redis_client, keys, burst=True, simple=True)
    job.refresh()
    assert job.get_status() == JobStatus.FAILED
    assert "Extra inputs are not permitted" in job.latest_result().exc_string


def test_queued_job_can_be_cancelled(redis_client, tiny_config, job_settings, keys):
    job = enqueue_training(redis_client, tiny_config, job_settings)
    assert cancel_training(redis_client, job.id) == "canceled"
    assert Job.fetch(job.id, connection=redis_client, serializer=serializer()).get_status() == JobStatus.CANCELED
    assert training_queue(redis_client, keys).count == 0


def test_running_job_can_be_stopped(redis_client, redis_url, tiny_config, job_settings, tmp_path, keys):
    """send_stop_job_command reaches the forking worker, which kills the work horse mid-training."""
    job = enqueue_training(redis_client, tiny_config.model_copy(update={"epochs": 200}), job_settings)
    process = start_worker(redis_url, keys.prefix, tmp_path, tmp_path / "worker.log")
    seen = watch(job, process, timeout_s=300, until=lambda meta: meta.get("epoch", 0) >= 1)
    assert seen and seen[-1].get("epoch", 0) >= 1, (tmp_path / "worker.log").read_text(errors="replace")[-3000:]
    assert cancel_training(redis_client, job.id) == "stop requested"
    process.wait(timeout=120)
    job.refresh()
    assert job.get_status() == JobStatus.STOPPED
    assert job.get_meta()["epoch"] < 200


def test_if_better_compares_publictest_top1(redis_client, keys, tmp_path):
    registry = ModelRegistry(tmp_path / "registry", redis_client, keys, default_dir=tmp_path / "no default")
    assert _better_than_current(registry, 0.1)[0]  # nothing to beat
    registry.register(copy_model(tmp_path / "old", "old", top1=0.6))
    registry.promote("old")
    better, reason = _better_than_current(registry, 0.5)
    assert not better and "does not beat old" in reason
    assert _better_than_current(registry, 0.61)[0]
    registry.register(copy_model(tmp_path / "unscored", "unscored"))
    registry.promote("unscored")
    assert _better_than_current(registry, 0.0)[0]
