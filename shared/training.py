"""The training request: validated before a job is enqueued and again inside the job (no TensorFlow here)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared.emotions import emotion_index
from shared.model_runtime import KERAS_FILE

MODEL_NAMES = ("compact", "compact16", "compact48", "baseline")


class TrainConfig(BaseModel):
    """Everything a training run depends on; two runs with equal configs and data give equal models."""

    model_config = ConfigDict(extra="forbid")

    data: Path = Field(description="FER-2013: .npz file or folder, fer2013.csv, or train/ test/ image folders")
    extra: list[Path] = Field(default_factory=list, description="extra datasets laid out <emotion>/<images>")
    ferplus: Path | None = Field(None, description="FER+ votes: aligned .npz (or its folder) or fer2013new.csv")
    fer_weight: float = Field(0.5, ge=0, le=1, description="weight of the FER one-hot label vs FER+ votes")
    require_face: bool = Field(False, description="drop training images where the face detector finds no face")
    model: str = Field("compact", description=f"architecture: one of {', '.join(MODEL_NAMES)}")
    epochs: int = Field(60, ge=1, le=1000)
    batch_size: int = Field(128, ge=1, le=4096)
    learning_rate: float = Field(3e-3, gt=0, le=1)
    weight_decay: float = Field(1e-2, ge=0, le=1)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    class_weight: Literal["none", "sqrt", "balanced"] = "sqrt"
    patience: int = Field(20, ge=1, description="epochs without PublicTest improvement before stopping")
    augment: bool = True
    seed: int = 1337
    max_images: int | None = Field(None, ge=7, description="subsample Training (stratified) for quick runs")
    init_from: Path | None = Field(
        None, description="start from the weights of this .keras file or model directory (fine-tuning); "
                          "the architecture must match `model`, the schedule starts anew")
    run_dir: Path | None = Field(None, description="checkpoints and logs; an existing run resumes")
    promote: Literal["never", "if-better", "always"] = Field(
        "if-better", description="make the new model current: never, only if it beats the current on PublicTest, or always")

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        if value not in MODEL_NAMES:
            raise ValueError(f"unknown model {value!r}; choose one of {', '.join(MODEL_NAMES)}")
        return value

    @field_validator("init_from")
    @classmethod
    def _init_exists(cls, value: Path | None) -> Path | None:
        if value is None:
            return None
        value = value.expanduser()
        if value.is_dir():
            value = value / KERAS_FILE
        if not value.is_file():
            raise ValueError(f"initial model {value} does not exist")
        return value

    @field_validator("data")
    @classmethod
    def _data_exists(cls, value: Path) -> Path:
        if not value.expanduser().exists():
            raise ValueError(f"dataset path {value} does not exist")
        return value.expanduser()


MAX_FOLDERS_LOOKED_AT = 50  # of a folder like / or /etc, a few dozen subfolders are enough to say no


class DatasetPathError(ValueError):
    """A dataset path that cannot be FER-2013 in any of its forms (checked before a job is queued)."""


def dataset_problem(path: Path) -> str | None:
    """Why `path` is not a dataset `trainer.data.load_dataset` can read, from names alone (no image is
    read, so it is cheap enough for a form): None when it has the shape of one.

    Accepted: a .npz or .csv file; a folder with .npz archives or fer2013*.csv; an image release
    (<split>/<emotion>/ folders). A queued job on /etc would otherwise fail only when a worker runs it.
    """
    path = Path(path).expanduser()
    if not path.exists():
        return f"dataset path {path} does not exist"
    if path.is_file():
        return None if path.suffix.lower() in (".npz", ".csv") else f"{path} is neither a .npz archive nor a .csv file"
    try:
        children = list(path.iterdir())
    except OSError as exc:
        return f"dataset path {path} cannot be read ({exc.strerror or exc})"
    if any(c.suffix == ".npz" for c in children) or any(c.name.startswith("fer2013") and c.suffix == ".csv"
                                                          for c in children):
        return None
    if any(_has_emotion_folders(c) for c in children[:MAX_FOLDERS_LOOKED_AT]):
        return None
    return (f"{path} does not look like a FER-2013 dataset: expected fer2013.csv, .npz archives, or image folders "
            "train/<emotion>/ and test/<emotion>/")


def _has_emotion_folders(folder: Path) -> bool:
    """A split folder of the image release: it holds at least one folder named after an emotion."""
    try:
        if not folder.is_dir():
            return False
        for child in folder.iterdir():
            try:
                if child.is_dir() and emotion_index(child.name) is not None:
                    return True
            except KeyError:
                continue
    except OSError:
        return False
    return False


# TrainConfig fields that `emotion train` has a flag for (--fer-weight for fer_weight); the others
# keep their defaults on the command line.
CLI_FIELDS = ("data", "extra", "ferplus", "fer_weight", "require_face", "model", "epochs", "batch_size",
              "learning_rate", "init_from", "run_dir", "promote", "max_images")


def train_command(config: dict) -> tuple[str, dict]:
    """The `emotion train` command a stored config corresponds to, and the settings it cannot express
    (fields without a flag whose value differs from the default)."""
    parts = ["emotion", "train"]
    defaults = {name: field.default for name, field in TrainConfig.model_fields.items()}
    not_expressible = {}
    for name, value in config.items():
        if name not in CLI_FIELDS:
            if name in defaults and value != defaults[name]:
                not_expressible[name] = value
            continue
        flag = "--" + name.replace("_", "-")
        if value in (None, False, []) or (name not in ("data", "model") and value == defaults.get(name)):
            continue
        if value is True:
            parts.append(flag)
        elif isinstance(value, list):
            for item in value:
                parts += [flag, str(item)]
        else:
            parts += [flag, str(value)]
    return shlex.join(parts), not_expressible
