"""Training as an RQ job: a thin validated wrapper around train -> export -> evaluate -> register -> promote.

Jobs carry only JSON (the queue uses RQ's JSON serializer, and both arguments are pydantic-validated
JSON strings), so nothing pickled by a user is ever executed. Progress is written to `job.meta`
(stage, epoch, epochs, metrics, eta_s) from a Keras callback; failures keep their traceback in RQ's
failed-job registry; `cancel_training` cancels a queued job or stops a running one.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import redis
from pydantic import BaseModel, ConfigDict, Field

from shared.redis_conn import connect
from shared.registry import ModelRegistry
from shared.streams import Keys
from shared.training import DatasetPathError, TrainConfig, dataset_problem

log = logging.getLogger(__name__)

JOB_TIMEOUT_S = 48 * 3600  # RQ's default (180 s) would kill any real training
RESULT_TTL_S = 30 * 24 * 3600
FAILURE_TTL_S = 30 * 24 * 3600
STAGES = ("queued", "training", "exporting", "evaluating", "registering", "promoting", "done")

StageFn = Callable[[dict], None]


class JobSettings(BaseModel):
    """The part of `Settings` a training job needs, passed to the worker as JSON."""

    model_config = ConfigDict(extra="forbid")
    redis_url: str = Field(description="Redis holding the current-model pointer")
    redis_cluster: bool = Field(False, description="redis_url is a Redis Cluster")
    queue_redis_url: str | None = Field(None, description="the queue's own Redis, when not redis_url")
    prefix: str = Field("emotion", pattern=r"^[A-Za-z0-9_.-]+$")
    registry_dir: Path = Field(description="versioned model registry directory")
    default_model_dir: Path | None = Field(None, description="model served when the registry is empty")

    @classmethod
    def from_settings(cls, settings) -> "JobSettings":
        return cls(redis_url=settings.redis_url, redis_cluster=settings.redis_cluster,
                   queue_redis_url=settings.queue_redis_url, prefix=settings.prefix,
                   registry_dir=Path(settings.registry_dir).resolve(),
                   default_model_dir=Path(settings.default_model_dir).resolve() if settings.default_model_dir else None)


def serializer():
    from rq.serializers import JSONSerializer

    return JSONSerializer


def training_queue(client: redis.Redis, keys: Keys):
    """The RQ queue of training jobs, named under the deployment's prefix like every other key."""
    from rq import Queue

    return Queue(keys.training_queue, connection=client, serializer=serializer())


def listening_workers(client: redis.Redis, keys: Keys) -> int:
    """RQ workers registered for the training queue (a worker that died unannounced counts until its
    registration expires, RQ's worker_ttl)."""
    from rq import Worker

    return Worker.count(connection=client, queue=training_queue(client, keys))


def new_version(cfg: TrainConfig) -> str:
    return f"{cfg.model}-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S')}"


def enqueue_training(client: redis.Redis, cfg: TrainConfig, settings, *, version: str | None = None,
                     job_timeout: int = JOB_TIMEOUT_S, result_ttl: int = RESULT_TTL_S):
    """Put a training run on the training queue; `settings` is a Settings or JobSettings.

    Raises DatasetPathError for a dataset path of no known layout: better now than in the worker."""
    job_settings = settings if isinstance(settings, JobSettings) else JobSettings.from_settings(settings)
    cfg = TrainConfig.model_validate(cfg.model_dump())  # validated here, and again in the worker
    if problem := dataset_problem(cfg.data):
        raise DatasetPathError(problem)
    if cfg.run_dir is not None:
        cfg = cfg.model_copy(update={"run_dir": Path(cfg.run_dir).resolve()})
    cfg = cfg.model_copy(update={"data": Path(cfg.data).resolve(), "extra": [Path(p).resolve() for p in cfg.extra],
                                 "ferplus": Path(cfg.ferplus).resolve() if cfg.ferplus else None})
    return training_queue(client, Keys(job_settings.prefix)).enqueue(
        run_training_job, args=(cfg.model_dump_json(), job_settings.model_dump_json(), version),
        job_timeout=job_timeout, result_ttl=result_ttl, failure_ttl=FAILURE_TTL_S,
        description=f"train {cfg.model} on {cfg.data} ({cfg.epochs} epochs, promote {cfg.promote})",
        meta={"stage": "queued"})


def cancel_training(client: redis.Redis, job_id: str) -> str:
    """Cancel a queued job, or stop a running one (its worker kills the work horse); returns what was done."""
    from rq.command import send_stop_job_command
    from rq.job import Job, JobStatus

    job = Job.fetch(job_id, connection=client, serializer=serializer())
    status = job.get_status()
    if status in (JobStatus.QUEUED, JobStatus.DEFERRED, JobStatus.SCHEDULED):
        job.cancel()
        return "canceled"
    if status == JobStatus.STARTED:
        send_stop_job_command(client, job_id, serializer=serializer())
        return "stop requested"
    return f"nothing to do (job is {status})"


