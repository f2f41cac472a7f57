"""Auto-RGN (Lee et al., "Surgical Fine-Tuning", ICLR 2023): per-variable learning-rate
multipliers chosen at every step from relative gradient norms.

RGN_i = ||g_i|| / (||w_i|| + eps); m_i = max(floor, RGN_i / max_j RGN_j), from the aggregated
(all-reduced, unscaled, clipped) gradients, inside the compiled step: one norm per variable.
"layer" granularity takes one RGN per layer (norms over all of its variables). The segmented
optimizer (`trainer.lr.optimizers.segmented(..., adaptive="rgn")`) multiplies each variable's
rate (and decoupled weight decay) by m_i; the multipliers are held in an uncheckpointed
variable, so a resumed run stays bitwise equal.
"""

from __future__ import annotations

import math
import numbers

import tensorflow as tf

from trainer.errors import UserError
from trainer.lr import keras_private

ADAPTIVE = ("rgn",)
GRANULARITIES = ("tensor", "layer")
# Guards RGN's division for an all-zero weight (a fresh bias). Such a variable's RGN is
# ||g|| / eps, far above every other: see `segmented` on zero-initialized variables.
RGN_EPSILON = 1e-12


def multipliers(table, grads_and_vars, optimizer):
    """m_i of every built variable (NaN for those without a gradient in this step)."""
    indices, grad_sq, weight_sq = [], [], []
    for grad, variable in grads_and_vars:
        if grad is None:
            continue
        indices.append(keras_private.variable_index(optimizer, variable))
        grad_sq.append(_squared_norm(grad))
        weight_sq.append(_squared_norm(variable))
    # Groups among this step's variables, numbered 0..k-1 in order of first appearance.
    local = {}
    group_ids = [local.setdefault(table.groups[i], len(local)) for i in indices]
    grad_sq, weight_sq = tf.stack(grad_sq), tf.stack(weight_sq)
    if len(local) < len(indices):  # "layer": norms over all of the layer's variables
        grad_sq = tf.math.unsorted_segment_sum(grad_sq, group_ids, len(local))
        weight_sq = tf.math.unsorted_segment_sum(weight_sq, group_ids, len(local))
    rgn = tf.sqrt(grad_sq) / (tf.sqrt(weight_sq) + RGN_EPSILON)
    top = tf.reduce_max(rgn)
    mults = tf.maximum(tf.constant(table.adaptive_floor, tf.float32), rgn / top)
    # All gradients zero: no variable stands out, so none is slowed down.
    mults = tf.where(top > 0, mults, tf.ones_like(mults))
    if len(local) < len(indices):
        mults = tf.gather(mults, group_ids)
    unset = tf.fill([len(table.mults)], tf.constant(math.nan, tf.float32))
    return tf.tensor_scatter_nd_update(unset, [[i] for i in indices], mults)


def segment_means(table) -> list[float]:
    """The mean multiplier of each segment's variables updated in the last step (0.0 if none)."""
    sums, counts = [0.0] * len(table.lr_mults), [0] * len(table.lr_mults)
    if table.adaptive_mults is not None:
        for segment, m in zip(table.segments, table.adaptive_mults.numpy().tolist()):
            if not math.isnan(m):
                sums[segment] += m
                counts[segment] += 1
    return [total / count if count else 0.0 for total, count in zip(sums, counts)]


def _squared_norm(x):
    """Sum of squares in float32; an IndexedSlices gradient's duplicate indices summed first."""
    if isinstance(x, tf.IndexedSlices):
        unique, position = tf.unique(x.indices)
        x = tf.math.unsorted_segment_sum(x.values, position, tf.size(unique))
    return tf.reduce_sum(tf.square(tf.cast(x, tf.float32)))


def _layer_of(path: str) -> str:
    """The layer part of a Keras variable path ("net/dense/kernel" -> "net/dense")."""
    return path.rsplit("/", 1)[0]


def build(table, variables):
    if table.adaptive_granularity == "layer":
        layers = {}
        table.groups = [layers.setdefault(_layer_of(v.path), len(layers)) for v in variables]
    else:
        table.groups = list(range(len(variables)))
    # Lifted out of any tf.function (Keras may build inside the first traced step); under
    # a strategy's scope it is mirrored. ONLY_FIRST_REPLICA allows the write in replica
    # context.
    with tf.init_scope():
        table.adaptive_mults = tf.Variable(
            tf.fill([len(variables)], math.nan),
            trainable=False,
            name="adaptive_multipliers",
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
        )


def check(adaptive, floor, granularity):
    # One line each, worded like Keras' own argument checks.
    if adaptive is not None and adaptive not in ADAPTIVE:
        choices = " or ".join(["None", *map(repr, ADAPTIVE)])
        raise UserError(f"Argument `adaptive` must be {choices}. Received: adaptive={adaptive!r}")
    if (
        isinstance(floor, bool)
        or not isinstance(floor, numbers.Real)
        or not (math.isfinite(floor) and 0 <= floor <= 1)
    ):
        raise UserError(
            f"Argument `adaptive_floor` must be in [0, 1]. Received: adaptive_floor={floor!r}"
        )
    if granularity not in GRANULARITIES:
        raise UserError(
            f"Argument `adaptive_granularity` must be {' or '.join(map(repr, GRANULARITIES))}. "
            f"Received: adaptive_granularity={granularity!r}"
        )
