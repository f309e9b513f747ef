"""Classifier: face crops -> emotion events, one LiteRT call per micro-batch.

Replicas share the faces stream through one consumer group. The per-track smoothed distribution is
kept in Redis (not in a replica's memory) because consecutive faces of one track land on different
replicas. A newly promoted model is loaded between batches (shared/model_follower.py); if it cannot
be loaded the previous model keeps serving and the failure is reported in the heartbeat.

Each face names the preprocessing its crop was made with (`preprocess`, an id digesting every
field); one that differs from the serving model's is still classified (a promotion reaches the
detector and the classifiers a moment apart, and those faces must not be lost) but counted as
`preprocess_mismatch` in the stats hash, and logged when a new pair of ids appears.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np
import redis

from shared.model_follower import ModelFollower
from shared.model_runtime import EmotionModel
from shared.processor import Outbound, Processor
from shared.schemas import FaceMessage, encode
from shared.smoothing import TrackState, build_events
from shared.streams import Keys

log = logging.getLogger(__name__)
TRACK_STATE_TTL_S = 60


def crops_for_model(faces: list[FaceMessage], model: EmotionModel) -> tuple[np.ndarray, int]:
    """Stack crops at the model's input size; returns (crops, number that needed resizing)."""
    size = model.preprocess.input_size
    crops, mismatched = [], 0
    for face in faces:
        crop = face.crop_array()
        if face.side != size:
            crop = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)
            mismatched += 1
        crops.append(crop)
    return np.stack(crops), mismatched


@dataclass
class Inference:
    """What `prepare` hands to `finish`: one batch's probabilities and the model that made them."""

    model_version: str
    preprocess: str  # the id of the preprocessing that model expects
    probabilities: np.ndarray
    resized: int  # crops that were not at the model's input size


class TrackStore(Protocol):
    def load(self, keys: list[str]) -> dict[str, TrackState | None]: ...

    def save(self, states: dict[str, TrackState], pipe: redis.client.Pipeline) -> None:
        """Queue the writes on `pipe`, the worker's commit transaction."""
        ...


class MemoryTrackStore:
    def __init__(self) -> None:
        self.states: dict[str, TrackState] = {}

    def load(self, keys: list[str]) -> dict[str, TrackState | None]:
        return {k: self.states.get(k) for k in keys}

    def save(self, states: dict[str, TrackState], pipe: redis.client.Pipeline) -> None:
        self.states.update(states)


class RedisTrackStore:
    """Track states as small JSON strings with a TTL, so closed tracks disappear on their own."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client, self.keys = client, keys

    def _key(self, track_key: str) -> str:
        camera, _, track = track_key.rpartition(":")
        return self.keys.track(camera, int(track))

    def load(self, keys: list[str]) -> dict[str, TrackState | None]:
        unique = list(dict.fromkeys(keys))
        values = self.client.mget([self._key(k) for k in unique]) if unique else []
        result: dict[str, TrackState | None] = {}
        for key, raw in zip(unique, values):
            if raw:
                data = json.loads(raw)
                result[key] = TrackState(np.array(data["p"], dtype=np.float64), int(data["t"]))
            else:
                result[key] = None
        return result

    def save(self, states: dict[str, TrackState], pipe: redis.client.Pipeline) -> None:
        for key, state in states.items():
            pipe.set(self._key(key), json.dumps({"p": state.probabilities.round(5).tolist(), "t": state.at_ms}),
                     ex=TRACK_STATE_TTL_S)


class ClassifierProcessor(Processor[FaceMessage]):
    input_model = FaceMessage

    def __init__(self, model: EmotionModel, keys: Keys, tracks: TrackStore, *, tau_ms: float,
                 follower: ModelFollower[EmotionModel] | None = None, flip_tta: bool = False) -> None:
        self.model = model
        self.flip_tta = flip_tta
        self.keys = keys
        self.tracks = tracks
        self.tau_ms = tau_ms
        self.follower = follower  # yields a newly loaded model when the current version moved
        self._unsaved_states: dict[str, TrackState] = {}
        self._mismatch_logged: tuple[str, str] | None = None

    def _maybe_swap(self) -> None:
        new_model = self.follower.poll() if self.follower is not None else None
        if new_model is not None:
            log.info("event=model_swapped old=%s new=%s", self.model.version, new_model.version)
            self.model = new_model

    def _count_mismatches(self, batch: list[FaceMessage], inference: Inference) -> None:
        mismatched = [f.preprocess for f in batch if f.preprocess != inference.preprocess]
        self.counters.add("preprocess_mismatch", len(mismatched))
        if mismatched and self._mismatch_logged != (mismatched[0], inference.preprocess):
            self._mismatch_logged = (mismatched[0], inference.preprocess)
            log.warning("event=preprocess_mismatch faces=%d crop_preprocess=%s model=%s model_preprocess=%s",
                        len(mismatched), mismatched[0], inference.model_version, inference.preprocess)

    def handle(self, batch: list[FaceMessage]) -> list[Outbound]:
        return self.finish(batch, self.prepare(batch))

    def prepare(self, batch: list[FaceMessage]) -> Inference:
        """Crops -> probabilities. Touches no shared state: the worker may run it on its helper thread
        (LiteRT releases the GIL while it computes) while the previous batch is being finished."""
        model = self.model  # one model for the whole batch, even if a swap lands meanwhile
        crops, mismatched = crops_for_model(batch, model)
        started = time.perf_counter()
        probabilities = model.predict_tta(crops) if self.flip_tta else model.predict(crops)
        self.metrics.observe("inference", time.perf_counter() - started)
        if not np.all(np.isfinite(probabilities)):
            raise ValueError("model produced non-finite probabilities")
        return Inference(model.version, model.preprocess.id, probabilities, mismatched)

    def finish(self, batch: list[FaceMessage], inference: Inference) -> list[Outbound]:
        """Probabilities -> smoothed events, in batch order on the worker's thread."""
        self.counters.add("resized_crops", inference.resized)
        self._count_mismatches(batch, inference)
        keys = [f"{f.camera_id}:{f.track_id}" for f in batch]
        now_ms = int(time.time() * 1000)
        events, states = build_events(batch, inference.probabilities, inference.model_version,
                                      self.tracks.load(keys), self.tau_ms, now_ms)
        self.metrics.stage("detect_to_classify", ((now_ms - face.detected_ms) / 1000 for face in batch))
        self._maybe_swap()  # between batches: a new model serves from the next prepare on
        # Saved with the worker's commit (stage_writes), so a batch that is retried does not smooth twice.
        self._unsaved_states.update(states)
        return [Outbound(self.keys.events, encode(event)) for event in events]

    def stage_writes(self, pipe: redis.client.Pipeline) -> None:
        if self._unsaved_states:
            self.tracks.save(self._unsaved_states, pipe)
            self._unsaved_states = {}

    def model_info(self) -> dict:
        return {"version": self.model.version, "preprocess": self.model.preprocess.id}

    def heartbeat_info(self) -> dict:
        return {"model_version": self.model.version, "preprocess_mismatch": self.counters["preprocess_mismatch"],
                **(self.follower.heartbeat_info() if self.follower is not None else {})}
