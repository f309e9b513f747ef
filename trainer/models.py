"""Model factories: pure functions from input shape and class count to an uncompiled keras.Model.

Every model takes raw grey pixels in [0, 255] and rescales inside the graph, so the exported model
carries its own normalisation and serving cannot diverge from training.
"""

from __future__ import annotations

from typing import Callable

import keras
from keras import layers

INPUT_SHAPE = (48, 48, 1)


def _conv_bn_relu(x, filters: int, kernel: int = 3):
    x = layers.Conv2D(filters, kernel, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    return layers.ReLU()(x)


def make_baseline(input_shape=INPUT_SHAPE, num_classes: int = 7) -> keras.Model:
    """The original project's network: 4 x [conv-BN-conv-BN-maxpool] (64..512), 2 x dense 1024. ~10.5M params."""
    inputs = keras.Input(input_shape, name="pixels")
    x = layers.Rescaling(1.0 / 255)(inputs)
    for filters in (64, 128, 256, 512):
        x = _conv_bn_relu(x, filters)
        x = _conv_bn_relu(x, filters)
        x = layers.MaxPooling2D(2)(x)
        x = layers.Dropout(0.25)(x)
    x = layers.Flatten()(x)
    for _ in range(2):
        x = layers.Dense(1024, use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
        x = layers.Dropout(0.5)(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="baseline")


def _separable_residual_block(x, filters: int, downsample: bool):
    """Two separable convs with a projected shortcut (the Xception unit), optionally halving resolution."""
    shortcut = layers.Conv2D(filters, 1, strides=2 if downsample else 1, padding="same", use_bias=False)(x)
    shortcut = layers.BatchNormalization()(shortcut)
    y = layers.SeparableConv2D(filters, 3, padding="same", use_bias=False)(x)
    y = layers.BatchNormalization()(y)
    y = layers.ReLU()(y)
    y = layers.SeparableConv2D(filters, 3, padding="same", use_bias=False)(y)
    y = layers.BatchNormalization()(y)
    if downsample:
        y = layers.MaxPooling2D(3, strides=2, padding="same")(y)
    y = layers.Add()([y, shortcut])
    return layers.ReLU()(y)


def make_compact(input_shape=INPUT_SHAPE, num_classes: int = 7, width: int = 32) -> keras.Model:
    """Compact network for real-time CPU inference: a plain stem, then residual separable blocks.

    Full-resolution stem convs keep the fine detail 48x48 faces need; separable convs keep each
    block cheap; width=32 stays within the budget of >= 2,000 faces/s on one core via LiteRT.
    """
    inputs = keras.Input(input_shape, name="pixels")
    x = layers.Rescaling(1.0 / 255)(inputs)
    x = _conv_bn_relu(x, width // 2)
    x = _conv_bn_relu(x, width // 2)
    for multiple in (1, 2, 4, 8):
        x = _separable_residual_block(x, width * multiple, downsample=True)
    x = _separable_residual_block(x, width * 8, downsample=False)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(0.3)(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=f"compact{width}")


def make_vgg(input_shape=(44, 44, 1), num_classes: int = 7, widths=(48, 96, 192, 384)) -> keras.Model:
    """The accurate network: VGG blocks of two conv3-BN-ReLU and a max-pool, global average pooling.

    Global pooling (instead of the baseline's flatten into 1024-wide dense layers) keeps it at 2.7M
    parameters and lets it train on random 40-48 px crops resized to its input side.
    """
    inputs = keras.Input(input_shape, name="pixels")
    x = layers.Rescaling(1.0 / 255)(inputs)
    for filters in widths:
        x = _conv_bn_relu(x, filters)
        x = _conv_bn_relu(x, filters)
        x = layers.MaxPooling2D(2)(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(0.4)(x)
    x = layers.Dense(256, activation="relu")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="vgg" if widths[0] == 48 else f"vgg{widths[0]}")


MODEL_FACTORIES: dict[str, Callable[..., keras.Model]] = {
    "vgg": make_vgg,
    "vgg64": lambda input_shape=(44, 44, 1), num_classes=7: make_vgg(input_shape, num_classes, (64, 128, 256, 512)),
    "baseline": make_baseline,
    "compact": make_compact,
    "compact48": lambda input_shape=INPUT_SHAPE, num_classes=7: make_compact(input_shape, num_classes, 48),
    "compact16": lambda input_shape=INPUT_SHAPE, num_classes=7: make_compact(input_shape, num_classes, 16),
}


def make_model(name: str, input_shape=INPUT_SHAPE, num_classes: int = 7) -> keras.Model:
    try:
        factory = MODEL_FACTORIES[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_FACTORIES)}") from None
    return factory(input_shape=input_shape, num_classes=num_classes)
