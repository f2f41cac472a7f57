"""Epoch-valued settings resolved to steps: a run's length and periods (`Plan`).

A step is one optimizer step on one global batch; an epoch is `steps_per_epoch` whole global
batches (`trainer.data.steps_per_epoch`). The controller cuts compiled loops wherever an
action is due (`trainer.loop.controller`); the plan only says how long things are.
"""

from __future__ import annotations

import dataclasses
import math

from trainer.config import length_error
from trainer.errors import UserError


@dataclasses.dataclass(frozen=True)
class Plan:
    """A run's length and periods in steps.

    Attributes:
        steps_per_epoch: Whole global batches per epoch.
        total_steps: Steps of the whole run.
        first_cycle_steps: Length of SGDR's first cycle (None for a constant schedule).
        eval_every_steps: Steps between evaluations.
        unfreeze_every_steps: Steps between unfreeze events (None: no gradual unfreezing).
        checkpoint_every_steps: Steps between checkpoints.
        steps_per_loop: Most steps in one compiled loop call.
        freeze_segments: Segments frozen at step 0.
        freeze_steps: The fine_tune recipe's phase 1 (head only), in steps; every segment
            trains from this step on. None without the recipe.
    """

    steps_per_epoch: int
    total_steps: int
    first_cycle_steps: float | None
    eval_every_steps: int
    unfreeze_every_steps: int | None
    checkpoint_every_steps: int
    steps_per_loop: int
    freeze_segments: int = 0
    freeze_steps: int | None = None

    def first_trainable_segment(self, step: int) -> int:
        """ULMFiT gradual unfreezing: one more segment trains every `unfreeze_every_steps`.

        With the fine_tune recipe, `freeze_segments` (all but the head) are frozen for the
        first `freeze_steps` and everything trains afterwards.
        """
        if self.freeze_steps is not None:
            return self.freeze_segments if step < self.freeze_steps else 0
        if not self.unfreeze_every_steps:
            return self.freeze_segments
        return max(0, self.freeze_segments - step // self.unfreeze_every_steps)

    def unfreeze_steps(self) -> list[int]:
        """The steps at which one more segment starts to train."""
        if self.freeze_steps is not None:
            return [self.freeze_steps] if self.freeze_steps < self.total_steps else []
        if not self.unfreeze_every_steps:
            return []
        every = self.unfreeze_every_steps
        return [
            every * j for j in range(1, self.freeze_segments + 1) if every * j < self.total_steps
        ]


def epochs_to_steps(epochs: float, steps_per_epoch: int) -> int:
    """`epochs * steps_per_epoch` rounded to the nearest step, at least 1."""
    return max(1, round(epochs * steps_per_epoch))


def resolve(config, steps_per_epoch: int, num_segments: int = 1) -> Plan:
    """Resolves the epoch-valued fields of a `trainer.config.Config` to steps.

    Args:
        config: The run configuration.
        steps_per_epoch: Whole global batches per epoch of the training split.
        num_segments: Segments of the model: the fine_tune recipe freezes all but the last.

    Returns:
        The `Plan`.

    Raises:
        UserError: Both epochs and train_steps given.
    """
    error = length_error(config.epochs, config.train_steps, allow_none=True)
    if error:
        raise UserError(error)
    if config.train_steps is not None:
        total = int(config.train_steps)
    elif config.epochs is None:
        # A placeholder for --list_layers and an LR range test alone; `check_length` refuses it.
        total = steps_per_epoch
    else:
        total = epochs_to_steps(config.epochs, steps_per_epoch)
    freeze_steps = None
    freeze_segments = int(config.freeze_segments)
    if config.recipe == "fine_tune":
        freeze_segments = num_segments - 1  # phase 1 trains the last segment alone
        # fastai's fine_tune(epochs, freeze_epochs): the head-only phase comes first and adds
        # to the length.
        freeze_steps = epochs_to_steps(config.freeze_epochs, steps_per_epoch)
        total += freeze_steps
    first_cycle = None
    if config.schedule == "sgdr":
        if config.first_cycle_steps is not None:
            first_cycle = config.first_cycle_steps
        elif config.first_cycle_epochs is not None:
            first_cycle = config.first_cycle_epochs * steps_per_epoch
        else:
            first_cycle = max(total - config.warmup_steps, 1)  # one cycle over the whole run
        if first_cycle < 1:
            raise UserError(
                f"--first_cycle_epochs={config.first_cycle_epochs} is {first_cycle:.3g} steps at "
                f"{steps_per_epoch} steps per epoch; an SGDR cycle must be at least 1 step"
            )
    unfreeze = None
    if config.unfreeze_every:
        unfreeze = epochs_to_steps(config.unfreeze_every, steps_per_epoch)
    return Plan(
        steps_per_epoch=steps_per_epoch,
        total_steps=total,
        first_cycle_steps=first_cycle,
        eval_every_steps=epochs_to_steps(config.eval_every_epochs, steps_per_epoch),
        unfreeze_every_steps=unfreeze,
        checkpoint_every_steps=max(1, int(config.checkpoint_every_steps)),
        steps_per_loop=max(1, int(config.steps_per_loop)),
        freeze_segments=freeze_segments,
        freeze_steps=freeze_steps,
    )


def epoch_of(step: int, steps_per_epoch: int) -> float:
    """Fractional epochs done after `step` steps."""
    return step / steps_per_epoch if steps_per_epoch else math.nan


def check_length(config) -> None:
    """Raises `UserError` unless exactly one of epochs / train_steps is given (for training)."""
    error = length_error(config.epochs, config.train_steps)
    if error:
        raise UserError(error)
