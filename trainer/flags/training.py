"""Flags of the optimizer, the schedule, the LR range test, the recipe and the segments."""

from __future__ import annotations

import math

from absl import flags

from trainer import config as config_lib
from trainer.flags.validators import (
    _default,
    _float_list,
    _FloatOrAutoParser,
    _is_float_list,
    _non_negative,
    _positive,
    _positive_float_list,
    _register,
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
        "--lr_find) and train at its suggestion (--lr_find_suggestion, valley by default; the "
        "chosen number goes into flags.txt).",
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


def _float32_rate(x):
    return math.isfinite(x) and 1e-30 <= x <= 1e30


def _define_lr_find(fv):
    flags.DEFINE_bool(
        "lr_find",
        _default("lr_find"),
        "Run Smith's LR range test and stop (fastai's lr_find, its own step): the head's "
        "learning rate grows exponentially from --lr_find_start to --lr_find_end over "
        "--lr_find_steps steps, the segment multipliers fixed; writes lr_find.png and "
        "lr_find.json to --model_dir and prints the suggested --max_lr. No training, "
        "checkpoint or export, whatever the flagfile sets (--epochs etc. are ignored). A test "
        "recorded in --model_dir with the same settings is shown again, not repeated (delete "
        "lr_find.json to repeat it). --max_lr=auto tests and then trains.",
        flag_values=fv,
    )
    flags.DEFINE_float(
        "lr_find_start",
        _default("lr_find_start"),
        "LR range test: first learning rate, in [1e-30, 1e30] (float32 rates).",
        flag_values=fv,
    )
    _register(fv, "lr_find_start", _float32_rate, "in [1e-30, 1e30]")
    flags.DEFINE_float(
        "lr_find_end",
        _default("lr_find_end"),
        "LR range test: last learning rate (> --lr_find_start), in [1e-30, 1e30].",
        flag_values=fv,
    )
    _register(fv, "lr_find_end", _float32_rate, "in [1e-30, 1e30]")
    flags.DEFINE_integer(
        "lr_find_steps",
        _default("lr_find_steps"),
        f"LR range test: steps (batches) from start to end, at least "
        f"{config_lib.LR_FIND_MIN_STEPS} (the suggestions need 16 points after fastai's "
        "trimming of the first 10% and last 5); it stops early once the smoothed loss exceeds "
        "4x its minimum.",
        flag_values=fv,
    )
    _register(
        fv,
        "lr_find_steps",
        lambda x: x >= config_lib.LR_FIND_MIN_STEPS,
        f">= {config_lib.LR_FIND_MIN_STEPS} (the suggestions need 16 points after trimming)",
    )
    flags.DEFINE_enum(
        "lr_find_suggestion",
        _default("lr_find_suggestion"),
        config_lib.LR_FIND_SUGGESTIONS,
        "The range test's suggestion --max_lr=auto trains at (all four are printed and "
        "plotted): valley (fastai's default), steep (the steepest descent), minimum (the "
        "smallest loss's rate / 10) or slide. In EXPERIMENTS.md's study valley chose 3-10x "
        "below the rate a validation grid chose.",
        flag_values=fv,
    )


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
        "0.65-0.75): every layer with weights (or block, --layer_decay_groups) is its own "
        "segment, the l-th of L+1 at multiplier D**(L - l), the head at 1. Replaces "
        "--split_at / --lr_mults / --lr_spread.",
        flag_values=fv,
    )
    _register(fv, "layer_decay", lambda x: 0 < x <= 1, "in (0, 1]")
    flags.DEFINE_string(
        "layer_decay_groups",
        _default("layer_decay_groups"),
        "What one --layer_decay step is: layer (every layer with weights), block (the "
        "backbone's residual/stage blocks, timm's and ConvNeXt's grouping: a BatchNorm or a "
        "depthwise conv shares its block's rate), stage, or layer-name regular expressions "
        "separated by ';' for your own model (each match starts a group; e.g. "
        "'encoder_layer_\\d+'). --list_layers shows each layer's group and multiplier.",
        flag_values=fv,
    )
    _register(
        fv, "layer_decay_groups", lambda v: bool(v.strip()), "layer, block, stage or patterns"
    )
    flags.DEFINE_enum(
        "adaptive_lr",
        _default("adaptive_lr"),
        config_lib.ADAPTIVE_LR,
        "rgn: choose each variable's rate at every step from its relative gradient norm "
        "(Auto-RGN, Lee et al. ICLR 2023): m = RGN / max RGN, RGN = ||grad|| / ||weight||, "
        "times the segment's static multiplier; none: only the static multipliers.",
        flag_values=fv,
    )
    flags.DEFINE_float(
        "adaptive_lr_floor",
        _default("adaptive_lr_floor"),
        "--adaptive_lr: the smallest multiplier, in [0, 1] (0: a variable may stand still).",
        flag_values=fv,
    )
    _register(fv, "adaptive_lr_floor", lambda x: math.isfinite(x) and 0 <= x <= 1, "in [0, 1]")
    flags.DEFINE_enum(
        "adaptive_lr_granularity",
        _default("adaptive_lr_granularity"),
        config_lib.ADAPTIVE_GRANULARITIES,
        "--adaptive_lr: one relative gradient norm per variable (tensor, the paper's) or per "
        "layer (all its variables together).",
        flag_values=fv,
    )
    flags.DEFINE_bool(
        "train_bn",
        _default("train_bn"),
        "Keep the BatchNorm layers of frozen segments training (their scale/offset train and "
        "their statistics follow the data; fastai's train_bn). Default: on with "
        "--recipe=fine_tune, off otherwise (Keras freezes BatchNorm into inference mode).",
        flag_values=fv,
    )
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
