"""run_train.py's command line: absl flag definitions, their validators, and the frozen Config.

Every flag has help with its unit and a validator beside its definition; cross-flag checks live
in one place (`_cross_checks`). Nothing here touches the filesystem or TensorFlow, so a bad flag
fails before any heavy work. Library code never reads FLAGS: `to_config(flag_values)` turns
them into a `trainer.config.Config` once.

The flags are defined on a `FlagValues` passed in (absl's global FLAGS in run_train.py, a fresh
one in tests).
"""

from __future__ import annotations

import math

from absl import flags

from trainer import config as config_lib

_LIST_FIELDS = ("split_at",)
MAX_GLOBAL_BATCH = config_lib.MAX_GLOBAL_BATCH
MAX_SYNTHETIC = config_lib.MAX_SYNTHETIC
MAX_IMAGE_SIZE = config_lib.MAX_IMAGE_SIZE
_FLOAT_LIST_FIELDS = ("lr_mults", "moms")


def _default(name: str):
    """A flag's default is its `Config` field's: one source (lists as absl gives them)."""
    value = config_lib.Config.__dataclass_fields__[name].default
    if isinstance(value, tuple):
        return [str(v) for v in value]
    return value


def _register(fv, name, ok, requirement):
    """A validator beside the definition: the message names the flag and the bad value."""

    def check(value):
        if value is None or ok(value):
            return True
        # absl prefixes "flag --NAME=VALUE: ", so the line names the flag and the value.
        raise flags.ValidationError(f"must be {requirement}")

    flags.register_validator(name, check, flag_values=fv)


def _positive(x):
    return math.isfinite(x) and x > 0


def _non_negative(x):
    return math.isfinite(x) and x >= 0


def _float_list(values):
    out = []
    for v in values:
        out.append(float(v))
    return out


def _is_float_list(values):
    try:
        _float_list(values)
    except ValueError:
        return False
    return True


def _positive_float_list(values):
    try:
        return len(values) > 0 and all(_positive(x) for x in _float_list(values))
    except ValueError:
        return False


class _FloatOrAutoParser(flags.FloatParser):
    """A float flag that also takes the word `auto`."""

    def parse(self, argument):
        if isinstance(argument, str) and argument.strip().lower() == "auto":
            return "auto"
        return super().parse(argument)

    def flag_type(self):
        return "float or auto"


