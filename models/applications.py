"""keras.applications backbones by name, each with its preprocessing and split presets.

Adding a backbone is one `Backbone` entry: its constructor, the preprocessing mode that
matches its ``preprocess_input`` (see `models.preprocessing`; ``none`` where the keras model
carries its own Rescaling / Normalization layers), the file name of its no-top ImageNet
weights (for the offline message and the ~/.keras/models cache), where its stride-16 stage
starts (the "conv4" of ResNet50, the article's middle split), the first layer of each stage
after the stem, and the smallest input keras accepts for it. The stride-16 stage takes its
input at stride 8 and downsamples in its first block, except in DenseNet and keras' ResNetV2,
whose stage before it downsamples at its end (a DenseNet transition, the last ResNetV2 block):
there conv4 starts at stride 16.

Minimum input sizes (``--image_size``): 71 for ``xception``, 75 for ``inception_v3``, 32
for every other backbone (keras.applications' own limits; smaller inputs shrink a feature
map to nothing).

Stages are runs of blocks that output one resolution: the stem ends where the first stage
with a new resolution starts, so a block at the stem's resolution (EfficientNet's block1,
MobileNetV2's first block, Xception's block1) belongs to the stem. `models.blocks` groups
layers the same way (its ``stage`` granularity starts a group where the ``stages`` preset
starts a segment).

Layer names are keras.applications' own, except InceptionV3's: keras names its layers
``conv2d_57``, ``batch_normalization_57`` ..., numbered by how many such layers the process
has made before, so no split point could name them. `backbone` renames each to the block it
belongs to: ``stem_conv2d``, ``mixed3_conv2d_4`` (the blocks end at keras' ``mixed0`` ...
``mixed10``). The layers' variables keep their original paths.

BatchNorm: `backbone` replaces every ``keras.layers.BatchNormalization`` of the trunk by
`models.layers.BatchNormalization` with the same config and weights (TensorFlow's fused
kernel, the layer the CIFAR ResNets use; `fuse_batch_norm`). At 224 px, global batch 32, on 2
CPU cores a whole training step (forward, backward, Adam) ran 1.16x as fast for ResNet50
(1.11x in process CPU time) and 1.21x for EfficientNetV2-B0 (1.20x) (BENCHMARKS.md section 12;
at 32x32 no gain was measurable). Inference outputs are those of Keras' layer (identical for
ResNet50, within float32 round-off elsewhere) and `models.portable` turns the layers back into
Keras' own for exports. Backbones without BatchNorm (ConvNeXt's LayerNormalization, VGG) are
left as keras builds them.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable

import keras

from models.layers import BatchNormalization
from models.transfer import snake_case


@dataclasses.dataclass(frozen=True)
class Backbone:
    constructor: Callable[..., keras.Model]
    preprocess: str  # ImagePreprocess mode
    weights_file: str  # keras' cache name of the no-top ImageNet weights
    middle: str  # first layer of the stride-16 stage
    stages: tuple[str, ...]  # first layer of each stage after the stem
    min_size: int = 32  # smallest --image_size keras accepts
    rename: Callable[[list], None] | None = None  # gives auto-named layers stable names


_APPS = keras.applications
_RESNET_STAGES = tuple(f"conv{i}_block1_1_conv" for i in (2, 3, 4, 5))
_RESNET_V2_STAGES = tuple(f"conv{i}_block1_preact_bn" for i in (2, 3, 4, 5))
_DENSENET_STAGES = tuple(f"conv{i}_block1_0_bn" for i in (2, 3, 4, 5))
_VGG_STAGES = ("block2_conv1", "block3_conv1", "block4_conv1", "block5_conv1")
# EfficientNet V1 and V2 alike: block1 at the stem's stride 2, blocks 4-5 at 16, 6-7 at 32.
_EFFICIENTNET_STAGES = tuple(f"block{i}a_expand_conv" for i in (2, 3, 4, 6))


def _tf_file(name: str) -> str:
    return f"{name}_weights_tf_dim_ordering_tf_kernels_notop.h5"


def _resnet(constructor, name):
    return Backbone(constructor, "caffe", _tf_file(name), "conv4_block1_1_conv", _RESNET_STAGES)


def _resnet_v2(constructor, name):
    return Backbone(constructor, "tf", _tf_file(name), "conv4_block1_preact_bn", _RESNET_V2_STAGES)


def _densenet(constructor, name):
    return Backbone(constructor, "torch", _tf_file(name), "conv4_block1_0_bn", _DENSENET_STAGES)


def _efficientnet(constructor, weights_name):
    # The model normalizes its [0, 255] input itself (Rescaling and Normalization layers).
    return Backbone(
        constructor,
        "none",
        f"{weights_name}_notop.h5",
        "block4a_expand_conv",
        _EFFICIENTNET_STAGES,
    )


def _convnext(constructor, name):
    # The model normalizes its [0, 255] input itself (a Normalization layer before its stem).
    # Stride 4 after the stem; downsampling_block_i leads into the stage at stride 8 * 2**i.
    first = f"{name}_stage_0_block_0_depthwise_conv"
    downsample = tuple(f"{name}_downsampling_layernorm_{i}" for i in range(3))
    return Backbone(constructor, "none", f"{name}_notop.h5", downsample[1], (first, *downsample))


def _mobilenet_v3(constructor, kind, stage_blocks):
    # The model rescales its [0, 255] input itself (a Rescaling layer to [-1, 1]).
    first = {0: "expanded_conv_depthwise_pad"}  # block 0 of the small net has stride 2
    stages = tuple(first.get(b, f"expanded_conv_{b}_expand") for b in stage_blocks)
    return Backbone(
        constructor,
        "none",
        f"weights_mobilenet_v3_{kind}_224_1.0_float_no_top_v2.h5",
        stages[-2],
        stages,
    )


def _auto_named(layer) -> str | None:
    """The class part of a keras automatic name ("conv2d" of "conv2d_57"), else None."""
    base = snake_case(type(layer).__name__)
    return base if re.fullmatch(rf"{base}(_\d+)?", layer.name) else None


def _rename_inception(layers: list) -> None:
    """Names each auto-named InceptionV3 layer after its block: stem_*, mixed0_* ...

    The stem ends with its second max-pooling; block N ends with keras' ``mixedN``.
    """
    prefix, pools, used = "stem", 0, {}
    for layer in layers:
        block_end = re.fullmatch(r"mixed(\d+)", layer.name)
        base = _auto_named(layer)
        if base is not None:
            key = f"{prefix}_{base}"
            used[key] = used.get(key, -1) + 1
            layer.name = key if used[key] == 0 else f"{key}_{used[key]}"
        if prefix == "stem" and isinstance(layer, keras.layers.MaxPooling2D):
            pools += 1
            prefix = "mixed0" if pools == 2 else prefix
        elif block_end:
            prefix = f"mixed{int(block_end.group(1)) + 1}"


BACKBONES: dict[str, Backbone] = {
    "resnet50": _resnet(_APPS.ResNet50, "resnet50"),
    "resnet101": _resnet(_APPS.ResNet101, "resnet101"),
    "resnet152": _resnet(_APPS.ResNet152, "resnet152"),
    "resnet50v2": _resnet_v2(_APPS.ResNet50V2, "resnet50v2"),
    "resnet101v2": _resnet_v2(_APPS.ResNet101V2, "resnet101v2"),
    "resnet152v2": _resnet_v2(_APPS.ResNet152V2, "resnet152v2"),
    "mobilenet_v2": Backbone(
        _APPS.MobileNetV2,
        "tf",
        "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
        "block_6_expand",
        ("block_1_expand", "block_3_expand", "block_6_expand", "block_13_expand"),
    ),
    # Small: block 0 at stride 4, 1-2 at 8, 3-7 at 16, 8-10 at 32 (the stem at 2).
    "mobilenet_v3_small": _mobilenet_v3(_APPS.MobileNetV3Small, "small", (0, 1, 3, 8)),
    # Large: block 0 at the stem's stride 2, 1-2 at 4, 3-5 at 8, 6-11 at 16, 12-14 at 32.
    "mobilenet_v3_large": _mobilenet_v3(_APPS.MobileNetV3Large, "large", (1, 3, 6, 12)),
    "efficientnet_b0": _efficientnet(_APPS.EfficientNetB0, "efficientnetb0"),
    "efficientnet_b1": _efficientnet(_APPS.EfficientNetB1, "efficientnetb1"),
    "efficientnet_b2": _efficientnet(_APPS.EfficientNetB2, "efficientnetb2"),
    "efficientnet_b3": _efficientnet(_APPS.EfficientNetB3, "efficientnetb3"),
    "efficientnetv2_b0": _efficientnet(_APPS.EfficientNetV2B0, "efficientnetv2-b0"),
    "efficientnetv2_b1": _efficientnet(_APPS.EfficientNetV2B1, "efficientnetv2-b1"),
    "efficientnetv2_b2": _efficientnet(_APPS.EfficientNetV2B2, "efficientnetv2-b2"),
    "efficientnetv2_b3": _efficientnet(_APPS.EfficientNetV2B3, "efficientnetv2-b3"),
    "efficientnetv2_s": _efficientnet(_APPS.EfficientNetV2S, "efficientnetv2-s"),
    "convnext_tiny": _convnext(_APPS.ConvNeXtTiny, "convnext_tiny"),
    "convnext_small": _convnext(_APPS.ConvNeXtSmall, "convnext_small"),
    "convnext_base": _convnext(_APPS.ConvNeXtBase, "convnext_base"),
    "densenet121": _densenet(_APPS.DenseNet121, "densenet121"),
    "densenet169": _densenet(_APPS.DenseNet169, "densenet169"),
    "densenet201": _densenet(_APPS.DenseNet201, "densenet201"),
    # Entry flow: block1 (the stem, stride 2), block2 (4), block3 (8), block4 (16); middle
    # flow blocks 5-12 (16); exit flow blocks 13-14 (32).
    "xception": Backbone(
        _APPS.Xception,
        "tf",
        _tf_file("xception"),
        "block4_sepconv1_act",
        ("block2_sepconv1", "block3_sepconv1_act", "block4_sepconv1_act", "block13_sepconv1_act"),
        min_size=71,
    ),
    # The stem reaches stride 8; mixed0-2 at 8 (35x35 at 299 pixels), mixed3-7 at 16
    # (17x17), mixed8-10 at 32 (8x8). Names after `_rename_inception`.
    "inception_v3": Backbone(
        _APPS.InceptionV3,
        "tf",
        _tf_file("inception_v3"),
        "mixed3_conv2d",
        ("mixed0_conv2d", "mixed3_conv2d", "mixed8_conv2d"),
        min_size=75,
        rename=_rename_inception,
    ),
    "vgg16": Backbone(_APPS.VGG16, "caffe", _tf_file("vgg16"), "block4_conv1", _VGG_STAGES),
    "vgg19": Backbone(_APPS.VGG19, "caffe", _tf_file("vgg19"), "block4_conv1", _VGG_STAGES),
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
    keras.applications layer names that split presets refer to (see the module docstring for
    InceptionV3's).

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
    if spec.rename is not None:
        spec.rename(trunk.layers)
    return fuse_batch_norm(trunk).output


def fuse_batch_norm(trunk: keras.Model) -> keras.Model:
    """`trunk` with each Keras BatchNormalization replaced by the fused one, weights copied.

    The trunk is cloned on its own input tensors (every layer a new instance of the same
    class, config and name, except Keras' BatchNormalization, which becomes
    `models.layers.BatchNormalization`), so its output still descends from the caller's
    `keras.Input` and the final model stays flat; the original layers are left out of it.

    Args:
      trunk: a functional model, e.g. a keras.applications model built on `input_tensor`.

    Returns:
      The clone, or `trunk` itself when it has no Keras BatchNormalization layer.
    """
    if not any(type(layer) is keras.layers.BatchNormalization for layer in trunk.layers):
        return trunk

    def clone(layer):
        cls = type(layer)
        if cls is keras.layers.BatchNormalization:
            cls = BatchNormalization
        return cls.from_config(layer.get_config())

    fused = keras.models.clone_model(trunk, input_tensors=trunk.inputs, clone_function=clone)
    for layer in trunk.layers:
        fused.get_layer(layer.name).set_weights(layer.get_weights())
    return fused
