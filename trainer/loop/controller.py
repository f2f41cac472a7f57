"""The outer loop: run the trainer up to the next boundary, then every action that is due.

    controller = Controller(trainer, actions, total_steps=plan.total_steps,
                            steps_per_loop=plan.steps_per_loop)
    controller.run()   # from the trainer's global step to total_steps

The shape is Orbit's (`orbit.Controller` + actions): plain Python around one compiled loop.
There is one global step, the trainer's (`Trainer.step`, a checkpointed variable); every
boundary derives from it. An action says *when* it is due with a `When`, and one predicate,
`itstime`, decides (compare big_vision's `u.itstime`). A compiled loop always ends where some
action is due, so adding behaviour means adding an action, never a branch in this loop.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence


@dataclasses.dataclass(frozen=True)
class When:
    """When an action is due, in global steps.

    Attributes:
        every: Due at every positive multiple of this many steps.
        steps: Due at these steps.
        at_end: Due at the last step of the run.
        each_loop: Due after every compiled loop (a progress bar, a signal check). It never
            cuts a loop short by itself.
    """

    every: int | None = None
    steps: tuple[int, ...] = ()
    at_end: bool = False
    each_loop: bool = False

    def __post_init__(self):
        if self.every is not None and self.every < 1:
            raise ValueError(f"Argument `every` must be >= 1. Received: every={self.every}")


def itstime(step: int, when: When, total_steps: int) -> bool:
    """Whether an action with schedule `when` is due after global step `step`."""
    if when.each_loop:
        return True
    if when.at_end and step == total_steps:
        return True
    if when.every and step > 0 and step % when.every == 0:
        return True
    return step in when.steps


def next_due(step: int, when: When, total_steps: int) -> int | None:
    """The first step after `step` at which `when` is due (None: never again)."""
    candidates = [s for s in when.steps if s > step]
    if when.every:
        candidates.append((step // when.every + 1) * when.every)
    if when.at_end:
        candidates.append(total_steps)
    candidates = [s for s in candidates if step < s <= total_steps]
    return min(candidates) if candidates else None


class Action:
    """Periodic work run by the controller at a loop boundary.

    Subclasses set `when` and implement `__call__(step, logs)`. `start(step)` runs once
    before the first loop (after a restore, with the restored step) and `close()` once after
    the last, also when training stops with an error.
    """

    when: When = When(each_loop=True)

    def start(self, step: int) -> None:
        del step

    def __call__(self, step: int, logs: dict) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def max_loop_steps(self) -> int | None:
        """The most steps the next compiled loop may run for this action (None: no limit).

        A progress bar on a terminal uses it to update every few seconds when one loop
        would otherwise cover a whole epoch.
        """
        return None


class Controller:
    """Runs `trainer.train(n)` from boundary to boundary and the actions due at each.

    Args:
        trainer: An object with `step` (the global step, int) and `train(num_steps) -> logs`.
        actions: Run in this order at every boundary where `itstime` says they are due.
        total_steps: The global step at which training ends.
        steps_per_loop: The most steps one `trainer.train` call may run.
    """

    def __init__(self, trainer, actions: Iterable[Action], *, total_steps: int, steps_per_loop):
        if steps_per_loop < 1:
            raise ValueError(f"Argument `steps_per_loop` must be >= 1. Received: {steps_per_loop}")
        self.trainer = trainer
        self.actions: Sequence[Action] = list(actions)
        self.total_steps = int(total_steps)
        self.steps_per_loop = int(steps_per_loop)

    def next_boundary(self, step: int) -> int:
        """The step where the loop starting at `step` must end."""
        ends = [step + self.steps_per_loop, self.total_steps]
        for action in self.actions:
            due = next_due(step, action.when, self.total_steps)
            if due is not None:
                ends.append(due)
            limit = action.max_loop_steps()
            if limit is not None:
                ends.append(step + max(1, int(limit)))
        return min(ends)

    def run(self) -> int:
        """Trains to `total_steps`; returns the global step reached."""
        step = self.trainer.step
        started = []
        try:
            for action in self.actions:
                action.start(step)
                started.append(action)
            while step < self.total_steps:
                end = self.next_boundary(step)
                logs = self.trainer.train(end - step)
                step = self.trainer.step
                if step != end:
                    raise RuntimeError(f"trainer stopped at step {step}, expected {end}")
                for action in self.actions:
                    if itstime(step, action.when, self.total_steps):
                        action(step, logs)
        finally:
            for action in reversed(started):
                action.close()
        return step
