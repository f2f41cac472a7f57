"""The run's base learning-rate schedule from its configuration (`schedules/` does the math).

    schedule = trainer.lr.schedule.make(config, plan)

sgdr -> `schedules.SGDR`, one_cycle -> `schedules.OneCycle`, cosine -> `schedules.Cosine`,
constant -> the float `max_lr`; the fine_tune recipe -> two one-cycle phases of one
`schedules.Phases`. The segments' rates are this schedule times their multipliers
(`trainer.lr.table`).
"""

from __future__ import annotations


def one_cycle_args(config, *, pct_start=0.25, div=25.0) -> dict:
    """OneCycle's arguments from the flags; unset --pct_start / --div take these defaults."""
    return dict(
        pct_start=pct_start if config.pct_start is None else config.pct_start,
        div=div if config.div is None else config.div,
        div_final=config.div_final,
        moms=tuple(config.moms),
    )


def fine_tune_schedule(config, plan):
    """fastai's fine_tune as two one-cycle phases of one schedule (one global step).

    Phase 1 (the head alone, `plan.freeze_steps`): one cycle at max_lr with pct_start 0.99.
    Phase 2 (everything): one cycle at max_lr / 2 with pct_start 0.3 and div 5, fastai's
    `fine_tune` defaults (--pct_start and --div override these two).
    """
    import schedules

    first = plan.freeze_steps
    rest = plan.total_steps - first
    head = schedules.OneCycle(
        config.max_lr, first, **dict(one_cycle_args(config), pct_start=0.99, div=25.0)
    )
    full = schedules.OneCycle(
        config.max_lr / 2, max(rest, 1), **one_cycle_args(config, pct_start=0.3, div=5.0)
    )
    return schedules.Phases([(first, head), (max(rest, 1), full)])


def make(config, plan):
    """The base (head segment's) schedule: a `LearningRateSchedule`, or a float (constant)."""
    import schedules

    if config.recipe == "fine_tune":
        return fine_tune_schedule(config, plan)
    if config.schedule == "constant":
        return config.max_lr
    if config.schedule == "one_cycle":
        return schedules.OneCycle(config.max_lr, plan.total_steps, **one_cycle_args(config))
    if config.schedule == "cosine":
        return schedules.Cosine(
            config.max_lr,
            plan.total_steps,
            warmup_steps=config.warmup_steps,
            min_lr=config.min_lr,
        )
    return schedules.SGDR(
        config.max_lr,
        plan.first_cycle_steps,
        min_lr=config.min_lr,
        cycle_mult=config.cycle_mult,
        max_lr_decay=config.max_lr_decay,
        warmup_steps=config.warmup_steps,
    )


def boundaries(config, schedule, total_steps: int) -> list[int]:
    """Steps > 0 where the schedule restarts (SGDR) or a recipe phase begins."""
    if config.recipe != "none":
        return list(schedule.boundaries)
    if config.schedule == "sgdr":
        return [s for s in schedule.restart_steps(total_steps) if s > 0]
    return []
