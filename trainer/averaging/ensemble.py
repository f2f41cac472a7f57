"""Snapshot ensembles: the averaged softmax of weights saved at SGDR restarts (the library).

Huang et al., "Snapshot Ensembles: Train 1, get M for free" (ICLR 2017): the weights at the
end of each cycle of a restarting schedule are M different models; averaging their predicted
probabilities usually beats the last one alone. A run trained with `--snapshot_at_restarts`
keeps them as DIR/snapshots/cycle_K.weights.h5 (`trainer.loop.actions.Snapshot`).

    result = ensemble_evaluate(strategy, model, paths, dataset_fn, num_classes)

One model's weights are in memory at a time, plus an [N, C] sum of probabilities. The
command is `trainer.tools.ensemble` (`python -m trainer.ensemble`).

A damaged snapshot follows the checkpoint rule (`trainer.run_dir.checkpoints`): it is
verified on read (`snapshot_problem` opens it with h5py; `ensemble_evaluate` loads it inside
a try), moved to snapshots/broken/ with one log line (`set_aside`), and the ensemble goes on
without it, saying it has fewer members. It never stops training or the command with a
traceback; with no member left, the command says so in one line and training logs it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import numpy as np
from absl import logging

from trainer import layout
from trainer.errors import UserError
from trainer.loop import state
from trainer.reporting import eval_metrics
from trainer.run_dir import faults
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

    def _pass(self, iterator):
        tf, strategy = self._tf, self.strategy
        probabilities = tf.TensorArray(tf.float64, size=0, dynamic_size=True, infer_shape=False)
        labels = tf.TensorArray(tf.int64, size=0, dynamic_size=True, infer_shape=False)
        i = tf.constant(0)
        for batch in iterator:
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
        from trainer.loop.strategy import pass_iterator

        probabilities, labels = self._fn(pass_iterator(dataset))
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
    strategy,
    model,
    weight_sources,
    dataset_fn,
    num_classes: int,
    *,
    return_probabilities=False,
    on_unreadable: Callable[[object, str], None] | None = None,
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
        on_unreadable: `on_unreadable(source, reason)` for a member whose weights do not
            load (e.g. `set_aside` and a log line for a run's snapshot): it is left out and
            the ensemble goes on with fewer members. None: the loading error propagates.

    Returns:
        The ensemble's `loss`, `accuracy`, `examples` (and `top5`), `members` (M, those
        that loaded) and `per_member`: each member's `source` and metrics; with members
        left out, `unreadable`: their sources.

    Raises:
        ValueError: No sources, an empty split, or an eval split whose order changed
            between passes.
        UserError: No member loaded (with `on_unreadable`).
    """
    sources = list(weight_sources)
    if not sources:
        raise ValueError("ensemble_evaluate needs at least one weight source; received none")
    dataset = dataset_fn()
    predict = _ProbabilityPass(strategy, model)
    total, labels, per_member, unreadable = None, None, [], []
    with state.restored(model.weights):
        for source in sources:
            faults.point("ensemble")  # crash tests: a kill during the ensemble evaluation
            try:
                load_weights(model, source)
            except Exception as e:  # noqa: BLE001  (h5py OSError, Keras ValueError, ...)
                if on_unreadable is None:
                    raise
                unreadable.append(_name(source))
                on_unreadable(source, _one_line(e))
                continue
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
    if not per_member:
        raise UserError(
            f"no ensemble: none of the {len(sources)} members loaded ({', '.join(unreadable)})"
        )
    mean = total / len(per_member)
    out = metrics_from_probabilities(mean, labels, num_classes)
    out.update(members=len(per_member), per_member=per_member)
    if unreadable:
        out["unreadable"] = unreadable
    if return_probabilities:
        out.update(probabilities=mean, labels=labels)
    return out


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


# Finding the snapshots (no TensorFlow) ----------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Snapshot:
    cycle: int
    path: str


def _gfile():
    from trainer import runtime

    return runtime.import_tensorflow().io.gfile


def _listdir(path: str) -> list[str] | None:
    if run_dir.is_local(path):
        return os.listdir(path) if os.path.isdir(path) else None
    gfile = _gfile()
    return gfile.listdir(path) if gfile.isdir(path) else None


