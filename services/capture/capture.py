"""The capture loop: read a source, pace it, shed frames the pipeline cannot take, publish JPEGs.

Capture is the one producer that is not a consumer-group worker. Under load it drops new frames
(counted as `shed` in the stats hash and the returned summary) instead of blocking, and the frames
stream is capped as the table of streams says (shared/streams.py): live frames are only worth
processing while they are fresh.

A camera publishes to one shard's frames stream (`capture.shard`, else a stable hash of its id:
shared/streams.py), so all its frames reach the one detector replica that holds that shard; its
counters go to that shard too, and the cameras hash says which shard it is in.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field

import cv2
import numpy as np
import redis

from services.capture.sources import Source
from shared.metrics import ServiceMetrics
from shared.redis_conn import REDIS_DOWN_ERRORS, redact
from shared.schemas import FrameMessage, encode
from shared.settings import CaptureSettings
from shared.stream_state import group_state
from shared.streams import DETECTOR_GROUP, Keys, StreamTable

log = logging.getLogger(__name__)


HEARTBEAT_EVERY_S = 1.0


@dataclass
class CaptureStats:
    frames_read: int = 0
    published: int = 0
    shed: int = 0
    redis_errors: int = 0
    busy_s: float = 0.0
    started_ms: int = field(default_factory=lambda: int(time.time() * 1000))


class Heartbeat:
    """The capture's liveness key, in the scheme every stream service uses (`Keys.heartbeat`), so the
    Health page counts capture replicas, the Live page knows which cameras still run, and the
    container health check works the same way. It expires `ttl_s` after the last beat."""

    def __init__(self, client: redis.Redis, keys: Keys, camera_id: str, ttl_s: int) -> None:
        self.client, self.ttl_s, self.camera_id = client, ttl_s, camera_id
        self.key = keys.heartbeat("capture", f"capture-{camera_id}-{socket.gethostname()}-{os.getpid()}")
        self._last = 0.0

    def beat(self, stats: CaptureStats, source: str, force: bool = False, metrics_port: int | None = None) -> None:
        now = time.monotonic()
        if not force and now - self._last < HEARTBEAT_EVERY_S:
            return
        self._last = now
        beat = {"service": "capture", "consumer": self.key.rsplit(":", 1)[-1], "camera_id": self.camera_id,
                "source": redact(source), "host": socket.gethostname(), "pid": os.getpid(),
                "ts_ms": int(time.time() * 1000), "started_ms": stats.started_ms, "entries": stats.published,
                "shed": stats.shed, "dead": 0, "busy_s": round(stats.busy_s, 3)}
        if metrics_port:
            beat["metrics_port"] = metrics_port
        self.client.set(self.key, json.dumps(beat), ex=self.ttl_s)

    def clear(self) -> None:
        try:
            self.client.delete(self.key)
        except REDIS_DOWN_ERRORS:
            pass  # it expires by itself


def encode_frame(frame: np.ndarray, settings: CaptureSettings) -> tuple[bytes, int, int]:
    """JPEG bytes of a frame, downscaled to max_width first; returns (jpeg, width, height)."""
    height, width = frame.shape[:2]
    if width > settings.max_width:
        scale = settings.max_width / width
        frame = cv2.resize(frame, (settings.max_width, int(height * scale)), interpolation=cv2.INTER_AREA)
        height, width = frame.shape[:2]
    ok, buffer = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, settings.jpeg_quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buffer.tobytes(), width, height


class LagProbe:
    """How far the detector group is behind on the frames stream, cached briefly. Before the detector
    has created its group there is nobody to fall behind (a missing group or unknown lag reads 0)."""

    def __init__(self, client: redis.Redis, stream: str, every_s: float = 0.2) -> None:
        self.client, self.stream, self.every_s = client, stream, every_s
        self._value, self._at = 0, 0.0

    def lag(self) -> int:
        now = time.monotonic()
        if now - self._at >= self.every_s:
            self._at = now
            state = group_state(self.client, self.stream, DETECTOR_GROUP)
            self._value = (state.lag or 0) if state.exists else 0
        return self._value


def run_capture(client: redis.Redis, keys: Keys, settings: CaptureSettings, source: Source, *, camera_id: str,
                session_id: str, stop: threading.Event, max_frames: int | None = None,
                heartbeat_ttl_s: int = 10, metrics: ServiceMetrics | None = None) -> CaptureStats:
    stats = CaptureStats()
    metrics = metrics or ServiceMetrics("capture", process=False)
    metrics.touch("frames", camera=camera_id)
    metrics.touch("frames_shed", camera=camera_id)
    interval = 1.0 / settings.fps
    next_due = time.monotonic()
    keys = keys.of_shard(settings.shard if settings.shard is not None else keys.shard_of(camera_id))
    probe = LagProbe(client, keys.frames)
    heartbeat = Heartbeat(client, keys, camera_id, heartbeat_ttl_s)
    frames_options = StreamTable(keys).frames.xadd_options()
    backoff = 0.5
    client.hset(keys.cameras, camera_id, json.dumps({"source": redact(source.name), "session_id": session_id,
                                                     "fps": settings.fps, "started_ms": stats.started_ms,
                                                     "shard": keys.shard}))
    heartbeat.beat(stats, source.name, force=True)
    for frame in source.frames:
        if stop.is_set() or (max_frames is not None and stats.frames_read >= max_frames):
            break
        now = time.monotonic()
        if source.live and now < next_due:
            continue  # camera delivers faster than the configured fps: skip without sleeping
        if not source.live and now < next_due:
            stop.wait(next_due - now)  # pace files and demos at the configured frame rate
        next_due = max(next_due + interval, time.monotonic() - interval)
        stats.frames_read += 1
        started = time.monotonic()
        metrics.health.beat("capture")
        try:
            heartbeat.beat(stats, source.name, metrics_port=metrics.port)
            if probe.lag() >= settings.shed_lag:
                stats.shed += 1
                client.hincrby(keys.stats("capture"), "shed", 1)
                metrics.count("frames_shed", camera=camera_id)
                continue
            jpeg, width, height = encode_frame(frame, settings)
            message = FrameMessage(camera_id=camera_id, session_id=session_id, frame_id=stats.frames_read - 1,
                                   captured_ms=int(time.time() * 1000), width=width, height=height, jpeg=jpeg)
            pipe = client.pipeline(transaction=False)
            pipe.xadd(keys.frames, encode(message), **frames_options)
            pipe.hincrby(keys.stats("capture"), "published", 1)
            pipe.execute()
            stats.published += 1
            metrics.count("frames", camera=camera_id)
            metrics.health.flag("redis", True)
            stats.busy_s += time.monotonic() - started  # encoding and publishing, not pacing
            backoff = 0.5
        except REDIS_DOWN_ERRORS as exc:
            # Live frames are not worth queueing while Redis is away: count them and retry later.
            stats.redis_errors += 1
            stats.shed += 1
            metrics.count("redis_errors")
            metrics.count("frames_shed", camera=camera_id)
            metrics.health.flag("redis", False)
            log.warning("event=redis_down service=capture camera=%s error=%r retry_in_s=%.1f", camera_id, exc, backoff)
            stop.wait(backoff)
            backoff = min(backoff * 2, 30.0)
    heartbeat.clear()  # after a crash it expires by itself, heartbeat_ttl_s later
    log.info("event=capture_done camera=%s stats=%s", camera_id, json.dumps(stats.__dict__))
    return stats
