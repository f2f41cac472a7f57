"""run_train.py's command line: absl flag definitions, their validators, and the frozen Config.

Every flag has help with its unit and a validator beside its definition; cross-flag checks live
in one place (`_cross_checks`). Nothing here touches the filesystem or TensorFlow, so a bad flag
fails before any heavy work. Library code never reads FLAGS: `to_config(flag_values)` turns
them into a `trainer.config.Config` once.

The flags are defined on a `FlagValues` passed in (absl's global FLAGS in run_train.py, a fresh
one in tests).
"""

from __future__ import annotations

from absl import flags

from trainer import config as config_lib
from trainer.flags.checks import cross_check, mark_exclusive
from trainer.flags.data_model import _define_data, _define_length, _define_model
from trainer.flags.execution import _define_averaging, _define_execution
from trainer.flags.training import (
    _define_lr_find,
    _define_optimizer,
    _define_recipe,
    _define_schedule,
    _define_segments,
)
from trainer.flags.validators import (
    _FLOAT_LIST_FIELDS,
    _LIST_FIELDS,
    MAX_GLOBAL_BATCH,
    MAX_IMAGE_SIZE,
    MAX_SYNTHETIC,
    _float_list,
)

__all__ = [
    "MAX_GLOBAL_BATCH",
    "MAX_IMAGE_SIZE",
    "MAX_SYNTHETIC",
    "cross_check",
    "define_flags",
    "parse_config",
    "to_config",
]


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
    mark_exclusive(fv)


def parse_config(argv: list[str], program: str = "run_train.py") -> config_lib.Config:
    """The Config of run_train.py's command line `argv` (without the program name), parsed into
    fresh FlagValues and cross-checked; for scripts and tests that run in-process.

    Raises:
      absl.flags.Error: a bad flag or a failed cross check.
    """
    argv = resolve_flagfiles([program, *argv])
    fv = flags.FlagValues()
    define_flags(fv)
    fv(argv)
    cross_check(fv)
    return to_config(fv, default_model_dir(argv))


RUNS_DIR = "runs"  # default run directories: runs/<flagfile name>, as Lightning's lightning_logs


def resolve_flagfiles(argv: list[str]) -> list[str]:
    """`--flagfile=NAME` (no directory, no .flags, no such file) -> a shipped configs/NAME.flags."""
    import os

    out = []
    for arg in argv:
        if arg.startswith("--flagfile="):
            name = arg.partition("=")[2]
            if not os.path.exists(name):
                import configs

                shipped = configs.path(name)
                if shipped is not None:
                    arg = f"--flagfile={shipped}"
        out.append(arg)
    return out


def default_model_dir(argv: list[str]) -> str:
    """runs/<name of the last --flagfile on the command line> (runs/run without one), under
    the current directory: each user and each flagfile gets its own run."""
    import os

    names = [a.partition("=")[2] for a in argv if a.startswith("--flagfile=")]
    stem = os.path.splitext(os.path.basename(names[-1]))[0] if names else "run"
    return os.path.join(RUNS_DIR, stem or "run")


def to_config(fv: flags.FlagValues, model_dir: str | None = None) -> config_lib.Config:
    """The frozen Config from parsed flags; the only place flag values are read.

    `model_dir` is the default run directory when --model_dir is not given
    (`default_model_dir`).
    """
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
    if not values.get("model_dir"):
        if not model_dir:
            raise flags.ValidationError("--model_dir is required (where the run's files go)")
        values["model_dir"] = model_dir
    return config_lib.Config(**values)
