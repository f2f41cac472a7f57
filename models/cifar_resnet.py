"""CIFAR-style ResNets (He et al. 2016, section 4.2): resnet8, resnet20, resnet32, resnet56.

Depth 6n+2: a 3x3 stem with 16 filters, three stages of n basic blocks with 16/32/64 filters
(the first block of stages 2 and 3 halves the resolution through a 1x1 projection shortcut),
then the head. Small enough to train in minutes on a CPU: the quickstart, tests and benchmarks
use them. Layer names are stable (``stem_conv``, ``stage2_block1_conv1`` ...) so split presets
and transfer by layer work.
"""

from __future__ import annotations

import keras
from keras import layers

from models.layers import MIN_FUSED_EPSILON, BatchNormalization

DEPTHS = {"resnet8": 8, "resnet20": 20, "resnet32": 32, "resnet56": 56}
STAGE_FILTERS = (16, 32, 64)


def _conv(filters, kernel, strides, name):
    return layers.Conv2D(
        filters,
        kernel,
        strides=strides,
        padding="same",
        use_bias=False,
        kernel_initializer="he_normal",
        name=name,
    )


def _bn(name):
    # Keras' default momentum (0.99) lags on short CPU runs; 0.9 tracks the weights closely.
    # The smallest epsilon the fused kernel takes (He et al. used 1e-5).
    return BatchNormalization(momentum=0.9, epsilon=MIN_FUSED_EPSILON, name=name)


def _basic_block(x, filters, strides, prefix):
    shortcut = x
    y = _conv(filters, 3, strides, f"{prefix}_conv1")(x)
    y = _bn(f"{prefix}_bn1")(y)
    y = layers.ReLU(name=f"{prefix}_relu1")(y)
    y = _conv(filters, 3, 1, f"{prefix}_conv2")(y)
    y = _bn(f"{prefix}_bn2")(y)
    if strides != 1 or shortcut.shape[-1] != filters:
        shortcut = _conv(filters, 1, strides, f"{prefix}_shortcut_conv")(shortcut)
        shortcut = _bn(f"{prefix}_shortcut_bn")(shortcut)
    y = layers.Add(name=f"{prefix}_add")([y, shortcut])
    return layers.ReLU(name=f"{prefix}_out")(y)


def backbone(name: str, image: keras.KerasTensor) -> keras.KerasTensor:
    """Builds the convolutional trunk of a CIFAR ResNet on `image` (already preprocessed).

    Args:
      name: a key of `DEPTHS`.
      image: the preprocessed input tensor.

    Returns:
      The last feature map (before pooling).
    """
    blocks = (DEPTHS[name] - 2) // 6
    x = _conv(STAGE_FILTERS[0], 3, 1, "stem_conv")(image)
    x = _bn("stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    for stage, filters in enumerate(STAGE_FILTERS, start=1):
        for block in range(1, blocks + 1):
            strides = 2 if stage > 1 and block == 1 else 1
            x = _basic_block(x, filters, strides, f"stage{stage}_block{block}")
    return x


def split_presets(name: str) -> dict[str, tuple[str, ...]]:
    """Named split points (first layer of each next segment) for a CIFAR ResNet."""
    del name  # Every depth has the same stage names.
    return {
        # Stem + stage 1 / stages 2-3 / head: the article's 3-segment shape on a small net.
        "default": ("stage2_block1_conv1", "head_pool"),
        "stages": (
            "stage1_block1_conv1",
            "stage2_block1_conv1",
            "stage3_block1_conv1",
            "head_pool",
        ),
        "head": ("head_pool",),
    }
