"""run_train.py's flags: every flag parsed, validators and cross-checks, in-process."""

import os
from pathlib import Path

import pytest
from absl import flags

from trainer import config as config_lib
from trainer import flags as flags_lib

ROOT = Path(__file__).resolve().parents[1]

# Every documented flag with a non-default value, and the Config value it must produce.
EVERY_FLAG = {
    "dataset": ("folder:/data/pets", "folder:/data/pets"),
    "data_dir": ("/tfds", "/tfds"),
    "train_split": ("train[:90%]", "train[:90%]"),
    "eval_split": ("train[90%:]", "train[90%:]"),
    "skip_corrupt": ("true", True),
    "augment": ("false", False),
    "cache": ("none", "none"),
    "eval_crop": ("0.9", 0.9),
    "synthetic_train_size": ("100", 100),
    "synthetic_test_size": ("50", 50),
    "model": ("resnet50", "resnet50"),
    "weights": ("imagenet", "imagenet"),
    "head": ("article", "article"),
    "image_size": ("224", 224),
    "num_classes": ("7", 7),
    "global_batch_size": ("64", 64),
    "train_steps": ("123", 123),
    "optimizer": ("adamw", "adamw"),
    "momentum": ("0.8", 0.8),
    "weight_decay": ("0.01", 0.01),
    "clipnorm": ("1.5", 1.5),
    "max_lr": ("0.02", 0.02),
    "min_lr": ("0.001", 0.001),
    "first_cycle_steps": ("40", 40),
    "cycle_mult": ("1.5", 1.5),
    "max_lr_decay": ("0.5", 0.5),
    "warmup_steps": ("10", 10),
    "split_at": ("3,conv4_block1_1_conv", ("3", "conv4_block1_1_conv")),
    "lr_mults": ("0.001,0.1,1", (0.001, 0.1, 1.0)),
    "freeze_segments": ("1", 1),
    "unfreeze_every": ("2", 2.0),
    "strategy": ("mirrored", "mirrored"),
    "steps_per_loop": ("7", 7),
    "jit_compile": ("true", True),
    "mixed_precision": ("mixed_bfloat16", "mixed_bfloat16"),
    "eval_every_epochs": ("0.5", 0.5),
    "checkpoint_every_steps": ("99", 99),
    "keep_checkpoints": ("5", 5),
    "snapshot_at_restarts": ("true", True),
    "seed": ("42", 42),
    "progress": ("false", False),
    "model_dir": ("/tmp/run", "/tmp/run"),
}
# Flags that exclude some of the above, each group parsed on its own.
GROUPS = {
    "one_cycle": {
        "schedule": ("one_cycle", "one_cycle"),
        "pct_start": ("0.3", 0.3),
        "div": ("10", 10.0),
        "div_final": ("1e4", 1e4),
        "moms": ("0.9,0.8,0.85", (0.9, 0.8, 0.85)),
        "cycle_momentum": ("false", False),
        "lr_find": ("true", True),
        "lr_find_start": ("1e-6", 1e-6),
        "lr_find_end": ("1", 1.0),
        "lr_find_steps": ("50", 50),
        "lr_find_suggestion": ("minimum", "minimum"),
    },
    "recipe": {
        "recipe": ("fine_tune", "fine_tune"),
        "freeze_epochs": ("2", 2.0),
        "layer_decay": ("0.7", 0.7),
        "max_lr": ("auto", "auto"),
        "layer_decay_groups": ("block", "block"),
        "train_bn": ("false", False),
        "adaptive_lr": ("rgn", "rgn"),
        "adaptive_lr_floor": ("0.05", 0.05),
        "adaptive_lr_granularity": ("layer", "layer"),
    },
    "user_model": {
        "model": ("nets.mine:build", "nets.mine:build"),
        "new_head": ("true", True),
        "custom_objects": ("nets.layers", "nets.layers"),
        "input_scale": ("imagenet_torch", "imagenet_torch"),
    },
    "averaging": {
        "ensemble_snapshots": ("3", 3),
        "swa_start_epoch": ("2.5", 2.5),
        "swa_every_epochs": ("0.5", 0.5),
        "swa_lr": ("0.01", 0.01),
        "swa_bn_augment": ("true", True),
        "ema_decay": ("0.999", 0.999),
    },
}


