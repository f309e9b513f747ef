"""Load an exported emotion model and run it on LiteRT (no TensorFlow in services).

A model directory holds `model.tflite` and `metadata.json`. The metadata carries the model's own
crop preprocessing (size, grey, histogram equalisation, margin): the detector crops with it and the
classifier checks it, so serving can never silently diverge from training.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal, NamedTuple, Sequence

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from shared.emotions import EMOTIONS
from shared.framing import Framing, Point, Square, square_for, warp_square

MODEL_FILE = "model.tflite"
KERAS_FILE = "model.keras"  # the trainable model exported beside it (fine-tuning starts from it)
METADATA_FILE = "metadata.json"
TtaMode = Literal["none", "flip", "ten-crop"]


class ModelError(RuntimeError):
    """A model that cannot be served: missing, corrupt, or incompatible (the message says which)."""


class Preprocess(BaseModel):
    """How a face box becomes the model's input. Its `id` travels with every crop on the faces stream."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    input_size: int = Field(48, ge=8, le=256)
    grayscale: bool = True
    equalize_hist: bool = False
    margin: float = Field(0.0, ge=0, le=1, description="extra border around the detector box, fraction of its side")
    input_range: str = Field("0-255", pattern=r"^(0-255|0-1)$", description="pixel range the graph expects")
    network_size: int | None = Field(
        None, ge=8, le=256, description="side the network sees: the central network_size pixels of the crop "
                                        "(models trained on random crops); None: the whole crop")
    framing: dict[str, Framing] = Field(
        default_factory=dict, description="per detector backend, where the training crop lies relative to its "
                                          "detection (fitted by `emotion calibrate-framing`); a backend without an "
                                          "entry gets the square around its box plus `margin`")

    @property
    def id(self) -> str:
        """Readable size and colour, then a digest of every field: two crops with equal ids were made alike."""
        digest = hashlib.sha1(self.model_dump_json().encode()).hexdigest()[:8]
        return f"{'g' if self.grayscale else 'c'}{self.input_size}-{digest}"

    @property
    def network_side(self) -> int:
        return self.network_size or self.input_size


class ModelMetadata(BaseModel):
    model_config = ConfigDict(extra="allow")
    version: str = Field(min_length=1, max_length=100)
    architecture: str
    classes: list[str]
    preprocess: Preprocess = Preprocess()
    metrics: dict = Field(default_factory=dict)
    sha256: str | None = Field(None, description="checksum of model.tflite")

    @field_validator("classes")
    @classmethod
    def _fer_order(cls, value: list[str]) -> list[str]:
        if tuple(value) != EMOTIONS:
            raise ValueError(f"classes {value} are not the FER order {list(EMOTIONS)}")
        return value


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_metadata(model_dir: Path) -> ModelMetadata:
    path = Path(model_dir) / METADATA_FILE
    try:
        return ModelMetadata.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        raise ModelError(f"{model_dir}: no {METADATA_FILE} (not an exported model directory)") from None
    except ValidationError as exc:
        raise ModelError(f"{path}: invalid metadata: {exc.errors()[0]['msg']}") from None


def crop_face(gray_frame: np.ndarray, box, preprocess: Preprocess, *, landmarks: Sequence[Point] | None = None,
              backend: str | None = None) -> np.ndarray:
    """The model's input for one detected face (a BBox, or an (x, y, w, h) tuple).

    With a calibrated framing for `backend` (and, for a landmark framing, the landmarks), the crop
    is the square the model was trained on, turned so the eyes are level; otherwise it is the square
    around the box plus `margin`. Then resized to the model input and optionally equalised.
    """
    if not hasattr(box, "w"):
        x, y, w, h = box
        box = _Box(x, y, w, h)
    framing = preprocess.framing.get(backend) if backend else None
    square = square_for(framing, box, landmarks) if framing else None
    if square is None:
        side = max(box.w, box.h) * (1 + 2 * preprocess.margin)
        square = Square(box.x + (box.w - 1) / 2, box.y + (box.h - 1) / 2, side)
    crop = warp_square(gray_frame, square, preprocess.input_size)
    if preprocess.equalize_hist:
        crop = cv2.equalizeHist(crop)
    return crop


class _Box(NamedTuple):
    x: float
    y: float
    w: float
    h: float


