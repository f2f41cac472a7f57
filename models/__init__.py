"""Model builders by name and their split presets.

    model = models.build("resnet50", num_classes=10, image_size=32, weights="imagenet")
    split_at = models.split_preset("resnet50")   # ("conv4_block1_1_conv", "head_pool")

Every model takes float32 RGB pixels in [0, 255] of shape (image_size, image_size, 3) and
outputs logits (no softmax). A named model begins with its backbone's own preprocessing as a
layer named ``preprocess`` (so an exported model takes raw pixels) and ends with the float32
``head_logits`` of a new head; its graph is flat: keras.applications layers keep their names
(``conv2_block1_1_conv`` ...; InceptionV3's unnamed ones get names, see
`models.applications`). A user model keeps its own layers, gets a built-in ``preprocess``
layer only for an ``input_scale`` other than raw, and a ``head_logits`` only with a new head
(`models.adapt`). The CIFAR
ResNets and the heads normalize with `models.layers.BatchNormalization` (Keras' layer on
TensorFlow's fused kernel: 1.2-1.4x faster resnet20 training steps on CPU, same math and
weight files), and so do keras.applications backbones (`models.applications.fuse_batch_norm`:
1.16x ResNet50 and 1.21x EfficientNetV2-B0 training steps at 224 px; user models keep theirs).
`portable(model)` swaps those two layers of ours for built-in ones: export that model, so
users load it with plain `keras.saving.load_model`, without this project.

Library code: bad arguments raise ValueError (TypeError for a wrong type) whose message names
the flag and the value; this package never imports `trainer`.

Models:
  * CIFAR ResNets ``resnet8``, ``resnet20``, ``resnet32``, ``resnet56`` (`models.cifar_resnet`).
  * keras.applications backbones (`models.applications.BACKBONES`): ``resnet50``, ``resnet101``,
    ``resnet152``, ``resnet50v2``, ``resnet101v2``, ``resnet152v2``, ``mobilenet_v2``,
    ``mobilenet_v3_small``, ``mobilenet_v3_large``, ``efficientnet_b0`` ... ``efficientnet_b3``,
    ``efficientnetv2_b0`` ... ``efficientnetv2_b3``, ``efficientnetv2_s``, ``convnext_tiny``,
    ``convnext_small``, ``convnext_base``, ``densenet121``, ``densenet169``, ``densenet201``,
    ``xception``, ``inception_v3``, ``vgg16``, ``vgg19``.
  * A user's model (`models.user`): ``PATH.keras`` (a whole saved model; ``custom_objects``
    names the module of its custom layers) or ``package.module:function`` (a builder
    ``function(num_classes, image_size) -> keras.Model``), given lrtech's input, an optional
    input scaling (``input_scale``) and, with ``new_head``, a fresh classifier
    (`models.adapt`). Its split presets come from its layers: ``presets(spec, model)``.

Minimum ``image_size`` (`min_image_size`): 71 for ``xception``, 75 for ``inception_v3``, 32 for
every other named model; a user model takes its own input size when it is fixed.

Block-wise layer decay: `block_ids` / `block_starts` group the layers of a model into its
residual blocks or stages (`models.blocks`).

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

from models import adapt, applications, cifar_resnet, heads, user
from models.adapt import INPUT_SCALES
from models.blocks import block_ids, block_starts
from models.portable import portable
from models.preprocessing import ImagePreprocess
from models.transfer import TRANSFER_SUFFIXES, load_backbone_weights
from models.user import is_user_model

__all__ = [
    "HEADS",
    "INPUT_SCALES",
    "ImagePreprocess",
    "block_ids",
    "block_starts",
    "build",
    "is_user_model",
    "min_image_size",
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
        raise ValueError(
            f"--model={name!r} is unknown; choose one of {', '.join(names())}, "
            "or give PATH.keras or package.module:function"
        )


def min_image_size(name: str) -> int:
    """The smallest ``image_size`` a named model takes (see the module docstring)."""
    _check_name(name)
    if name in cifar_resnet.DEPTHS:
        return 32
    return applications.BACKBONES[name].min_size


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


def _check_sizes(num_classes, image_size) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int):
        raise TypeError(f"--num_classes={num_classes!r} must be a positive integer")
    if num_classes < 1:
        raise ValueError(f"--num_classes={num_classes!r} must be a positive integer")
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int)):
        raise TypeError(f"--image_size={image_size!r} must be an integer")


DEFAULT_IMAGE_SIZE = 32


def input_size(name: str, custom_objects: str | None = None) -> int:
    """The input size a model is built at when --image_size is not given: a saved
    ``PATH.keras`` model's own fixed (square) input size, else 32 (also for a builder, which
    receives it). Loads a ``.keras`` file once to read it.

    Raises:
      ValueError: as `models.user.load_file`.
    """
    if isinstance(name, str) and name.endswith(".keras"):
        shape = user.load_file(name, custom_objects).input_shape
        if isinstance(shape, list):
            shape = shape[0]
        if len(shape) == 4 and shape[1] is not None and shape[1] == shape[2]:
            return int(shape[1])
    return DEFAULT_IMAGE_SIZE


def build(
    name: str,
    num_classes: int,
    *,
    image_size: int | None = None,
    weights: str = "none",
    head: str = "default",
    dropout: float | None = None,
    new_head: bool | None = None,
    input_scale: str = "raw",
    custom_objects: str | None = None,
) -> keras.Model:
    """Builds a classifier: preprocessing, backbone, classification head.

    Args:
      name: one of `names()`, or a user model: ``PATH.keras`` or ``package.module:function``
        (`models.user`).
      num_classes: number of output logits.
      image_size: input height and width in pixels, at least `min_image_size(name)`; None:
        32, or a user model's own fixed input size.
      weights: ``none``, ``imagenet``, or a path (see the module docstring); a user model
        takes ``none`` or a ``.weights.h5`` / ``.keras`` file of the same model.
      head: one of `HEADS` (see `models.heads.add_head`); ``default`` for a user model.
      dropout: head dropout rate; None for the default (0 for CIFAR ResNets, 0.2 for
        keras.applications backbones, 0.5 for the ``article`` head, 0 before a user model's
        new head).
      new_head: user models only: replace the final Dense by a fresh ``head_logits``; None:
        when the model's output width is not num_classes. Named models always get a new head.
      input_scale: user models only: what the model expects of its [0, 255] input, one of
        `INPUT_SCALES` (default ``raw``: [0, 255] as given).
      custom_objects: user models only: module(s), comma-separated, defining custom layers.

    Returns:
      An uncompiled functional `keras.Model` named ``{name}`` (a user model keeps its name).

    Raises:
      ValueError: bad name, head, num_classes, image_size, dropout or weights, or an option
        for user models given with a named one; for user models see `models.user`.
      TypeError: num_classes or image_size is not an integer.
    """
    _check_sizes(num_classes, image_size)
    if dropout is not None and not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout={dropout} must be in [0, 1)")
    if input_scale not in INPUT_SCALES:
        raise ValueError(
            f"--input_scale={input_scale!r} is unknown; choose one of {', '.join(INPUT_SCALES)}"
        )
    if is_user_model(name):
        return user.build(
            name,
            num_classes,
            image_size=image_size,
            weights=weights,
            head=head,
            dropout=dropout,
            new_head=new_head,
            input_scale=input_scale,
            custom_objects=custom_objects,
        )
    _check_name(name)
    for flag, value, default in (
        ("new_head", new_head, None),
        ("input_scale", input_scale, "raw"),
        ("custom_objects", custom_objects, None),
    ):
        if value != default and not (flag == "new_head" and value is True):
            raise ValueError(
                f"--{flag}={value} applies to --model=PATH.keras or module:function; "
                f"--model={name} has its own preprocessing and a new head"
            )
    return _build_named(
        name, num_classes, 32 if image_size is None else image_size, weights, head, dropout
    )


def _build_named(name, num_classes, image_size, weights, head, dropout) -> keras.Model:
    if head not in HEADS:
        raise ValueError(f"--head={head!r} is unknown; choose one of {', '.join(HEADS)}")
    if image_size < min_image_size(name):
        raise ValueError(
            f"--image_size={image_size}: {name} needs at least {min_image_size(name)} pixels"
        )
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


def presets(model_name: str, model: keras.Model | None = None) -> dict[str, tuple[str, ...]]:
    """Named split points of a model: preset name -> first layer name of each next segment.

    Args:
      model_name: a name of `names()` or a user model's ``--model`` value.
      model: the built model; needed for user models, whose presets come from their layers
        (`models.adapt.split_presets`: ``default`` = thirds of the weighted layers + head).

    Raises:
      ValueError: unknown model; a user model without `model`.
    """
    if is_user_model(model_name):
        if model is None:
            raise ValueError(
                f"--split_at=preset: the presets of --model={model_name} come from its layers; "
                "pass the built model"
            )
        return adapt.split_presets(model)
    _check_name(model_name)
    if model_name in cifar_resnet.DEPTHS:
        return cifar_resnet.split_presets(model_name)
    return applications.split_presets(model_name)


def split_preset(
    model_name: str, preset: str = "default", *, model: keras.Model | None = None
) -> tuple[str, ...]:
    """The layer names that start each segment after the first, for `--split_at=preset:NAME`.

    Args:
      model_name: as for `presets`.
      preset: a preset name.
      model: the built model (user models only, as for `presets`).

    Raises:
      ValueError: unknown model or preset (the message lists the presets).
    """
    table = presets(model_name, model)
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
