"""Train a campaign some epochs further, saving its whole state after every epoch.

The state directory (see `trainer.recipes`) holds float16 weights, never an optimizer: the schedule
is a function of the epoch position alone, so each sitting starts a fresh SGD whose momentum
rebuilds within a few dozen steps. An epoch that is interrupted is simply trained again.
"""

from __future__ import annotations

import logging
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import tensorflow as tf
import keras

from shared.emotions import NUM_EMOTIONS
from shared.machine import describe_machine
from shared.settings import REPO_ROOT
from trainer.data import DatasetError, Split, attach_ferplus, load_dataset, load_ferplus_votes
from trainer.models import make_model
from trainer.pipeline import random_erasing
from trainer.recipes import BEST_FILE, TEACHER_FILE, WEIGHTS_FILE, CampaignState, EpochRecord, Recipe, Stretch

log = logging.getLogger(__name__)

ProgressFn = Callable[[EpochRecord], None]
FACE_SIDE = 48


class CampaignError(RuntimeError):
    """A campaign that cannot start or continue (the message says why)."""


# --- weights on disk ----------------------------------------------------------------------------

def save_weights(model: keras.Model, path: Path) -> None:
    """All weights (BatchNorm statistics included) as float16, written atomically."""
    arrays = {f"w{i:03d}": w.astype(np.float16) for i, w in enumerate(model.get_weights())}
    temporary = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(temporary, **arrays)
    temporary.replace(path)


def load_weights(model: keras.Model, path: Path) -> None:
    with np.load(path) as archive:
        arrays = [archive[f"w{i:03d}"] for i in range(len(archive.files))]
    expected = [w.shape for w in model.get_weights()]
    if [a.shape for a in arrays] != expected:
        raise CampaignError(f"{path}: weight shapes do not match the {model.name} architecture")
    model.set_weights([a.astype(np.float32) for a in arrays])


def build_model(recipe: Recipe) -> keras.Model:
    return make_model(recipe.architecture, input_shape=(recipe.input_size, recipe.input_size, 1))


# --- data ---------------------------------------------------------------------------------------

def resolve_data(data: str) -> Path:
    path = Path(data).expanduser()
    return path if path.is_absolute() else (REPO_ROOT / path).resolve()


def load_splits(data: str, recipe: Recipe, ferplus: str | None = None) -> tuple[Split, Split]:
    splits = load_dataset(resolve_data(data))
    if "Training" not in splits or "PublicTest" not in splits:
        raise DatasetError(f"{data}: a campaign needs the Training and PublicTest splits (found {sorted(splits)})")
    train = splits["Training"]
    if recipe.ferplus_weight is not None:
        if ferplus is None:
            raise DatasetError("the recipe mixes in FER+ votes: pass their location")
        attach_ferplus(train, load_ferplus_votes(resolve_data(ferplus))["Training"], recipe.ferplus_weight)
    return train, splits["PublicTest"]


def augment_batch(images: tf.Tensor, recipe: Recipe) -> tf.Tensor:
    """Random crop (side crop_min..crop_max of the 48-px face), rotation and flip in one affine
    resampling straight to the network's input side, then random erasing."""
    batch = tf.shape(images)[0]
    out = recipe.input_size
    side = tf.random.uniform([batch], float(recipe.crop_min), float(recipe.crop_max))
    scale = side / out  # source pixels per output pixel
    angle = tf.random.uniform([batch], -1.0, 1.0) * (recipe.rotation_deg * np.pi / 180)
    flip = tf.where(tf.random.uniform([batch]) < 0.5, -1.0, 1.0)
    slack = (FACE_SIDE - side) / 2  # the crop may sit anywhere that keeps it inside the face
    centre_x = (FACE_SIDE - 1) / 2 + tf.random.uniform([batch], -1.0, 1.0) * slack
    centre_y = (FACE_SIDE - 1) / 2 + tf.random.uniform([batch], -1.0, 1.0) * slack
    cos, sin = tf.cos(angle) * scale, tf.sin(angle) * scale
    half = (out - 1) / 2
    # Output pixel (x, y) samples input (a0 x + a1 y + a2, b0 x + b1 y + b2).
    a0, a1 = cos * flip, -sin
    b0, b1 = sin * flip, cos
    a2 = centre_x - (a0 + a1) * half
    b2 = centre_y - (b0 + b1) * half
    zeros = tf.zeros([batch])
    transforms = tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)
    warped = tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=tf.constant([out, out]), fill_value=0.0,
        interpolation="BILINEAR", fill_mode="REFLECT")
    return random_erasing(warped, probability=recipe.erasing) if recipe.erasing > 0 else warped


def centre_crop(images: np.ndarray, side: int) -> np.ndarray:
    """The serving view: the central `side` pixels of 48-px faces (N, 48, 48[, 1])."""
    offset = (images.shape[1] - side) // 2
    return images[:, offset:offset + side, offset:offset + side]


def targets(split: Split) -> np.ndarray:
    if split.soft is not None:
        return split.soft.astype(np.float32)
    return np.eye(NUM_EMOTIONS, dtype=np.float32)[split.labels]


