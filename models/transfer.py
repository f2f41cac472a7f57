"""Load a saved model's backbone into a new model whose head may differ.

Keras 3 weight files (``.weights.h5``, and the ``model.weights.h5`` inside a ``.keras``
archive) do not store layer names: a layer's variables live under a key made from its class
name and its rank among layers of that class (``layers/conv2d_3/vars/0``). Two models of the
same architecture therefore give each backbone layer the same key whatever their heads, since
the head comes after the backbone. We match by that key, check every shape, and skip the
``head_*`` layers of the new model, which keep their fresh initialization.
"""

from __future__ import annotations

import io
import logging
import os
import zipfile

import h5py
import keras
import numpy as np

from models.heads import HEAD_PREFIX

TRANSFER_SUFFIXES = (".weights.h5", ".keras")


def snake_case(name: str) -> str:
    # Keras' naming.to_snake_case, which produces the keys of its weight files. Private (not
    # exported by Keras): listed in trainer/keras_private.py and checked by its test.
    from keras.src.utils import naming

    return naming.to_snake_case(name)


def weight_keys(model: keras.Model, prefix: str = "layers") -> dict[str, keras.layers.Layer]:
    """Maps each layer with variables to its key in a Keras 3 weights file, in layer order."""
    keys, used = {}, {}
    for layer in model.layers:
        base = snake_case(layer.__class__.__name__)
        used[base] = used.get(base, -1) + 1
        key = f"{prefix}/{base}" if used[base] == 0 else f"{prefix}/{base}_{used[base]}"
        if isinstance(layer, keras.Model):
            keys.update(weight_keys(layer, f"{key}/layers"))
        elif layer.weights:
            keys[key] = layer
    return keys


def _open_weights(path: str) -> h5py.File:
    if path.endswith(".keras"):
        with zipfile.ZipFile(path) as archive:
            return h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r")
    return h5py.File(path, "r")


def _matching(model, path, weights_file):
    """(matched [(layer, saved values)], missing layer names) of the backbone's layers."""
    matched, missing = [], []
    with weights_file:
        for key, layer in weight_keys(model).items():
            if layer.name.startswith(HEAD_PREFIX):
                continue
            group = weights_file.get(f"{key}/vars")
            if group is None or not len(group):
                missing.append(layer.name)
                continue
            current = {}
            layer.save_own_variables(current)
            saved = {name: np.asarray(group[name]) for name in group}
            if sorted(saved) != sorted(current) or any(
                saved[k].shape != np.shape(current[k]) for k in current
            ):
                shapes = [np.shape(current[k]) for k in sorted(current)]
                got = [saved[k].shape for k in sorted(saved)]
                raise ValueError(
                    f"--weights={path}: layer {layer.name} ({key}) has shapes {got} in the file "
                    f"but {shapes} in model {model.name}; is it the same architecture?"
                )
            matched.append((layer, saved))
    return matched, missing


def load_backbone_weights(model: keras.Model, path: str) -> int:
    """Copies every non-head layer's weights from a saved model of the same architecture.

    Args:
      model: the new model (its ``head_*`` layers are left as initialized).
      path: a ``.weights.h5`` or ``.keras`` file saved by Keras 3.

    Returns:
      The number of layers loaded.

    Raises:
      ValueError: the file is missing or unreadable, no layer matched, or a shape conflicts.
    """
    if not os.path.isfile(path):
        raise ValueError(f"--weights={path}: no such file")
    try:
        weights_file = _open_weights(path)
    except (OSError, KeyError, zipfile.BadZipFile) as e:
        raise ValueError(f"--weights={path}: not a Keras weights file ({e})") from None
    try:
        matched, missing = _matching(model, path, weights_file)
    except (OSError, RuntimeError, KeyError) as e:  # h5py on damaged groups or data blocks
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"--weights={path}: damaged ({first}); use an intact copy") from None
    if not matched:
        raise ValueError(f"--weights={path}: no backbone layer of model {model.name} matched")
    for layer, saved in matched:
        layer.load_own_variables(saved)
    if missing:
        logging.warning(
            "--weights=%s: %d backbone layers not in the file keep their initialization: %s",
            path,
            len(missing),
            ", ".join(missing[:5]),
        )
    return len(matched)