def _define_data(fv):
    flags.DEFINE_string(
        "dataset",
        _default("dataset"),
        "What to train on: a TFDS image-classification name (cifar10, cifar100, "
        "oxford_flowers102, ...), folder:PATH (PATH/train/<label>/*.jpg and PATH/test/...), "
        "npz:PATH (a NumPy .npz with uint8 images x_train, x_test [N,H,W] or [N,H,W,1|3], "
        "integer labels y_train, y_test [N], optional class_names), idx:DIR (MNIST-style "
        "train-/t10k-images-idx3-ubyte and -labels-idx1-ubyte files, .gz or not, optional "
        "DIR/class_names.txt; e.g. /usr/share/datasets/fashion-mnist from Debian's "
        "dataset-fashion-mnist), sklearn_digits (scikit-learn's 1,797 8x8 digit scans, a "
        "fixed stratified 80/20 split; needs scikit-learn), or synthetic[:NUM_CLASSES] "
        "(generated offline, 32x32x3; for quickstart and tests). Images are resized to "
        "--image_size.",
        flag_values=fv,
    )
    _register(fv, "dataset", lambda v: bool(v.strip()), "a non-empty dataset spec")
    flags.DEFINE_string(
        "data_dir", _default("data_dir"), "TFDS data directory (prepared datasets).", flag_values=fv
    )
    flags.DEFINE_string(
        "train_split",
        _default("train_split"),
        "Split to train on (TFDS split, folder subdirectory, npz x_NAME/y_NAME, IDX file prefix).",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "eval_split",
        _default("eval_split"),
        "Split to evaluate on (as --train_split; IDX: test also finds t10k).",
        flag_values=fv,
    )
    flags.DEFINE_bool(
        "skip_corrupt",
        _default("skip_corrupt"),
        "folder: datasets: skip (and count) unreadable images instead of failing.",
        flag_values=fv,
    )
    flags.DEFINE_bool(
        "augment",
        _default("augment"),
        "Pad-and-random-crop plus horizontal flip on training images.",
        flag_values=fv,
    )
    flags.DEFINE_enum(
        "cache",
        _default("cache"),
        ["auto", "memory", "none"],
        "Where images live: memory (a split is read into memory at start-up: decoded, or "
        "encoded bytes when shapes vary), none (folder: only the sorted file list is kept and "
        "each image is read when its step needs it), or auto (folder: memory when a split's "
        "decoded pixels fit 1 GiB, else none). TFDS datasets load into memory (auto or "
        "memory); arrays (npz:, idx:, sklearn_digits) and synthetic data are always in "
        "memory. Batches are the same either way. See docs/DATA.md.",
        flag_values=fv,
    )
    flags.DEFINE_float(
        "eval_crop",
        _default("eval_crop"),
        "Full-resolution path only (encoded images at --image_size >= 128): evaluation "
        "decodes the centered square of this fraction of the shorter side and resizes it to "
        "--image_size (0.875: 224 of 256). In (0, 1]. Small fixed-size data is resized whole.",
        flag_values=fv,
    )
    _register(fv, "eval_crop", lambda v: math.isfinite(v) and 0 < v <= 1, "in (0, 1]")
    flags.DEFINE_integer(
        "synthetic_train_size",
        _default("synthetic_train_size"),
        "Examples in the synthetic train split (at most 1,000,000: 3 GiB of 32x32 images).",
        lower_bound=1,
        upper_bound=MAX_SYNTHETIC,
        flag_values=fv,
    )
    flags.DEFINE_integer(
        "synthetic_test_size",
        _default("synthetic_test_size"),
        "Examples in the synthetic test split (at most 1,000,000).",
        lower_bound=1,
        upper_bound=MAX_SYNTHETIC,
        flag_values=fv,
    )


def _define_model(fv):
    flags.DEFINE_string(
        "model",
        _default("model"),
        "Model builder name (resnet20, resnet50, ...; see models/).",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "weights",
        _default("weights"),
        "Initial weights: imagenet (keras.applications backbones; needs internet once), none, "
        "pretrained:NAME (shipped in models/pretrained/, e.g. pretrained:resnet20_fashion_mnist "
        "for --model=resnet20), or PATH to a .weights.h5/.keras file of the same architecture "
        "(head is skipped).",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "head",
        _default("head"),
        "Classification head: default, or article (GAP-256-128-N).",
        flag_values=fv,
    )
    flags.DEFINE_integer(
        "image_size",
        _default("image_size"),
        "Input size in pixels (square, 8..1024); images are resized to it.",
        lower_bound=8,
        upper_bound=MAX_IMAGE_SIZE,
        flag_values=fv,
    )
    flags.DEFINE_integer(
        "num_classes",
        _default("num_classes"),
        "Number of classes (inferred from the dataset when unset).",
        lower_bound=2,
        flag_values=fv,
    )


def _define_length(fv):
    flags.DEFINE_integer(
        "global_batch_size",
        _default("global_batch_size"),
        "Examples per step, summed over all replicas.",
        lower_bound=1,
        upper_bound=MAX_GLOBAL_BATCH,
        flag_values=fv,
    )
    flags.DEFINE_float(
        "epochs",
        _default("epochs"),
        "Training length in epochs (or --train_steps).",
        flag_values=fv,
    )
    _register(fv, "epochs", _positive, "a positive number of epochs")
    flags.DEFINE_integer(
        "train_steps",
        _default("train_steps"),
        "Training length in steps (or --epochs).",
        lower_bound=1,
        flag_values=fv,
    )


