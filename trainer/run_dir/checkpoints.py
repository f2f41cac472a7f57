"""Checkpoints in model_dir/ckpt that survive kills and damage; the compatibility record.

A checkpoint holds the model, the optimizer (slots and `iterations`, the run's global step)
and the loss-scale state. The data position is not stored: the input pipeline is a pure
function of (seed, step), so restoring the step restores the position.

What is on disk is the truth, not the `checkpoint` state file: `Checkpointer` lists
ckpt-N.index files itself, restores the newest one that reads back completely (TensorFlow
checks every tensor's CRC32C), names each broken one in one log line and moves it to
ckpt/broken/, and deletes old checkpoints only after a newer one was written. (Keras/TF's
`CheckpointManager` trusts the state file: with the newest index gone it restores nothing,
starts at step 0 and rotates the intact older checkpoints away.) The state file is still
written, atomically, so `tf.train.latest_checkpoint` works for users.

model_dir/config.json records the fields that make a checkpoint loadable and meaningful; a run
that finds checkpoints made with different values, or no readable config.json beside them,
stops with a `UserError` before touching anything.
"""

from __future__ import annotations

import json
import os
import re
import shutil

import numpy as np
import tensorflow as tf
from absl import logging

from trainer import config as config_lib
from trainer import layout
from trainer.errors import IncompatibleCheckpointError, NonFiniteError, UserError
from trainer.run_dir import faults
from trainer.run_dir import files as run_dir

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
    # Weight averaging: the SWA average is part of the checkpoint when on, the EMA copies are
    # optimizer variables; their values say which steps the averages hold.
    "swa_start_epoch",
    "swa_every_epochs",
    "ema_decay",
)
# Fields added after config.json existed: a record without one was made with the default.
_DEFAULT_WHEN_ABSENT = {"swa_start_epoch": None, "swa_every_epochs": None, "ema_decay": None}
CONFIG_FILE = layout.CONFIG_FILE
PREFIX = layout.CHECKPOINT_PREFIX
_NAME = re.compile(rf"^{PREFIX}-(\d+)\.index$")
_ANY = re.compile(rf"^{PREFIX}-(\d+)\.(index|data-\d+-of-\d+)$")
_RESTART_HINT = "pass --restart to move the old run aside (nothing is deleted) and start over"


def _jsonable(value):
    return list(value) if isinstance(value, tuple) else value


def compat_record(config) -> dict:
    """The compatibility fields of a `Config`, as JSON values."""
    d = config.to_dict()
    return {k: _jsonable(d[k]) for k in COMPAT_FIELDS}


def read_config(model_dir: str) -> dict | None:
    """The config.json record, or None when there is none.

    Raises:
        UserError: config.json exists but is empty or not a JSON object.
    """
    path = os.path.join(model_dir, CONFIG_FILE)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        text = f.read()
    try:
        record = json.loads(text)
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
    except ValueError as e:
        raise UserError(
            f"{path} is unreadable ({'empty' if not text.strip() else e}); it records the "
            f"configuration of the checkpoints beside it: restore it, or {_RESTART_HINT}"
        ) from None
    return record


def check_compatible(model_dir: str, config, has_checkpoints: bool = True) -> None:
    """Checks that model_dir's checkpoints were made with `config`'s compatibility fields.

    Raises:
        IncompatibleCheckpointError: A field differs (every difference is named).
        UserError: Checkpoints exist but config.json is missing or unreadable.
    """
    old = read_config(model_dir)
    if old is None:
        if has_checkpoints:
            raise UserError(
                f"--model_dir={model_dir} holds checkpoints but no {CONFIG_FILE}, so they "
                f"cannot be checked against this configuration; restore {CONFIG_FILE}, or "
                + _RESTART_HINT
            )
        return
    full = old.get("full")
    if isinstance(full, dict):  # the whole configuration: the one list of what may change
        diffs = config_lib.resume_conflicts(full, config)
    else:  # a config.json from before "full" was recorded: its compatibility fields
        new = compat_record(config)
        old = {**_DEFAULT_WHEN_ABSENT, **old}
        diffs = [
            f"--{k}={old[k]!r} -> {new[k]!r}"
            for k in COMPAT_FIELDS
            if k in old and old[k] != new[k]
        ]
    if diffs:
        raise IncompatibleCheckpointError(
            f"--model_dir={model_dir} holds a run made with other flags ({'; '.join(diffs)}); "
            "these may not change when a run resumes (its length, evaluation, checkpoint and "
            "logging frequency may): pass --restart to move the old run aside and start "
            "over, or use a new --model_dir"
        )