def _parse(args):
    fv = flags.FlagValues()
    flags_lib.define_flags(fv)
    fv(["run_train.py", *args])
    flags_lib.cross_check(fv)
    return fv


def test_every_config_field_has_a_flag():
    fv = flags.FlagValues()
    flags_lib.define_flags(fv)
    missing = [f for f in config_lib.Config.__dataclass_fields__ if f not in fv]
    assert missing == []
    # The remaining length/cycle flags are tested separately (they exclude their partners).
    others = {"epochs", "first_cycle_epochs", "lr_spread", "list_layers", "restart"}
    named = set(EVERY_FLAG).union(*GROUPS.values()) | others
    assert named == set(fv), set(fv) ^ named


def _group_args(group):
    if group is None:
        return [f"--{name}={text}" for name, (text, _) in EVERY_FLAG.items()]
    base = ["--model_dir=/m", "--train_steps=3"]
    return base + [f"--{name}={text}" for name, (text, _) in GROUPS[group].items()]


@pytest.mark.parametrize("group", [None, *GROUPS])
def test_every_flag_reaches_the_config(group):
    config = flags_lib.to_config(_parse(_group_args(group)))
    for name, (_, expected) in (EVERY_FLAG if group is None else GROUPS[group]).items():
        assert getattr(config, name) == expected, name


def test_epoch_valued_alternatives():
    fv = _parse(["--model_dir=/m", "--epochs=2.5", "--first_cycle_epochs=0.5", "--lr_spread=100"])
    config = flags_lib.to_config(fv)
    assert (config.epochs, config.first_cycle_epochs, config.lr_spread) == (2.5, 0.5, 100.0)
    assert config.train_steps is None and config.lr_mults is None
    assert _parse(["--model_dir=/m", "--list_layers"])["list_layers"].value is True


def test_defaults_match_config_defaults():
    config = flags_lib.to_config(_parse(["--model_dir=/m", "--train_steps=1"]))
    expected = config_lib.Config(model_dir="/m", train_steps=1)
    assert config == expected


@pytest.mark.parametrize("group", [None, *GROUPS])
def test_flagfile_round_trip(tmp_path, group):
    config = flags_lib.to_config(_parse(_group_args(group)))
    path = tmp_path / "resolved.flags"
    path.write_text(config.to_flagfile())
    again = flags_lib.to_config(_parse([f"--flagfile={path}"]))
    assert again == config


def test_later_flags_override_the_flagfile(tmp_path):
    path = tmp_path / "a.flags"
    path.write_text("--model_dir=/m\n--train_steps=5\n--max_lr=0.1\n")
    config = flags_lib.to_config(_parse([f"--flagfile={path}", "--max_lr=0.2"]))
    assert (config.train_steps, config.max_lr) == (5, 0.2)


