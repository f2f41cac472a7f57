"""run_train.py's flags: every flag parsed, validators and cross-checks, exit code 2."""

import subprocess
import sys
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
    "schedule": ("constant", "constant"),
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
    assert set(EVERY_FLAG) | others == set(fv), set(fv) ^ (set(EVERY_FLAG) | others)


def test_every_flag_reaches_the_config():
    args = [f"--{name}={text}" for name, (text, _) in EVERY_FLAG.items()]
    config = flags_lib.to_config(_parse(args))
    for name, (_, expected) in EVERY_FLAG.items():
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


def test_flagfile_round_trip(tmp_path):
    args = [f"--{name}={text}" for name, (text, _) in EVERY_FLAG.items()]
    config = flags_lib.to_config(_parse(args))
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
    (["--lr_mults=1,1", "--lr_spread=10"], "give one of --lr_mults / --lr_spread"),
    (["--lr_spread=0.5"], "--lr_spread=0.5: must be >= 1"),
    (["--first_cycle_epochs=1", "--first_cycle_steps=3"], "--first_cycle_epochs / --first_"),
    (["--optimizer=lamb"], "--optimizer=lamb: value should be one of"),
    (["--strategy=tpu"], "--strategy=tpu: value should be one of"),
    (["--steps_per_loop=0"], "--steps_per_loop=0: 0 is not a positive integer"),
    (["--global_batch_size=0"], "--global_batch_size=0"),
    (["--unfreeze_every=1"], "--unfreeze_every=1.0 needs --freeze_segments >= 1"),
    (["--epochs=-1"], "--epochs=-1.0: must be a positive number of epochs"),
    (["--image_size=abc"], "--image_size"),
]


@pytest.mark.parametrize("extra,message", BAD, ids=[" ".join(b[0]) for b in BAD])
def test_bad_flags_are_rejected_in_process(extra, message):
    base = ["--model_dir=/m", "--train_steps=1"]
    with pytest.raises(flags.Error) as e:
        _parse(base + extra)
    assert message in str(e.value)


def _run(*args, cwd=ROOT):
    return subprocess.run(
        [sys.executable, str(ROOT / "run_train.py"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    "args,message",
    [
        (
            ["--model_dir=/tmp/m", "--train_steps=1", "--max_lr=-1"],
            "run_train.py: error: flag --max_lr=-1.0: must be > 0",
        ),
        (["--train_steps=1"], "run_train.py: error: --model_dir is required"),
        (["--model_dir=/tmp/m"], "give exactly one of --epochs / --train_steps"),
        (["--flagfile=/nonexistent.flags"], "/nonexistent.flags"),
        (["--model_dir=/tmp/m", "--train_steps=1", "extra"], "unexpected positional"),
    ],
)
def test_bad_flags_exit_2_with_one_line(args, message):
    result = _run(*args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0]
    assert "Traceback" not in result.stderr


def test_helpfull_documents_every_flag():
    result = _run("--helpfull")
    assert "Traceback" not in result.stderr  # absl's help flags exit with code 1 by design
    fv = flags.FlagValues()
    flags_lib.define_flags(fv)
    for name in fv:
        assert f"--{name}" in result.stdout or f"--[no]{name}" in result.stdout, name