def write_config(model_dir: str, config) -> None:
    """Writes config.json (compatibility record plus the full configuration), atomically."""
    record = compat_record(config)
    record["full"] = {k: _jsonable(v) for k, v in config.to_dict().items()}
    tf.io.gfile.makedirs(model_dir)
    run_dir.write_text(
        os.path.join(model_dir, CONFIG_FILE), json.dumps(record, indent=2, sort_keys=True)
    )


def check_finite_weights(model, step: int) -> None:
    """Raises `NonFiniteError` when a model weight is NaN or inf: such weights are never saved."""
    for v in model.weights:
        value = np.asarray(v.numpy())
        if np.issubdtype(value.dtype, np.floating) and not np.all(np.isfinite(value)):
            raise NonFiniteError(
                f"non-finite weight {v.path} at step {step}; not saved, the last good "
                "checkpoint is kept"
            )


def _files_of(prefix: str) -> list[str]:
    return tf.io.gfile.glob(prefix + ".index") + tf.io.gfile.glob(prefix + ".data-*")


def saved_steps(model_dir: str) -> list[int]:
    """Steps of model_dir's checkpoints whose index file exists, oldest first."""
    directory = os.path.join(model_dir, layout.CHECKPOINT_DIR)
    if not tf.io.gfile.isdir(directory):
        return []
    found = (_NAME.match(n) for n in tf.io.gfile.listdir(directory))
    return sorted(int(m.group(1)) for m in found if m)


