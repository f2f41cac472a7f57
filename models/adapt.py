"""Adapt a user's model to what lrtech trains: input, input scale, head; its split presets.

A user model (`models.user`) is rebuilt as a flat functional graph around the same layers
(and weights):

* Input: one float32 image input named ``image`` of shape (image_size, image_size, 3). The
  size comes from the model's input shape when that is fixed (a different ``image_size`` is
  an error); otherwise from ``image_size`` (default 32).
* Input scale: the pipeline gives float pixels in [0, 255]; ``input_scale`` says what the
  model expects and adds one built-in Keras layer named ``preprocess`` (`INPUT_SCALES`):
  ``raw`` (default: no layer, the model gets [0, 255]), ``unit`` ([0, 1]), ``minus_one_one``
  ([-1, 1]), ``imagenet_caffe`` (BGR minus the ImageNet mean), ``imagenet_torch`` ([0, 1]
  minus the ImageNet mean over its std). Built-in layers (Rescaling, Normalization, a frozen
  Dense for the channel swap; see `models.portable`), so an export loads in plain Keras.
* Head: ``new_head`` replaces the final Dense classifier (and a Softmax after it) by a fresh
  ``Dense(num_classes)`` named ``head_logits``, float32 as our heads; default: on exactly when
  the model's output width differs from num_classes. Without a new head a final softmax is
  dropped (the Dense keeps its weights and outputs logits): lrtech's losses take logits.

Subclassed models (no graph) keep their structure: they are called on the (preprocessed)
input; a new head needs a Functional or Sequential model.

Split presets (`split_presets`): a user model has no stage names, so ``default`` splits its
weighted layers (those with trainable weights, in layer order, nested models walked) into
three equal thirds below the head (each split moved to the nearest block start when the
names show a known family such as a keras.applications backbone, else off a normalization
layer to the nearest other weighted layer), and the head (the last weighted layer: the
classifier) is its own segment: 4 segments. Equal thirds by count need no knowledge of the
architecture and still give early, middle and late features their own rates, the point of
discriminative learning rates; the head alone gets the highest rate, as in every preset.
``head``: body / head. For another split give layer names (--split_at, see --list_layers).
"""

from __future__ import annotations

import keras

from models import blocks
from models.portable import builtin_preprocess, builtin_preprocess_weights

# --input_scale -> the ImagePreprocess mode its built-in layer computes.
INPUT_SCALES = {
    "raw": "none",
    "unit": "unit",
    "minus_one_one": "tf",
    "imagenet_caffe": "caffe",
    "imagenet_torch": "torch",
}
DEFAULT_IMAGE_SIZE = 32  # a model that takes any size gets the named models' default


def _graph(model: keras.Model, flag: str) -> keras.Model | None:
    """The model as a Functional graph (a built Sequential converted), or None if subclassed."""
    if isinstance(model, keras.Sequential):
        try:
            return keras.Model(model.inputs, model.outputs, name=model.name)
        except (AttributeError, ValueError):
            raise ValueError(
                f"{flag}: the Sequential model has no input shape; give it a keras.Input"
            ) from None
    return model if hasattr(model, "inputs") and hasattr(model, "outputs") else None


def _input_size(graph: keras.Model | None, flag: str, image_size: int | None) -> int:
    if graph is None:
        return DEFAULT_IMAGE_SIZE if image_size is None else image_size
    if len(graph.inputs) != 1:
        raise ValueError(f"{flag}: the model has {len(graph.inputs)} inputs; lrtech feeds one")
    shape = tuple(graph.inputs[0].shape)
    if len(shape) != 4 or shape[-1] not in (3, None):
        raise ValueError(
            f"{flag}: takes inputs of shape {shape[1:]}; lrtech feeds (height, width, 3) images"
        )
    height, width = shape[1:3]
    if height is None and width is None:
        return DEFAULT_IMAGE_SIZE if image_size is None else image_size
    if height != width:
        raise ValueError(f"{flag}: takes {height}x{width} inputs; lrtech feeds square images")
    if image_size is not None and image_size != height:
        raise ValueError(
            f"--image_size={image_size}: {flag} takes {height}x{height} inputs; set "
            f"--image_size={height} or leave it unset"
        )
    return height