def training_dataset(split: Split, recipe: Recipe, epoch: int) -> tf.data.Dataset:
    """One epoch of shuffled, augmented batches; the order depends only on the seed and the epoch."""
    images = split.images[..., None].astype(np.float32)
    dataset = tf.data.Dataset.from_tensor_slices((images, targets(split)))
    dataset = dataset.shuffle(len(split), seed=recipe.seed + epoch).batch(recipe.batch_size)
    dataset = dataset.map(lambda x, y: (augment_batch(x, recipe), y), num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


# --- one sitting --------------------------------------------------------------------------------

def predict(model: keras.Model, images: np.ndarray, batch: int = 512) -> np.ndarray:
    return np.concatenate([model(images[i:i + batch], training=False).numpy() for i in range(0, len(images), batch)])


def validate(model: keras.Model, split: Split, side: int) -> dict[str, float]:
    """PublicTest top-1/top-2 on the centre crop, and top-1 with flip averaging."""
    view = centre_crop(split.images[..., None].astype(np.float32), side)
    plain = predict(model, view)
    flipped = (plain + predict(model, view[:, :, ::-1])) / 2
    top2 = np.argsort(-plain, axis=1)[:, :2]
    return {"val_top1": float((plain.argmax(1) == split.labels).mean()),
            "val_top2": float((top2 == split.labels[:, None]).any(1).mean()),
            "val_top1_flip": float((flipped.argmax(1) == split.labels).mean())}


def make_optimizer(recipe: Recipe) -> keras.optimizers.Optimizer:
    if recipe.optimizer == "sgd":
        return keras.optimizers.SGD(recipe.peak_lr, momentum=recipe.momentum, nesterov=True,
                                    weight_decay=recipe.weight_decay)
    return keras.optimizers.AdamW(recipe.peak_lr, weight_decay=recipe.weight_decay)


def load_teacher(run_dir: Path, state: CampaignState) -> keras.Model | None:
    if state.teacher_recipe is None:
        return None
    teacher = build_model(state.teacher_recipe)
    load_weights(teacher, Path(run_dir) / TEACHER_FILE)
    teacher.trainable = False
    return teacher


def distillation_loss(teacher_probabilities: tf.Tensor, student_probabilities: tf.Tensor,
                      temperature: float) -> tf.Tensor:
    """Hinton et al.'s soft-target loss: cross-entropy between both distributions softened by the
    temperature, times T^2 so its gradients keep their scale. Log-probabilities are logits up to a
    constant per row, so the softmax models' outputs serve directly."""
    soft_teacher = tf.nn.softmax(tf.math.log(teacher_probabilities + 1e-7) / temperature)
    log_student = tf.nn.log_softmax(tf.math.log(student_probabilities + 1e-7) / temperature)
    return -tf.reduce_mean(tf.reduce_sum(soft_teacher * log_student, axis=1)) * temperature ** 2


def make_train_step(model: keras.Model, optimizer, recipe: Recipe, teacher: keras.Model | None,
                    totals: tf.Variable):
    """One optimisation step; it adds (loss, accuracy, 1) to `totals` on the device instead of returning
    them, so nothing waits for the host between steps (on a GPU each read would be a synchronisation)."""
    label_loss = keras.losses.CategoricalCrossentropy(label_smoothing=recipe.label_smoothing)
    temperature = recipe.temperature

    @tf.function(reduce_retracing=True, jit_compile=bool(tf.config.list_physical_devices("GPU")))
    def step(x, y):
        with tf.GradientTape() as tape:
            probabilities = model(x, training=True)
            loss = label_loss(y, probabilities)
            if teacher is not None:
                # The teacher sees the same augmented batch: every epoch brings new soft targets.
                distill = distillation_loss(teacher(x, training=False), probabilities, temperature)
                loss = (1 - recipe.distill_weight) * loss + recipe.distill_weight * distill
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply(gradients, model.trainable_variables)
        hits = tf.cast(tf.equal(tf.argmax(probabilities, 1), tf.argmax(y, 1)), tf.float32)
        totals.assign_add(tf.stack([tf.cast(loss, tf.float32), tf.reduce_mean(hits), 1.0]))

    return step


def train_epochs(run_dir: Path, *, max_epochs: int | None = None, stop_after_s: float | None = None,
                 command: str = "", progress: ProgressFn | None = None) -> CampaignState:
    """Continue the campaign in `run_dir` by up to `max_epochs` epochs (all that remain by default),
    stopping early once `stop_after_s` seconds have passed at an epoch's end."""
    run_dir = Path(run_dir)
    state = CampaignState.read(run_dir)
    recipe = state.recipe
    if state.finished or max_epochs == 0:
        if state.finished:
            log.info("campaign %s already finished (%d epochs)", state.name, state.epochs_done)
        return state
    train, val = load_splits(state.data, recipe, state.ferplus)
    fingerprint = train.fingerprint()
    if fingerprint != state.data_fingerprint:
        raise CampaignError(f"{state.data}: Training split differs from the one this campaign started on "
                            f"(fingerprint {fingerprint}, campaign {state.data_fingerprint})")
    keras.utils.set_random_seed(recipe.seed + state.epochs_done)
    model = build_model(recipe)
    if (run_dir / WEIGHTS_FILE).is_file():
        load_weights(model, run_dir / WEIGHTS_FILE)
        log.info("resuming %s after epoch %d", state.name, state.epochs_done)
    elif state.epochs_done:
        raise CampaignError(f"{run_dir}: {state.epochs_done} epochs recorded but no {WEIGHTS_FILE}")
    teacher = load_teacher(run_dir, state)
    optimizer = make_optimizer(recipe)
    totals = tf.Variable(tf.zeros(3), trainable=False)
    step = make_train_step(model, optimizer, recipe, teacher, totals)
    checkpoints = set(recipe.cycle_ends())
    steps_per_epoch = int(np.ceil(len(train) / recipe.batch_size))
    last = recipe.total_epochs if max_epochs is None else min(recipe.total_epochs, state.epochs_done + max_epochs)
    sitting_started, first = time.monotonic(), state.epochs_done + 1
    stretch = Stretch(first_epoch=first, last_epoch=state.epochs_done, command=command, wall_s=0.0,
                      machine=describe_machine())
    state.stretches.append(stretch)
    epoch, started = state.epochs_done, time.monotonic()
    while state.epochs_done < last:
        for index, (x, y) in enumerate(training_dataset(train, recipe, epoch)):
            optimizer.learning_rate.assign(recipe.learning_rate(epoch + index / steps_per_epoch))
            step(x, y)
        epoch += 1
        # Validation and the saved state come every `checkpoint_every` epochs and at every cycle end
        # (the snapshots worth keeping); in between, training simply goes on.
        if epoch % recipe.checkpoint_every and epoch not in checkpoints and epoch < last:
            continue
        loss_sum, hit_sum, steps = totals.numpy()
        totals.assign(tf.zeros(3))
        record = EpochRecord(
            epoch=epoch, learning_rate=float(optimizer.learning_rate.numpy()), loss=float(loss_sum / steps),
            accuracy=float(hit_sum / steps), **validate(model, val, recipe.input_size),
            seconds=round((time.monotonic() - started) / (epoch - state.epochs_done), 1),
            finished=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        save_weights(model, run_dir / WEIGHTS_FILE)
        if state.best_val_top1 is None or record.val_top1 > state.best_val_top1:
            save_weights(model, run_dir / BEST_FILE)
            state.best_epoch, state.best_val_top1 = record.epoch, record.val_top1
        state.history.append(record)
        state.epochs_done = record.epoch
        stretch.last_epoch = record.epoch
        stretch.wall_s = round(time.monotonic() - sitting_started, 1)
        state.write(run_dir)  # the commit point: weights first, then the position that names them
        log.info("epoch %d/%d: loss %.4f, PublicTest %.2f%% (flip %.2f%%), %.0f s", record.epoch,
                 recipe.total_epochs, record.loss, 100 * record.val_top1, 100 * record.val_top1_flip, record.seconds)
        if progress is not None:
            progress(record)
        if stop_after_s is not None and time.monotonic() - sitting_started >= stop_after_s:
            break
        started = time.monotonic()
    return state


def start_campaign(run_dir: Path, recipe: Recipe, data: str, name: str | None = None,
                   ferplus: str | None = None) -> CampaignState:
    """Create the state directory of a new campaign (nothing is trained yet)."""
    run_dir = Path(run_dir)
    if (run_dir / "campaign.json").exists():
        raise CampaignError(f"{run_dir} already holds a campaign; continue it with --resume {run_dir}")
    train, _ = load_splits(data, recipe, ferplus)
    teacher_state = None
    if recipe.teacher is not None:
        teacher_dir = resolve_data(str(recipe.teacher))
        teacher_state = CampaignState.read(teacher_dir)
        if teacher_state.best_epoch is None:
            raise CampaignError(f"teacher {teacher_dir} has not finished an epoch yet")
        if teacher_state.recipe.input_size != recipe.input_size:
            raise CampaignError(f"teacher {teacher_dir} sees {teacher_state.recipe.input_size}-px crops, "
                                f"the student {recipe.input_size}-px: they must match")
    run_dir.mkdir(parents=True, exist_ok=True)
    state = CampaignState(name=name or run_dir.name, recipe=recipe, data=data, ferplus=ferplus,
                          data_fingerprint=train.fingerprint(),
                          teacher_recipe=teacher_state.recipe if teacher_state else None,
                          teacher_epoch=teacher_state.best_epoch if teacher_state else None)
    if teacher_state is not None:
        # Frozen now: the teacher's campaign may go on improving, the student's targets must not move.
        shutil.copyfile(resolve_data(str(recipe.teacher)) / BEST_FILE, run_dir / TEACHER_FILE)
    state.write(run_dir)
    return state
