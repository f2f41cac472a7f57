"""Bookkeeping of one `Experiment.train()` call: input iterator, restarts, reports, eval history.

Kept apart from `trainer.experiment` so the driver reads as the sequence of boundaries.
"""

from __future__ import annotations

import time

import numpy as np

from trainer import data, steps, summaries
from trainer import strategy as strategy_lib


class RunState:
    """Per-train() bookkeeping: data iterator, restarts, progress, summaries, eval history."""

    def __init__(self, exp):  # a trainer.experiment.Experiment
        self.exp = exp
        config, plan = exp.config, exp.plan
        dataset = data.train_dataset(
            config, exp.info, config.global_batch_size, start_step=exp.step
        )
        self.iterator = iter(strategy_lib.distribute_dataset(exp.strategy, dataset))
        self.restarts = []
        if config.schedule == "sgdr":
            self.restarts = [s for s in exp.schedule.restart_steps(plan.total_steps) if s > 0]
        self.first = None
        self.progress = summaries.Progress(plan.steps_per_epoch, config.progress and exp.is_chief)
        self.summaries = summaries.Summaries(config.model_dir, exp.is_chief)
        self.started, self.start_step = time.time(), exp.step
        self.train_seconds, self.last_train, self.final, self.best = 0.0, {}, None, None

    def record(self, start, end, out, seconds):
        exp = self.exp
        n = end - start
        images_per_sec = n * exp.config.global_batch_size / max(seconds, 1e-9)
        self.train_seconds += seconds
        lrs = exp.learning_rates(int(exp.optimizer.iterations.numpy()))
        self.last_train = {
            "loss": float(np.mean(out["loss"])),
            "accuracy": float(np.sum(out["correct"]) / (n * exp.config.global_batch_size)),
        }
        scalars = dict(self.last_train, images_per_sec=images_per_sec, step_time=seconds / n)
        scalars.update({f"lr/segment_{s}": lr for s, lr in enumerate(lrs)})
        skipped = int(np.sum(~out["applied"]))
        if skipped:
            scalars["skipped_steps"] = skipped
        self.summaries.write("train", end, scalars)
        self.progress.update(end, {**self.last_train, "lr": lrs[-1], "img/s": images_per_sec})

    def evaluated(self, step, results):
        exp = self.exp
        summaries.log_eval(step, steps.epoch_of(step, exp.plan.steps_per_epoch), results)
        self.summaries.write("eval", step, {k: v for k, v in results.items() if k != "examples"})
        self.final = dict(results, step=step)
        if self.best is None or results["accuracy"] > self.best["accuracy"]:
            self.best = dict(self.final)

    def finish(self) -> dict:
        exp = self.exp
        if self.final is None or self.final["step"] != exp.step:
            self.evaluated(exp.step, exp.evaluate())
        trained = exp.step - self.start_step
        metrics = {
            "step": exp.step,
            "epochs": steps.epoch_of(exp.step, exp.plan.steps_per_epoch),
            "final": self.final,
            "best": self.best,
            "train": self.last_train,
            "images_per_sec": trained * exp.config.global_batch_size / self.train_seconds
            if self.train_seconds
            else None,
            "wall_time_sec": time.time() - self.started,
        }
        if exp.is_chief:
            summaries.write_metrics(exp.config.model_dir, metrics)
        return metrics