def _define_optimizer(fv):
    flags.DEFINE_enum(
        "optimizer",
        _default("optimizer"),
        config_lib.OPTIMIZERS,
        "Optimizer applied to every segment.",
        flag_values=fv,
    )
    flags.DEFINE_float(
        "momentum", _default("momentum"), "Momentum for momentum/nesterov/rmsprop.", flag_values=fv
    )
    _register(fv, "momentum", lambda x: 0 <= x < 1, "in [0, 1)")
    flags.DEFINE_float(
        "weight_decay",
        _default("weight_decay"),
        "Decoupled weight decay per step, scaled by each segment's learning rate.",
        flag_values=fv,
    )
    _register(fv, "weight_decay", _non_negative, ">= 0")
    flags.DEFINE_float(
        "clipnorm",
        _default("clipnorm"),
        "Clip the aggregated gradient to this global norm.",
        flag_values=fv,
    )
    _register(fv, "clipnorm", _positive, "> 0")


def _define_schedule(fv):
    flags.DEFINE_enum(
        "schedule",
        _default("schedule"),
        config_lib.SCHEDULES,
        "Base learning-rate schedule, per step: sgdr (cosine with warm restarts), one_cycle "
        "(fastai's: cosine up from max_lr/div over --pct_start of the steps, then down to "
        "max_lr/div_final), cosine (optional linear warmup, then one cosine to --min_lr at the "
        "end; no restarts) or constant.",
        flag_values=fv,
    )
    flags.DEFINE(
        _FloatOrAutoParser(),
        "max_lr",
        1e-3,
        "Peak learning rate of the head segment, or auto: run the LR range test first (see "
        "--lr_find) and train at its valley suggestion (the chosen number goes into flags.txt).",
        flag_values=fv,
    )
    _register(fv, "max_lr", lambda x: x == "auto" or _positive(x), "> 0 or auto")
    flags.DEFINE_float(
        "min_lr",
        _default("min_lr"),
        "Floor learning rate of sgdr / cosine (absolute, head segment).",
        flag_values=fv,
    )
    _register(fv, "min_lr", _non_negative, ">= 0")
    flags.DEFINE_float(
        "first_cycle_epochs",
        _default("first_cycle_epochs"),
        "Length of the first SGDR cycle in epochs (or --first_cycle_steps).",
        flag_values=fv,
    )
    _register(fv, "first_cycle_epochs", _positive, "> 0")
    flags.DEFINE_integer(
        "first_cycle_steps",
        _default("first_cycle_steps"),
        "Length of the first SGDR cycle in steps (or --first_cycle_epochs).",
        lower_bound=1,
        flag_values=fv,
    )
    flags.DEFINE_float(
        "cycle_mult",
        _default("cycle_mult"),
        "Each SGDR cycle is this many times longer (>= 1).",
        flag_values=fv,
    )
    _register(fv, "cycle_mult", lambda x: math.isfinite(x) and x >= 1, ">= 1")
    flags.DEFINE_float(
        "max_lr_decay",
        _default("max_lr_decay"),
        "Peak learning rate factor per cycle, in (0, 1].",
        flag_values=fv,
    )
    _register(fv, "max_lr_decay", lambda x: 0 < x <= 1, "in (0, 1]")
    flags.DEFINE_integer(
        "warmup_steps",
        _default("warmup_steps"),
        "sgdr / cosine: linear warmup from min_lr to max_lr, in steps.",
        lower_bound=0,
        flag_values=fv,
    )
    flags.DEFINE_float(
        "pct_start",
        _default("pct_start"),
        "one_cycle: fraction of the steps spent rising to max_lr, in [0, 1) (default 0.25; "
        "0.3 in the fine_tune recipe's second phase).",
        flag_values=fv,
    )
    _register(fv, "pct_start", lambda x: 0 <= x < 1, "in [0, 1)")
    flags.DEFINE_float(
        "div",
        _default("div"),
        "one_cycle: the first step's learning rate is max_lr / div (>= 1; default 25, 5 in the "
        "fine_tune recipe's second phase).",
        flag_values=fv,
    )
    _register(fv, "div", lambda x: math.isfinite(x) and x >= 1, ">= 1")
    flags.DEFINE_float(
        "div_final",
        _default("div_final"),
        "one_cycle: the learning rate anneals to max_lr / div_final (>= 1).",
        flag_values=fv,
    )
    _register(fv, "div_final", lambda x: math.isfinite(x) and x >= 1, ">= 1")
    flags.DEFINE_list(
        "moms",
        _default("moms"),
        "one_cycle with --cycle_momentum: momentum (SGD) or beta_1 (Adam, AdamW) at the start, "
        "at the learning-rate peak and at the end, each in [0, 1).",
        flag_values=fv,
    )
    _register(
        fv,
        "moms",
        lambda v: _is_float_list(v) and len(v) == 3 and all(0 <= x < 1 for x in _float_list(v)),
        "three numbers in [0, 1)",
    )
    flags.DEFINE_bool(
        "cycle_momentum",
        _default("cycle_momentum"),
        "Cycle momentum / beta_1 against the learning rate (--moms). Default: on with "
        "--schedule=one_cycle and the fine_tune recipe when the optimizer has a momentum "
        "(momentum, nesterov, adam, adamw), off otherwise.",
        flag_values=fv,
    )


