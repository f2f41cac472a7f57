"""Snapshot ensembles: the averaged softmax of weights saved at SGDR restarts (the library).

Huang et al., "Snapshot Ensembles: Train 1, get M for free" (ICLR 2017): the weights at the
end of each cycle of a restarting schedule are M different models; averaging their predicted
probabilities usually beats the last one alone. A run trained with `--snapshot_at_restarts`
keeps them as DIR/snapshots/cycle_K.weights.h5 (`trainer.loop.actions.Snapshot`).

    result = ensemble_evaluate(strategy, model, paths, dataset_fn, num_classes)

One model's weights are in memory at a time, plus an [N, C] sum of probabilities. The
command is `trainer.tools.ensemble` (`python -m trainer.ensemble`).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from trainer import layout
from trainer.errors import UserError
from trainer.loop import state
from trainer.reporting import eval_metrics
from trainer.run_dir import files as run_dir

SNAPSHOT_DIR = layout.SNAPSHOT_DIR
# Only an underflow of the averaged probability to 0 is clipped (loss at most ~708).
EPSILON = float(np.finfo(np.float64).tiny)


# Evaluation ------------------------------------------------------------------------------


def metrics_from_probabilities(probabilities, labels, num_classes: int) -> dict:
    """Loss, accuracy (and top-5) of predicted class probabilities.

    Args:
        probabilities: [N, C] probabilities (rows sum to 1).
        labels: [N] integer labels.
        num_classes: Classes of the task (top-5 is reported above 5, as `EvalLoop` does).

    Returns:
        `loss` (mean negative log probability of the true class, clipped at `EPSILON`),
        `accuracy` (argmax), `examples` and, when num_classes > 5, `top5` (ties at the
        boundary count as in the top 5, as `tf.math.in_top_k`).
    """
    probabilities = np.asarray(probabilities, np.float64)
    labels = np.asarray(labels, np.int64)
    count = len(labels)
    true = probabilities[np.arange(count), labels]
    top_k = eval_metrics.top_k_of(num_classes)
    higher = np.sum(probabilities > true[:, None], axis=-1)
    return eval_metrics.record(
        np.sum(-np.log(np.maximum(true, EPSILON))),
        np.sum(np.argmax(probabilities, axis=-1) == labels),
        np.sum(higher < top_k) if top_k else 0.0,
        count,
        top_k,
    )


class _ProbabilityPass:
    """One compiled pass over a finite distributed dataset: softmax probabilities in order."""

    def __init__(self, strategy, model):
        import tensorflow as tf

        self.strategy = strategy
        self.model = model
        self._tf = tf
        self._fn = tf.function(self._pass)

    def _replica(self, images, labels):
        tf = self._tf
        logits = self.model(images, training=False)
        return tf.nn.softmax(tf.cast(logits, tf.float64)), tf.cast(labels, tf.int64)

    def _pass(self, dataset):
        tf, strategy = self._tf, self.strategy
        probabilities = tf.TensorArray(tf.float64, size=0, dynamic_size=True, infer_shape=False)
        labels = tf.TensorArray(tf.int64, size=0, dynamic_size=True, infer_shape=False)
        i = tf.constant(0)
        for batch in dataset:
            probs, y = strategy.run(self._replica, args=batch)
            # Replica r holds slice r of the global batch: gathered in replica order, the
            # rows are in dataset order (also an unevenly split last batch).
            probabilities = probabilities.write(i, strategy.gather(probs, axis=0))
            labels = labels.write(i, strategy.gather(y, axis=0))
            i += 1
        # concat() of no element fails: an empty split gives [0, 0] (reported by the caller).
        return tf.cond(
            i > 0,
            lambda: (probabilities.concat(), labels.concat()),
            lambda: (tf.zeros([0, 0], tf.float64), tf.zeros([0], tf.int64)),
        )

    def __call__(self, dataset):
        probabilities, labels = self._fn(dataset)
        return probabilities.numpy(), labels.numpy()


def load_weights(model, source) -> None:
    """Loads one ensemble member into `model`: a .weights.h5 path, or `source(model)`."""
    if callable(source):
        source(model)
    else:
        model.load_weights(os.fspath(source))


def _name(source) -> str:
    if callable(source):
        return getattr(source, "__name__", type(source).__name__)
    return os.fspath(source)


def ensemble_evaluate(
    strategy, model, weight_sources, dataset_fn, num_classes: int, *, return_probabilities=False
) -> dict:
    """Evaluates the snapshot ensemble of `weight_sources` on a finite eval split.

    For each source in turn its weights are loaded into `model` and one distributed pass
    computes every example's softmax probabilities; only their running sum over members
    (float64 [N, C], N examples in dataset order) is kept, so memory holds one model and
    that sum, never M models. The ensemble predicts the mean probability. The model's own
    weights are put back afterwards (also on error).

    Args:
        strategy: The strategy `model` was built under.
        model: A Keras model giving logits.
        weight_sources: The members: paths of .weights.h5 files (as the Snapshot action
            writes) or callables `source(model)` that load weights into the model.
        dataset_fn: `() -> distributed dataset` of (images, labels) over the eval split,
            once, in a fixed order (as for `trainer.loop.runner.Evaluator`); called once.
        num_classes: Classes of the task (top-5 is reported above 5).
        return_probabilities: Also return `probabilities` ([N, C] mean) and `labels`.

    Returns:
        The ensemble's `loss`, `accuracy`, `examples` (and `top5`), `members` (M) and
        `per_member`: each member's `source` and metrics.

    Raises:
        ValueError: No sources, an empty split, or an eval split whose order changed
            between passes.
    """
    sources = list(weight_sources)
    if not sources:
        raise ValueError("ensemble_evaluate needs at least one weight source; received none")
    dataset = dataset_fn()
    predict = _ProbabilityPass(strategy, model)
    total, labels, per_member = None, None, []
    with state.restored(model.weights):
        for source in sources:
            load_weights(model, source)
            probabilities, y = predict(dataset)
            if labels is None:
                if not len(y):
                    raise ValueError("ensemble_evaluate: the eval split holds no example")
                total, labels = np.zeros(probabilities.shape, np.float64), y
            elif not np.array_equal(y, labels):
                raise ValueError(
                    "ensemble_evaluate: the eval split came in another order for "
                    f"{_name(source)}; dataset_fn must give a fixed order"
                )
            total += probabilities
            member = metrics_from_probabilities(probabilities, labels, num_classes)
            member.pop("examples")
            per_member.append({"source": _name(source), **member})
    mean = total / len(sources)
    out = metrics_from_probabilities(mean, labels, num_classes)
    out.update(members=len(sources), per_member=per_member)
    if return_probabilities:
        out.update(probabilities=mean, labels=labels)
    return out


# Finding the snapshots (no TensorFlow) ----------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Snapshot:
    cycle: int
    path: str


def _listdir(path: str) -> list[str] | None:
    if run_dir.is_local(path):
        return os.listdir(path) if os.path.isdir(path) else None
    from trainer import runtime

    tf = runtime.import_tensorflow()
    return tf.io.gfile.listdir(path) if tf.io.gfile.isdir(path) else None


def find_snapshots(model_dir: str) -> list[Snapshot]:
    """DIR/snapshots/cycle_K.weights.h5, sorted by K (temporary files of a write are not)."""
    directory = os.path.join(model_dir, SNAPSHOT_DIR)
    found = ((layout.snapshot_cycle(n), n) for n in (_listdir(directory) or []))
    return sorted(
        (Snapshot(k, os.path.join(directory, n)) for k, n in found if k is not None),
        key=lambda s: s.cycle,
    )


def select_snapshots(model_dir: str, count: int | None) -> list[Snapshot]:
    """The last `count` snapshots by cycle (all when None).

    Raises:
        UserError: No snapshot, count < 1, or more than there are.
    """
    snapshots = find_snapshots(model_dir)
    directory = os.path.join(model_dir, SNAPSHOT_DIR)
    if not snapshots:
        raise UserError(
            f"--model_dir={model_dir}: no snapshots (no cycle_K.weights.h5 in {directory}); "
            "train with --snapshot_at_restarts"
        )
    if count is None:
        return snapshots
    if count < 1:
        raise UserError(f"--snapshots={count}: must be at least 1")
    if count > len(snapshots):
        cycles = ", ".join(f"cycle_{s.cycle}" for s in snapshots)
        raise UserError(
            f"--snapshots={count}: {directory} holds only {len(snapshots)} snapshots ({cycles})"
        )
    return snapshots[-count:]
