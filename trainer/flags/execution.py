"""Flags of execution (strategy, precision, checkpoints, logging) and weight averaging."""

from __future__ import annotations

from absl import flags

from trainer import config as config_lib
from trainer.flags.validators import _default, _non_negative, _positive, _register


def _define_execution(fv):
    flags.DEFINE_string(
        "model_dir",
        None,
        "The run's directory: checkpoints, TensorBoard, metrics.json and the export. A run "
        "resumes from the checkpoint it finds here. Default: runs/<flagfile name> under the "
        "current directory (runs/run without a flagfile).",
        flag_values=fv,
    )
    flags.DEFINE_enum(
        "strategy",
        _default("strategy"),
        config_lib.STRATEGIES,
        "auto: MirroredStrategy over all GPUs if any, else one device; "
        "multi_worker: MultiWorkerMirroredStrategy from TF_CONFIG.",
        flag_values=fv,
    )
    flags.DEFINE_integer(
        "steps_per_loop",
        _default("steps_per_loop"),
        "Steps per compiled loop call (Python overhead is paid once per loop).",
        lower_bound=1,
        flag_values=fv,
    )
    flags.DEFINE_bool(
        "jit_compile", _default("jit_compile"), "Compile the train step with XLA.", flag_values=fv
    )
    flags.DEFINE_enum(
        "mixed_precision",
        _default("mixed_precision"),
        config_lib.MIXED_PRECISION,
        "Mixed precision policy; mixed_float16 adds dynamic loss scaling.",
        flag_values=fv,
    )
    flags.DEFINE_float(
        "eval_every_epochs",
        _default("eval_every_epochs"),
        "Evaluate on the eval split every E epochs.",
        flag_values=fv,
    )
    _register(fv, "eval_every_epochs", _positive, "a positive number of epochs")
    flags.DEFINE_integer(
        "checkpoint_every_steps",
        _default("checkpoint_every_steps"),
        "Save a checkpoint every N steps.",
        lower_bound=1,
        flag_values=fv,
    )
    flags.DEFINE_integer(
        "keep_checkpoints",
        _default("keep_checkpoints"),
        "Rolling checkpoints kept.",
        lower_bound=1,
        flag_values=fv,
    )
    flags.DEFINE_bool(
        "snapshot_at_restarts",
        _default("snapshot_at_restarts"),
        "Keep the weights at the end of every SGDR cycle as snapshots/cycle_K (the run's last "
        "step counts when it ends a cycle); implied by --ensemble_snapshots.",
        flag_values=fv,
    )
    flags.DEFINE_integer(
        "seed", _default("seed"), "Seed for weights, data order and augmentation.", flag_values=fv
    )
    flags.DEFINE_bool(
        "progress", _default("progress"), "Show a progress bar per epoch.", flag_values=fv
    )
    flags.DEFINE_bool(
        "restart",
        False,
        "Start over in --model_dir: move the previous run's files (checkpoints, config, "
        "metrics, summaries, export) to MODEL_DIR/previous/<time>/ first. Nothing is deleted.",
        flag_values=fv,
    )
    flags.DEFINE_bool(
        "list_layers",
        False,
        "Print every layer (index, name, type, parameters, segment) and the "
        "per-segment learning-rate table, then exit.",
        flag_values=fv,
    )


def _define_averaging(fv):
    flags.DEFINE_integer(
        "ensemble_snapshots",
        _default("ensemble_snapshots"),
        "Snapshot ensemble (Huang et al. 2017): after each SGDR restart from the M-th snapshot "
        "on, and at the end, evaluate the mean softmax of the last M snapshots (>= 2) on the eval "
        "split; metrics.json snapshot_ensemble, TensorBoard eval/ensemble/*. Implies "
        "--snapshot_at_restarts (needs --schedule=sgdr). Single-process strategies only; for "
        "multi_worker runs use python -m trainer.ensemble afterwards.",
        flag_values=fv,
    )
    _register(fv, "ensemble_snapshots", lambda x: x >= 2, ">= 2 (one snapshot is no ensemble)")
    flags.DEFINE_float(
        "swa_start_epoch",
        _default("swa_start_epoch"),
        "Stochastic weight averaging (Izmailov et al. 2018) from this epoch on (>= 0, before the "
        "end): an equal average of the weights at every SGDR cycle end at or after it (the run's "
        "last step counts when it ends a cycle), or, with another schedule or --swa_lr, every "
        "--swa_every_epochs epochs after it and at the last step. After training the average gets "
        "BatchNorm statistics recomputed over one pass of the training split, is evaluated "
        "(metrics.json swa) and exported to export/swa/. The average is checkpointed.",
        flag_values=fv,
    )
    _register(fv, "swa_start_epoch", _non_negative, "a number of epochs >= 0")
    flags.DEFINE_float(
        "swa_every_epochs",
        _default("swa_every_epochs"),
        "SWA: epochs between averaged models (default 1) when the schedule has no cycles "
        "(constant, cosine, one_cycle) or with --swa_lr.",
        flag_values=fv,
    )
    _register(fv, "swa_every_epochs", _positive, "a positive number of epochs")
    flags.DEFINE_float(
        "swa_lr",
        _default("swa_lr"),
        "SWA: from --swa_start_epoch on, the head's learning rate is this constant (the "
        "segment multipliers are kept); the models are then averaged every --swa_every_epochs.",
        flag_values=fv,
    )
    _register(fv, "swa_lr", _positive, "> 0")
    flags.DEFINE_bool(
        "swa_bn_augment",
        _default("swa_bn_augment"),
        "Recompute the BatchNorm statistics of the SWA and EMA models over augmented training "
        "images (default: the training split without augmentation).",
        flag_values=fv,
    )
    flags.DEFINE_float(
        "ema_decay",
        _default("ema_decay"),
        "Keep an exponential moving average of the weights, updated every step with this decay "
        "in (0, 1), e.g. 0.999 (Keras' use_ema / ema_momentum). After training it is evaluated "
        "with recomputed BatchNorm statistics (metrics.json ema) and exported to export/ema/.",
        flag_values=fv,
    )
    _register(fv, "ema_decay", lambda x: 0 < x < 1, "in (0, 1)")
