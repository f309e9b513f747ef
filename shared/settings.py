"""Every knob of the platform in one place: environment variables with the EMOTION_ prefix.

Nested sections use a double underscore (EMOTION_WORKER__BATCH_SIZE=32). REDIS_URL and DATABASE_URL
are also read without the prefix, as container platforms set them. CLI flags override by passing
keyword arguments to `Settings(...)`. Unknown EMOTION_ variables are rejected, so typos fail loudly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import os
from urllib.parse import urlsplit

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.streams import MAX_SHARDS

REPO_ROOT = Path(__file__).resolve().parent.parent


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class WorkerSettings(_Section):
    """The consumer-group loop shared by every stream service."""

    batch_size: int = Field(16, ge=1, le=10_000, description="entries read per XREADGROUP")
    block_ms: int = Field(200, ge=1, le=60_000, description="XREADGROUP BLOCK timeout")
    batch_wait_ms: int = Field(0, ge=0, le=10_000, description="after a short read, wait this long to fill a batch")
    claim_idle_ms: int = Field(15_000, ge=100, description="reclaim entries left pending this long by dead consumers")
    claim_interval_s: float = Field(5.0, gt=0, description="how often to look for abandoned entries")
    max_deliveries: int = Field(5, ge=1, le=1000, description="deliveries before an entry goes to <stream>:dead")
    heartbeat_ttl_s: int = Field(10, ge=2, description="a consumer whose heartbeat key expired is presumed dead")
    overlap_batches: bool = Field(True, description="run the next batch's inference while the previous one "
                                                    "commits (processors that split prepare/finish)")
    backoff_initial_s: float = Field(0.5, gt=0)
    backoff_max_s: float = Field(30.0, gt=0)


class CaptureSettings(_Section):
    source: str | None = Field(None, description="webcam index (0), video file, rtsp/http URL, image folder or glob, "
                                                 "demo, or demo:PATH.npz (`emotion capture --source`)")
    camera_id: str | None = Field(None, description="name of this camera: letters, digits, _.:- "
                                                    "(`emotion capture --camera-id`)")
    loop: bool = Field(False, description="restart file sources at their end")
    fps: float = Field(15.0, gt=0, le=240, description="frames per second published per camera")
    jpeg_quality: int = Field(85, ge=10, le=100)
    max_width: int = Field(1280, ge=64, description="frames wider than this are downscaled before encoding")
    shed_lag: int = Field(30, ge=1, description="drop new frames while the detector is this many frames behind")
    reconnect_max_s: float = Field(30.0, gt=0, description="cap of the reconnect backoff for network sources")
    shard: int | None = Field(None, ge=0, description="the shard this camera's frames go to (below EMOTION_SHARDS); "
                                                      "default: a stable hash of the camera id")


class DetectorSettings(_Section):
    backend: Literal["yunet", "haar"] = Field(
        "yunet", description="face detector: yunet (libfacedetection CNN from the yuface wheel; falls back to haar, "
                             "with a warning, where that wheel is not installed) or haar (OpenCV cascade)")
    detect_width: int = Field(320, ge=80, description="live frames are downscaled to this width for detection")
    min_face: int = Field(40, ge=8, description="smallest face side in original-frame pixels")
    min_confidence: float = Field(0.5, ge=0, le=1, description="smallest detection confidence kept (yunet; the "
                                                              "cascade gives no score)")
    max_faces: int = Field(16, ge=1, le=256, description="faces per live frame: the largest are kept, the rest "
                                                         "counted as faces_over_limit")
    roll_search: Literal["off", "photos", "always"] = Field(
        "photos", description="also search copies of the image turned by ±roll_search_deg, for faces tilted "
                              "sideways (3x the detection cost; backends with landmarks: yunet): off, photos "
                              "(uploads and image inputs) or always (live and video frames too)")
    roll_search_deg: float = Field(15.0, gt=0, le=45, description="the turn of the extra roll-search passes, degrees")
    threads: int = Field(1, ge=1, le=64, description="threads of the CNN backend")
    scale_factor: float = Field(1.15, gt=1.0, lt=2.0, description="haar: pyramid step")
    min_neighbors: int = Field(5, ge=1, description="haar: overlapping hits needed for a face")
    iou_threshold: float = Field(0.3, gt=0, lt=1, description="IoU with a track's predicted box that continues it")
    track_max_age_ms: int = Field(1500, ge=1, description="a track unseen this long is closed")
    lease_ttl_ms: int = Field(5000, ge=500, le=300_000, description="a replica owns a shard's frames by a lease it "
                                                                   "renews every second; one that stops renewing "
                                                                   "loses the shard to a standby after this long")


class ClassifierSettings(_Section):
    threads: int = Field(1, ge=1, le=64, description="inference threads per replica")
    batch_size: int = Field(16, ge=1, le=1024, description="faces per inference call (micro-batch)")
    batch_wait_ms: int = Field(10, ge=0, le=1000, description="wait at most this long to fill a micro-batch")
    smoothing_tau_ms: float = Field(600.0, gt=0, description="time constant of the per-track EMA")
    flip_tta: bool = Field(False, description="average each face with its mirror image: ~+0.6 points top-1 on "
                                              "PublicTest for half the throughput")
    model_role: Literal["fast", "accurate"] = Field("fast", description="which role's current model the live "
                                                                         "classifiers serve (the detector crops for it)")


class AnalyzeSettings(_Section):
    """Photo and offline analysis (the Analyze page, /api/analyze, `emotion analyze`): accuracy over speed."""

    model_role: Literal["fast", "accurate"] = Field("accurate", description="model role that answers")
    tta: Literal["none", "flip", "ten-crop"] = Field(
        "none", description="test-time augmentation: none, flip (2 views) or ten-crop (10 views; models that "
                                "see a central window of their crop, else flip)")
    workers: int = Field(0, ge=0, le=64, description="`emotion analyze`: face-detection processes (0: one per CPU "
                                                     "core)")


class RecorderSettings(_Section):
    retention_days: int | None = Field(None, ge=1, description="delete events older than this (None keeps all)")
    keep_crops: bool = Field(False, description="opt-in: store face crops (privacy: off by default)")
    crop_max_age_days: int = Field(7, ge=1)


class DashboardSettings(_Section):
    host: str = Field("127.0.0.1", description="address to listen on; a non-local one needs a token")
    port: int = Field(8050, ge=1, le=65535)
    auth_token: str | None = Field(None, description="token (or user:password), required when host is not local: "
                                                     "at least 16 characters of secret")
    token_file: Path | None = Field(None, description="without auth_token: the token kept in this file, generated "
                                                      "(and its login URL printed once) on the first start")
    allowed_hosts: str = Field("", description="without a token, Host headers other than localhost are refused "
                                               "(DNS rebinding); extra names to accept, comma-separated")
    public_url: str | None = Field(None, description="the address users open, named in the login line of a generated "
                                   "token (default http://HOST:PORT; behind a published port, say that one)")
    max_upload_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    max_upload_pixels: int = Field(40_000_000, ge=1024)
    # The live feed (GET /api/v1/events/stream) holds a server thread while it is open: bound its length and
    # how many run at once, so feeds can never take every thread the pages need (waitress serves 8).
    stream_max_s: float = Field(300.0, gt=0, le=3600, description="a live-feed response ends after this long; "
                                                                  "clients reconnect with Last-Event-ID")
    stream_heartbeat_s: float = Field(15.0, gt=0, le=300, description="comment line sent on an idle live feed (also "
                                                                      "how soon a gone client is noticed)")
    max_streams: int = Field(4, ge=1, le=64, description="live feeds open at once; more are answered 503")

    @field_validator("auth_token")
    @classmethod
    def _blank_is_none(cls, value: str | None) -> str | None:
        """An empty or all-whitespace token (an unset ${VAR} in compose) means no token at all."""
        return value.strip() or None if value is not None else None


class MetricsSettings(_Section):
    """Each process's /metrics, /healthz and /readyz (shared/metrics.py); the dashboard serves /metrics
    on its own port instead."""

    port: int | None = Field(None, ge=0, le=65535, description="port of /metrics, /healthz and /readyz; unset: the "
                                                              "service's default (capture 9181, detector 9182, "
                                                              "classifier 9183, recorder 9184; when that one is "
                                                              "taken, a free port, logged); 0 turns it off")
    host: str = Field("127.0.0.1", description="address the metrics server listens on (0.0.0.0 in containers, "
                                               "so Prometheus can scrape it)")
    liveness_s: float = Field(60.0, gt=0, description="/healthz fails once the loop has not iterated for this long "
                                                      "(longer than worker.backoff_max_s: an outage is not a hang)")
    linger_s: float = Field(0.0, ge=0, le=300, description="after a warm stop, keep /metrics answering this long, "
                                                           "so a last scrape sees the final counts")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EMOTION_", env_nested_delimiter="__", extra="forbid")

    redis_url: str = Field("redis://127.0.0.1:6379/0", validation_alias=AliasChoices("EMOTION_REDIS_URL", "REDIS_URL"),
                           description="redis:// or rediss:// (TLS) URL; user:password@ for ACL users")
    database_url: str = Field("sqlite:///emotion.sqlite",
                              validation_alias=AliasChoices("EMOTION_DATABASE_URL", "DATABASE_URL"),
                              description="SQLAlchemy URL of the event store (SQLite file or PostgreSQL)")
    redis_cluster: bool = Field(False, description="REDIS_URL seeds a Redis Cluster client (redis-py RedisCluster) "
                                                   "instead of a single-node one")
    shards: int = Field(1, ge=1, le=MAX_SHARDS, description="streams are split by camera into this many shards, each "
                                                            "in one cluster slot; the same on every service")
    queue_redis_url: str | None = Field(None, description="single-node Redis of the RQ training queue (default: "
                                                          "REDIS_URL; required with redis_cluster, RQ needs one node)")
    prefix: str = Field("emotion", pattern=r"^[A-Za-z0-9_.-]+$", description="prefix of every Redis key and stream")
    registry_dir: Path = Field(Path("registry"), description="versioned model registry directory")
    default_model_dir: Path = Field(REPO_ROOT / "models" / "default",
                                    description="fast-role model served while the registry has no current fast version")
    accurate_model_dir: Path = Field(REPO_ROOT / "models" / "accurate",
                                     description="accurate-role model served while the registry has no current accurate "
                                                 "version (when absent, the fast model answers)")
    model_check_s: float = Field(1.0, gt=0, description="how often the detector and the classifiers look for a "
                                                       "newly promoted model")
    log_level: str = Field("INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")
    data_dir: Path = Field(Path(".emotion"), description="run-time files of `emotion up`: logs, embedded Redis")

    worker: WorkerSettings = WorkerSettings()
    capture: CaptureSettings = CaptureSettings()
    detector: DetectorSettings = DetectorSettings()
    classifier: ClassifierSettings = ClassifierSettings()
    analyze: AnalyzeSettings = AnalyzeSettings()
    recorder: RecorderSettings = RecorderSettings()
    dashboard: DashboardSettings = DashboardSettings()
    metrics: MetricsSettings = MetricsSettings()

    @field_validator("redis_url", "queue_redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @model_validator(mode="after")
    def _cluster_url(self) -> "Settings":
        if self.redis_cluster and self.redis_url.startswith("unix://"):
            raise ValueError("redis_cluster: a Redis Cluster is reached over TCP: REDIS_URL must be redis:// or "
                             "rediss:// (host:port of any of its nodes)")
        if self.redis_cluster and urlsplit(self.redis_url).path.strip("/") not in ("", "0"):
            raise ValueError("redis_cluster: a Redis Cluster has only database 0: end REDIS_URL with /0 or nothing")
        if self.capture.shard is not None and self.capture.shard >= self.shards:
            raise ValueError(f"capture.shard: {self.capture.shard} is not a shard of {self.shards} (EMOTION_SHARDS); "
                             f"shards are numbered from 0")
        return self

    @model_validator(mode="after")
    def _no_unknown_environment(self) -> "Settings":
        unknown = unknown_env_names(os.environ)
        if unknown:
            raise ValueError(f"unknown setting(s) in the environment: {', '.join(sorted(unknown))}")
        return self


def with_overrides(settings: Settings, values: dict[str, object]) -> Settings:
    """A copy of `settings` with fields replaced by dotted name ("capture.fps", "database_url"), each value
    validated as if it had come from the environment (CLI flags use this)."""
    data = settings.model_dump()
    for name, value in values.items():
        section, _, leaf = name.rpartition(".")
        (data[section] if section else data)[leaf] = value
    return Settings(**data)


def unknown_env_names(environ) -> list[str]:
    """EMOTION_* variables that name no setting (a typo would otherwise be silently ignored)."""
    prefix = "EMOTION_"
    top = {name.upper(): field for name, field in Settings.model_fields.items()}
    unknown = []
    for name in environ:
        if not name.upper().startswith(prefix):
            continue
        section, _, leaf = name[len(prefix):].upper().partition("__")
        field = top.get(section)
        if field is None:
            unknown.append(name)
            continue
        if leaf:
            model = field.annotation
            fields = getattr(model, "model_fields", {})
            if leaf.lower() not in fields:
                unknown.append(name)
    return unknown



def describe_validation_error(exc: ValidationError, environ=None) -> str:
    """One line for a settings (or any pydantic) error: `where: what` per problem, `; `-separated.

    A problem of the whole model (an unknown variable) has no location, so it is the message alone;
    pydantic's "Value error, " prefix is dropped; and a field that is read from two variables
    (REDIS_URL or EMOTION_REDIS_URL) is blamed on the one that is actually set.
    """
    environ = os.environ if environ is None else environ
    problems = []
    for error in exc.errors():
        loc = [str(part) for part in error.get("loc", ())]
        if loc and loc[0] not in environ:
            loc[0] = _variable_set_for(loc[0], environ)
        message = error.get("msg", "")
        message = message.removeprefix("Value error, ").removeprefix("Assertion failed, ")
        problems.append(f"{'.'.join(loc)}: {message}" if loc else message)
    return "; ".join(problems)


def _variable_set_for(name: str, environ) -> str:
    """For an alias like EMOTION_REDIS_URL that is not set: the other alias of its field that is."""
    for field in Settings.model_fields.values():
        alias = field.validation_alias
        choices = [c for c in getattr(alias, "choices", []) if isinstance(c, str)]
        if name in choices:
            return next((c for c in choices if c in environ), name)
    return name
