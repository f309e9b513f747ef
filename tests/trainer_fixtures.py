"""Tiny synthetic FER-2013 datasets in every public form, built inside tests (nothing downloaded or copied)."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np

from shared.emotions import EMOTIONS

FERPLUS_HEADER = ["Usage", "Image name", "neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear",
                  "contempt", "unknown", "NF"]


def faces(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`n` 48x48 uint8 images whose brightness pattern depends on the label (labels cycle 0..6)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n, dtype=np.int64) % len(EMOTIONS)
    images = rng.integers(0, 60, (n, 48, 48)).astype(np.uint8)
    for i, label in enumerate(labels):
        row = 6 * int(label)
        images[i, row:row + 6, :] += 180  # a label-specific bright band: learnable in one epoch
    return images, labels


def write_npz(path: Path, n: int, seed: int = 0, ids_start: int = 0) -> Path:
    images, labels = faces(n, seed)
    np.savez_compressed(path, images=images, labels=labels, ids=np.arange(ids_start, ids_start + n),
                        classes=np.array(EMOTIONS))
    return path


def write_fer_folder(root: Path, n_train: int = 140, n_val: int = 70) -> Path:
    """<root>/fer2013_training.npz and fer2013_publictest.npz, as in ../shared/data/fer2013."""
    root.mkdir(parents=True, exist_ok=True)
    write_npz(root / "fer2013_training.npz", n_train, seed=1)
    write_npz(root / "fer2013_publictest.npz", n_val, seed=2, ids_start=n_train)
    return root


def write_fer_csv(path: Path, per_split: dict[str, int]) -> dict[str, np.ndarray]:
    """The original fer2013.csv (emotion,pixels,Usage); returns each split's labels."""
    written: dict[str, np.ndarray] = {}
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["emotion", "pixels", "Usage"])
        for seed, (usage, n) in enumerate(per_split.items()):
            images, labels = faces(n, seed)
            written[usage] = labels
            for image, label in zip(images, labels):
                writer.writerow([int(label), " ".join(str(int(v)) for v in image.ravel()), usage])
    return written


def write_image(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, encoded = cv2.imencode(path.suffix or ".png", image)
    assert ok
    encoded.tofile(str(path))


def write_ferplus_csv(path: Path, rows: list[tuple[str, list[int]]]) -> None:
    """fer2013new.csv: Usage, Image name, then the 10 vote columns."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(FERPLUS_HEADER)
        for index, (usage, votes) in enumerate(rows):
            writer.writerow([usage, f"fer{index:07d}.png", *votes])


_EXPORTED: dict[str, Path] = {}


def exported_model() -> Path:
    """An exported, untrained compact16 (model.keras, model.tflite, metadata.json), built once per test process.

    Read-only: copy it with `copy_model` before changing anything.
    """
    if "compact16" not in _EXPORTED:
        import atexit
        import shutil
        import tempfile

        import keras

        from trainer.export import export_model
        from trainer.models import make_model

        keras.utils.set_random_seed(7)
        root = Path(tempfile.mkdtemp(prefix="trainer-export-"))
        atexit.register(shutil.rmtree, root, True)
        _EXPORTED["compact16"] = export_model(
            make_model("compact16"), root / "compact16", version="fixture", architecture="compact16", metrics={},
            data_fingerprint="0" * 16, training_seconds=0.0, train_config={"model": "compact16"})
    return _EXPORTED["compact16"]


def copy_model(target: Path, version: str, top1: float | None = None) -> Path:
    """A copy of the fixture model under another version name, optionally with a PublicTest top1 in its metadata."""
    import json
    import shutil

    shutil.copytree(exported_model(), target)
    metadata = json.loads((target / "metadata.json").read_text())
    metadata["version"] = version
    metadata["metrics"] = {} if top1 is None else {"PublicTest": {"top1": top1}}
    (target / "metadata.json").write_text(json.dumps(metadata))
    return target