class EmotionModel:
    """A LiteRT interpreter over one exported model; `predict` takes uint8 crops (N, S, S)."""

    def __init__(self, model_dir: Path, threads: int = 1) -> None:
        model_dir = Path(model_dir)
        self.metadata = read_metadata(model_dir)
        model_path = model_dir / MODEL_FILE
        if not model_path.is_file():
            raise ModelError(f"{model_dir}: no {MODEL_FILE}")
        if self.metadata.sha256 and file_sha256(model_path) != self.metadata.sha256:
            raise ModelError(f"{model_path}: checksum does not match metadata (corrupt or tampered file)")
        from ai_edge_litert.interpreter import Interpreter

        try:
            self._interpreter = Interpreter(model_path=str(model_path), num_threads=threads)
            self._input = self._interpreter.get_input_details()[0]
            self._output = self._interpreter.get_output_details()[0]
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"{model_path}: LiteRT cannot load it ({exc})") from None
        size = self.metadata.preprocess.input_size
        side = self.metadata.preprocess.network_side
        if side > size:
            raise ModelError(f"{model_dir}: network_size {side} is larger than the crop ({size})")
        expected = [side, side, 1 if self.metadata.preprocess.grayscale else 3]
        if list(self._input["shape"][1:]) != expected:
            raise ModelError(f"{model_path}: input shape {list(self._input['shape'])} does not match metadata {expected}")
        if int(self._output["shape"][-1]) != len(EMOTIONS):
            raise ModelError(f"{model_path}: {self._output['shape'][-1]} outputs, expected {len(EMOTIONS)}")
        self._batch = 0
        self.directory = model_dir
        self.predict(np.zeros((1, size, size), np.uint8))  # fail now, not on the first face

    @property
    def version(self) -> str:
        return self.metadata.version

    @property
    def preprocess(self) -> Preprocess:
        return self.metadata.preprocess

    def predict(self, crops: np.ndarray) -> np.ndarray:
        """Probabilities (N, 7) in FER order for uint8 crops (N, S, S) of the metadata's input size."""
        if crops.ndim != 3:
            raise ValueError(f"crops must be (N, S, S), got {crops.shape}")
        side = self.preprocess.network_side
        offset = (crops.shape[1] - side) // 2
        return self._invoke(crops[:, offset:offset + side, offset:offset + side])

    def effective_tta(self, mode: TtaMode) -> TtaMode:
        """The views `predict_tta(mode)` really takes: ten-crop needs a network window smaller than the crop."""
        if mode == "ten-crop" and self.preprocess.network_side >= self.preprocess.input_size:
            return "flip"
        return mode

    def predict_tta(self, crops: np.ndarray, mode: TtaMode = "flip") -> np.ndarray:
        """Mean prediction over views of each crop: "flip" (the crop and its mirror), or "ten-crop"
        (the four corners and the centre of a network-sized window, each mirrored too; a model that
        sees the whole crop gets the flip views only)."""
        if crops.ndim != 3:
            raise ValueError(f"crops must be (N, S, S), got {crops.shape}")
        if mode == "none":
            return self.predict(crops)
        views = [crops, crops[:, :, ::-1]]
        side, size = self.preprocess.network_side, crops.shape[1]
        if mode == "ten-crop" and side < size:
            spare, centre = size - side, (size - side) // 2
            views = [view[:, y:y + side, x:x + side] for view in views
                     for y, x in ((0, 0), (0, spare), (spare, 0), (spare, spare), (centre, centre))]
        else:
            offset = (size - side) // 2
            views = [view[:, offset:offset + side, offset:offset + side] for view in views]
        batch = len(crops)
        # One call over all views: the runtime batches them, which is faster than ten small calls.
        probabilities = self._invoke(np.concatenate(views))
        return probabilities.reshape(len(views), batch, -1).mean(axis=0)

    def _invoke(self, network_input: np.ndarray) -> np.ndarray:
        batch = network_input.shape[0]
        if batch == 0:
            return np.zeros((0, len(EMOTIONS)), np.float32)
        if batch != self._batch:
            # Resizing costs a re-plan; micro-batches repeat sizes, so this is rare in steady state.
            self._interpreter.resize_tensor_input(self._input["index"], [batch, *self._input["shape"][1:]])
            self._interpreter.allocate_tensors()
            self._batch = batch
        x = network_input.astype(np.float32)[..., None]
        if self.preprocess.input_range == "0-1":
            x /= 255.0
        self._interpreter.set_tensor(self._input["index"], x)
        self._interpreter.invoke()
        return self._interpreter.get_tensor(self._output["index"]).copy()
