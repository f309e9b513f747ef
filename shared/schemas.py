"""Stream messages: pydantic models with explicit encode/decode to Redis stream fields.

An entry has a `meta` field (the model as JSON, schema version included) and, for frames and faces,
one binary field (`jpeg` or `crop`) kept out of the JSON so images are never base64-inflated.
Nothing is ever unpickled: a reader validates JSON and bytes, and anything else is a MessageError
that the worker loop sends to the dead-letter stream with its reason.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from shared.emotions import EMOTIONS, NUM_EMOTIONS

SCHEMA_VERSION = 1
MAX_JPEG_BYTES = 8 * 1024 * 1024
MAX_CROP_SIDE = 256
# Capture names cameras with this; the dashboard's API accepts the same names as filters.
CAMERA_ID_PATTERN = r"^[A-Za-z0-9_.:-]+$"


class MessageError(ValueError):
    """An entry that cannot be decoded into its message type (the reason goes to the dead-letter stream)."""


class BBox(BaseModel):
    """A face box in pixels of its frame: the one box type of the platform (detection, tracking,
    messages, events, the Analyze API)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    x: int = Field(ge=0)
    y: int = Field(ge=0)
    w: int = Field(gt=0)
    h: int = Field(gt=0)

    @classmethod
    def from_float(cls, x: float, y: float, w: float, h: float, width: int, height: int) -> "BBox | None":
        """The box rounded to pixels and clipped to a width x height frame; None when nothing is left."""
        x0, y0 = max(0, round(x)), max(0, round(y))
        x1, y1 = min(width, round(x + w)), min(height, round(y + h))
        if x1 <= x0 or y1 <= y0:
            return None
        return cls(x=x0, y=y0, w=x1 - x0, h=y1 - y0)

    def iou(self, other: "BBox") -> float:
        ix = max(0, min(self.x + self.w, other.x + other.w) - max(self.x, other.x))
        iy = max(0, min(self.y + self.h, other.y + other.h) - max(self.y, other.y))
        inter = ix * iy
        union = self.w * self.h + other.w * other.h - inter
        return inter / union if union else 0.0


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    schema_version: Literal[1] = SCHEMA_VERSION
    binary_field: ClassVar[str | None] = None


class FrameMessage(_Message):
    """One captured frame, JPEG-encoded."""

    binary_field: ClassVar[str | None] = "jpeg"
    camera_id: str = Field(min_length=1, max_length=64, pattern=CAMERA_ID_PATTERN)
    session_id: str = Field(min_length=1, max_length=64)
    frame_id: int = Field(ge=0)
    captured_ms: int = Field(gt=0)
    width: int = Field(gt=0, le=8192)
    height: int = Field(gt=0, le=8192)
    jpeg: bytes = Field(exclude=True, repr=False, default=b"")

    @field_validator("jpeg")
    @classmethod
    def _jpeg(cls, value: bytes) -> bytes:
        if len(value) > MAX_JPEG_BYTES:
            raise ValueError(f"frame of {len(value)} bytes exceeds {MAX_JPEG_BYTES}")
        if not value.startswith(b"\xff\xd8"):
            raise ValueError("frame is not a JPEG (no SOI marker)")
        return value


class FaceMessage(_Message):
    """One face crop, already preprocessed for the model named by `preprocess` (uint8 grey, side x side)."""

    binary_field: ClassVar[str | None] = "crop"
    camera_id: str = Field(min_length=1, max_length=64)
    session_id: str = Field(min_length=1, max_length=64)
    frame_id: int = Field(ge=0)
    face_index: int = Field(ge=0, description="index of the face within its frame")
    faces_in_frame: int = Field(ge=1)
    track_id: int = Field(ge=0)
    bbox: BBox
    detection_confidence: float | None = Field(None, ge=0, le=1, description="the face detector's score "
                                                                            "(None: the backend gives none)")
    side: int = Field(gt=0, le=MAX_CROP_SIDE, description="crop is side x side uint8")
    preprocess: str = Field(description="id of the crop preprocessing (from the model's metadata)")
    captured_ms: int = Field(gt=0)
    detected_ms: int = Field(gt=0)
    crop: bytes = Field(exclude=True, repr=False, default=b"")

    @field_validator("crop")
    @classmethod
    def _crop(cls, value: bytes, info) -> bytes:
        side = info.data.get("side")
        if side is not None and len(value) != side * side:
            raise ValueError(f"crop has {len(value)} bytes, expected {side}x{side}")
        return value

    def crop_array(self) -> np.ndarray:
        return np.frombuffer(self.crop, dtype=np.uint8).reshape(self.side, self.side)

    @property
    def event_id(self) -> str:
        """Unique key of the face, and so of its emotion event: redeliveries map to the same row."""
        return f"{self.camera_id}:{self.session_id}:{self.frame_id}:{self.face_index}"


