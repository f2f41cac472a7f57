"""keras.applications backbones by name, each with its preprocessing and split presets.

Adding a backbone is one `Backbone` entry: its constructor, the preprocessing mode that
matches its ``preprocess_input`` (see `models.preprocessing`), the file name of its no-top
ImageNet weights (for the offline message and the ~/.keras/models cache), and where its
stride-16 stage starts (the "conv4" of ResNet50, the article's middle split).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import keras


@dataclasses.dataclass(frozen=True)
class Backbone:
    constructor: Callable[..., keras.Model]
    preprocess: str  # ImagePreprocess mode
    weights_file: str  # keras' cache name of the no-top ImageNet weights
    middle: str  # first layer of the stride-16 stage
    stages: tuple[str, ...]  # first layer of each stage after the stem


_APPS = keras.applications
_RESNET_STAGES = tuple(f"conv{i}_block1_1_conv" for i in (2, 3, 4, 5))
_RESNET_V2_STAGES = tuple(f"conv{i}_block1_preact_bn" for i in (2, 3, 4, 5))


def _tf_file(name: str) -> str:
    return f"{name}_weights_tf_dim_ordering_tf_kernels_notop.h5"


BACKBONES: dict[str, Backbone] = {
    "resnet50": Backbone(
        _APPS.ResNet50, "caffe", _tf_file("resnet50"), "conv4_block1_1_conv", _RESNET_STAGES
    ),
    "resnet101": Backbone(
        _APPS.ResNet101, "caffe", _tf_file("resnet101"), "conv4_block1_1_conv", _RESNET_STAGES
    ),
    "resnet152": Backbone(
        _APPS.ResNet152, "caffe", _tf_file("resnet152"), "conv4_block1_1_conv", _RESNET_STAGES
    ),
    "resnet50v2": Backbone(
        _APPS.ResNet50V2,
        "tf",
        _tf_file("resnet50v2"),
        "conv4_block1_preact_bn",
        _RESNET_V2_STAGES,
    ),
    "mobilenet_v2": Backbone(
        _APPS.MobileNetV2,
        "tf",
        "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
        "block_6_expand",
        ("block_1_expand", "block_3_expand", "block_6_expand", "block_13_expand"),
    ),
    "efficientnet_b0": Backbone(
        _APPS.EfficientNetB0,
        "none",
        "efficientnetb0_notop.h5",
        "block4a_expand_conv",
        (
            "block2a_expand_conv",
            "block3a_expand_conv",
            "block4a_expand_conv",
            "block6a_expand_conv",
        ),
    ),
    "densenet121": Backbone(
        _APPS.DenseNet121,
        "torch",
        _tf_file("densenet121"),
        "conv4_block1_0_bn",
        ("conv2_block1_0_bn", "conv3_block1_0_bn", "conv4_block1_0_bn", "conv5_block1_0_bn"),
    ),
    "vgg16": Backbone(
        _APPS.VGG16,
        "caffe",
        "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "block4_conv1",
        ("block2_conv1", "block3_conv1", "block4_conv1", "block5_conv1"),
    ),
}


def split_presets(name: str) -> dict[str, tuple[str, ...]]:
    """Named split points (first layer of each next segment) for a keras.applications model."""
    spec = BACKBONES[name]
    return {
        # The article's split: stem..stride-8 stage / stride-16 stage onwards / new head.
        "default": (spec.middle, "head_pool"),
        "article": (spec.middle, "head_pool"),
        "stages": (*spec.stages, "head_pool"),
        "head": ("head_pool",),
    }


def _cached_weights(filename: str) -> str | None:
    homes = [os.environ.get("KERAS_HOME"), os.path.join(os.path.expanduser("~"), ".keras")]
    homes.append(os.path.join("/tmp", ".keras"))  # keras' fallback when ~ is not writable
    for home in homes:
        if home and os.path.isfile(os.path.join(home, "models", filename)):
            return os.path.join(home, "models", filename)
    return None


def backbone(name: str, image: keras.KerasTensor, weights: str) -> keras.KerasTensor:
    """Builds a keras.applications trunk (include_top=False) on the preprocessed `image`.

    Its layers join the caller's functional graph directly (no nested model), keeping the
    keras.applications layer names that split presets refer to.

    Args:
      name: a key of `BACKBONES`.
      image: the preprocessed input tensor (its source is the model's `keras.Input`).
      weights: "imagenet", "none" or a path to keras' no-top ``.h5`` ImageNet weights file.

    Returns:
      The last feature map.

    Raises:
      ValueError: "imagenet" weights are neither cached nor downloadable (offline).
    """
    spec = BACKBONES[name]
    if weights == "none":
        keras_weights = None
    elif weights == "imagenet":
        keras_weights = _cached_weights(spec.weights_file) or "imagenet"
    else:
        keras_weights = weights
    try:
        trunk = spec.constructor(include_top=False, weights=keras_weights, input_tensor=image)
    except Exception as e:  # keras.utils.get_file raises a bare Exception on URL errors.
        if keras_weights == "imagenet" and "URL fetch failure" in str(e):
            raise ValueError(
                f"--weights=imagenet: cannot download {spec.weights_file} (offline?); pass a "
                f"local copy with --weights=/path/to/{spec.weights_file} or use --weights=none"
            ) from None
        raise
    return trunk.output
