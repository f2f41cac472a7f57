"""Rolling checkpoints in model_dir/ckpt, the compatibility record, and SGDR snapshots.

A checkpoint holds the model, the optimizer (slots and `iterations`), the global step, the
loss-scale state and the unfreeze state. The data position is not stored: the input pipeline
is a pure function of (seed, step), so restoring the step restores the position.

model_dir/config.json records the fields that make a checkpoint loadable and meaningful; a run
that finds a checkpoint made with different values stops with `IncompatibleCheckpointError`
before touching it.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import tensorflow as tf
from absl import logging

from trainer.errors import IncompatibleCheckpointError, NonFiniteError

# Fields that change the variables (model, head, classes, optimizer slots, loss-scale state)
# or what a checkpoint means (segments, data).
COMPAT_FIELDS = (
    "model",
    "head",
    "num_classes",
    "image_size",
    "split_at",
    "optimizer",
    "dataset",
    "mixed_precision",
)
CONFIG_FILE = "config.json"


def _jsonable(value):
    return list(value) if isinstance(value, tuple) else value


def compat_record(config) -> dict:
    """The compatibility fields of a `Config`, as JSON values."""
    d = config.to_dict()
    return {k: _jsonable(d[k]) for k in COMPAT_FIELDS}


def check_compatible(model_dir: str, config) -> None:
    """Raises `IncompatibleCheckpointError` naming every field that differs from config.json.

    Does nothing when model_dir has no config.json.
    """
    path = os.path.join(model_dir, CONFIG_FILE)
    if not tf.io.gfile.exists(path):
        return
    with tf.io.gfile.GFile(path) as f:
        old = json.load(f)
    new = compat_record(config)
    diffs = [
        f"--{k}: checkpoint has {old[k]!r}, now {new[k]!r}"
        for k in COMPAT_FIELDS
        if k in old and old[k] != new[k]
    ]
    if diffs:
        raise IncompatibleCheckpointError(
            f"--model_dir={model_dir} holds a checkpoint of a different configuration ("
            + "; ".join(diffs)
            + "); use another --model_dir or the old values"
        )


def write_config(model_dir: str, config) -> None:
    """Writes config.json (compatibility record plus the full configuration)."""
    record = compat_record(config)
    record["full"] = {k: _jsonable(v) for k, v in config.to_dict().items()}
    tf.io.gfile.makedirs(model_dir)
    with tf.io.gfile.GFile(os.path.join(model_dir, CONFIG_FILE), "w") as f:
        json.dump(record, f, indent=2, sort_keys=True)


def check_finite_weights(model, step: int) -> None:
    """Raises `NonFiniteError` when a model weight is NaN or inf: such weights are never saved."""
    for v in model.weights:
        value = np.asarray(v.numpy())
        if np.issubdtype(value.dtype, np.floating) and not np.all(np.isfinite(value)):
            raise NonFiniteError(
                f"non-finite weight {v.path} at step {step}; not saved, the last good "
                "checkpoint is kept"
            )


class Checkpointer:
    """`tf.train.CheckpointManager` over model_dir/ckpt, multi-worker aware.

    Every worker must call `save` (the save is collective); non-chief workers write into a
    temporary directory that is deleted afterwards.

    Args:
        model_dir: The run directory.
        keep: Rolling checkpoints kept.
        is_chief: Whether this worker owns model_dir/ckpt.
        task_id: This worker's index (names the non-chief temporary directory).
        **objects: Trackables to save (model=, optimizer=, step=, ...).
    """

    def __init__(self, model_dir: str, keep: int, *, is_chief=True, task_id=0, **objects):
        self.model_dir = model_dir
        self.directory = os.path.join(model_dir, "ckpt")
        self.is_chief = is_chief
        self.checkpoint = tf.train.Checkpoint(**objects)
        write_dir = self.directory if is_chief else os.path.join(model_dir, f".ckpt_w{task_id}")
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, write_dir, max_to_keep=keep if is_chief else 1
        )
        self._write_dir = write_dir

    def latest(self) -> str | None:
        """Path prefix of the newest checkpoint in model_dir/ckpt, or None."""
        return tf.train.latest_checkpoint(self.directory)

    def restore(self) -> str | None:
        """Restores the newest checkpoint; returns its path (None when there is none)."""
        path = self.latest()
        if path is not None:
            self.checkpoint.restore(path).assert_existing_objects_matched()
        return path

    def save(self, step: int, model) -> str:
        """Saves after checking the weights are finite; returns the path written."""
        check_finite_weights(model, step)
        path = self.manager.save(checkpoint_number=step)
        if not self.is_chief:
            shutil.rmtree(self._write_dir, ignore_errors=True)
        logging.info("Saved checkpoint %s (step %d)", path if self.is_chief else "", step)
        return path


def save_snapshot(model_dir: str, model, cycle: int, step: int) -> str:
    """Saves the weights at the end of SGDR cycle `cycle` as snapshots/cycle_K.weights.h5."""
    check_finite_weights(model, step)
    directory = os.path.join(model_dir, "snapshots")
    tf.io.gfile.makedirs(directory)
    path = os.path.join(directory, f"cycle_{cycle}.weights.h5")
    model.save_weights(path)
    logging.info("Saved snapshot of cycle %d (step %d) to %s", cycle, step, path)
    return path
