"""`train(cfg) -> TrainResult`: one resumable training run, selected on PublicTest.

A run directory holds everything: a BackupAndRestore backup (an interrupted run continues at the
epoch it stopped), the best checkpoint on PublicTest, and a CSV log of every epoch.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from shared.emotions import NUM_EMOTIONS
from shared.training import TrainConfig
from trainer.data import DatasetError, Split, attach_ferplus, concat, load_dataset, load_ferplus_votes, load_labelled_folder

log = logging.getLogger(__name__)

ProgressFn = Callable[[dict], None]


@dataclass
class TrainResult:
    run_dir: Path
    model_path: Path  # best checkpoint (.keras)
    val_accuracy: float
    epochs_run: int
    seconds: float
    train_images: int
    data_fingerprint: str
    history_path: Path


@dataclass
class PreparedData:
    train: Split
    val: Split
    others: dict[str, Split]  # further splits to report on (never used for selection)


def stratified_subsample(split: Split, limit: int, seed: int) -> Split:
    """At most `limit` images keeping class proportions (quick runs and tests)."""
    rng = np.random.default_rng(seed)
    keep: list[np.ndarray] = []
    for label in range(NUM_EMOTIONS):
        rows = np.flatnonzero(split.labels == label)
        take = max(1, round(limit * len(rows) / len(split))) if len(rows) else 0
        keep.append(rng.choice(rows, size=min(take, len(rows)), replace=False))
    index = np.sort(np.concatenate(keep))
    return Split(split.name, split.images[index], split.labels[index],
                 None if split.ids is None else split.ids[index],
                 None if split.soft is None else split.soft[index], dict(split.skipped))


def holdout(split: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """A stratified random validation slice, for datasets that come without PublicTest."""
    rng = np.random.default_rng(seed)
    val_rows = np.concatenate([
        rng.choice(rows, size=max(1, int(len(rows) * fraction)), replace=False)
        for rows in (np.flatnonzero(split.labels == c) for c in range(NUM_EMOTIONS)) if len(rows)
    ])
    mask = np.zeros(len(split), bool)
    mask[val_rows] = True

    def pick(m: np.ndarray, name: str) -> Split:
        return Split(name, split.images[m], split.labels[m], None, None if split.soft is None else split.soft[m])

    return pick(~mask, "Training"), pick(mask, "PublicTest")


def prepare_data(cfg: TrainConfig) -> PreparedData:
    splits = load_dataset(cfg.data)
    if "Training" not in splits:
        raise DatasetError(f"{cfg.data}: no Training split found (found {sorted(splits)})")
    train_split = splits.pop("Training")
    if cfg.ferplus is not None:
        votes = load_ferplus_votes(cfg.ferplus)
        if "Training" not in votes:
            raise DatasetError(f"{cfg.ferplus}: no FER+ votes for the Training split")
        attach_ferplus(train_split, votes["Training"], cfg.fer_weight)
    if "PublicTest" in splits:
        val_split = splits.pop("PublicTest")
    else:
        log.warning("no PublicTest split: validating on a stratified 10%% of Training")
        train_split, val_split = holdout(train_split, 0.1, cfg.seed)
    if cfg.max_images:
        train_split = stratified_subsample(train_split, cfg.max_images, cfg.seed)
        val_split = stratified_subsample(val_split, max(7, cfg.max_images // 4), cfg.seed)
    if cfg.extra:
        train_split = concat([train_split] + [load_labelled_folder(p) for p in cfg.extra], "Training")
    if cfg.require_face:
        from trainer.cleaning import drop_faceless
        train_split = drop_faceless(train_split)
    return PreparedData(train_split, val_split, splits)


def class_weights(labels: np.ndarray, mode: str) -> np.ndarray:
    """Per-class loss weights with mean 1 over the training images; 'sqrt' is the gentle middle."""
    counts = np.maximum(np.bincount(labels, minlength=NUM_EMOTIONS), 1).astype(np.float64)
    if mode == "none":
        weights = np.ones(NUM_EMOTIONS)
    elif mode == "balanced":
        weights = counts.sum() / (NUM_EMOTIONS * counts)
    else:
        weights = np.sqrt(counts.max() / counts)
    weights /= (weights[labels]).mean()
    return weights.astype(np.float32)


class ProgressCallback:
    """Adapter from Keras epochs to a plain `progress(dict)` function (the RQ job writes job.meta)."""

    def __new__(cls, progress: ProgressFn, total_epochs: int):
        import keras

        class _Callback(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                self.started = time.monotonic()
                self.first_epoch: int | None = None

            def on_epoch_begin(self, epoch, logs=None):
                if self.first_epoch is None:
                    self.first_epoch = epoch

            def on_epoch_end(self, epoch, logs=None):
                done = epoch + 1 - (self.first_epoch or 0)
                per_epoch = (time.monotonic() - self.started) / max(done, 1)
                metrics = {k: round(float(v), 5) for k, v in (logs or {}).items()}
                progress({"epoch": epoch + 1, "epochs": total_epochs, "metrics": metrics,
                          "eta_s": round(per_epoch * (total_epochs - epoch - 1), 1)})

        return _Callback()


def load_initial_weights(path: Path, model) -> list[np.ndarray]:
    """Weights of a saved model, checked against the architecture being trained (fine-tuning)."""
    import keras

    source = keras.models.load_model(path, compile=False)
    theirs, ours = source.get_weights(), model.get_weights()
    if [w.shape for w in theirs] != [w.shape for w in ours]:
        raise ValueError(f"{path} is a {source.name} model with other weight shapes than {model.name}; "
                         "--init-from needs the same architecture as --model")
    return theirs


def train(cfg: TrainConfig, progress: ProgressFn | None = None, verbose: int = 1) -> TrainResult:
    import keras

    from trainer.models import make_model
    from trainer.pipeline import evaluation_dataset, training_dataset

    started = time.monotonic()
    keras.utils.set_random_seed(cfg.seed)
    run_dir = Path(cfg.run_dir or Path("runs") / f"{cfg.model}-{int(time.time())}").expanduser()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(cfg.model_dump_json(indent=2))

    data = prepare_data(cfg)
    log.info("training on %d images %s, validating on %d", len(data.train), data.train.class_counts(), len(data.val))
    weights = class_weights(data.train.labels, cfg.class_weight)
    train_ds = training_dataset(data.train, cfg.batch_size, cfg.seed, weights[data.train.labels], cfg.augment)
    val_ds = evaluation_dataset(data.val)

    steps = int(np.ceil(len(data.train) / cfg.batch_size)) * cfg.epochs
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=max(steps - steps // 20, 1), warmup_target=cfg.learning_rate, warmup_steps=steps // 20)
    model = make_model(cfg.model)
    backup_dir = run_dir / "backup"
    resuming = backup_dir.is_dir() and any(backup_dir.iterdir())
    if cfg.init_from is not None and not resuming:  # a resumed run's weights come from its backup
        model.set_weights(load_initial_weights(cfg.init_from, model))
    if resuming:
        log.info("resuming from the backup in %s", backup_dir)
    model.compile(
        optimizer=keras.optimizers.AdamW(schedule, weight_decay=cfg.weight_decay),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy"),
                 keras.metrics.TopKCategoricalAccuracy(2, name="top2")],
    )
    best_path = run_dir / "best.keras"
    history_path = run_dir / "history.csv"
    callbacks = [
        keras.callbacks.BackupAndRestore(str(backup_dir)),
        keras.callbacks.ModelCheckpoint(str(best_path), monitor="val_accuracy", mode="max", save_best_only=True),
        keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max", patience=cfg.patience),
        keras.callbacks.CSVLogger(str(history_path), append=True),
    ]
    if progress is not None:
        callbacks.append(ProgressCallback(progress, cfg.epochs))
    model.fit(train_ds, validation_data=val_ds, epochs=cfg.epochs, callbacks=callbacks, verbose=verbose)

    best = keras.models.load_model(best_path)
    _, val_accuracy, _ = best.evaluate(val_ds, verbose=0)
    epochs_run = sum(1 for _ in open(history_path)) - 1
    result = TrainResult(run_dir, best_path, float(val_accuracy), epochs_run, time.monotonic() - started,
                         len(data.train), data.train.fingerprint(), history_path)
    (run_dir / "result.json").write_text(json.dumps(
        {k: str(v) if isinstance(v, Path) else v for k, v in result.__dict__.items()}, indent=2))
    return result
