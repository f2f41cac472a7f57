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
