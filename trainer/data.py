"""Load FER-2013 in its public forms (CSV, image folders, npz archives), extra datasets and FER+ votes.

Everything is returned as plain numpy (uint8 48x48 images, int64 labels, optional float32 soft labels),
so loaders are tested without TensorFlow; `trainer.pipeline` turns these into tf.data pipelines.
"""

from __future__ import annotations

import csv
import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from shared.emotions import EMOTIONS, NUM_EMOTIONS, emotion_index

log = logging.getLogger(__name__)

IMAGE_SIZE = 48
# Official split names, and how each public form spells them.
SPLITS = ("Training", "PublicTest", "PrivateTest")
_SPLIT_ALIASES = {
    "training": "Training", "train": "Training",
    "publictest": "PublicTest", "public": "PublicTest", "val": "PublicTest", "validation": "PublicTest",
    "privatetest": "PrivateTest", "private": "PrivateTest", "test": "PrivateTest",
}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".pgm", ".tif", ".tiff", ".webp"}
# FER+ vote columns: neutral, happiness, surprise, sadness, anger, disgust, fear, contempt, unknown, NF.
# Index of each FER label (angry..neutral) among those columns.
FERPLUS_COLUMNS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear",
                   "contempt", "unknown", "NF")
_FERPLUS_TO_FER = np.array([4, 5, 6, 1, 3, 2, 0])


class DatasetError(ValueError):
    """A dataset path or file that cannot be read as FER-2013 (message says why)."""


@dataclass
class Split:
    """One split of images with hard labels and, optionally, a soft label distribution per image."""

    name: str
    images: np.ndarray  # uint8 (N, 48, 48)
    labels: np.ndarray  # int64 (N,)
    ids: np.ndarray | None = None  # image ids when the source has them (npz, folder release)
    soft: np.ndarray | None = None  # float32 (N, 7) rows summing to 1, or None
    skipped: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.images.ndim != 3 or self.images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
            raise DatasetError(f"{self.name}: images must be (N, 48, 48), got {self.images.shape}")
        if len(self.labels) != len(self.images):
            raise DatasetError(f"{self.name}: {len(self.images)} images but {len(self.labels)} labels")
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= NUM_EMOTIONS):
            raise DatasetError(f"{self.name}: labels outside 0..6")

    def __len__(self) -> int:
        return len(self.labels)

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=NUM_EMOTIONS)
        return {name: int(c) for name, c in zip(EMOTIONS, counts)}

    def fingerprint(self) -> str:
        """Content hash of images and labels: identifies exactly what a model saw."""
        digest = hashlib.sha256()
        digest.update(np.ascontiguousarray(self.images).tobytes())
        digest.update(np.ascontiguousarray(self.labels).tobytes())
        return digest.hexdigest()[:16]


def canonical_split(name: str) -> str:
    key = name.strip().lower().replace("_", "").replace("-", "")
    if key in _SPLIT_ALIASES:
        return _SPLIT_ALIASES[key]
    raise DatasetError(f"unknown split name {name!r}; expected one of {', '.join(SPLITS)}")


