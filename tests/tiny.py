"""A tiny conv model shared by the trainer's tests (8x8x3 inputs, no BatchNorm).

No BatchNorm: its per-replica batch statistics legitimately differ from one device's, which
would blur replica-vs-single-device comparisons.
"""

import keras


def tiny_model(num_classes):
    return keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Rescaling(1 / 255.0),
            keras.layers.Conv2D(4, 3, name="conv"),
            keras.layers.Flatten(),
            keras.layers.Dense(8, activation="relu", name="mid"),
            keras.layers.Dense(num_classes, name="head"),
        ]
    )