class JobProgress:
    """`progress(dict)` for `trainer.train.train`: merges each report into job.meta and saves it."""

    def __init__(self, job) -> None:
        self.job = job

    def __call__(self, update: dict) -> None:
        if self.job is None:
            return
        self.job.meta.update(update)
        self.job.meta["updated"] = time.time()
        self.job.save_meta()


def run_training_job(config_json: str, settings_json: str, version: str | None = None) -> dict:
    """The RQ job function: JSON in (validated), JSON-able summary out."""
    from rq import get_current_job

    cfg = TrainConfig.model_validate_json(config_json)
    job_settings = JobSettings.model_validate_json(settings_json)
    job = get_current_job()
    # The pointer a promotion moves lives in the deployment's Redis, which is the queue's unless the
    # queue has its own (always so with a cluster).
    if job is not None and job_settings.queue_redis_url in (None, job_settings.redis_url):
        client = job.connection
    else:
        client = connect(job_settings.redis_url, cluster=job_settings.redis_cluster)
    registry = ModelRegistry(job_settings.registry_dir, client, Keys(job_settings.prefix),
                             job_settings.default_model_dir)
    summary = train_and_register(cfg, registry, version=version, progress=JobProgress(job), verbose=2)
    return summary


def _better_than_current(registry: ModelRegistry, top1: float) -> tuple[bool, str]:
    from shared.model_runtime import ModelError, read_metadata

    try:
        current_dir = registry.current_dir()
        current = read_metadata(current_dir)
    except ModelError:
        return True, "no current model"
    current_top1 = (current.metrics.get("PublicTest") or {}).get("top1")
    if current_top1 is None:
        return True, f"current model {current.version} has no PublicTest top1"
    if top1 > float(current_top1):
        return True, f"PublicTest top1 {top1:.4f} beats {current.version} ({float(current_top1):.4f})"
    return False, f"PublicTest top1 {top1:.4f} does not beat {current.version} ({float(current_top1):.4f})"


def train_and_register(cfg: TrainConfig, registry: ModelRegistry, *, version: str | None = None,
                       progress: StageFn | None = None, verbose: int = 1) -> dict:
    """Everything `emotion train` and the RQ job do: train, export, check, evaluate, register, promote."""
    from trainer.evaluate import evaluate, metrics_summary, write_report
    from trainer.export import check_roundtrip, evaluation_splits, export_model, update_metadata
    from trainer.train import train

    report = progress or (lambda update: None)
    version = version or new_version(cfg)
    if cfg.run_dir is None:
        cfg = cfg.model_copy(update={"run_dir": Path("runs") / version})
    report({"stage": "training", "version": version, "run_dir": str(cfg.run_dir)})

    def on_epoch(update: dict) -> None:
        report({"stage": "training", **update})

    result = train(cfg, progress=on_epoch, verbose=verbose)

    report({"stage": "exporting"})
    export_dir = Path(result.run_dir) / "export" / version
    export_model(result.model_path, export_dir, version=version, architecture=cfg.model, metrics={},
                 data_fingerprint=result.data_fingerprint, training_seconds=result.seconds,
                 train_config=cfg.model_dump(mode="json"))
    difference = check_roundtrip(export_dir)

    report({"stage": "evaluating"})
    splits = evaluation_splits(cfg.data, cfg.seed)
    validation = splits["PublicTest"]
    results = {"PublicTest": evaluate(export_dir, validation, tta=True)}
    update_metadata(export_dir, metrics={name: metrics_summary(r) for name, r in results.items()},
                    roundtrip_max_diff=difference, epochs_run=result.epochs_run, train_images=result.train_images)
    write_report(export_dir, results)

    report({"stage": "registering"})
    top1 = results["PublicTest"]["top1"]
    if cfg.promote == "always":
        promote, reason = True, "promote=always"
    elif cfg.promote == "never":
        promote, reason = False, "promote=never"
    else:
        promote, reason = _better_than_current(registry, top1)
    registry.register(export_dir, version)
    if promote:
        report({"stage": "promoting"})
        registry.promote(version)
    log.info("model %s registered%s (%s)", version, " and promoted" if promote else "", reason)
    summary = {"version": version, "promoted": promote, "reason": reason,
               "model_dir": str(registry.path(version)), "run_dir": str(result.run_dir),
               "epochs_run": result.epochs_run, "train_images": result.train_images,
               "seconds": round(result.seconds, 1), "metrics": metrics_summary(results["PublicTest"])}
    report({"stage": "done", "result": summary})
    return summary


def run_worker(client: redis.Redis, keys: Keys, *, burst: bool = False, simple: bool = False) -> bool:
    """Serve the training queue. The default worker forks a work horse per job (stoppable); `simple` runs in-process."""
    from rq import SimpleWorker, Worker

    worker_class = SimpleWorker if simple else Worker
    worker = worker_class([training_queue(client, keys)], connection=client, serializer=serializer())
    return worker.work(burst=burst, with_scheduler=False)
