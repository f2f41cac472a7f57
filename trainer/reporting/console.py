"""What a run prints: its first line, warnings about its plan, and the closing summary.

The log lines of evaluations and the files (TensorBoard, metrics.json) are
`trainer.reporting.summaries`'s.
"""

from __future__ import annotations

import os

import tensorflow as tf

from trainer import layout


def _duration(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


_AVERAGED = (
    ("snapshot_ensemble", lambda r: f"{r.get('members')} snapshots, cycles {_cycles(r)}"),
    ("swa", lambda r: f"{r.get('models_averaged')} models averaged, BN recomputed"),
    ("ema", lambda r: f"decay {r.get('decay')}, BN recomputed"),
)


def _cycles(record: dict) -> str:
    cycles = record.get("cycles") or []
    return f"{cycles[0]}-{cycles[-1]}" if cycles else "?"


FEW_STEPS = 50  # fewer steps than this in a whole run earn a warning


def run_dir_line(config) -> str:
    """The first line of a run's output: its directory and whether it starts or resumes."""
    from trainer.run_dir import checkpoints

    steps = checkpoints.saved_steps(config.model_dir)
    if config.lr_find:
        what = "LR range test only"
    elif steps:
        what = f"resumes from its checkpoint at step {max(steps)}"
    else:
        what = "starts"
    return f"Run directory: {config.model_dir} ({what})"


def written(model_dir: str) -> str:
    """What the run's files in model_dir are, for a message ("nothing" when none)."""
    present = [n for n in layout.RUN_FILES if tf.io.gfile.exists(os.path.join(model_dir, n))]
    return ", ".join(present) if present else "nothing"


def plan_warnings(config, plan, info) -> list[str]:
    """One line each for a run whose defaults will likely give a poor result."""
    out = []
    batch, images = config.global_batch_size, info.num_train
    length = f"--epochs={config.epochs:g}" if config.epochs is not None else "--train_steps"
    if plan.total_steps < FEW_STEPS:
        out.append(
            f"this run trains {plan.total_steps} steps in all ({images} training images in "
            f"batches of --global_batch_size={batch}: {plan.steps_per_epoch} steps per "
            f"epoch; {length}); under ~{FEW_STEPS} steps a fine-tune rarely gets far: lower "
            "--global_batch_size or raise the length"
        )
    if batch > images:
        out.append(
            f"--global_batch_size={batch} is larger than the {images} training images: every "
            "step repeats images; lower --global_batch_size"
        )
    return out


def closing_summary(metrics: dict, model_dir: str, export_dir: str | None) -> str:
    """A few aligned lines for the end of a run: accuracy, time, speed, where things are.

    Args:
        metrics: What `Experiment.train` returned (final, best, step, epochs, wall time...).
        model_dir: The run directory (for the TensorBoard command).
        export_dir: Where the export is (None: not exported).
    """
    final, best = metrics.get("final") or {}, metrics.get("best") or {}
    rows = [("step", f"{metrics['step']} ({metrics.get('epochs', float('nan')):.2f} epochs)")]
    if final:
        text = f"{final['accuracy']:.4f} (final, step {final['step']})"
        if best and best.get("step") != final.get("step"):
            text += f", best {best['accuracy']:.4f} at step {best['step']}"
        if "top5" in final:
            text += f"; top-5 {final['top5']:.4f}"
        rows.append(("eval accuracy", text))
    for name, what in _AVERAGED:  # weight averaging, when a run has it
        record = metrics.get(name)
        if record:
            text = f"{record['accuracy']:.4f} ({what(record)})"
            if "top5" in record:
                text += f"; top-5 {record['top5']:.4f}"
            rows.append((name.replace("_", " "), text))
    timing = _duration(metrics.get("wall_time_sec") or 0.0)
    if metrics.get("lr_find_sec"):
        timing += f" training + {_duration(metrics['lr_find_sec'])} LR range test"
    if metrics.get("images_per_sec"):
        timing += f", {metrics['images_per_sec']:.0f} images/s while training"
    rows.append(("wall time", timing))
    if export_dir:
        rows.append(("export", export_dir))
    rows.append(
        ("TensorBoard", f"tensorboard --logdir {os.path.join(model_dir, layout.TENSORBOARD_DIR)}")
    )
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"  {name:<{width}}  {value}" for name, value in rows)
