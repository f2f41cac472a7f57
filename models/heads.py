"""Classification heads. Every head starts with ``head_pool`` and ends with ``head_logits``.

Layers of a head are named ``head_*``: split presets put the last segment boundary at
``head_pool``, and transfer loading (`models.transfer`) skips every ``head_*`` layer.
"""

from __future__ import annotations

import keras
from keras import layers

from models.layers import BatchNormalization

HEADS = ("default", "article", "linear")
HEAD_PREFIX = "head_"
ARTICLE_DROPOUT = 0.5


def add_head(
    features: keras.KerasTensor, num_classes: int, head: str, dropout: float | None
) -> keras.KerasTensor:
    """Adds a classification head that outputs float32 logits (no softmax).

    Heads:
      * ``default``: GlobalAveragePooling, Dropout (skipped at rate 0), Dense(num_classes).
      * ``article``: the article's head: GlobalAveragePooling, Dense 256 ReLU, Dropout,
        Dense 128 ReLU, BatchNorm, Dropout, Dense(num_classes); dropout defaults to 0.5.
      * ``linear``: GlobalAveragePooling, Dense(num_classes).

    Args:
      features: the backbone's last feature map.
      num_classes: number of logits.
      head: one of `HEADS`.
      dropout: dropout rate; None for the head's default (0 for ``default``).

    Returns:
      The logits tensor.
    """
    x = layers.GlobalAveragePooling2D(name="head_pool")(features)
    if head == "default":
        if dropout:
            x = layers.Dropout(dropout, name="head_dropout")(x)
    elif head == "article":
        rate = ARTICLE_DROPOUT if dropout is None else dropout
        x = layers.Dense(256, activation="relu", name="head_dense1")(x)
        x = layers.Dropout(rate, name="head_dropout1")(x)
        x = layers.Dense(128, activation="relu", name="head_dense2")(x)
        x = BatchNormalization(name="head_bn")(x)
        x = layers.Dropout(rate, name="head_dropout2")(x)
    # Logits stay float32 under a mixed-precision policy: the loss is computed on them.
    return layers.Dense(num_classes, dtype="float32", name="head_logits")(x)