BAD = [
    (["--max_lr=-1"], "--max_lr=-1.0: must be > 0"),
    (["--max_lr=nan"], "--max_lr=nan: must be > 0"),
    (["--min_lr=-0.1"], "--min_lr=-0.1: must be >= 0"),
    (["--min_lr=0.5", "--max_lr=0.1"], "--min_lr must be <= --max_lr; got min_lr=0.5"),
    (["--cycle_mult=0.5"], "--cycle_mult=0.5: must be >= 1"),
    (["--max_lr_decay=1.5"], "--max_lr_decay=1.5: must be in (0, 1]"),
    (["--momentum=1"], "--momentum=1.0: must be in [0, 1)"),
    (["--lr_mults=1,x"], "--lr_mults=['1', 'x']: must be a list of positive numbers"),
    (["--lr_mults=0,1"], "--lr_mults=['0', '1']: must be a list of positive numbers"),
    (["--lr_mults=1,1", "--lr_spread=10"], "At most one of (lr_mults, lr_spread)"),
    (
        ["--first_cycle_steps=3", "--first_cycle_epochs=1"],
        "flags first_cycle_epochs=1.0, first_cycle_steps=3: At most one of",
    ),
    (["--lr_spread=0.5"], "--lr_spread=0.5: must be >= 1"),
    (["--optimizer=lamb"], "--optimizer=lamb: value should be one of"),
    (["--strategy=tpu"], "--strategy=tpu: value should be one of"),
    (["--steps_per_loop=0"], "--steps_per_loop=0: 0 is not a positive integer"),
    (["--global_batch_size=0"], "--global_batch_size=0"),
    (["--unfreeze_every=1"], "--unfreeze_every=1.0 needs --freeze_segments >= 1"),
    (["--epochs=-1"], "--epochs=-1.0: must be a positive number of epochs"),
    (["--image_size=abc"], "--image_size"),
    (["--cache=disk"], "--cache=disk: value should be one of"),
    (["--eval_crop=0"], "--eval_crop=0.0: must be in (0, 1]"),
    (["--eval_crop=1.5"], "--eval_crop=1.5: must be in (0, 1]"),
    (["--max_lr=fast"], "--max_lr"),
    (["--lr_find_start=1", "--lr_find_end=0.1"], "--lr_find_start must be < --lr_find_end"),
    (["--lr_find_start=1", "--lr_find_end=1"], "--lr_find_start must be < --lr_find_end"),
    (["--lr_find_steps=22"], "--lr_find_steps=22: must be >= 23 (the suggestions need 16"),
    (["--lr_find_start=1e-300"], "--lr_find_start=1e-300: must be in [1e-30, 1e30]"),
    (["--lr_find_suggestion=lowest"], "--lr_find_suggestion=lowest: value should be one of"),
    (["--adaptive_lr=foo"], "--adaptive_lr=foo: value should be one of"),
    (
        ["--adaptive_lr=rgn", "--adaptive_lr_floor=1.5"],
        "--adaptive_lr_floor=1.5: must be in [0, 1]",
    ),
    (["--adaptive_lr_floor=0.1"], "--adaptive_lr_floor=0.1 is an --adaptive_lr setting"),
    (["--train_bn"], "--train_bn keeps the BatchNorm of frozen segments training, but nothing"),
    (["--layer_decay_groups=block"], "--layer_decay_groups=block needs --layer_decay"),
    (["--input_scale=unit"], "--input_scale=unit applies to --model=PATH.keras or module:function"),
    (["--model=m.keras", "--weights=imagenet"], "--weights=imagenet: --model=m.keras brings its"),
    (["--layer_decay=0"], "--layer_decay=0.0: must be in (0, 1]"),
    (["--layer_decay=1.5"], "--layer_decay=1.5: must be in (0, 1]"),
    (["--layer_decay=0.7", "--split_at=3"], "--layer_decay=0.7 makes every layer with weights"),
    (["--layer_decay=0.7", "--lr_spread=10"], "drop --lr_spread=10.0"),
    (["--recipe=fine_tune", "--split_at=2", "--freeze_segments=1"], "drop --freeze_segments=1"),
    (["--recipe=fine_tune", "--split_at=2", "--schedule=sgdr"], "drop --schedule=sgdr"),
    (["--recipe=fine_tune"], "--recipe=fine_tune needs segments"),
    (["--schedule=one_cycle", "--warmup_steps=5"], "it warms up by itself"),
    (["--schedule=cosine", "--first_cycle_steps=5"], "is an SGDR setting"),
    (["--schedule=cosine", "--snapshot_at_restarts"], "--snapshot_at_restarts needs SGDR"),
    (["--pct_start=0.3"], "--pct_start=0.3 is a one_cycle setting; the schedule is sgdr"),
    (["--schedule=one_cycle", "--pct_start=1"], "--pct_start=1.0: must be in [0, 1)"),
    (["--schedule=one_cycle", "--div=0.5"], "--div=0.5: must be >= 1"),
    (["--schedule=one_cycle", "--moms=0.9,0.8"], "must be three numbers in [0, 1)"),
    (["--schedule=one_cycle", "--moms=0.9,1,0.9"], "must be three numbers in [0, 1)"),
    (["--cycle_momentum"], "--cycle_momentum needs --schedule=one_cycle"),
    (["--schedule=one_cycle", "--cycle_momentum", "--optimizer=sgd"], "has no momentum"),
    (["--ensemble_snapshots=1"], "--ensemble_snapshots=1: must be >= 2"),
    (["--schedule=cosine", "--ensemble_snapshots=2"], "taken at SGDR restarts; the schedule is co"),
    (["--recipe=fine_tune", "--split_at=2", "--ensemble_snapshots=2"], "schedule is one_cycle"),
    (["--swa_start_epoch=-1"], "--swa_start_epoch=-1.0: must be a number of epochs >= 0"),
    (["--swa_every_epochs=2"], "--swa_every_epochs=2.0 is an SWA setting; give --swa_start_ep"),
    (["--swa_lr=0.01"], "--swa_lr=0.01 is an SWA setting; give --swa_start_epoch"),
    (["--swa_start_epoch=1", "--swa_lr=0"], "--swa_lr=0.0: must be > 0"),
    (["--swa_start_epoch=1", "--swa_every_epochs=2"], "with --schedule=sgdr SWA averages at"),
    (["--swa_bn_augment"], "--swa_bn_augment applies to the SWA and EMA models"),
    (["--ema_decay=1"], "--ema_decay=1.0: must be in (0, 1)"),
    (["--ema_decay=0"], "--ema_decay=0.0: must be in (0, 1)"),
]