def _probabilities(value: list[float]) -> list[float]:
    if len(value) != NUM_EMOTIONS:
        raise ValueError(f"expected {NUM_EMOTIONS} probabilities, got {len(value)}")
    if any(not math.isfinite(p) or p < -1e-6 or p > 1 + 1e-6 for p in value):
        raise ValueError("probabilities must be finite and within [0, 1]")
    if abs(sum(value) - 1.0) > 1e-3:
        raise ValueError(f"probabilities sum to {sum(value):.4f}, not 1")
    return value


class StageTimes(BaseModel):
    """Wall-clock UTC epoch milliseconds at each stage; latencies are differences of these."""

    model_config = ConfigDict(extra="forbid")
    captured_ms: int = Field(gt=0)
    detected_ms: int = Field(gt=0)
    classified_ms: int = Field(gt=0)


class EmotionEvent(_Message):
    """The classification of one face."""

    event_id: str = Field(min_length=1, max_length=200)
    camera_id: str = Field(min_length=1, max_length=64)
    session_id: str = Field(min_length=1, max_length=64)
    frame_id: int = Field(ge=0)
    face_index: int = Field(ge=0)
    track_id: int = Field(ge=0)
    bbox: BBox
    detection_confidence: float | None = Field(None, ge=0, le=1, description="the face detector's score")
    label: Literal[EMOTIONS]  # type: ignore[valid-type]
    confidence: float = Field(ge=0, le=1)
    probabilities: list[float]
    top2: tuple[str, str]
    smoothed: list[float]
    smoothed_label: Literal[EMOTIONS]  # type: ignore[valid-type]
    model_version: str = Field(min_length=1, max_length=100)
    times: StageTimes

    _check_probabilities = field_validator("probabilities", "smoothed")(lambda cls, v: _probabilities(v))

    @property
    def latency_ms(self) -> int:
        return self.times.classified_ms - self.times.captured_ms


M = TypeVar("M", bound=_Message)

Fields = dict[bytes, bytes]


def encode(message: _Message) -> dict[str, bytes]:
    fields = {"meta": message.model_dump_json().encode()}
    if message.binary_field:
        fields[message.binary_field] = getattr(message, message.binary_field)
    return fields


def decode(model: type[M], fields: Fields) -> M:
    """Validate raw stream fields as `model`; any problem is a MessageError with a readable reason."""
    meta = fields.get(b"meta")
    if meta is None:
        raise MessageError("entry has no 'meta' field")
    try:
        message = model.model_validate_json(meta, context=None) if not model.binary_field else None
        if message is None:
            blob = fields.get(model.binary_field.encode())
            if blob is None:
                raise MessageError(f"entry has no '{model.binary_field}' field")
            import json

            data = json.loads(meta)
            if not isinstance(data, dict):
                raise MessageError("'meta' is not a JSON object")
            data[model.binary_field] = blob
            message = model.model_validate(data)
        return message
    except MessageError:
        raise
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "message"
        raise MessageError(f"invalid {model.__name__}: {where}: {first['msg']}") from None
    except ValueError as exc:  # JSON syntax errors
        raise MessageError(f"invalid {model.__name__}: {exc}") from None
    except RecursionError:
        raise MessageError(f"invalid {model.__name__}: JSON nested too deeply") from None
