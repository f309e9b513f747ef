"""tf.data pipelines and augmentation for 48x48 grey faces.

Augmentation runs on batches in the input pipeline (not inside the model) so the exported model is
the clean inference graph; the model itself carries the pixel rescaling.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import keras

from shared.emotions import NUM_EMOTIONS
from trainer.data import Split


def make_augmenter(seed: int) -> keras.Sequential:
    """Flip, shift, small rotation and zoom: the geometric changes a face crop sees in practice."""
    return keras.Sequential([
        keras.layers.RandomFlip("horizontal", seed=seed),
        keras.layers.RandomTranslation(0.1, 0.1, fill_mode="reflect", seed=seed + 1),
        keras.layers.RandomRotation(10 / 360, fill_mode="reflect", seed=seed + 2),
        keras.layers.RandomZoom(0.1, fill_mode="reflect", seed=seed + 3),
    ], name="augment")


def random_erasing(images: tf.Tensor, probability: float = 0.5, min_area: float = 0.02, max_area: float = 0.25,
                   max_aspect: float = 3.3) -> tf.Tensor:
    """Replace one random rectangle per image with noise (Zhong et al. 2017) so the model cannot rely
    on one region: area min_area..max_area of the image, aspect ratio 1/max_aspect..max_aspect."""
    shape = tf.shape(images)
    batch, height, width = shape[0], shape[1], shape[2]
    area = tf.random.uniform([batch], min_area, max_area) * tf.cast(height * width, tf.float32)
    log_aspect = tf.random.uniform([batch], -np.log(max_aspect), np.log(max_aspect))
    aspect = tf.exp(log_aspect)
    side_h = tf.minimum(tf.cast(tf.sqrt(area * aspect), tf.int32), height)
    side_w = tf.minimum(tf.cast(tf.sqrt(area / aspect), tf.int32), width)
    top = tf.cast(tf.random.uniform([batch]) * tf.cast(height - side_h + 1, tf.float32), tf.int32)
    left = tf.cast(tf.random.uniform([batch]) * tf.cast(width - side_w + 1, tf.float32), tf.int32)
    rows = tf.range(height)[None, :, None]
    cols = tf.range(width)[None, None, :]
    inside = ((rows >= top[:, None, None]) & (rows < (top + side_h)[:, None, None])
              & (cols >= left[:, None, None]) & (cols < (left + side_w)[:, None, None]))
    apply = tf.random.uniform([batch]) < probability
    mask = inside & apply[:, None, None]
    noise = tf.random.uniform(tf.shape(images), 0, 255)
    return tf.where(mask[..., None], noise, images)


def targets_for(split: Split) -> np.ndarray:
    """Training targets: the split's soft labels when it has them, else one-hot FER labels."""
    if split.soft is not None:
        return split.soft.astype(np.float32)
    return np.eye(NUM_EMOTIONS, dtype=np.float32)[split.labels]


def training_dataset(split: Split, batch_size: int, seed: int, sample_weights: np.ndarray | None,
                     augment: bool = True) -> tf.data.Dataset:
    images = split.images[..., None].astype(np.float32)
    parts = (images, targets_for(split)) if sample_weights is None else (images, targets_for(split), sample_weights)
    dataset = tf.data.Dataset.from_tensor_slices(parts)
    dataset = dataset.shuffle(len(split), seed=seed, reshuffle_each_iteration=True).batch(batch_size)
    if augment:
        augmenter = make_augmenter(seed)

        def _augment(x, *rest):
            x = augmenter(x, training=True)
            return (random_erasing(x), *rest)

        dataset = dataset.map(_augment, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


def evaluation_dataset(split: Split, batch_size: int = 256) -> tf.data.Dataset:
    """Hard FER labels only: validation and evaluation always score against the original labels."""
    images = split.images[..., None].astype(np.float32)
    onehot = np.eye(NUM_EMOTIONS, dtype=np.float32)[split.labels]
    return tf.data.Dataset.from_tensor_slices((images, onehot)).batch(batch_size).prefetch(tf.data.AUTOTUNE)
