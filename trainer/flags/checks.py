"""The checks between flags, in one place; run right after parsing."""

from __future__ import annotations

from absl import flags

from trainer import config as config_lib

# Pairs of flags of which at most one may be given: absl's own check, registered with the
# definitions (`mark_exclusive`), names both flags and their values.
MUTUALLY_EXCLUSIVE = (
    ("lr_mults", "lr_spread"),
    ("first_cycle_epochs", "first_cycle_steps"),
)


def mark_exclusive(fv: flags.FlagValues) -> None:
    for names in MUTUALLY_EXCLUSIVE:
        flags.mark_flags_as_mutual_exclusive(names, flag_values=fv)


def cross_check(fv: flags.FlagValues) -> None:
    """All checks that involve more than one flag, in one place; run right after parsing.

    Raises:
      flags.ValidationError: with one line naming the flags and their values.
    """
    v = {name: fv[name].value for name in fv}

    def fail(msg):
        raise flags.ValidationError(msg)

    error = config_lib.length_error(
        v["epochs"], v["train_steps"], allow_none=v["list_layers"] or v["lr_find"]
    )
    if error:
        fail(error)
    if v["layer_decay"] is not None:
        for name in ("split_at", "lr_mults", "lr_spread"):
            if v[name]:
                value = ",".join(v[name]) if isinstance(v[name], list) else v[name]
                fail(
                    f"--layer_decay={v['layer_decay']} makes every layer with weights a segment;"
                    f" drop --{name}={value}"
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
    _model_checks(v, fail)
    _schedule_checks(fv, v, fail)
    _averaging_checks(v, fail)


def _model_checks(v, fail):
    user_model = v["model"].endswith(".keras") or ":" in v["model"]
    if not user_model:
        for name, default in (("new_head", None), ("custom_objects", None), ("input_scale", "raw")):
            if v[name] != default:
                fail(
                    f"--{name}={v[name]} applies to --model=PATH.keras or module:function; "
                    f"--model={v['model']} has its own preprocessing and a new head"
                )
    elif v["model"].endswith(".keras") and v["weights"] != "none":
        fail(
            f"--weights={v['weights']}: --model={v['model']} brings its own weights; drop --weights"
        )
    if v["layer_decay_groups"].strip() != "layer" and v["layer_decay"] is None:
        fail(f"--layer_decay_groups={v['layer_decay_groups']} needs --layer_decay")
    if v["adaptive_lr"] == "none":
        for name, default in (("adaptive_lr_floor", 0.0), ("adaptive_lr_granularity", "tensor")):
            if v[name] != default:
                fail(f"--{name}={v[name]} is an --adaptive_lr setting; give --adaptive_lr=rgn")
    frozen = v["freeze_segments"] or v["recipe"] != "none"
    if v["train_bn"] and not frozen:
        fail(
            "--train_bn keeps the BatchNorm of frozen segments training, but nothing is frozen; "
            "give --freeze_segments or --recipe=fine_tune"
        )


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
