"""Every name in a run's model_dir, in one place (no TensorFlow: commands read it at start-up).

model_dir/
  .lock                     the run's lock while a process holds it (run_dir.files.Lock)
  config.json               the configuration (compatibility record + the full Config)
  flags.txt                 the same configuration as a flagfile (`--flagfile=` repeats it)
  ckpt/ckpt-N.index, ...    checkpoints; ckpt/broken/ holds the unreadable ones
  metrics.json              every evaluation, per-class metrics, the confusion matrix
  tensorboard/train, eval   TensorBoard event files (`tensorboard --logdir .../tensorboard`)
  snapshots/cycle_K.weights.h5   weights at each SGDR restart (snapshots/broken/: unreadable)
  lr_find.json, lr_find.png the LR range test
  confusion_matrix.png, top_losses.png   interpretation of the final model
  export/                   model.keras, model.weights.h5, saved_model/, labels.json
                            (export/swa/, export/ema/ for averaged models)
  evaluation.json, evaluation_confusion_matrix.png, evaluation_top_losses.png
                            `trainer.evaluate`'s results (never the run's own files)
  ensemble.json             `trainer.ensemble`'s results
  previous/<time>/          runs moved aside by --restart
"""

from __future__ import annotations

import os
import re

LOCK_FILE = ".lock"
CONFIG_FILE = "config.json"
FLAGS_FILE = "flags.txt"
CHECKPOINT_DIR = "ckpt"
CHECKPOINT_PREFIX = "ckpt"
BROKEN_DIR = "broken"
METRICS_FILE = "metrics.json"
TENSORBOARD_DIR = "tensorboard"
SNAPSHOT_DIR = "snapshots"
LR_FIND_JSON = "lr_find.json"
LR_FIND_PLOT = "lr_find.png"
CONFUSION_PLOT = "confusion_matrix.png"
TOP_LOSSES_PLOT = "top_losses.png"
EXPORT_DIR = "export"
EXPORT_MODEL = "model.keras"
EXPORT_WEIGHTS = "model.weights.h5"
EXPORT_SAVED_MODEL = "saved_model"
LABELS_FILE = "labels.json"
# Every file of a complete export (also of export/swa/ and export/ema/).
EXPORT_FILES = (
    EXPORT_MODEL,
    EXPORT_WEIGHTS,
    os.path.join(EXPORT_SAVED_MODEL, "saved_model.pb"),
    LABELS_FILE,
)
EVALUATION_FILE = "evaluation.json"
EVALUATION_CONFUSION_PLOT = "evaluation_confusion_matrix.png"
EVALUATION_TOP_LOSSES_PLOT = "evaluation_top_losses.png"
ENSEMBLE_FILE = "ensemble.json"
PREVIOUS_DIR = "previous"

# What a run writes into model_dir: `--restart` moves all of these aside.
RUN_FILES = (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    FLAGS_FILE,
    METRICS_FILE,
    TENSORBOARD_DIR,
    SNAPSHOT_DIR,
    EXPORT_DIR,
    LR_FIND_JSON,
    LR_FIND_PLOT,
    CONFUSION_PLOT,
    TOP_LOSSES_PLOT,
    EVALUATION_FILE,
    EVALUATION_CONFUSION_PLOT,
    EVALUATION_TOP_LOSSES_PLOT,
    ENSEMBLE_FILE,
)

_SNAPSHOT = re.compile(r"^cycle_(\d+)\.weights\.h5$")
_CHECKPOINT_INDEX = re.compile(rf"^{CHECKPOINT_PREFIX}-(\d+)\.index$")


def snapshot_name(cycle: int) -> str:
    """The file name of the snapshot taken at the end of cycle `cycle`."""
    return f"cycle_{int(cycle)}.weights.h5"


def snapshot_cycle(name: str) -> int | None:
    """The cycle of a snapshot file name, or None when the name is not a snapshot's."""
    match = _SNAPSHOT.match(name)
    return int(match.group(1)) if match else None


def checkpoint_step(name: str) -> int | None:
    """The step of a checkpoint index file name (`ckpt-N.index`), else None."""
    match = _CHECKPOINT_INDEX.match(name)
    return int(match.group(1)) if match else None


class Layout:
    """The paths of one run directory: `Layout(model_dir).metrics` etc."""

    def __init__(self, model_dir: str):
        self.model_dir = os.fspath(model_dir)

    def path(self, *names: str) -> str:
        return os.path.join(self.model_dir, *names)

    @property
    def lock(self) -> str:
        return self.path(LOCK_FILE)

    @property
    def config(self) -> str:
        return self.path(CONFIG_FILE)

    @property
    def flags(self) -> str:
        return self.path(FLAGS_FILE)

    @property
    def checkpoints(self) -> str:
        return self.path(CHECKPOINT_DIR)

    def checkpoint(self, step: int) -> str:
        return self.path(CHECKPOINT_DIR, f"{CHECKPOINT_PREFIX}-{int(step)}")

    @property
    def metrics(self) -> str:
        return self.path(METRICS_FILE)

    @property
    def tensorboard(self) -> str:
        return self.path(TENSORBOARD_DIR)

    @property
    def snapshots(self) -> str:
        return self.path(SNAPSHOT_DIR)

    def snapshot(self, cycle: int) -> str:
        return self.path(SNAPSHOT_DIR, snapshot_name(cycle))

    @property
    def lr_find_json(self) -> str:
        return self.path(LR_FIND_JSON)

    @property
    def lr_find_plot(self) -> str:
        return self.path(LR_FIND_PLOT)

    @property
    def confusion_plot(self) -> str:
        return self.path(CONFUSION_PLOT)

    @property
    def top_losses_plot(self) -> str:
        return self.path(TOP_LOSSES_PLOT)

    @property
    def export(self) -> str:
        return self.path(EXPORT_DIR)

    def export_file(self, name: str, averaged: str = "") -> str:
        """A file of export/ (or of export/<averaged>/ for an averaged model: swa, ema)."""
        return self.path(EXPORT_DIR, averaged, name) if averaged else self.path(EXPORT_DIR, name)

    @property
    def ensemble(self) -> str:
        return self.path(ENSEMBLE_FILE)

    @property
    def previous(self) -> str:
        return self.path(PREVIOUS_DIR)