def _producer(graph: keras.Model, tensor) -> keras.layers.Layer | None:
    for layer in reversed(graph.layers):
        try:
            if layer.output is tensor:
                return layer
        except (AttributeError, ValueError):
            continue
    return None


def _is_softmax(layer) -> bool:
    if isinstance(layer, keras.layers.Softmax):
        return True
    activation = getattr(layer, "activation", None)
    return isinstance(layer, keras.layers.Activation) and (
        getattr(activation, "__name__", None) == "softmax"
    )


def _classifier(graph: keras.Model, flag: str) -> tuple[keras.layers.Layer | None, list, int]:
    """(the final Dense or None, the Softmax layers after it, the output width)."""
    if len(graph.outputs) != 1:
        raise ValueError(f"{flag}: the model has {len(graph.outputs)} outputs; lrtech needs one")
    shape = tuple(graph.outputs[0].shape)
    if len(shape) != 2 or shape[-1] is None:
        raise ValueError(f"{flag}: outputs shape {shape}; lrtech needs (batch, classes) logits")
    trailing, layer = [], _producer(graph, graph.outputs[0])
    while layer is not None and _is_softmax(layer):
        trailing.append(layer)
        layer = _producer(graph, layer.input)
    dense = layer if isinstance(layer, keras.layers.Dense) else None
    return dense, trailing, shape[-1]


def _logits_dense(dense: keras.layers.Dense) -> keras.layers.Dense:
    """A copy of `dense` without its activation (called later; weights set then)."""
    return keras.layers.Dense.from_config({**dense.get_config(), "activation": "linear"})


def _head(num_classes: int, dropout: float | None):
    dropout_layer = keras.layers.Dropout(dropout, name="head_dropout") if dropout else None
    dense = keras.layers.Dense(num_classes, dtype="float32", name="head_logits")

    def head(features):
        return dense(dropout_layer(features) if dropout_layer else features)

    return head


def adapt(
    model: keras.Model,
    flag: str,
    num_classes: int,
    *,
    image_size: int | None,
    new_head: bool | None,
    input_scale: str,
    dropout: float | None,
) -> keras.Model:
    """Rebuilds a user model with lrtech's input, input scale and head (module docstring).

    Args:
      model: the loaded or built model (not modified; the result shares its layers).
      flag: "--model=..." for messages.
      num_classes: number of logits.
      image_size: input size, or None for the model's (32 when its size is not fixed).
      new_head: replace the final Dense; None: when its width is not num_classes.
      input_scale: a key of `INPUT_SCALES`.
      dropout: dropout before a new head (None or 0: none).

    Raises:
      ValueError: several inputs or outputs, a non-image input, a non-square or other fixed
        size than `image_size`, outputs that are not (batch, classes), a width other than
        num_classes without a new head, a new head on a model whose output is not a Dense
        layer or that is subclassed, or dropout without a new head.
    """
    graph = _graph(model, flag)
    size = _input_size(graph, flag, image_size)
    dense, trailing, width = _classifier(graph, flag) if graph is not None else (None, [], None)
    new_head = _wants_new_head(flag, graph, dense, width, num_classes, new_head, dropout)
    mode = INPUT_SCALES[input_scale]
    if mode != "none" and graph is not None and "preprocess" in {x.name for x in graph.layers}:
        raise ValueError(
            f"{flag} already has a layer named preprocess (an lrtech export?); "
            "use --input_scale=raw"
        )
    image = keras.Input((size, size, 3), dtype="float32", name="image")
    x = _scaled(image, mode)
    if graph is None:
        return keras.Model(image, model(x), name=model.name)

    head = _head(num_classes, dropout) if new_head else None
    logits = _logits_dense(dense) if dense is not None and not new_head else None
    softmax_on_dense = dense is not None and getattr(dense.activation, "__name__", "") == "softmax"

    def call(layer, *args, **kwargs):
        args, kwargs = keras.tree.map_structure(lambda a: x if a is image else a, (args, kwargs))
        if layer is dense and head is not None:
            return head(*args)
        if layer is dense and softmax_on_dense:
            out = logits(*args, **kwargs)
            logits.set_weights(dense.get_weights())
            return out
        if any(layer is t for t in trailing):
            return args[0]  # drop the softmax: the model outputs logits
        return layer(*args, **kwargs)

    rebuilt = keras.models.clone_model(
        graph, input_tensors=image, clone_function=lambda layer: layer, call_function=call
    )
    return keras.Model(image, rebuilt.output, name=model.name)


