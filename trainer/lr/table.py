"""The run's one table of segments: split points and multipliers together.

Everything that needs the segments reads them from here (STYLE 7 and 14): the segmented
optimizer's multipliers, freezing, the start-up table, `--list_layers`, the learning rates in
TensorBoard and in error messages.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from trainer.errors import UserError
from trainer.lr import optimizers, segments


def resolve_split_at(config, model=None) -> tuple:
    """`config.split_at` with `preset` / `preset:NAME` entries expanded to layer names (a
    user model's presets come from its built `model`)."""
    out = []
    for entry in config.split_at:
        entry = str(entry).strip()
        if entry == "preset" or entry.startswith("preset:"):
            import models  # the model zoo is only needed for presets and `build`

            name = entry.partition(":")[2] or "default"
            out.extend(models.split_preset(config.model, name, model=model))
        else:
            out.append(entry)
    return tuple(out)


def layer_decay_split(model, groups: str = "layer") -> tuple[int, ...]:
    """Split points making every layer with trainable weights (or every block) a segment.

    Args:
        model: The built model.
        groups: "layer": every layer with trainable weights is a segment; layers without
            weights join the segment of the weighted layer before them (the first segment for
            those in front of the first weighted layer). "block" / "stage": the backbone's
            residual blocks or stages (`models.block_starts`: timm's and ConvNeXt-V2's
            grouping), stem first and head last; or layer-name regular expressions separated
            by ";" (each match starts a group), for a user's own model.
    """
    rows = segments.layer_rows(model, ())
    weighted = [r.index for r in rows if r.trainable_params]
    if not weighted:
        raise UserError("--layer_decay: the model has no layer with trainable weights")
    groups = groups.strip()
    if groups == "layer":
        return tuple(weighted[1:])
    import models

    paths = [f"{r.scope}/{r.name}" if r.scope else r.name for r in rows]
    spec = groups if groups in ("block", "stage") else [p for p in groups.split(";") if p]
    return tuple(models.block_starts(paths, spec, [r.trainable_params > 0 for r in rows]))


def layer_decay_mults(num_segments: int, decay: float) -> tuple[float, ...]:
    """`decay ** (L - l)` for segment l of L + 1: the head at 1 (timm's layer-wise decay).

    Raises:
        UserError: The first segment's multiplier underflows float32 (naming --layer_decay).
    """
    last = num_segments - 1
    mults = tuple(float(decay) ** (last - i) for i in range(num_segments))
    if mults[0] < np.finfo(np.float32).tiny:
        raise UserError(
            f"--layer_decay={decay:g}: {decay:g}**{last} (the first of {num_segments} segments) "
            "is below float32's smallest normal number; use a decay closer to 1"
        )
    return mults


def resolve_lr_mults(config, num_segments: int) -> tuple[float, ...]:
    """One multiplier per segment from --layer_decay, --lr_mults, --lr_spread, or all 1.

    The fine_tune recipe spreads its segments over 100x unless told otherwise (fastai's
    `fine_tune(lr_mult=100)`).
    """
    if config.layer_decay is not None:
        return layer_decay_mults(num_segments, config.layer_decay)
    if config.lr_mults is not None:
        if len(config.lr_mults) != num_segments:
            raise UserError(
                f"--lr_mults has {len(config.lr_mults)} values but --split_at gives "
                f"{num_segments} segments"
            )
        return tuple(float(m) for m in config.lr_mults)
    if config.lr_spread is not None:
        return optimizers.mults_from_spread(num_segments, config.lr_spread)
    if config.recipe == "fine_tune":
        return optimizers.mults_from_spread(num_segments, FINE_TUNE_SPREAD)
    return (1.0,) * num_segments


# fastai's fine_tune: the second phase trains from base_lr / 100 (input) to base_lr (head).
FINE_TUNE_SPREAD = 100.0


def peak_lr(schedule) -> float:
    """The base schedule's highest learning rate (a constant's value)."""
    if not callable(schedule):
        return float(schedule)
    for name in ("peak_lr", "max_lr"):
        value = getattr(schedule, name, None)
        if isinstance(value, (int, float)):
            return float(value)
    return float(np.asarray(schedule(0)))


def schedule_values(schedule, steps) -> np.ndarray:
    """`schedule(s)` for every step s of `steps`, as float64 [len(steps)].

    One call on the vector of steps when the schedule takes one (every schedule of
    `schedules/` does; the values equal step-by-step calls bit for bit, tested), else one
    call per step. A float is a constant schedule.
    """
    steps = np.asarray(steps, np.int64)
    if not callable(schedule):
        return np.full(steps.shape, float(schedule))
    try:
        values = np.asarray(schedule(steps), np.float64)
    except (TypeError, ValueError):
        values = None
    if values is None or values.shape != steps.shape:
        values = np.array([float(np.asarray(schedule(int(s)))) for s in steps], np.float64)
    return values


@dataclasses.dataclass(frozen=True)
class SegmentTable:
    """Segments of one model and their learning rates.

    Attributes:
        split_at: Split points (layer indices or names), presets expanded.
        segment_of: `{variable.path: segment}` (`trainer.lr.segments.assign`).
        lr_mults: One multiplier per segment, input to head.

    The learning rate of segment s at step t is `lr_mults[s] * schedule(t)`, for the run's base
    (head) schedule: a float or a `LearningRateSchedule`.
    """

    split_at: tuple
    segment_of: dict
    lr_mults: tuple[float, ...]

    @classmethod
    def from_config(cls, config, model) -> SegmentTable:
        """Resolves --split_at or --layer_decay, the multipliers, and checks freezing."""
        if config.layer_decay is not None:
            split_at = layer_decay_split(model, config.layer_decay_groups)
        else:
            split_at = resolve_split_at(config, model)
        segment_of = segments.assign(model, split_at)
        num_segments = max(segment_of.values()) + 1
        if config.recipe != "none" and num_segments < 2:
            raise UserError(
                f"--recipe={config.recipe} trains the head alone first, so it needs at least "
                f"2 segments; --split_at={','.join(map(str, split_at))} gives {num_segments}"
            )
        if config.freeze_segments >= num_segments:
            raise UserError(
                f"--freeze_segments={config.freeze_segments} must be smaller than the number "
                f"of segments ({num_segments}, from --split_at)"
            )
        return cls(split_at, segment_of, resolve_lr_mults(config, num_segments))

    @property
    def num_segments(self) -> int:
        return len(self.lr_mults)

    def learning_rates(self, schedule, step: int) -> list[float]:
        """Each segment's learning rate at global step `step` of the base `schedule`."""
        lr = float(np.asarray(schedule(step))) if callable(schedule) else float(schedule)
        return [m * lr for m in self.lr_mults]

    def learning_rates_over(self, schedule, steps) -> np.ndarray:
        """[len(steps), num_segments]: each segment's learning rate at each step."""
        return np.outer(schedule_values(schedule, steps), np.asarray(self.lr_mults, np.float64))

    def format(self, model, peak: float) -> str:
        """Segment, layers, parameters, multiplier and peak learning rate, one row each."""
        rows = segments.layer_rows(model, self.split_at)
        lines = ["segment  layers      params      lr_mult   peak lr"]
        for s in range(self.num_segments):
            mine = [r for r in rows if r.segment == s]
            params = sum(r.trainable_params for r in mine)
            lines.append(
                f"{s:>7}  {mine[0].index:>4}-{mine[-1].index:<5} {params:>10}  "
                f"{self.lr_mults[s]:>8.4g}  {self.lr_mults[s] * peak:.4g}"
            )
        return "\n".join(lines)

    def layer_report(self, model, peak: float) -> str:
        """The --list_layers table: every layer with its segment, then the per-segment lrs."""
        return segments.format_layer_table(
            model, self.split_at, lr_mults=self.lr_mults, base_lr=peak
        )
