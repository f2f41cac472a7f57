"""User models for tests/test_applications.py: a custom layer, builders, broken builders.

`--custom_objects=tests.user_model_lib` makes `Scale` known to `keras.saving.load_model`;
`--model=tests.user_model_lib:build` (and the others) are builders.
"""

import keras
from keras import layers


@keras.saving.register_keras_serializable(package="lrtech_tests")
class Scale(layers.Layer):
    """Multiplies by a learned scalar: a custom layer with a weight and a config."""

    def __init__(self, initial=1.0, **kwargs):
        super().__init__(**kwargs)
        self.initial = initial

    def build(self, input_shape):
        self.factor = self.add_weight(
            shape=(), initializer=keras.initializers.Constant(self.initial), name="factor"
        )

    def call(self, inputs):
        return inputs * self.factor

    def get_config(self):
        return {**super().get_config(), "initial": self.initial}


def classifier(num_classes, image_size, softmax=True, custom=True, name="user_net"):
    """A small Functional CNN ending in Dense(num_classes) (softmax by default)."""
    image = keras.Input((image_size, image_size, 3), name="pixels")
    x = Scale(0.5, name="scale")(image) if custom else image
    for i, filters in enumerate((4, 8, 8)):
        x = layers.Conv2D(filters, 3, strides=2, padding="same", name=f"conv{i}")(x)
        x = layers.BatchNormalization(name=f"bn{i}")(x)
        x = layers.ReLU(name=f"relu{i}")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Dense(num_classes, activation="softmax" if softmax else None, name="classes")(x)
    return keras.Model(image, x, name=name)


def build(num_classes, image_size):
    """A builder: variable input size, logits out, no custom layer."""
    image = keras.Input((None, None, 3), name="pixels")
    x = layers.Conv2D(4, 3, padding="same", name="conv")(image)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(image, layers.Dense(num_classes, name="classes")(x), name="built")


def build_nested(num_classes, image_size):
    """KerasHub-like: a Functional backbone of named encoder blocks inside a Functional model."""
    inner = keras.Input((image_size, image_size, 3), name="backbone_input")
    x = layers.Conv2D(4, 3, padding="same", name="embed_conv")(inner)
    for i in range(3):
        y = layers.Conv2D(4, 3, padding="same", name=f"encoder_layer_{i}_conv")(x)
        y = layers.LayerNormalization(name=f"encoder_layer_{i}_norm")(y)
        x = layers.Add(name=f"encoder_layer_{i}_add")([x, y])
    backbone = keras.Model(inner, x, name="backbone")
    image = keras.Input((image_size, image_size, 3), name="pixels")
    features = layers.GlobalAveragePooling2D(name="pool")(backbone(image))
    return keras.Model(image, layers.Dense(num_classes, name="classes")(features), name="hub")


def not_a_model(num_classes, image_size):
    return "a model"


def no_arguments():
    return build(2, 32)


def conv_head(num_classes, image_size):
    """Ends in a 1x1 convolution and Flatten: no Dense layer to replace."""
    image = keras.Input((image_size, image_size, 3), name="pixels")
    x = layers.GlobalAveragePooling2D(keepdims=True, name="pool")(image)
    x = layers.Conv2D(num_classes, 1, name="classes")(x)
    return keras.Model(image, layers.Flatten(name="flat")(x), name="conv_head")


NOT_CALLABLE = 3