def _define_lr_find(fv):
    flags.DEFINE_bool(
        "lr_find",
        _default("lr_find"),
        "Run Smith's LR range test before training (fastai's lr_find): the head's learning rate "
        "grows exponentially from --lr_find_start to --lr_find_end over --lr_find_steps steps, "
        "the segment multipliers fixed; writes lr_find.png and lr_find.json to --model_dir and "
        "prints the suggested --max_lr. Weights, optimizer state, step and data position are "
        "restored afterwards. Without --epochs / --train_steps only the test runs.",
        flag_values=fv,
    )
    flags.DEFINE_float(
        "lr_find_start",
        _default("lr_find_start"),
        "LR range test: first learning rate (> 0).",
        flag_values=fv,
    )
    _register(fv, "lr_find_start", _positive, "> 0")
    flags.DEFINE_float(
        "lr_find_end",
        _default("lr_find_end"),
        "LR range test: last learning rate (> --lr_find_start).",
        flag_values=fv,
    )
    _register(fv, "lr_find_end", _positive, "> 0")
    flags.DEFINE_integer(
        "lr_find_steps",
        _default("lr_find_steps"),
        "LR range test: steps (batches) from start to end (>= 5; it stops early once the "
        "smoothed loss exceeds 4x its minimum).",
        flag_values=fv,
    )
    _register(fv, "lr_find_steps", lambda x: x >= 5, ">= 5")


def _define_recipe(fv):
    flags.DEFINE_enum(
        "recipe",
        _default("recipe"),
        config_lib.RECIPES,
        "fine_tune: fastai's fine_tune. Phase 1 trains only the last segment (the others "
        "frozen, their BatchNorm in inference mode) for --freeze_epochs with one_cycle "
        "(pct_start 0.99) at --max_lr; phase 2 trains every segment for --epochs (or "
        "--train_steps) with one_cycle at --max_lr/2, spread geometrically over the segments "
        "(--lr_spread, default 100). Needs --split_at (>= 2 segments) or --layer_decay.",
        flag_values=fv,
    )
    flags.DEFINE_float(
        "freeze_epochs",
        _default("freeze_epochs"),
        "fine_tune recipe: epochs of phase 1 (head only), before --epochs.",
        flag_values=fv,
    )
    _register(fv, "freeze_epochs", _positive, "a positive number of epochs")


