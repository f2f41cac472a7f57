"""A model made of built-in Keras layers only, so plain Keras can load what we export.

`models.build` puts two of our own layer classes in every model: `ImagePreprocess` and the
fused `models.layers.BatchNormalization`. A ``.keras`` file names each layer's class and
`keras.saving.load_model` finds custom classes only where they are registered, so a user who
loads an export without this project gets "Could not locate class 'ImagePreprocess'".
`portable(model)` rebuilds the model from its config with each of our layers replaced by a
built-in one that computes the same function, and copies every weight:

* ``BatchNormalization`` -> `keras.layers.BatchNormalization`, same config and weights (ours
  only chooses a faster kernel for the same math).
* ``ImagePreprocess`` -> one built-in layer, named ``preprocess`` as before:

  ========  ==================================================================
  mode      replacement
  ========  ==================================================================
  caffe     frozen ``Dense(3)`` on the channel axis: kernel = channel reversal
            (RGB -> BGR), bias = -BGR ImageNet mean
  torch     ``Normalization(mean=255 * mean, variance=(255 * std) ** 2)``
  tf        ``Rescaling(1 / 127.5, offset=-1)``
  unit      ``Rescaling(1 / 255)``
  none      ``Identity``
  ========  ==================================================================

  The caffe kernel holds only zeros and ones, so on integer pixels the product is exact even
  where matmuls round inputs to TF32 (GPUs); a Dense rather than a 1x1 Conv2D keeps the
  weight-file keys of the backbone's convolutions unchanged, so an exported ``.keras`` file
  still transfers into `models.build(..., weights=path)` (our models have Dense layers only
  in the head, which transfer skips).

Layer names, the graph, dtype policies and trainable flags are kept; the result is a new,
uncompiled model (so no optimizer or loss, which may be ours, is saved with it).
"""

from __future__ import annotations

import copy

import keras
import numpy as np

from models.layers import BatchNormalization
from models.preprocessing import (
    IMAGENET_MEAN_RGB,
    IMAGENET_MEAN_UNIT,
    IMAGENET_STD_UNIT,
    ImagePreprocess,
)

__all__ = ["builtin_preprocess", "builtin_preprocess_weights", "portable"]


def builtin_preprocess(mode: str, **kwargs) -> keras.layers.Layer:
    """The built-in Keras layer that computes ``ImagePreprocess(mode)`` (table above).

    Args:
      mode: one of `models.preprocessing.MODES`.
      **kwargs: layer arguments (name, dtype). The ``caffe`` layer is a Dense: set its
        weights to `builtin_preprocess_weights("caffe")` once it is built.
    """
    if mode == "caffe":
        return keras.layers.Dense(3, trainable=False, **kwargs)
    if mode == "torch":
        mean = [255.0 * m for m in IMAGENET_MEAN_UNIT]
        variance = [(255.0 * s) ** 2 for s in IMAGENET_STD_UNIT]
        return keras.layers.Normalization(axis=-1, mean=mean, variance=variance, **kwargs)
    if mode == "tf":
        return keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, **kwargs)
    if mode == "unit":
        return keras.layers.Rescaling(1.0 / 255.0, **kwargs)
    return keras.layers.Identity(**kwargs)


def builtin_preprocess_weights(mode: str) -> list[np.ndarray] | None:
    """The weights of `builtin_preprocess(mode)`; None when it has none to set."""
    if mode != "caffe":
        return None  # the replacement has no weights; its constants are in its config
    reverse = np.eye(3, dtype="float32")[::-1]  # output channel c = input channel 2 - c
    return [reverse, -np.asarray(IMAGENET_MEAN_RGB[::-1], dtype="float32")]


def _preprocess_replacement(layer: ImagePreprocess) -> keras.layers.Layer:
    # The policy's name ("float32", "mixed_float16"): Identity's automatic config can only
    # record plain values.
    return builtin_preprocess(layer.mode, name=layer.name, dtype=layer.dtype_policy.name)


def _preprocess_weights(layer: ImagePreprocess) -> list[np.ndarray] | None:
    return builtin_preprocess_weights(layer.mode)


def _batch_norm_replacement(layer: BatchNormalization) -> keras.layers.Layer:
    return keras.layers.BatchNormalization.from_config(layer.get_config())


# Our layer class -> (built-in replacement, its weights or None to copy the original's).
_CONVERTERS = {
    ImagePreprocess: (_preprocess_replacement, _preprocess_weights),
    BatchNormalization: (_batch_norm_replacement, lambda layer: None),
}


def _is_keras(module: object) -> bool:
    return isinstance(module, str) and module.split(".")[0] == "keras"


# lrtech's own packages: an export must not need them. A user model's custom layers come
# from the user's modules, which loading its export needs anyway (`--custom_objects`): they
# stay when Keras can find them by name (registered with register_keras_serializable).
_OURS = ("models", "trainer", "schedules")


def _is_ours(module: object) -> bool:
    return isinstance(module, str) and module.split(".")[0] in _OURS