def _wants_new_head(flag, graph, dense, width, num_classes, new_head, dropout) -> bool:
    if new_head is None:
        new_head = width is not None and width != num_classes
    if not new_head and width is not None and width != num_classes:
        raise ValueError(
            f"{flag}: outputs {width} classes, not --num_classes={num_classes}; pass --new_head"
        )
    if new_head and dense is None:
        what = "it is a subclassed model" if graph is None else "its output is not a Dense layer"
        raise ValueError(f"{flag}: --new_head replaces the final Dense classifier, but {what}")
    if dropout and not new_head:
        raise ValueError(f"dropout={dropout} applies to a new head; pass --new_head or drop it")
    return new_head


def _scaled(image: keras.KerasTensor, mode: str) -> keras.KerasTensor:
    """`image` through the built-in layer of an ImagePreprocess mode (none: unchanged)."""
    if mode == "none":
        return image
    preprocess = builtin_preprocess(mode, name="preprocess")
    x = preprocess(image)
    if builtin_preprocess_weights(mode) is not None:
        preprocess.set_weights(builtin_preprocess_weights(mode))
    return x


def _units(model) -> list:
    """Layers in order, nested models walked, other layers (with sublayers or not) as units."""
    out = []
    for layer in model.layers:
        out.extend(_units(layer) if isinstance(layer, keras.Model) else [layer])
    return out


def _weighted(layer) -> bool:
    # Trainable weights; a frozen layer's are not listed as trainable but count too.
    return bool(layer.weights) and (bool(layer.trainable_weights) or not layer.trainable)


def _segment_starts(units: list) -> list[int]:
    """Unit indices where a segment may start: block starts if the names show a known family
    (`models.blocks`), else weighted layers that are not a normalization (which belongs with
    the convolution before it); names used twice (nested models may repeat them) excluded."""
    names = [layer.name for layer in units]
    try:
        ids = blocks.block_ids(names)
        starts = [i for i in range(1, len(ids)) if ids[i] != ids[i - 1]]
    except ValueError:  # no known family
        starts = [
            i
            for i, layer in enumerate(units)
            if _weighted(layer) and "Normalization" not in type(layer).__name__
        ]
    return [i for i in starts if i > 0 and names.count(names[i]) == 1]


def split_presets(model: keras.Model) -> dict[str, tuple[str, ...]]:
    """Split presets of a user model: ``default`` (thirds + head) and ``head`` (body / head).

    Each body split starts at the possible segment start (`_segment_starts`: a block start
    for a known family such as a keras.applications backbone inside the model, else a
    weighted layer) nearest to the weighted layer one third, then two thirds, of the way
    through the body's weighted layers. A model with fewer than 3 weighted layers below its
    head gets body / head as ``default`` too.

    Raises:
      ValueError: the model has no trainable weights.
    """
    units = _units(model)
    weighted = [i for i, layer in enumerate(units) if _weighted(layer)]
    if not weighted:
        raise ValueError(f"--split_at=preset: model {model.name!r} has no trainable weights")
    head, body = weighted[-1], weighted[:-1]
    starts = _segment_starts(units)
    thirds = []
    for k in (1, 2):
        target = max(len(body) * k // 3, 1)  # position among the weighted layers
        after = thirds[-1] if thirds else 0
        fits = [i for i in starts if after < i < head]
        if fits and len(body) >= 3:
            # The nearest start counted in weighted layers before it, the later one on a tie.
            position = {i: sum(w < i for w in body) for i in fits}
            thirds.append(min(fits, key=lambda i: (abs(position[i] - target), -i)))
    if len(thirds) < 2:
        thirds = []
    return {
        "default": tuple(units[i].name for i in (*thirds, head)),
        "head": (units[head].name,),
    }