def to_gray48(image: np.ndarray) -> np.ndarray:
    """Any decoded image (gray, BGR, BGRA) as uint8 48x48 grayscale."""
    if image.ndim == 3:
        code = cv2.COLOR_BGRA2GRAY if image.shape[2] == 4 else cv2.COLOR_BGR2GRAY
        image = cv2.cvtColor(image, code)
    if image.dtype != np.uint8:
        image = cv2.normalize(image, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    if image.shape != (IMAGE_SIZE, IMAGE_SIZE):
        image = cv2.resize(image, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_AREA)
    return image


def read_image(path: Path) -> np.ndarray | None:
    """Decode an image file to 48x48 gray; None when it is not a readable image."""
    data = np.fromfile(str(path), dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    return None if image is None else to_gray48(image)


# --- npz archives -------------------------------------------------------------------------------

def load_npz(path: Path, split: str | None = None) -> Split:
    """One archive in the ../shared format (images, labels, ids, classes)."""
    path = Path(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: not a readable .npz archive ({exc})") from exc
    missing = {"images", "labels"} - set(archive.files)
    if missing:
        raise DatasetError(f"{path}: archive lacks {sorted(missing)}")
    if "classes" in archive.files and tuple(str(c) for c in archive["classes"]) != EMOTIONS:
        raise DatasetError(f"{path}: classes {list(archive['classes'])} are not in FER order {list(EMOTIONS)}")
    name = split or _split_from_filename(path.name)
    ids = archive["ids"] if "ids" in archive.files else None
    return Split(name, archive["images"].astype(np.uint8), archive["labels"].astype(np.int64), ids)


def _split_from_filename(filename: str) -> str:
    lowered = filename.lower()
    for split in SPLITS:
        if split.lower() in lowered:
            return split
    return "Unknown"


# --- the original fer2013.csv -------------------------------------------------------------------

def load_fer_csv(path: Path) -> dict[str, Split]:
    """The original Kaggle CSV: columns emotion,pixels,Usage; one split per Usage value."""
    path = Path(path)
    images: dict[str, list[np.ndarray]] = {}
    labels: dict[str, list[int]] = {}
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        needed = {"emotion", "pixels"}
        if reader.fieldnames is None or not needed <= set(reader.fieldnames):
            raise DatasetError(f"{path}: expected columns emotion,pixels[,Usage]; got {reader.fieldnames}")
        for row_number, row in enumerate(reader, start=2):
            pixels = np.array(row["pixels"].split(), dtype=np.uint8)
            if pixels.size != IMAGE_SIZE * IMAGE_SIZE:
                raise DatasetError(f"{path}:{row_number}: {pixels.size} pixels, expected 2304")
            split = canonical_split(row.get("Usage") or "Training")
            images.setdefault(split, []).append(pixels.reshape(IMAGE_SIZE, IMAGE_SIZE))
            labels.setdefault(split, []).append(int(row["emotion"]))
    return {s: Split(s, np.stack(images[s]), np.array(labels[s], dtype=np.int64)) for s in images}


# --- image folders ------------------------------------------------------------------------------

def load_labelled_folder(root: Path, split: str = "Extra") -> Split:
    """`<root>/<emotion>/<images>`: emotion names with aliases; classes outside the 7 are counted."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a directory")
    images: list[np.ndarray] = []
    labels: list[int] = []
    skipped: dict[str, int] = {}
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        try:
            label = emotion_index(class_dir.name)
        except KeyError:
            label = None
        files = [p for p in sorted(class_dir.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES]
        if label is None:
            skipped[class_dir.name] = skipped.get(class_dir.name, 0) + len(files)
            continue
        for file in files:
            image = read_image(file)
            if image is None:
                skipped["unreadable"] = skipped.get("unreadable", 0) + 1
                continue
            images.append(image)
            labels.append(label)
    if not images:
        raise DatasetError(f"{root}: no images found under <emotion>/ folders")
    result = Split(split, np.stack(images), np.array(labels, dtype=np.int64), skipped=skipped)
    if skipped:
        log.info("skipped images under %s: %s", root, skipped)
    return result


def load_image_release(root: Path) -> dict[str, Split]:
    """The image-folder release: train/<class>/* and test/<class>/*.

    File name prefixes (Training_, PublicTest_, PrivateTest_) recover the official splits; files
    without a prefix fall back to their folder (train -> Training, test -> PrivateTest).
    """
    root = Path(root)
    buckets: dict[str, tuple[list[np.ndarray], list[int], list[int]]] = {}
    skipped: dict[str, int] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        folder_split = canonical_split(folder.name)
        for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
            try:
                label = emotion_index(class_dir.name)
            except KeyError:
                raise DatasetError(f"{class_dir}: folder name is not an emotion") from None
            for file in sorted(class_dir.iterdir()):
                if file.suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                if label is None:
                    skipped[class_dir.name] = skipped.get(class_dir.name, 0) + 1
                    continue
                image = read_image(file)
                if image is None:
                    skipped["unreadable"] = skipped.get("unreadable", 0) + 1
                    continue
                split, image_id = _split_and_id(file.stem, folder_split)
                bucket = buckets.setdefault(split, ([], [], []))
                bucket[0].append(image)
                bucket[1].append(label)
                bucket[2].append(image_id)
    if not buckets:
        raise DatasetError(f"{root}: no images found under train/<class>/ or test/<class>/")
    return {
        split: Split(split, np.stack(imgs), np.array(labs, dtype=np.int64), np.array(ids, dtype=np.int64),
                     skipped=dict(skipped))
        for split, (imgs, labs, ids) in buckets.items()
    }


def _split_and_id(stem: str, fallback: str) -> tuple[str, int]:
    prefix, _, number = stem.partition("_")
    try:
        return canonical_split(prefix), int(number)
    except (DatasetError, ValueError):
        return fallback, -1


# --- dispatch -----------------------------------------------------------------------------------

def load_dataset(path: Path | str) -> dict[str, Split]:
    """Every split found at `path`: an npz file, a folder of npz files, a CSV, or an image release."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DatasetError(f"{path}: no such file or directory")
    if path.is_file():
        if path.suffix == ".npz":
            split = load_npz(path)
            return {split.name: split}
        if path.suffix == ".csv":
            return load_fer_csv(path)
        raise DatasetError(f"{path}: expected a .npz or .csv file")
    archives = sorted(path.glob("*.npz"))
    if archives:
        splits = [load_npz(a) for a in archives if "ferplus" not in a.name.lower()]
        return {s.name: s for s in splits}
    csvs = sorted(path.glob("fer2013*.csv"))
    if csvs:
        return load_fer_csv(csvs[0])
    return load_image_release(path)


# --- FER+ votes ---------------------------------------------------------------------------------

def ferplus_soft_labels(votes: np.ndarray, min_votes: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Vote counts (N, 10) in FER+ column order -> (soft labels (N, 7) in FER order, valid mask).

    Contempt, unknown and not-a-face votes are dropped; an image with fewer than `min_votes` votes
    left (e.g. all-NF rows of images FER+ never matched) is invalid and keeps its FER label.
    """
    votes = np.asarray(votes, dtype=np.float32)
    if votes.ndim != 2 or votes.shape[1] != len(FERPLUS_COLUMNS):
        raise DatasetError(f"FER+ votes must be (N, 10), got {votes.shape}")
    emotion_votes = votes[:, _FERPLUS_TO_FER]
    totals = emotion_votes.sum(axis=1)
    valid = totals >= min_votes
    soft = np.zeros_like(emotion_votes)
    soft[valid] = emotion_votes[valid] / totals[valid, None]
    return soft, valid


def load_ferplus_votes(path: Path) -> dict[str, np.ndarray]:
    """Vote counts (N, 10) per split, from aligned archives (../shared format) or a fer2013new.csv.

    A folder is searched for ferplus_votes_<split>.npz; the CSV's Usage column gives each row's split
    (its rows follow fer2013.csv, so within a split they align with `load_fer_csv`).
    """
    path = Path(path).expanduser()
    if path.is_dir():
        archives = sorted(path.glob("ferplus_votes_*.npz"))
        if not archives:
            raise DatasetError(f"{path}: no ferplus_votes_<split>.npz archives")
        return {_split_from_filename(a.name): _ferplus_npz(a) for a in archives}
    if path.suffix == ".npz":
        return {_split_from_filename(path.name): _ferplus_npz(path)}
    votes: dict[str, list[list[float]]] = {}
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = set(FERPLUS_COLUMNS) - set(reader.fieldnames or [])
        if missing:
            raise DatasetError(f"{path}: FER+ CSV lacks columns {sorted(missing)}")
        for row in reader:
            split = canonical_split(row.get("Usage") or "Training")
            votes.setdefault(split, []).append([float(row[c] or 0) for c in FERPLUS_COLUMNS])
    return {split: np.array(rows, dtype=np.float32) for split, rows in votes.items()}


def _ferplus_npz(path: Path) -> np.ndarray:
    archive = np.load(path, allow_pickle=False)
    votes = archive["votes"].astype(np.float32)
    if "unmatched_assumed_nf" in archive.files:
        # Unmatched images are unlabelled rather than non-faces: zero their votes so they keep FER labels.
        votes[archive["unmatched_assumed_nf"]] = 0
    return votes


def attach_ferplus(split: Split, votes: np.ndarray, fer_weight: float = 0.5) -> Split:
    """Give `split` soft labels: a mix of its FER one-hot label and the FER+ vote distribution.

    fer_weight=0 trains on the votes alone; images without usable votes keep their one-hot label.
    """
    if len(votes) != len(split):
        raise DatasetError(f"{split.name}: {len(votes)} FER+ rows for {len(split)} images (not aligned)")
    soft, valid = ferplus_soft_labels(votes)
    onehot = np.eye(NUM_EMOTIONS, dtype=np.float32)[split.labels]
    mixed = onehot.copy()
    mixed[valid] = fer_weight * onehot[valid] + (1.0 - fer_weight) * soft[valid]
    split.soft = mixed
    return split


def concat(splits: list[Split], name: str) -> Split:
    """Join splits (e.g. Training + extra); soft labels default to one-hot where a part has none."""
    images = np.concatenate([s.images for s in splits])
    labels = np.concatenate([s.labels for s in splits])
    soft = None
    if any(s.soft is not None for s in splits):
        soft = np.concatenate([
            s.soft if s.soft is not None else np.eye(NUM_EMOTIONS, dtype=np.float32)[s.labels] for s in splits
        ])
    skipped: dict[str, int] = {}
    for s in splits:
        for key, count in s.skipped.items():
            skipped[key] = skipped.get(key, 0) + count
    return Split(name, images, labels, None, soft, skipped)