def _loadable(config: dict) -> bool:
    """A serialized object plain Keras finds: its own, or a registered one of the user's."""
    if _is_keras(config["module"]):
        return True
    if _is_ours(config["module"]):
        return False
    registered = config.get("registered_name")
    return bool(registered) and keras.saving.get_registered_object(registered) is not None


def _is_loadable_class(cls: type) -> bool:
    if _is_keras(cls.__module__):
        return True
    if _is_ours(cls.__module__):
        return False
    return keras.saving.get_registered_object(keras.saving.get_registered_name(cls)) is cls


def _foreign_objects(config) -> list[str]:
    """Names of the serialized objects in `config` that plain Keras cannot load."""
    found = []
    if isinstance(config, dict):
        if "module" in config and "class_name" in config and not _loadable(config):
            # Functions serialize as class "function" with their name as the config.
            name = config["config"] if config["class_name"] == "function" else config["class_name"]
            found.append(f"{config['module']}.{name}")
        for value in config.values():
            found += _foreign_objects(value)
    elif isinstance(config, (list, tuple)):
        for value in config:
            found += _foreign_objects(value)
    return found


def _is_graph_model(model: keras.Model) -> bool:
    # Functional and Sequential models are Keras classes whose config lists their layers; a
    # subclassed model is the user's class and its structure lives in its Python code.
    return _is_keras(type(model).__module__) and "layers" in model.get_config()


def _layer_name(entry: dict) -> str:
    return entry["config"]["name"]


def _portable_config(model: keras.Model) -> dict:
    """`model.get_config()` with each of our layers' entries replaced by a built-in layer's."""
    if not _is_graph_model(model):
        raise ValueError(
            f"portable: model {model.name!r} is a subclassed model ({type(model).__qualname__}"
            f" from {type(model).__module__}); only Functional and Sequential models can be "
            "rebuilt from built-in layers"
        )
    config = copy.deepcopy(model.get_config())
    by_name = {layer.name: layer for layer in model.layers}
    for i, entry in enumerate(config["layers"]):
        layer = by_name.get(_layer_name(entry))
        if layer is None:  # a raw op in a functional graph (keras.ops.*): Keras' own
            continue
        if type(layer) in _CONVERTERS:
            replacement = _CONVERTERS[type(layer)][0](layer)
            # Keep the graph position (name, inbound nodes) and the input shape it was built
            # with; take class, module and config from the replacement.
            config["layers"][i] = {**entry, **keras.saving.serialize_keras_object(replacement)}
        elif isinstance(layer, keras.Model):
            config["layers"][i] = {**entry, "config": _portable_config(layer)}
        elif isinstance(layer, keras.layers.Lambda):
            raise ValueError(
                f"portable: layer {layer.name!r} is a Lambda layer: its Python code is not "
                "loadable by keras.saving.load_model in safe mode; use a built-in layer"
            )
        else:
            foreign = _foreign_objects(entry)
            if not _is_loadable_class(type(layer)) or foreign:
                what = ", ".join(foreign) or f"{type(layer).__module__}.{type(layer).__qualname__}"
                raise ValueError(
                    f"portable: layer {layer.name!r} ({type(layer).__qualname__}) uses custom "
                    f"code ({what}) that plain Keras cannot load (neither built-in nor "
                    "registered with keras.saving.register_keras_serializable) and "
                    "models.portable cannot replace by built-in layers"
                )
    return config


def _copy_weights(source: keras.Model, target: keras.Model) -> None:
    for layer in source.layers:
        new = target.get_layer(layer.name)
        if isinstance(layer, keras.Model):
            _copy_weights(layer, new)
            continue
        weights = _CONVERTERS[type(layer)][1](layer) if type(layer) in _CONVERTERS else None
        new.set_weights(layer.get_weights() if weights is None else weights)


def portable(model: keras.Model) -> keras.Model:
    """Returns an equivalent model built only from built-in Keras layers.

    Save the result to give users a ``.keras`` file (or weights, or a SavedModel) that loads
    with `keras.saving.load_model` where this project is not installed. Outputs match the
    original's to float32 round-off (about 1e-6 relative).

    Args:
      model: a Functional or Sequential model, e.g. from `models.build`, possibly with nested
        Functional / Sequential models. It is not modified.

    Returns:
      A new uncompiled model with the same name, layer names, graph, dtype policies, trainable
      flags and weights (independent copies), in which `models.layers.BatchNormalization` and
      `ImagePreprocess` layers are replaced by built-in layers (see the module docstring). A
      model without custom layers comes back as an equal copy.

    Raises:
      TypeError: `model` is not a `keras.Model`.
      ValueError: the model is subclassed, or a layer (or an object in its config, such as a
        custom activation or initializer) is custom code this function cannot replace; the
        message names the layer and the class.
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"portable: expected a keras.Model, got {type(model).__qualname__}")
    config = _portable_config(model)
    rebuilt = type(model).from_config(config)
    _copy_weights(model, rebuilt)
    return rebuilt
