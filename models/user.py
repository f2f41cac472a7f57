"""Bring your own model: a saved ``.keras`` file or a builder function, made ready to fine-tune.

    model = models.build("my_model.keras", num_classes=10, custom_objects="my_layers")
    model = models.build("my_pkg.nets:build", num_classes=10, image_size=64)

``--model=PATH.keras`` loads a whole saved Keras model (`keras.saving.load_model`, safe mode,
without its compile state). Custom layers load once their classes are known: the module named
by ``custom_objects`` is imported first (its `keras.saving.register_keras_serializable`
classes register themselves) and every class and function it defines is offered to Keras by
name as well, so unregistered ones load too.

``--model=package.module:function`` imports ``package.module`` (from PYTHONPATH) and calls
``function(num_classes, image_size)``, which returns a `keras.Model`.

Either model is then adapted to what lrtech trains (`models.adapt`): its input, an input
scaling and a new head.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import zipfile

import keras

from models import adapt
from models.transfer import TRANSFER_SUFFIXES, load_backbone_weights


def is_user_model(spec: str) -> bool:
    """Whether ``--model`` names a ``.keras`` file or a ``module:function`` builder."""
    return isinstance(spec, str) and (spec.endswith(".keras") or ":" in spec)


def _first_line(error: BaseException, limit: int = 200) -> str:
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else ""
    return f"{type(error).__name__}: {text[:limit]}"


def custom_objects_of(modules: str | None) -> dict[str, object]:
    """Imports each comma-separated module; returns the classes and functions they define.

    Raises:
      ValueError: a module cannot be imported.
    """
    objects = {}
    for name in (modules or "").split(","):
        name = name.strip()
        if not name:
            continue
        try:
            module = importlib.import_module(name)
        except Exception as e:  # any import failure is the user's one line
            raise ValueError(
                f"--custom_objects={name}: cannot import it ({_first_line(e)})"
            ) from None
        for attr, value in vars(module).items():
            if (inspect.isclass(value) or inspect.isfunction(value)) and (
                getattr(value, "__module__", None) == module.__name__
            ):
                # Saved configs name a class by its registered name ("package>Class").
                objects[attr] = objects[keras.saving.get_registered_name(value)] = value
    return objects


def load_file(path: str, custom_objects: str | None = None) -> keras.Model:
    """Loads a whole model saved as ``.keras`` (safe mode, not compiled).

    Raises:
      ValueError: the file is missing, not a zip archive (or truncated), not a saved Keras
        model, uses a class Keras does not know (pass --custom_objects=MODULE), holds a
        Lambda layer, or fails to load otherwise; one line naming --model.
    """
    flag = f"--model={path}"
    objects = custom_objects_of(custom_objects)
    if not os.path.isfile(path):
        raise ValueError(f"{flag}: no such file")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{flag}: not a .keras archive (truncated, or not a zip file)")
    with zipfile.ZipFile(path) as archive:
        if "config.json" not in archive.namelist():
            raise ValueError(f"{flag}: not a saved Keras model (the archive has no config.json)")
    try:
        model = keras.saving.load_model(path, custom_objects=objects, compile=False)
    except Exception as e:  # Keras raises TypeError, ValueError, KeyError ...
        unknown = re.search(r"Could not locate (?:class|function) '([^']+)'", str(e))
        if unknown:
            where = (
                f"--custom_objects={custom_objects} does not define it"
                if custom_objects
                else "pass --custom_objects=MODULE, the Python module that defines it"
            )
            raise ValueError(f"{flag}: unknown class {unknown.group(1)!r}; {where}") from None
        if "Lambda" in str(e) and "safe_mode" in str(e):
            raise ValueError(
                f"{flag}: holds a Lambda layer, whose Python code Keras loads only in unsafe "
                "mode; use a layer class (--custom_objects) or a builder --model=module:function"
            ) from None
        raise ValueError(f"{flag}: cannot load it ({_first_line(e)})") from e
    if not isinstance(model, keras.Model):
        raise ValueError(f"{flag}: holds a {type(model).__qualname__}, not a keras.Model")
    return model


def call_builder(spec: str, num_classes: int, image_size: int) -> keras.Model:
    """Imports ``package.module:function`` and returns ``function(num_classes, image_size)``.

    Raises:
      ValueError: the spec is malformed, the module cannot be imported, the function is
        missing, not callable or takes other arguments, or it returns no `keras.Model`.
        Errors raised inside the function propagate unchanged.
    """
    flag = f"--model={spec}"
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"{flag}: expected PATH.keras or package.module:function")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # any import failure is the user's one line
        raise ValueError(
            f"{flag}: cannot import {module_name} ({_first_line(e)}); is it on PYTHONPATH?"
        ) from None
    builder = getattr(module, attr, None)
    if builder is None:
        raise ValueError(f"{flag}: module {module_name} has no attribute {attr!r}")
    if not callable(builder):
        raise ValueError(f"{flag}: {attr} is a {type(builder).__qualname__}, not callable")
    try:
        inspect.signature(builder).bind(num_classes, image_size)
    except TypeError:
        raise ValueError(
            f"{flag}: {attr}{inspect.signature(builder)} cannot be called as "
            f"{attr}(num_classes, image_size)"
        ) from None
    except ValueError:
        pass  # no signature to check (a builtin); the call tells
    model = builder(num_classes, image_size)
    if not isinstance(model, keras.Model):
        raise ValueError(f"{flag}: {attr} returned a {type(model).__qualname__}, not a keras.Model")
    return model


def build(
    spec: str,
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
    """Loads or builds a user model and adapts it (`models.adapt.adapt`); see `models.build`.

    Raises:
      ValueError: a built-in head or ImageNet / pretrained weights asked for, a weights file
        missing or of another kind, and the errors of `load_file`, `call_builder` and
        `models.adapt.adapt`.
    """
    if head != "default":
        raise ValueError(
            f"--head={head}: the built-in heads go on named models; --model={spec} keeps its "
            "classifier or gets a Dense one with --new_head"
        )
    if weights != "none":
        if not weights.endswith(TRANSFER_SUFFIXES):
            raise ValueError(
                f"--weights={weights}: --model={spec} brings its own weights; give none or a "
                ".weights.h5 / .keras file saved from the same model"
            )
        if not os.path.isfile(weights):
            raise ValueError(f"--weights={weights}: no such file")
    if spec.endswith(".keras"):
        model = load_file(spec, custom_objects)
    else:
        custom_objects_of(custom_objects)  # imported for the builder's sake too
        size = adapt.DEFAULT_IMAGE_SIZE if image_size is None else image_size
        model = call_builder(spec, num_classes, size)
    model = adapt.adapt(
        model,
        f"--model={spec}",
        num_classes,
        image_size=image_size,
        new_head=new_head,
        input_scale=input_scale,
        dropout=dropout,
    )
    if weights != "none":
        load_backbone_weights(model, weights)
    return model