def _define_segments(fv):
    flags.DEFINE_list(
        "split_at",
        _default("split_at"),
        "Segment boundaries: layer indices or names (the first layer of each next segment), "
        "or preset / preset:NAME for the model's named split. Empty: one segment. "
        "See --list_layers.",
        flag_values=fv,
    )
    flags.DEFINE_list(
        "lr_mults",
        _default("lr_mults"),
        "Learning-rate multiplier per segment, input to head, e.g. 0.001,0.1,1.",
        flag_values=fv,
    )
    _register(fv, "lr_mults", _positive_float_list, "a list of positive numbers")
    flags.DEFINE_float(
        "lr_spread",
        _default("lr_spread"),
        "Geometric multipliers from 1/R (first segment) to 1 (head), like fastai slice(lo, hi).",
        flag_values=fv,
    )
    _register(fv, "lr_spread", lambda x: math.isfinite(x) and x >= 1, ">= 1")
    flags.DEFINE_float(
        "layer_decay",
        _default("layer_decay"),
        "Layer-wise learning-rate decay D in (0, 1] (BEiT / MAE / timm fine-tuning, typically "
        "0.65-0.75): every layer with weights is its own segment, the l-th of L+1 at "
        "multiplier D**(L - l), the head at 1. Replaces --split_at / --lr_mults / --lr_spread.",
        flag_values=fv,
    )
    _register(fv, "layer_decay", lambda x: 0 < x <= 1, "in (0, 1]")
    flags.DEFINE_integer(
        "freeze_segments",
        _default("freeze_segments"),
        "Train only segments >= K at first.",
        lower_bound=0,
        flag_values=fv,
    )
    flags.DEFINE_float(
        "unfreeze_every",
        _default("unfreeze_every"),
        "Unfreeze one more segment every E epochs (gradual unfreezing).",
        flag_values=fv,
    )
    _register(fv, "unfreeze_every", _positive, "a positive number of epochs")


