"""Model builders by name and their split presets.

    model = models.build("resnet50", num_classes=10, image_size=32, weights="imagenet")
    split_at = models.split_preset("resnet50")   # ("conv4_block1_1_conv", "head_pool")

Every model takes float32 RGB pixels in [0, 255] of shape (image_size, image_size, 3), begins
with its backbone's own preprocessing as a layer named ``preprocess`` (so an exported model
takes raw pixels), and outputs float32 logits (no softmax) from ``head_logits``. The graph is
flat: keras.applications layers keep their names (``conv2_block1_1_conv`` ...). The CIFAR
ResNets and the heads normalize with `models.layers.BatchNormalization` (Keras' layer on
TensorFlow's fused kernel: 1.2-1.4x faster resnet20 training steps on CPU, same math and
weight files); keras.applications backbones keep Keras' own layer (no gain measured at 32x32).
`portable(model)` swaps those two layers of ours for built-in ones: export that model, so
users load it with plain `keras.saving.load_model`, without this project.

Library code: bad arguments raise ValueError (TypeError for a wrong type) whose message names
the flag and the value; this package never imports `trainer`.

Models:
  * CIFAR ResNets ``resnet8``, ``resnet20``, ``resnet32``, ``resnet56`` (`models.cifar_resnet`).
  * keras.applications backbones (`models.applications.BACKBONES`): ``resnet50``, ``resnet101``,
    ``resnet152``, ``resnet50v2``, ``mobilenet_v2``, ``efficientnet_b0``, ``densenet121``,
    ``vgg16``.

Weights (``weights=``): ``none``; ``imagenet`` (keras.applications backbones; downloaded on
first use, read from ~/.keras/models when cached; offline and uncached -> `ValueError`); a path
to keras' no-top ImageNet ``.h5`` file; or a ``.weights.h5`` / ``.keras`` file saved from a model
of the same architecture with any head: the backbone is loaded, the head stays fresh
(`models.transfer`); or ``pretrained:NAME`` for weights shipped in models/pretrained/
(`PRETRAINED`; e.g. ``pretrained:resnet20_fashion_mnist``), loaded the same way.
"""

from __future__ import annotations

import hashlib
import os

import keras

from models import applications, cifar_resnet, heads
from models.portable import portable
from models.preprocessing import ImagePreprocess
from models.transfer import TRANSFER_SUFFIXES, load_backbone_weights

__all__ = [
    "HEADS",
    "ImagePreprocess",
    "build",
    "load_backbone_weights",
    "names",
    "portable",
    "PRETRAINED",
    "PRETRAINED_SHA256",
    "file_sha256",
    "presets",
    "pretrained_path",
    "save_backbone_weights",
    "split_preset",
]

HEADS = heads.HEADS
# Default head dropout per family: none on the small nets (BatchNorm regularizes enough at
# this size), 0.2 before a new head on a pretrained backbone (as keras.applications' tops).
_DEFAULT_DROPOUT = {"cifar": 0.0, "applications": 0.2}


def names() -> tuple[str, ...]:
    """All model names `build` accepts."""
    return tuple(cifar_resnet.DEPTHS) + tuple(applications.BACKBONES)


def _check_name(name: str) -> None:
    if name not in names():
        raise ValueError(f"--model={name!r} is unknown; choose one of {', '.join(names())}")


# Weights shipped in models/pretrained/ (see its README): name -> the architecture they fit.
PRETRAINED = {
    "resnet20_fashion_mnist": "resnet20",  # all 10 Fashion-MNIST classes
    "resnet20_fashion_mnist_0to4": "resnet20",  # classes 0-4 only (the study's near domain)
}
# Their sha256, checked on every load: a damaged or replaced file (a Git LFS pointer, a
# truncated copy) is one clear error instead of strange accuracy.
PRETRAINED_SHA256 = {
    "resnet20_fashion_mnist": "2cd86dd791776c5cbb40857314c15a610881a91bf60454b14fcf2b7aa173145b",
    "resnet20_fashion_mnist_0to4": (
        "6ca5c04b3308552a82bd0c3b29901be383b73948aefd3f42782b8987f259d56c"
    ),
}
PRETRAINED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrained")


def pretrained_path(spec: str, model_name: str | None = None) -> str:
    """The file of `pretrained:NAME` weights, checked against the architecture and sha256.

    Raises:
      ValueError: unknown NAME, weights of another architecture, the file is missing, or its
        sha256 is not the one it was shipped with.
    """
    name = spec.partition(":")[2]
    if name not in PRETRAINED:
        raise ValueError(
            f"--weights={spec}: unknown pretrained weights; choose one of "
            + ", ".join(f"pretrained:{n}" for n in PRETRAINED)
        )
    if model_name is not None and PRETRAINED[name] != model_name:
        raise ValueError(
            f"--weights={spec} fits --model={PRETRAINED[name]}, not --model={model_name}"
        )
    path = os.path.join(PRETRAINED_DIR, f"{name}.weights.h5")
    if not os.path.isfile(path):
        raise ValueError(f"--weights={spec}: {path} is missing from this installation")
    digest = file_sha256(path)
    if digest != PRETRAINED_SHA256[name]:
        raise ValueError(
            f"--weights={spec}: {path} has sha256 {digest}, not the shipped "
            f"{PRETRAINED_SHA256[name]} (damaged or replaced; reinstall lrtech)"
        )
    return path