@pytest.mark.parametrize("extra,message", BAD, ids=[" ".join(b[0]) for b in BAD])
def test_bad_flags_are_rejected_in_process(extra, message):
    base = ["--model_dir=/m", "--train_steps=1"]
    with pytest.raises(flags.Error) as e:
        _parse(base + extra)
    assert message in str(e.value)


@pytest.mark.parametrize(
    "args,message",
    [
        (
            ["--model_dir=/tmp/m", "--train_steps=1", "--max_lr=-1"],
            "flag --max_lr=-1.0: must be > 0",
        ),
        (["--model_dir=/tmp/m"], "give exactly one of --epochs / --train_steps"),
        (["--flagfile=/nonexistent.flags"], "/nonexistent.flags"),
        (
            ["--model_dir=/tmp/m", "--train_steps=1", "--lr_find_start=2", "--lr_find_end=1"],
            "--lr_find_start must be < --lr_find_end",
        ),
        (
            ["--model_dir=/tmp/m", "--train_steps=1", "--ensemble_snapshots=1"],
            "flag --ensemble_snapshots=1: must be >= 2",
        ),
    ],
)
def test_bad_command_lines_are_flag_errors(args, message):
    # run_train.py's whole command line, parsed in-process as run_train.parse_flags does: each
    # flags.Error is what it prints after "run_train.py: error: " (one line, exit code 2; the
    # process-level contract is test_run_train.test_user_error_exits_2_with_one_line's).
    with pytest.raises(flags.Error) as e:
        flags_lib.parse_config(args)
    assert message in str(e.value)


def test_model_dir_defaults_to_runs_under_the_current_directory():
    assert flags_lib.parse_config(["--train_steps=1"]).model_dir == os.path.join("runs", "run")


def test_helpfull_documents_every_flag():
    # What run_train.py --helpfull prints: absl's HelpfullFlag writes FLAGS.get_help().
    fv = flags.FlagValues()
    flags_lib.define_flags(fv)
    text = fv.get_help()
    for name in fv:
        assert f"--{name}" in text or f"--[no]{name}" in text, name


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.flags")), ids=lambda p: p.name)
def test_every_shipped_flagfile_parses(path):
    config = flags_lib.parse_config([f"--flagfile={path}"])
    assert config.model_dir in (f"runs/{path.stem}",) or config.model_dir.startswith("runs/")
    assert config.epochs or config.train_steps
    assert path.read_text().startswith("#")  # the header: what it reproduces, command, result
