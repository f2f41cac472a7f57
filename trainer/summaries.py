"""What a run reports: a per-epoch progress bar, log lines, TensorBoard, metrics.json.

TensorBoard scalars go to model_dir/tensorboard/{train,eval}; only the chief writes (the other
workers get no-op writers). The progress bar updates in place on a terminal and prints one line
per epoch otherwise (logs stay readable).
"""

from __future__ import annotations

import json
import os
import sys

import keras
import tensorflow as tf
from absl import logging
from tensorflow.core.framework import summary_pb2

from trainer import run_dir


def _scalar_metadata():
    # What tensorboard's scalar plugin writes; `tf.summary.scalar` itself needs the tensorboard
    # package, which a training machine need not have.
    metadata = summary_pb2.SummaryMetadata()
    metadata.plugin_data.plugin_name = "scalars"
    return metadata


class Progress:
    """A `keras.utils.Progbar` per epoch showing loss, accuracy, head lr, images/sec, ETA.

    Args:
        steps_per_epoch: Steps in one epoch (the bar's target).
        enabled: False prints nothing.
    """

    def __init__(self, steps_per_epoch: int, enabled: bool = True):
        self.steps_per_epoch = steps_per_epoch
        self.enabled = enabled
        self._bar = None
        self._epoch = None
        self._seen = 0

    def update(self, step: int, values: dict[str, float]) -> None:
        """Shows the state after global step `step` (values: name -> number)."""
        if not self.enabled:
            return
        epoch, position = divmod(step - 1, self.steps_per_epoch)
        if epoch != self._epoch:
            self._epoch = epoch
            print(f"Epoch {epoch + 1}", flush=True)
            verbose = 1 if sys.stdout.isatty() else 2
            self._bar = keras.utils.Progbar(
                self.steps_per_epoch, verbose=verbose, stateful_metrics=list(values)
            )
        self._seen = position + 1
        self._bar.update(self._seen, values=list(values.items()))

    def close(self) -> None:
        """Prints the last, partial epoch's line (a non-tty bar prints at the epoch end only)."""
        if self._bar is not None and self._seen < self.steps_per_epoch:
            self._bar.update(self._seen, finalize=True)
        self._bar = None


class Summaries:
    """TensorBoard writers for train and eval scalars (no-ops off the chief)."""

    def __init__(self, model_dir: str, enabled: bool = True):
        root = os.path.join(model_dir, "tensorboard")
        self._metadata = _scalar_metadata()
        if enabled:
            self._writers = {
                "train": tf.summary.create_file_writer(os.path.join(root, "train")),
                "eval": tf.summary.create_file_writer(os.path.join(root, "eval")),
            }
        else:
            noop = tf.summary.create_noop_writer()
            self._writers = {"train": noop, "eval": noop}

    def write(self, kind: str, step: int, scalars: dict[str, float]) -> None:
        """Writes `scalars` at `step` to the `train` or `eval` writer."""
        writer = self._writers[kind]
        with writer.as_default(step=step):
            for name, value in scalars.items():
                tf.summary.write(name, tf.constant(value, tf.float32), metadata=self._metadata)
        writer.flush()

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()


def log_eval(step: int, epoch: float, results: dict[str, float]) -> None:
    """One concise log line per evaluation."""
    parts = [f"{k}={v:.4f}" for k, v in results.items() if k != "examples"]
    logging.info("eval step %d (epoch %.2f): %s", step, epoch, " ".join(parts))


METRICS_FILE = "metrics.json"


def write_metrics(model_dir: str, metrics: dict) -> str:
    """Writes model_dir/metrics.json atomically; returns its path."""
    path = os.path.join(model_dir, METRICS_FILE)
    run_dir.write_text(path, json.dumps(metrics, indent=2, sort_keys=True))
    return path


class History:
    """Every evaluation of a run, across resumes; `best` and `final` come from all of them.

    On a resume the evaluations recorded in metrics.json up to the restored step are kept (a
    run killed after evaluating step 8 but checkpointed at step 6 evaluates 8 again).

    Every evaluation is written to metrics.json at once (chief), so a run stopped by a signal
    or a kill keeps what it evaluated.

    Args:
        model_dir: The run directory (metrics.json).
        restored_step: The global step training resumes from.
        write: Whether this worker writes metrics.json (the chief).
    """

    def __init__(self, model_dir: str, restored_step: int, write: bool = True):
        self.model_dir = model_dir
        self.write = write
        self.evals: list[dict] = []
        path = os.path.join(model_dir, METRICS_FILE)
        if restored_step and tf.io.gfile.exists(path):
            try:
                with tf.io.gfile.GFile(path) as f:
                    old = json.load(f).get("history", [])
                self.evals = [e for e in old if int(e["step"]) <= restored_step]
            except (ValueError, KeyError, TypeError, AttributeError):
                logging.warning("%s is unreadable; the evaluation history restarts here", path)

    def record(self, step: int, results: dict) -> None:
        self.evals = [e for e in self.evals if e["step"] != step]
        self.evals.append(dict(results, step=step))
        if self.write:
            write_metrics(
                self.model_dir, {"final": self.final, "best": self.best, "history": self.evals}
            )

    @property
    def final(self) -> dict | None:
        return self.evals[-1] if self.evals else None

    @property
    def best(self) -> dict | None:
        # The earliest of equally good evaluations, as an uninterrupted run would keep.
        best = None
        for e in self.evals:
            if best is None or e["accuracy"] > best["accuracy"]:
                best = e
        return best
