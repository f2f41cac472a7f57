"""A training run's directory, read before TensorFlow is imported: its configuration
(config.json) and the model a command evaluates (the export or the newest checkpoint).

Shared by `trainer.tools.evaluate` (`locate`) and `trainer.tools.ensemble`
(`read_run_config`: an ensemble needs neither an export nor a checkpoint). Paths with a URL
scheme (gs://) are read through TensorFlow's gfile (`trainer.tools.paths`).
"""

from __future__ import annotations

import dataclasses
import json
import os

from trainer import config as config_lib
from trainer import layout
from trainer.errors import UserError
from trainer.tools import paths

_TUPLE_FIELDS = ("split_at", "lr_mults")


@dataclasses.dataclass(frozen=True)
class Run:
    """What evaluation needs from a run directory, found before TensorFlow is imported."""

    model_dir: str
    config: config_lib.Config  # the run's own configuration
    source: str  # "export" or "checkpoint"
    note: str = ""  # why the source differs from the one asked for


def config_from_record(record: dict, model_dir: str) -> config_lib.Config:
    """The run's `Config` from config.json's "full" record (unknown keys are ignored).

    Raises:
        UserError: The record has no usable "full" configuration.
    """
    full = record.get("full")
    path = os.path.join(model_dir, layout.CONFIG_FILE)
    if not isinstance(full, dict):
        raise UserError(f'{path} has no "full" configuration (made by an older lrtech?)')
    names = {f.name for f in dataclasses.fields(config_lib.Config)}
    values = {k: v for k, v in full.items() if k in names}
    for key in _TUPLE_FIELDS:
        if isinstance(values.get(key), list):
            values[key] = tuple(values[key])
    values["model_dir"] = model_dir  # where the run is now, wherever it was trained
    try:
        return config_lib.Config(**values)
    except TypeError as e:
        raise UserError(f"{path}: unusable configuration ({e})") from None


def read_run_config(model_dir: str | None) -> config_lib.Config:
    """The run's configuration from DIR/config.json.

    Raises:
        UserError: No such directory, or no readable config.json.
    """
    if not model_dir:
        raise UserError("--model_dir is required (the directory of a training run)")
    if not paths.isdir(model_dir):
        raise UserError(f"--model_dir={model_dir}: no such directory")
    path = os.path.join(model_dir, layout.CONFIG_FILE)
    if not paths.exists(path):
        raise UserError(f"--model_dir={model_dir}: no config.json (not a training run directory)")
    try:
        record = json.loads(paths.read_text(path))
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is unreadable ({e})") from None
    return config_from_record(record, model_dir)


def locate(model_dir: str | None, source: str) -> Run:
    """Checks the run directory and picks the model to evaluate; reads no tensor.

    Raises:
        UserError: No such directory, no readable config.json, or nothing to evaluate.
    """
    config = read_run_config(model_dir)
    has_export = paths.exists(os.path.join(model_dir, layout.EXPORT_DIR, layout.EXPORT_MODEL))
    pattern = f"{layout.CHECKPOINT_PREFIX}-*.index"
    has_checkpoint = bool(paths.glob(os.path.join(model_dir, layout.CHECKPOINT_DIR, pattern)))
    if source == "export" and has_export:
        return Run(model_dir, config, "export")
    if has_checkpoint:
        note = "" if source == "checkpoint" else "no export/model.keras; newest checkpoint"
        return Run(model_dir, config, "checkpoint", note)
    if source == "checkpoint":
        raise UserError(f"--model_dir={model_dir}: no checkpoint in {model_dir}/ckpt")
    raise UserError(f"--model_dir={model_dir}: no export/model.keras and no checkpoint in ckpt/")