def file_sha256(path: str) -> str:
    """The hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_weights(name: str, weights: str) -> None:
    if weights in ("none", "imagenet"):
        if weights == "imagenet" and name in cifar_resnet.DEPTHS:
            raise ValueError(f"--weights=imagenet: no ImageNet weights for --model={name}")
        return
    if not os.path.isfile(weights):
        raise ValueError(f"--weights={weights}: no such file (or use imagenet / none)")
    if weights.endswith(TRANSFER_SUFFIXES):
        return
    if weights.endswith(".h5") and name in applications.BACKBONES:
        return
    raise ValueError(
        f"--weights={weights}: expected a .weights.h5 or .keras file saved by this project"
        " (or keras' no-top ImageNet .h5 file for keras.applications models)"
    )


def build(
    name: str,
    num_classes: int,
    *,
    image_size: int = 32,
    weights: str = "none",
    head: str = "default",
    dropout: float | None = None,
) -> keras.Model:
    """Builds a classifier: preprocessing, backbone, classification head.

    Args:
      name: one of `names()`.
      num_classes: number of output logits.
      image_size: input height and width in pixels (>= 32).
      weights: ``none``, ``imagenet``, or a path (see the module docstring).
      head: one of `HEADS` (see `models.heads.add_head`).
      dropout: head dropout rate; None for the default (0 for CIFAR ResNets, 0.2 for
        keras.applications backbones, 0.5 for the ``article`` head).

    Returns:
      An uncompiled functional `keras.Model` named ``{name}``.

    Raises:
      ValueError: bad name, head, num_classes, image_size, dropout or weights.
      TypeError: num_classes or image_size is not an integer.
    """
    _check_name(name)
    if head not in HEADS:
        raise ValueError(f"--head={head!r} is unknown; choose one of {', '.join(HEADS)}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int):
        raise TypeError(f"--num_classes={num_classes!r} must be a positive integer")
    if num_classes < 1:
        raise ValueError(f"--num_classes={num_classes!r} must be a positive integer")
    if isinstance(image_size, bool) or not isinstance(image_size, int):
        raise TypeError(f"--image_size={image_size!r} must be an integer")
    if image_size < 32:
        raise ValueError(f"--image_size={image_size} must be >= 32")
    if dropout is not None and not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout={dropout} must be in [0, 1)")
    if weights.startswith("pretrained:"):
        weights = pretrained_path(weights, name)
    _check_weights(name, weights)
    transfer = weights.endswith(TRANSFER_SUFFIXES)

    image = keras.Input((image_size, image_size, 3), dtype="float32", name="image")
    if name in cifar_resnet.DEPTHS:
        x = ImagePreprocess("unit", name="preprocess")(image)
        features = cifar_resnet.backbone(name, x)
        family = "cifar"
    else:
        spec = applications.BACKBONES[name]
        x = ImagePreprocess(spec.preprocess, name="preprocess")(image)
        features = applications.backbone(name, x, "none" if transfer else weights)
        family = "applications"
    if head == "default" and dropout is None:
        dropout = _DEFAULT_DROPOUT[family]
    logits = heads.add_head(features, num_classes, head, dropout)
    model = keras.Model(image, logits, name=name)
    if transfer:
        load_backbone_weights(model, weights)
    return model


def presets(model_name: str) -> dict[str, tuple[str, ...]]:
    """Named split points of a model: preset name -> first layer name of each next segment."""
    _check_name(model_name)
    if model_name in cifar_resnet.DEPTHS:
        return cifar_resnet.split_presets(model_name)
    return applications.split_presets(model_name)


def split_preset(model_name: str, preset: str = "default") -> tuple[str, ...]:
    """The layer names that start each segment after the first, for `--split_at=preset:NAME`.

    Raises:
      ValueError: unknown model or preset (the message lists the presets).
    """
    table = presets(model_name)
    if preset not in table:
        raise ValueError(
            f"--split_at=preset:{preset}: unknown preset for --model={model_name}; "
            f"choose one of {', '.join(table)}"
        )
    return table[preset]


def save_backbone_weights(model: keras.Model, path: str) -> None:
    """Saves `model`'s weights so `build(..., weights=path)` can transfer its backbone.

    The file holds every weight; the loader skips the head. Use a ``.weights.h5`` path.

    Raises:
      ValueError: `path` does not end with ``.weights.h5``.
    """
    if not path.endswith(".weights.h5"):
        raise ValueError(f"path={path}: must end with .weights.h5")
    model.save_weights(path)
