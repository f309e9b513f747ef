"""Detector: frames -> face crops. Decodes JPEGs, finds faces, tracks them per camera, crops them
with the current model's own preprocessing (its calibrated framing for this detector backend:
turned so the eyes are level, cut as FER-2013 cut its faces) and publishes one FaceMessage per face.

All tracking state is per camera (`FaceFinder.trackers`), and a camera's frames are all in one shard
whose lease one detector replica holds (services/detector/run.py), so a track is never split between
replicas. Track ids come in blocks reserved in Redis per camera (`RedisTrackIds`): when a camera's
shard moves to another replica (or the detector restarts) its new tracks never reuse an id, so the
classifiers' per-track smoothing never blends two people.

A face that reached the faces stream will get its event: that stream is trimmed only once the
classifiers have acknowledged it (see the table of streams in shared/streams.py).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Protocol

import cv2
import numpy as np

from shared.faces import FaceDetector, IoUTracker
from shared.frame_faces import frame_faces
from shared.model_follower import ModelFollower
from shared.model_runtime import Preprocess
from shared.processor import Outbound, Processor
from shared.redis_conn import Client
from shared.schemas import FaceMessage, FrameMessage, MessageError, encode
from shared.settings import DetectorSettings
from shared.streams import Keys

log = logging.getLogger(__name__)


def decode_frame(message: FrameMessage) -> np.ndarray:
    """Grey pixels of a frame; a JPEG that does not decode to the announced size is a bad message."""
    gray = cv2.imdecode(np.frombuffer(message.jpeg, np.uint8), cv2.IMREAD_GRAYSCALE)
    if gray is None:
        raise MessageError(f"frame {message.camera_id}/{message.frame_id}: JPEG does not decode")
    if gray.shape != (message.height, message.width):
        raise MessageError(f"frame {message.camera_id}/{message.frame_id}: decoded {gray.shape[::-1]}, "
                           f"announced {(message.width, message.height)}")
    return gray


@dataclass
class DetectionResult:
    faces: list[FaceMessage]
    frames_without_faces: int
    faces_over_limit: int = 0  # found beyond `max_faces` in a frame: counted, not published


TRACK_ID_BLOCK = 1000


class TrackIds(Protocol):
    def reserve(self, camera_id: str, count: int) -> int:
        """The first of `count` track ids of `camera_id` that nobody has used (nor will)."""
        ...


class LocalTrackIds:
    """Track ids counted in memory from 1: for tests and a single detector that never restarts."""

    def __init__(self) -> None:
        self._next: dict[str, int] = {}

    def reserve(self, camera_id: str, count: int) -> int:
        first = self._next.get(camera_id, 1)
        self._next[camera_id] = first + count
        return first


class RedisTrackIds:
    """Track ids reserved with INCRBY on the camera's counter in its shard (`Keys.track_ids`)."""

    def __init__(self, client: Client, keys: Keys) -> None:
        self.client, self.keys = client, keys

    def reserve(self, camera_id: str, count: int) -> int:
        return int(self.client.incrby(self.keys.track_ids(camera_id), count)) - count + 1


class _IdBlock:
    """New track ids of one camera, `TRACK_ID_BLOCK` reserved at a time (one Redis call per block)."""

    def __init__(self, source: TrackIds, camera_id: str) -> None:
        self.source, self.camera_id = source, camera_id
        self._next = self._end = 0

    def __call__(self) -> int:
        if self._next >= self._end:
            self._next = self.source.reserve(self.camera_id, TRACK_ID_BLOCK)
            self._end = self._next + TRACK_ID_BLOCK
        self._next += 1
        return self._next - 1


@dataclass
class FaceFinder:
    """The pure part: frames in, face messages out. Holds per-camera trackers; no Redis but the
    reservation of a block of track ids, once per thousand tracks, when given `RedisTrackIds`."""

    detector: FaceDetector
    settings: DetectorSettings
    preprocess: Preprocess
    track_ids: TrackIds = field(default_factory=LocalTrackIds)
    trackers: dict[str, IoUTracker] = field(default_factory=dict)

    def process(self, frames: list[FrameMessage], now_ms: int | None = None) -> DetectionResult:
        # Decode everything first: a corrupt frame fails the batch before any tracker changes state.
        decoded = [decode_frame(frame) for frame in frames]
        faces: list[FaceMessage] = []
        empty = over = 0
        for frame, gray in zip(frames, decoded):
            tracker = self.trackers.get(frame.camera_id)
            if tracker is None:
                tracker = self.trackers[frame.camera_id] = IoUTracker(
                    self.settings.iou_threshold, self.settings.track_max_age_ms,
                    new_id=_IdBlock(self.track_ids, frame.camera_id))
            found = frame_faces(gray, self.detector, self.settings, self.preprocess, tracker,
                                camera_id=frame.camera_id, session_id=frame.session_id, frame_id=frame.frame_id,
                                captured_ms=frame.captured_ms, detected_ms=now_ms)
            over += found.over_limit
            empty += not found.faces
            faces.extend(found.faces)
        return DetectionResult(faces, empty, over)


class DetectorProcessor(Processor[FrameMessage]):
    """Plugs FaceFinder into the worker loop; follows the current model's preprocessing."""

    input_model = FrameMessage

    def __init__(self, finder: FaceFinder, keys: Keys, follower: ModelFollower[Preprocess] | None = None) -> None:
        self.finder = finder
        self.keys = keys
        self.follower = follower  # yields the current model's Preprocess when the model moved

    def _follow_model(self) -> None:
        current = self.follower.poll() if self.follower is not None else None
        if current is not None and current != self.finder.preprocess:
            log.info("event=preprocess_changed old=%s new=%s", self.finder.preprocess.id, current.id)
            self.finder.preprocess = current

    def handle(self, batch: list[FrameMessage]) -> list[Outbound]:
        self._follow_model()
        result = self.finder.process(batch)
        done_s = time.time()
        self.metrics.stage("capture_to_detect", (done_s - frame.captured_ms / 1000 for frame in batch))
        self.counters.add("frames_without_faces", result.frames_without_faces)
        self.counters.add("faces_over_limit", result.faces_over_limit)
        return [Outbound(self.keys.faces, encode(face)) for face in result.faces]

    def model_info(self) -> dict:
        """What the detector crops for (the model's preprocessing) and how it finds faces."""
        return {"preprocess": self.finder.preprocess.id, "backend": self.finder.detector.name}

    def heartbeat_info(self) -> dict:
        return {"frames_without_faces": self.counters["frames_without_faces"],
                "faces_over_limit": self.counters["faces_over_limit"], "backend": self.finder.detector.name,
                "preprocess": self.finder.preprocess.id,
                "framing": self.finder.detector.name in self.finder.preprocess.framing,
                **(self.follower.heartbeat_info() if self.follower is not None else {})}
