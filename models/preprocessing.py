"""The backbone's input preprocessing as a layer inside the model.

Models take float32 pixels in [0, 255]; the first layer turns them into what the backbone was
trained on, so an exported model takes raw pixels. `ImagePreprocess` has no weights and is
registered with Keras, so `keras.models.load_model` restores it once `models` is imported;
`models.portable` replaces it by an equivalent built-in layer for exports that must load
without this project.
"""

from __future__ import annotations

import keras
from keras import ops

# ImageNet channel statistics used by keras.applications (RGB order, pixels in [0, 255]).
IMAGENET_MEAN_RGB = (123.68, 116.779, 103.939)
IMAGENET_MEAN_UNIT = (0.485, 0.456, 0.406)
IMAGENET_STD_UNIT = (0.229, 0.224, 0.225)

MODES = ("caffe", "torch", "tf", "unit", "none")


@keras.saving.register_keras_serializable(package="lrtech")
class ImagePreprocess(keras.layers.Layer):
    """Maps [0, 255] RGB pixels to a backbone's expected input.

    Modes follow `keras.applications.imagenet_utils.preprocess_input`:
      * ``caffe``: RGB -> BGR, then subtract the ImageNet mean (no scaling): ResNet50, VGG.
      * ``torch``: scale to [0, 1], subtract the ImageNet mean, divide by its std: DenseNet.
      * ``tf``: scale to [-1, 1]: MobileNetV2, ResNet50V2.
      * ``unit``: scale to [0, 1]: the small CIFAR ResNets.
      * ``none``: identity (EfficientNet carries its own normalization layers).

    Args:
      mode: one of `MODES`.
      **kwargs: `keras.layers.Layer` arguments (name, dtype).
    """

    def __init__(self, mode: str, **kwargs):
        super().__init__(**kwargs)
        if mode not in MODES:
            raise ValueError(f"Argument `mode` must be one of {MODES}. Received: mode={mode!r}")
        self.mode = mode

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        if self.mode == "caffe":
            # Same op order as keras.applications: flip channels, then subtract the BGR mean.
            x = ops.flip(x, axis=-1)
            return x - ops.convert_to_tensor(IMAGENET_MEAN_RGB[::-1], dtype=x.dtype)
        if self.mode == "torch":
            x = x / 255.0
            x = x - ops.convert_to_tensor(IMAGENET_MEAN_UNIT, dtype=x.dtype)
            return x / ops.convert_to_tensor(IMAGENET_STD_UNIT, dtype=x.dtype)
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "unit":
            return x / 255.0
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}
