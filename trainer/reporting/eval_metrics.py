"""The evaluation metrics, defined once: per-example loss, prediction and top-5, and the record.

Used by the compiled evaluation loop (`trainer.loop.compiled.EvalLoop`), by interpretation
(`trainer.reporting.interpret.analyze`) and by the snapshot ensemble
(`trainer.averaging.ensemble`), so every `loss`/`accuracy`/`top5` lrtech reports means the same:

* loss: mean sparse categorical cross-entropy of the true class (from logits; an ensemble's
  from its mean probability);
* accuracy: the share of examples whose argmax is the label;
* top5: the share whose label is among the 5 highest (ties at the boundary count, as
  `tf.math.in_top_k`); reported only above 5 classes.

Sums are taken in float64 and divided by the true example count at the end, so a last
partial batch weighs exactly the examples it holds.
"""

from __future__ import annotations

TOP_K = 5


def top_k_of(num_classes: int) -> int:
    """5 above 5 classes, else 0 (no top-5: it would always be 1)."""
    return TOP_K if num_classes > TOP_K else 0


def per_example(logits, labels, top_k: int):
    """(loss [b] float32, predicted [b] int32, in top-k [b] bool) from logits [b, K]."""
    import keras  # here: the commands import this module before TensorFlow is configured
    import tensorflow as tf

    logits = tf.cast(logits, tf.float32)
    labels = tf.cast(labels, tf.int32)
    loss = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
    predicted = tf.argmax(logits, -1, output_type=tf.int32)
    if top_k:
        top = tf.math.in_top_k(labels, logits, top_k)
    else:
        top = tf.zeros_like(labels, tf.bool)
    return loss, predicted, top


def batch_sums(loss, predicted, top, labels):
    """[loss sum, correct, in top-k, count] of one batch, float64."""
    import tensorflow as tf

    labels = tf.cast(labels, tf.int32)
    return tf.stack(
        [
            tf.reduce_sum(tf.cast(loss, tf.float64)),
            tf.reduce_sum(tf.cast(tf.equal(predicted, labels), tf.float64)),
            tf.reduce_sum(tf.cast(top, tf.float64)),
            tf.cast(tf.size(labels), tf.float64),
        ]
    )


def record(loss_sum: float, correct: float, top_sum: float, count: float, top_k: int) -> dict:
    """The reported record: `loss`, `accuracy`, `examples` (and `top5` with top_k)."""
    total = max(float(count), 1.0)
    out = {
        "loss": float(loss_sum) / total if count else 0.0,
        "accuracy": float(correct) / total if count else 0.0,
        "examples": int(count),
    }
    if top_k:
        out["top5"] = float(top_sum) / total if count else 0.0
    return out
