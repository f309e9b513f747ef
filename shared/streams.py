"""Names of every Redis stream, group and key, derived from one prefix (two deployments can share a Redis)."""

from __future__ import annotations

from dataclasses import dataclass

DEAD_SUFFIX = ":dead"


@dataclass(frozen=True)
class Keys:
    prefix: str = "emotion"

    @property
    def frames(self) -> str:
        return f"{self.prefix}:frames"

    @property
    def faces(self) -> str:
        return f"{self.prefix}:faces"

    @property
    def events(self) -> str:
        return f"{self.prefix}:events"

    @staticmethod
    def dead(stream: str) -> str:
        return stream + DEAD_SUFFIX

    @property
    def model_current(self) -> str:
        """String key: the version every classifier should serve."""
        return f"{self.prefix}:model:current"

    @property
    def model_history(self) -> str:
        """List key: previously current versions, newest first (rollback pops it)."""
        return f"{self.prefix}:model:history"

    @property
    def model_updates(self) -> str:
        """Pub/sub channel announcing promotions (classifiers also poll model_current)."""
        return f"{self.prefix}:model:updates"

    def heartbeat(self, service: str, consumer: str) -> str:
        return f"{self.prefix}:heartbeat:{service}:{consumer}"

    def heartbeat_pattern(self, service: str = "*") -> str:
        return f"{self.prefix}:heartbeat:{service}:*"

    def stats(self, service: str) -> str:
        """Hash of counters summed over a service's replicas (frames_in, faces_out, dead, shed, ...)."""
        return f"{self.prefix}:stats:{service}"

    def track(self, camera_id: str, track_id: int) -> str:
        """Smoothed distribution of one face track, shared by classifier replicas."""
        return f"{self.prefix}:track:{camera_id}:{track_id}"

    def camera_session(self, camera_id: str) -> str:
        return f"{self.prefix}:camera:{camera_id}"

    @property
    def cameras(self) -> str:
        """Hash camera_id -> JSON of the camera's live state (source, session, fps)."""
        return f"{self.prefix}:cameras"

    @property
    def training_queue(self) -> str:
        return "training"


# Consumer group names: one per consuming service.
DETECTOR_GROUP = "detector"
CLASSIFIER_GROUP = "classifier"
RECORDER_GROUP = "recorder"