class Checkpointer:
    """Rolling checkpoints ckpt/ckpt-STEP, multi-worker aware, robust to damage.

    Every worker must call `save` (the save is collective); non-chief workers write into a
    temporary directory that is deleted afterwards.

    Args:
        model_dir: The run directory.
        keep: Checkpoints kept (the newest ones).
        is_chief: Whether this worker owns model_dir/ckpt.
        task_id: This worker's index (names the non-chief temporary directory).
        **objects: Trackables to save (model=, optimizer=, ...). The optimizer's
            `iterations` must be the global step: a restore is verified against it.
    """

    def __init__(self, model_dir: str, keep: int, *, is_chief=True, task_id=0, **objects):
        self.model_dir = model_dir
        self.directory = os.path.join(model_dir, layout.CHECKPOINT_DIR)
        self.keep = max(1, int(keep))
        self.is_chief = is_chief
        self.checkpoint = tf.train.Checkpoint(**objects)
        self._step_var = objects["optimizer"].iterations if "optimizer" in objects else None
        self._write_dir = (
            self.directory if is_chief else os.path.join(model_dir, f".ckpt_w{task_id}")
        )
        self.restored = None

    # Listing -------------------------------------------------------------------------------

    def steps(self) -> list[int]:
        """Steps of the checkpoints whose index file exists, oldest first."""
        return saved_steps(self.model_dir)

    def _all_steps(self) -> list[int]:
        """Steps with any checkpoint file (index or data), oldest first."""
        if not tf.io.gfile.isdir(self.directory):
            return []
        found = (_ANY.match(n) for n in tf.io.gfile.listdir(self.directory))
        return sorted({int(m.group(1)) for m in found if m})

    def path(self, step: int) -> str:
        return os.path.join(self.directory, f"{PREFIX}-{step}")

    def latest(self) -> str | None:
        """Path prefix of the newest checkpoint on disk, or None."""
        steps = self.steps()
        return self.path(steps[-1]) if steps else None

    # Restore -------------------------------------------------------------------------------

    def restore(self) -> str | None:
        """Restores the newest checkpoint that reads back completely; returns its path.

        A broken newer checkpoint is named in a log line and moved to ckpt/broken/ (chief).

        Returns:
            The path restored, or None when model_dir has no checkpoint.

        Raises:
            UserError: Checkpoints exist but none is readable (each is named).
        """
        broken = []
        complete = set(self.steps())
        for step in reversed(self._all_steps()):
            path = self.path(step)
            if step not in complete:
                # Data files without their index: a write that never finished.
                logging.warning("Checkpoint %s is unreadable (no index file)", path)
                broken.append(path)
                continue
            try:
                self.checkpoint.read(path).assert_existing_objects_matched()
                if self._step_var is not None and int(self._step_var.numpy()) != step:
                    raise ValueError(f"it holds step {int(self._step_var.numpy())}")
            except Exception as e:  # noqa: BLE001  (TF raises OpError, IndexError, ValueError...)
                reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                logging.warning(
                    "Checkpoint %s is unreadable (%s); trying an older one", path, reason
                )
                broken.append(path)
                continue
            self.restored = path
            self._set_aside(broken)
            return path
        if broken:
            raise UserError(
                f"--model_dir={self.model_dir}: no readable checkpoint ("
                + ", ".join(os.path.basename(p) for p in broken)
                + f" in {self.directory} are damaged); "
                + _RESTART_HINT
            )
        return None

    def _set_aside(self, paths: list[str]) -> None:
        if not self.is_chief or not paths:
            return
        target = os.path.join(self.directory, layout.BROKEN_DIR)
        tf.io.gfile.makedirs(target)
        for path in paths:
            for name in _files_of(path):
                tf.io.gfile.rename(
                    name, os.path.join(target, os.path.basename(name)), overwrite=True
                )
        logging.warning("Moved %d damaged checkpoint(s) to %s", len(paths), target)

    # Save ----------------------------------------------------------------------------------

    def save(self, step: int, model) -> str:
        """Saves after checking the weights are finite; returns the path written."""
        check_finite_weights(model, step)
        prefix = os.path.join(self._write_dir, f"{PREFIX}-{step}")
        path = self.checkpoint.write(prefix)
        faults.point("checkpoint_written")
        if not self.is_chief:
            shutil.rmtree(self._write_dir, ignore_errors=True)
            return path
        self._rotate(step)
        self._write_state()
        logging.info("Saved checkpoint %s (step %d)", path, step)
        return path

    def _rotate(self, newest: int) -> None:
        # Only checkpoints older than the one just written go, and only beyond `keep`.
        older = [s for s in self.steps() if s < newest]
        for step in older[: max(0, len(older) - (self.keep - 1))]:
            for name in _files_of(self.path(step)):
                tf.io.gfile.remove(name)

    def _write_state(self) -> None:
        steps = self.steps()
        lines = [f'model_checkpoint_path: "{PREFIX}-{steps[-1]}"']
        lines += [f'all_model_checkpoint_paths: "{PREFIX}-{s}"' for s in steps]
        run_dir.write_text(os.path.join(self.directory, "checkpoint"), "\n".join(lines) + "\n")

    def describe_latest(self) -> str:
        """'ckpt-N (step N)' for the newest checkpoint, or that none was saved yet."""
        latest = self.latest()
        if latest is None:
            return "no checkpoint was saved yet"
        return f"the last good checkpoint is kept: {latest}"


def save_snapshot(model_dir: str, model, cycle: int, step: int) -> str:
    """Saves the weights at the end of SGDR cycle `cycle` as snapshots/cycle_K.weights.h5.

    A damaged file is simply replaced; a directory in its place (which a rename cannot
    replace) is moved to snapshots/broken/ first, with one log line.
    """
    check_finite_weights(model, step)
    directory = os.path.join(model_dir, layout.SNAPSHOT_DIR)
    tf.io.gfile.makedirs(directory)
    path = os.path.join(directory, layout.snapshot_name(cycle))
    if tf.io.gfile.isdir(path):
        broken = os.path.join(directory, layout.BROKEN_DIR)
        tf.io.gfile.makedirs(broken)
        target = os.path.join(broken, f"{layout.snapshot_name(cycle)}.dir-{os.getpid()}")
        tf.io.gfile.rename(path, target)
        logging.warning("Snapshot %s is a directory; moved to %s", path, target)
    tmp = os.path.join(directory, f".cycle_{cycle}.tmp-{os.getpid()}.weights.h5")
    model.save_weights(tmp)
    tf.io.gfile.rename(tmp, path, overwrite=True)
    logging.info("Saved snapshot of cycle %d (step %d) to %s", cycle, step, path)
    return path
