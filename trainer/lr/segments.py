"""Layer segments: split a model's layers at `split_at` points into contiguous segments.

Each segment gets its own learning-rate multiplier (see `trainer.lr.optimizers.segmented`) and
can be frozen as a unit (`freeze`). Layers are numbered in the model's *flattened* order:

* A layer with sublayers (a nested `keras.Model`, a keras.applications backbone used as one
  layer, a custom residual block) is expanded depth-first, in the order of `model.layers`
  for models and of the tracked sublayers for other layers, so split points can fall inside
  it. The container itself gets no index unless it owns variables directly (`add_weight` on
  the container); then it is listed just before its sublayers, and owns only those variables.
* Numbering follows `model.layers`, so a functional model's `InputLayer` is layer 0 (as in
  keras.applications models) and a Sequential model's layers start at 0 with its first
  real layer.
* A variable belongs to the layer that owns it *directly* (created it with `add_weight`):
  `layer.weights` minus its sublayers' weights. A layer reached twice (shared between a nested
  model and its parent) is listed at both positions.

`split_at` entries are layer indices or names, mixed (strings of digits are indices, so
"10,conv4_block1_1_conv" works); n split points give n + 1 segments and split point p makes
layer p the first layer of the next segment. A container's name means its first layer.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Sequence

import keras
import numpy as np

from trainer.errors import UserError
from trainer.lr import keras_private


@dataclasses.dataclass(frozen=True)
class LayerRow:
    """One line of the layer table.

    Attributes:
        index: Position in the flattened layer order (what `split_at` indices refer to).
        name: `layer.name`.
        scope: Names of the enclosing containers joined by "/" ("" at the top level).
        type: Class name of the layer.
        params: Number of scalars in the variables the layer owns directly.
        trainable_params: The part of `params` that can be trained (BN statistics are not).
        segment: Segment index of the layer.
    """

    index: int
    name: str
    scope: str
    type: str
    params: int
    trainable_params: int
    segment: int


@dataclasses.dataclass
class _Flat:
    layers: list  # flattened layers
    scopes: list[str]
    first_index: dict[str, list[int]]  # layer name -> first flattened index of each occurrence


def _sublayers(layer) -> list:
    if isinstance(layer, keras.Model):
        return list(layer.layers)
    return keras_private.tracked_sublayers(layer)


def _direct_variables(layer) -> list:
    inside = {id(w) for sublayer in _sublayers(layer) for w in sublayer.weights}
    return [w for w in layer.weights if id(w) not in inside]


def _created_trainable(layer) -> list:
    # Created trainable, frozen or not: `layer.trainable_weights` is empty while frozen.
    return keras_private.created_trainable_variables(layer)


def _size(variables) -> int:
    return int(sum(np.prod(v.shape, dtype=np.int64) for v in variables))


def _flatten(model) -> _Flat:
    flat = _Flat([], [], {})

    def walk(layer, scope, is_root):
        children = _sublayers(layer)
        start = len(flat.layers)
        if not children or _direct_variables(layer):
            flat.layers.append(layer)
            flat.scopes.append(scope)
        child_scope = scope if is_root else "/".join(s for s in (scope, layer.name) if s)
        for child in children:
            walk(child, child_scope, False)
        if not is_root and len(flat.layers) > start:
            flat.first_index.setdefault(layer.name, []).append(start)

    walk(model, "", True)
    return flat


def flatten_layers(model) -> list:
    """Returns the model's layers in flattened order (see the module docstring).

    Args:
        model: A built `keras.Model` (or layer).

    Returns:
        The list of layers; position i is layer index i of `split_at`.
    """
    return _flatten(model).layers


def _close_names(name, flat, limit=5) -> str:
    names = list(flat.first_index)

    def score(candidate):
        # Also compare with the candidate's prefix: "conv4_blok1" should find conv4_block1_*.
        whole = difflib.SequenceMatcher(None, name, candidate).ratio()
        prefix = difflib.SequenceMatcher(None, name, candidate[: len(name)]).ratio()
        return max(whole, prefix)

    scored = sorted(((score(c), i) for i, c in enumerate(names)), key=lambda t: (-t[0], t[1]))
    close = [names[i] for s, i in scored[:limit] if s >= 0.6]
    if close:
        return "close matches: " + ", ".join(close)
    return "layers include: " + ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")


def _resolve_one(entry, flat) -> int:
    last = len(flat.layers) - 1
    if isinstance(entry, str) and entry.strip().lstrip("-").isdigit():
        entry = int(entry.strip())
    if isinstance(entry, (int, np.integer)) and not isinstance(entry, bool):
        if not 1 <= entry <= last:
            raise UserError(f"split_at index {entry} out of range [1, {last}]")
        return int(entry)
    if not isinstance(entry, str):
        raise UserError(f"split_at: {entry!r} is neither a layer index nor a layer name")
    name = entry.strip()
    positions = flat.first_index.get(name)
    if not positions:
        raise UserError(f"split_at: no layer named {name!r}; {_close_names(name, flat)}")
    if len(set(positions)) > 1:
        raise UserError(
            f"split_at: layer name {name!r} is ambiguous (indices {sorted(set(positions))});"
            " give an index instead"
        )
    if positions[0] == 0:
        raise UserError(f"split_at: {name!r} is layer 0; a split point must be in [1, {last}]")
    return positions[0]


def _resolve(split_at, flat) -> list[int]:
    if split_at is None:
        return []
    if isinstance(split_at, str):
        split_at = [s for s in split_at.split(",") if s.strip()]
    split_at = list(split_at)
    points = [_resolve_one(entry, flat) for entry in split_at]
    for i in range(1, len(points)):
        entry, point, prev = split_at[i], points[i], points[i - 1]
        if point == prev:
            raise UserError(
                f"split_at: {entry!r} repeats split point {point} ({flat.layers[point].name})"
            )
        if point < prev:
            raise UserError(
                f"split_at must be strictly increasing; {entry!r} (layer {point}) comes after"
                f" layer {prev} in {list(split_at)}"
            )
    return points


def _segments_of(num_layers, points) -> list[int]:
    bounds = [*points, num_layers]
    out, segment = [], 0
    for i in range(num_layers):
        while i >= bounds[segment]:
            segment += 1
        out.append(segment)
    return out


def layer_segments(model, split_at: Sequence[int | str] | str | None) -> list[int]:
    """Returns the segment index of every layer in flattened order.

    Args:
        model: A built `keras.Model`.
        split_at: Split points (indices and/or names, strictly increasing), or a
            comma-separated string of them.

    Returns:
        A list as long as `flatten_layers(model)`, non-decreasing from 0 to len(split_at).

    Raises:
        UserError: A split point is out of range, unknown, ambiguous, repeated or out of order.
    """
    flat = _flatten(model)
    return _segments_of(len(flat.layers), _resolve(split_at, flat))


def assign(model, split_at: Sequence[int | str] | str | None) -> dict[str, int]:
    """Maps every variable that can be trained to its segment.

    "Can be trained" means: created as trainable by its layer, whether or not the layer is
    frozen at the moment (`layer.trainable = False`). So the answer does not change when
    `freeze` or the user freezes layers; non-trainable state (BatchNorm moving statistics,
    seeds) is not included.

    Args:
        model: A built `keras.Model`.
        split_at: Split points, as for `layer_segments`.

    Returns:
        `{variable.path: segment}` for every such variable.

    Raises:
        UserError: Bad split points (see `layer_segments`), a segment without trainable
            variables, or a variable owned by layers in two different segments.
    """
    flat = _flatten(model)
    segments = _segments_of(len(flat.layers), _resolve(split_at, flat))
    owner = {}  # id(variable) -> (variable, segment, layer index)
    for index, (layer, segment) in enumerate(zip(flat.layers, segments)):
        for v in _created_trainable(layer):
            if id(v) in owner and owner[id(v)][1] != segment:
                _, other_segment, other = owner[id(v)]
                raise UserError(
                    f"split_at: variable {v.path} is shared by layer {other}"
                    f" ({flat.layers[other].name}, segment {other_segment}) and layer {index}"
                    f" ({layer.name}, segment {segment}); keep them in one segment"
                )
            owner.setdefault(id(v), (v, segment, index))
    if not owner:
        raise UserError(f"model {model.name!r} has no trainable variables; build it first")
    segment_of, path_owner = {}, {}
    for v, segment, _ in owner.values():
        if path_owner.setdefault(v.path, id(v)) != id(v):
            raise UserError(f"split_at: two variables share the path {v.path!r}; rename a layer")
        segment_of[v.path] = segment
    _check_nonempty(flat, segments, set(segment_of.values()))
    return segment_of


def _check_nonempty(flat, segments, used):
    for segment in range(segments[-1] + 1):
        if segment not in used:
            rows = [i for i, s in enumerate(segments) if s == segment]
            names = ", ".join(flat.layers[i].name for i in rows[:4])
            raise UserError(
                f"split_at: segment {segment} (layers {rows[0]}-{rows[-1]}: {names}"
                f"{', ...' if len(rows) > 4 else ''}) has no trainable variables"
            )


def freeze(model, split_at, first_trainable_segment: int, *, train_bn: bool = False) -> list:
    """Freezes segments `< first_trainable_segment` and unfreezes the others.

    Sets `layer.trainable` on every flattened layer (after `model.trainable = True`), so this
    function owns the trainable flags of the model. Frozen BatchNormalization layers run in
    inference mode (the Keras 3 rule for `trainable=False`): their moving statistics stay put.
    With `train_bn` (fastai's `Learner(train_bn=True)`) the BatchNormalization layers of frozen
    segments stay trainable: their scale and offset train and their statistics follow the
    data; every other frozen weight stays put. Retrace any compiled step after calling it.

    Args:
        model: A built `keras.Model`.
        split_at: Split points, as for `layer_segments`.
        first_trainable_segment: K; segments 0..K-1 are frozen. 0 unfreezes everything.
        train_bn: Keep the BatchNormalization layers of frozen segments training.

    Returns:
        `model.trainable_variables` after the change: the variables to differentiate.

    Raises:
        UserError: Bad split points, or K outside [0, number of segments - 1].
    """
    assign(model, split_at)  # validates, including shared variables across segments
    segments = layer_segments(model, split_at)
    num_segments = segments[-1] + 1
    k = first_trainable_segment
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k < num_segments:
        raise UserError(f"freeze_segments={k!r} out of range [0, {num_segments - 1}]")
    model.trainable = True
    # Pre-order: a container with its own variables comes before its sublayers, so setting the
    # sublayers afterwards overrides what the container's setter propagated to them.
    for layer, segment in zip(flatten_layers(model), segments):
        bn = train_bn and isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = segment >= k or bn
    return list(model.trainable_variables)


def layer_rows(model, split_at) -> list[LayerRow]:
    """Returns one `LayerRow` per flattened layer."""
    flat = _flatten(model)
    segments = _segments_of(len(flat.layers), _resolve(split_at, flat))
    return [
        LayerRow(
            index=i,
            name=layer.name,
            scope=scope,
            type=type(layer).__name__,
            params=_size(_direct_variables(layer)),
            trainable_params=_size(_created_trainable(layer)),
            segment=segment,
        )
        for i, (layer, scope, segment) in enumerate(zip(flat.layers, flat.scopes, segments))
    ]


def format_layer_table(model, split_at, lr_mults=None, base_lr=None) -> str:
    """Formats every layer, then one summary line per segment (for `--list_layers`).

    Args:
        model: A built `keras.Model`.
        split_at: Split points, as for `layer_segments`.
        lr_mults: Optional multiplier per segment (shown per layer too).
        base_lr: Optional peak learning rate of the head that the multipliers scale.

    Returns:
        The table as one string (no trailing newline).
    """
    rows = layer_rows(model, split_at)
    width = max([len(r.scope + "/" + r.name) for r in rows] + [10])

    def mult_of(segment):
        return lr_mults[segment] if lr_mults is not None and segment < len(lr_mults) else None

    header = f"{'index':>5}  {'layer':<{width}}  {'type':<22} {'params':>10}  segment"
    lines = [header + ("  lr_mult" if lr_mults is not None else "")]
    for r in rows:
        name = f"{r.scope}/{r.name}" if r.scope else r.name
        line = f"{r.index:>5}  {name:<{width}}  {r.type:<22} {r.params:>10}  {r.segment:>7}"
        mult = mult_of(r.segment)
        if mult is not None and r.trainable_params:
            line += f"  {mult:.4g}"
        lines.append(line)
    lines += ["", "segment  layers       #layers  trainable params  lr_mult   peak lr"]
    for s in range(rows[-1].segment + 1):
        mine = [r for r in rows if r.segment == s]
        mult = mult_of(s)
        lr = mult * float(base_lr) if mult is not None and base_lr is not None else None
        lines.append(
            f"{s:>7}  {f'{mine[0].index}-{mine[-1].index}':<12} {len(mine):>7}"
            f"  {sum(r.trainable_params for r in mine):>16}"
            f"  {'-' if mult is None else f'{mult:.4g}':<8}  {'-' if lr is None else f'{lr:.4g}'}"
        )
    return "\n".join(lines)