def find_snapshots(model_dir: str) -> list[Snapshot]:
    """DIR/snapshots/cycle_K.weights.h5, sorted by K (temporary files of a write are not).

    Names only: `check_snapshots` verifies them (`select_snapshots` does both).
    """
    directory = os.path.join(model_dir, SNAPSHOT_DIR)
    found = ((layout.snapshot_cycle(n), n) for n in (_listdir(directory) or []))
    return sorted(
        (Snapshot(k, os.path.join(directory, n)) for k, n in found if k is not None),
        key=lambda s: s.cycle,
    )


def snapshot_problem(path: str) -> str | None:
    """Why the snapshot at `path` cannot be read, or None when h5py opens it.

    Opening checks the HDF5 superblock and the file's recorded length, so a truncated,
    garbage or empty file is caught here; damage inside a whole file shows when the weights
    are loaded (`ensemble_evaluate(..., on_unreadable=...)`). Remote paths are only checked
    to exist as a file.
    """
    if not run_dir.is_local(path):
        gfile = _gfile()
        if not gfile.exists(path):
            return "missing"
        return "a directory, not a weights file" if gfile.isdir(path) else None
    if not os.path.lexists(path):
        return "missing"
    if os.path.isdir(path):
        return "a directory, not a weights file"
    try:
        if os.path.getsize(path) == 0:
            return "empty (0 bytes)"
        import h5py

        with h5py.File(path, "r"):
            pass
    except Exception as e:  # noqa: BLE001  (h5py raises OSError, also for a dangling link)
        return _one_line(e)
    return None


def set_aside(path: str, reason: str) -> str:
    """Moves the damaged snapshot `path` to snapshots/broken/ (never deletes it).

    Returns:
        The one log line that says so (also when it could not be moved, e.g. a read-only
        run directory: then it stays where it is, and is still left out).
    """
    directory = os.path.join(os.path.dirname(path), layout.BROKEN_DIR)
    base = os.path.join(directory, os.path.basename(path))
    try:
        local = run_dir.is_local(path)
        exists = os.path.lexists if local else _gfile().exists
        if local:
            os.makedirs(directory, exist_ok=True)
        else:
            _gfile().makedirs(directory)
        target, n = base, 0
        while exists(target):  # an earlier damaged copy of the same cycle stays too
            n += 1
            target = f"{base}.{n}"
        if local:
            os.rename(path, target)
        else:
            _gfile().rename(path, target)
    except Exception as e:  # noqa: BLE001  (OSError, or TensorFlow's errors for gs://)
        return f"Snapshot {path} is unreadable ({reason}); left out (not moved: {_one_line(e)})"
    return f"Snapshot {path} is unreadable ({reason}); left out, moved to {target}"


def check_snapshots(snapshots: list[Snapshot]) -> tuple[list[Snapshot], list[str]]:
    """(the readable snapshots, one line per other one); damaged ones are set aside.

    A missing snapshot is named, not moved.
    """
    readable, lines = [], []
    for snapshot in snapshots:
        problem = snapshot_problem(snapshot.path)
        if problem is None:
            readable.append(snapshot)
        elif problem == "missing":
            lines.append(f"Snapshot {snapshot.path} is missing; left out")
        else:
            lines.append(set_aside(snapshot.path, problem))
    return readable, lines


def select_snapshots(model_dir: str, count: int | None) -> list[Snapshot]:
    """The last `count` readable snapshots by cycle (all when None).

    Damaged snapshots are moved to snapshots/broken/ with one warning each, and left out.

    Raises:
        UserError: No snapshot, none readable (each named), count < 1, or more than there
            are readable.
    """
    if count is not None and count < 1:
        raise UserError(f"--snapshots={count}: must be at least 1")
    found = find_snapshots(model_dir)
    directory = os.path.join(model_dir, SNAPSHOT_DIR)
    if not found:
        raise UserError(
            f"--model_dir={model_dir}: no snapshots (no cycle_K.weights.h5 in {directory}); "
            "train with --snapshot_at_restarts"
        )
    snapshots, broken = check_snapshots(found)
    if not snapshots:
        raise UserError(f"--model_dir={model_dir}: no readable snapshot: " + "; ".join(broken))
    for line in broken:
        logging.warning("%s", line)
    if count is None:
        return snapshots
    if count > len(snapshots):
        cycles = ", ".join(f"cycle_{s.cycle}" for s in snapshots)
        readable = " readable" if broken else ""
        raise UserError(
            f"--snapshots={count}: {directory} holds only {len(snapshots)}{readable} snapshots "
            f"({cycles})"
        )
    return snapshots[-count:]
