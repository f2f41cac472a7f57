"""Validators beside each flag definition, and flag defaults from `Config` (one source)."""

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