def _define_execution(fv):
    flags.DEFINE_string(
        "model_dir",
        None,
        "Directory for checkpoints, TensorBoard, metrics.json and the export. "
        "A run resumes from the checkpoint it finds here.",
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


def define_flags(fv: flags.FlagValues) -> None:
    """Defines every run_train.py flag on `fv`, with validators and the cross-flag checks."""
    _define_data(fv)
    _define_model(fv)
    _define_length(fv)
    _define_optimizer(fv)
    _define_schedule(fv)
    _define_lr_find(fv)
    _define_recipe(fv)
    _define_segments(fv)
    _define_execution(fv)
    _define_averaging(fv)


def cross_check(fv: flags.FlagValues) -> None:
    """All checks that involve more than one flag, in one place; run right after parsing.

    Raises:
      flags.ValidationError: with one line naming the flags and their values.
    """
    v = {name: fv[name].value for name in fv}

    def fail(msg):
        raise flags.ValidationError(msg)

    if not v["model_dir"]:
        fail("--model_dir is required (where checkpoints, summaries and the export go)")
    error = config_lib.length_error(
        v["epochs"], v["train_steps"], allow_none=v["list_layers"] or v["lr_find"]
    )
    if error:
        fail(error)
    if v["lr_mults"] is not None and v["lr_spread"] is not None:
        fail(
            f"give one of --lr_mults / --lr_spread, not both; got lr_mults="
            f"{','.join(v['lr_mults'])}, lr_spread={v['lr_spread']}"
        )
    if v["layer_decay"] is not None:
        for name in ("split_at", "lr_mults", "lr_spread"):
            if v[name]:
                value = ",".join(v[name]) if isinstance(v[name], list) else v[name]
                fail(
                    f"--layer_decay={v['layer_decay']} makes every layer with weights a segment;"
                    f" drop --{name}={value}"
                )
    if v["first_cycle_epochs"] is not None and v["first_cycle_steps"] is not None:
        fail(
            "give one of --first_cycle_epochs / --first_cycle_steps, not both; got "
            f"{v['first_cycle_epochs']} and {v['first_cycle_steps']}"
        )
    if v["max_lr"] != "auto" and v["min_lr"] is not None and v["min_lr"] > v["max_lr"]:
        fail(f"--min_lr must be <= --max_lr; got min_lr={v['min_lr']}, max_lr={v['max_lr']}")
    if v["unfreeze_every"] is not None and not v["freeze_segments"]:
        fail(f"--unfreeze_every={v['unfreeze_every']} needs --freeze_segments >= 1")
    if v["lr_find_start"] >= v["lr_find_end"]:
        fail(
            f"--lr_find_start must be < --lr_find_end; got lr_find_start={v['lr_find_start']},"
            f" lr_find_end={v['lr_find_end']}"
        )
    _schedule_checks(fv, v, fail)
    _averaging_checks(v, fail)


def _schedule_checks(fv, v, fail):
    recipe = v["recipe"] != "none"
    schedule = "one_cycle" if recipe else v["schedule"]
    if recipe:
        if fv["schedule"].present and v["schedule"] != "one_cycle":
            fail(f"--recipe={v['recipe']} sets its own schedule; drop --schedule={v['schedule']}")
        for name in ("freeze_segments", "unfreeze_every"):
            if v[name]:
                fail(
                    f"--recipe={v['recipe']} freezes and unfreezes by itself (--freeze_epochs);"
                    f" drop --{name}={v[name]}"
                )
        if not v["split_at"] and v["layer_decay"] is None:
            fail(
                f"--recipe={v['recipe']} needs segments: give --split_at (e.g. preset) or "
                "--layer_decay"
            )
    if schedule != "sgdr":
        if v["snapshot_at_restarts"]:
            fail(f"--snapshot_at_restarts needs SGDR restarts; the schedule is {schedule}")
        for name in ("first_cycle_epochs", "first_cycle_steps"):
            if v[name] is not None:
                fail(f"--{name}={v[name]} is an SGDR setting; the schedule is {schedule}")
    if schedule in ("one_cycle", "constant") and v["warmup_steps"]:
        fail(
            f"--warmup_steps={v['warmup_steps']} applies to sgdr and cosine; the schedule is "
            f"{schedule}" + (" (it warms up by itself)" if schedule == "one_cycle" else "")
        )
    if schedule != "one_cycle":
        for name in ("pct_start", "div"):
            if v[name] is not None:
                fail(f"--{name}={v[name]} is a one_cycle setting; the schedule is {schedule}")
    if v["cycle_momentum"]:
        if schedule != "one_cycle":
            fail(f"--cycle_momentum needs --schedule=one_cycle (or a recipe); got {schedule}")
        if v["optimizer"] not in config_lib.CYCLE_MOMENTUM_OPTIMIZERS:
            fail(
                f"--cycle_momentum: --optimizer={v['optimizer']} has no momentum to cycle; use "
                + ", ".join(config_lib.CYCLE_MOMENTUM_OPTIMIZERS)
            )


def _averaging_checks(v, fail):
    schedule = "one_cycle" if v["recipe"] != "none" else v["schedule"]
    if v["ensemble_snapshots"] is not None and schedule != "sgdr":
        fail(
            f"--ensemble_snapshots={v['ensemble_snapshots']} ensembles the snapshots taken at "
            f"SGDR restarts; the schedule is {schedule}"
        )
    if v["swa_start_epoch"] is None:
        for name in ("swa_every_epochs", "swa_lr"):
            if v[name] is not None:
                fail(f"--{name}={v[name]} is an SWA setting; give --swa_start_epoch")
    if v["swa_bn_augment"] and v["swa_start_epoch"] is None and v["ema_decay"] is None:
        fail(
            "--swa_bn_augment applies to the SWA and EMA models; give --swa_start_epoch or "
            "--ema_decay"
        )
    if schedule == "sgdr" and v["swa_every_epochs"] is not None and v["swa_lr"] is None:
        fail(
            f"--swa_every_epochs={v['swa_every_epochs']}: with --schedule=sgdr SWA averages at "
            "the end of each cycle; give --swa_lr for a constant rate averaged every "
            "--swa_every_epochs"
        )


def parse_config(argv: list[str], program: str = "run_train.py") -> config_lib.Config:
    """The Config of run_train.py's command line `argv` (without the program name), parsed into
    fresh FlagValues and cross-checked; for scripts and tests that run in-process.

    Raises:
      absl.flags.Error: a bad flag or a failed cross check.
    """
    fv = flags.FlagValues()
    define_flags(fv)
    fv([program, *argv])
    cross_check(fv)
    return to_config(fv)


def to_config(fv: flags.FlagValues) -> config_lib.Config:
    """The frozen Config from parsed flags; the only place flag values are read."""
    values = {}
    for field in config_lib.Config.__dataclass_fields__:
        if field not in fv:
            continue
        value = fv[field].value
        if field in _LIST_FIELDS:
            value = tuple(s.strip() for s in value if s.strip())
        elif field in _FLOAT_LIST_FIELDS and value is not None:
            value = tuple(_float_list(value))
        values[field] = value
    return config_lib.Config(**values)
