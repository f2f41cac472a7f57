"""What a run reports: log lines, TensorBoard, metrics.json and the closing summary.

TensorBoard scalars go to model_dir/tensorboard/{train,eval}, and the HParams experiment
and session to the eval run beside its metrics; only the chief writes (the other workers get
no-op writers). The progress bar is `trainer.reporting.progress`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence

import numpy as np
import tensorflow as tf
from absl import logging
from tensorboard.plugins.hparams import api as hp
from tensorboard.plugins.hparams import api_pb2
from tensorboard.plugins.hparams import summary as hparams_summary
from tensorboard.plugins.scalar import metadata as scalar_metadata

from trainer import layout
from trainer.run_dir import files as run_dir

TRAIN, EVAL = "train", "eval"  # the runs under tensorboard/: its subdirectories
EVAL_METRICS = ("loss", "accuracy", "top5")


def hparam_value(value) -> bool | int | float | str:
    """A config value as the HParams plugin takes it: tuples joined by commas, None "none"."""
    if isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (tuple, list)):
        return ",".join(str(x) for x in value)
    return "none" if value is None else str(value)


def hparams_metrics(top5: bool, averaged: Sequence[str] = ()) -> list[hp.Metric]:
    """The HParams dashboard's metrics: the scalars `Evaluate` and weight averaging write.

    The evaluation's loss, accuracy (and top-5), and those of the averaged models as
    `<name>/<metric>` (`averaged`: e.g. "swa", "ema", "ensemble", as
    `trainer.averaging.weight_averaging` writes them), all in the eval run. A metric's
    `group` is its run relative to the session's; the session is the eval run itself
    (`Summaries.write_hparams`), so the group is empty.
    """
    names = [m for m in EVAL_METRICS if top5 or m != "top5"]
    return [
        hp.Metric(
            f"{prefix}/{m}" if prefix else m,
            display_name=f"{prefix or EVAL} {m}",
            dataset_type=hp.Metric.VALIDATION,
        )
        for prefix in ("", *averaged)
        for m in names
    ]


def _series_writer(writer):
    """A compiled loop writing a whole series of one tag with `writer` (eager writes cost
    about 0.5 ms a point). One per writer: a trace captures the writer it ran under."""

    # `tf.summary.write` with the scalar plugin's metadata: `tf.summary.scalar` would prefix
    # the tag with the loop's name scope ("while/").
    metadata = scalar_metadata.create_summary_metadata(display_name=None, description=None)

    @tf.function(reduce_retracing=True)
    def write_series(name, steps, values):
        with writer.as_default():
            for i in tf.range(tf.shape(steps)[0]):
                tf.summary.write(name, values[i], step=steps[i], metadata=metadata)

    return write_series


class Summaries:
    """TensorBoard writers for train and eval scalars and the HParams (no-ops off the chief).

    Everything is written with TensorBoard's own library (`tf.summary.scalar`, the HParams
    plugin's `api`), which TensorFlow 2.21 no longer installs: `tensorboard` is a dependency.
    """

    def __init__(self, model_dir: str, enabled: bool = True):
        root = os.path.join(model_dir, layout.TENSORBOARD_DIR)
        self._enabled = enabled
        self._session = False  # write_hparams ran: end_session may end the session
        if enabled:
            self._writers = {
                kind: tf.summary.create_file_writer(os.path.join(root, kind))
                for kind in (TRAIN, EVAL)
            }
        else:
            noop = tf.summary.create_noop_writer()
            self._writers = {TRAIN: noop, EVAL: noop}
        self._series = {kind: _series_writer(w) for kind, w in self._writers.items()}

    def write_hparams(
        self,
        hparams: Mapping,
        top5: bool,
        averaged: Sequence[str] = (),
        start_time: float | None = None,
    ) -> None:
        """Records the run for TensorBoard's HParams dashboard: the experiment and its session.

        The experiment summary (`hp.hparams_config`) names the hyperparameters and the eval
        metrics (`hparams_metrics`); the session (`hp.hparams`) holds this run's values. Both
        go to the eval run (tensorboard/eval), where the metrics are: TensorBoard reads a
        session's metrics from the run `os.path.join(session, group)`, and with the session
        at tensorboard/ itself, the README's `--logdir MODEL_DIR/tensorboard` makes that
        "./eval", which is no run: the dashboard listed the metrics without values. From the
        eval run it finds them with that logdir and with a parent of several model_dirs.
        A resumed run writes both again; TensorBoard keeps the first (the first start time).

        Args:
            hparams: Name -> value (`Config.to_dict()`); see `hparam_value`.
            top5: Whether evaluations report top-5 (above 5 classes).
            averaged: The averaged models this run evaluates ("swa", "ema", "ensemble").
            start_time: When the run started, in seconds since the epoch (default: now).
        """
        if not self._enabled:
            return
        start_time = time.time() if start_time is None else float(start_time)
        values = {name: hparam_value(v) for name, v in hparams.items()}
        writer = self._writers[EVAL]
        with writer.as_default():
            hp.hparams_config(
                hparams=[hp.HParam(name) for name in sorted(values)],
                metrics=hparams_metrics(top5, averaged),
                time_created_secs=start_time,
            )
            hp.hparams(values, start_time_secs=start_time)
        writer.flush()
        self._session = True

    def end_session(self, status: int = api_pb2.STATUS_SUCCESS) -> None:
        """Records the end of the run's HParams session (after `write_hparams`), with `status`.

        TensorBoard keeps the first end it reads, so call it once the run is over for good
        (a preempted run that resumes is not over).
        """
        if not self._session:
            return
        pb = hparams_summary.session_end_pb(status, end_time_secs=time.time())
        writer = self._writers[EVAL]
        with writer.as_default():
            tf.summary.experimental.write_raw_pb(pb.SerializeToString(), step=0)
        writer.flush()

    def write(
        self,
        kind: str,
        step: int,
        scalars: Mapping[str, float],
        series: Mapping[str, tuple] | None = None,
    ) -> None:
        """Writes `scalars` at `step`, and `series` point by point, to `train` or `eval`.

        Args:
            kind: "train" or "eval" (`TRAIN`, `EVAL`), the run under tensorboard/.
            step: The step of `scalars`.
            scalars: Name -> value.
            series: Name -> (steps, values): several points of one tag (e.g. one per step of
                a loop), written by one compiled loop per tag and the same single flush.
        """
        writer = self._writers[kind]
        with writer.as_default(step=step):
            for name, value in scalars.items():
                tf.summary.scalar(name, value)
            for name, (steps, values) in (series or {}).items():
                if len(steps):
                    self._series[kind](
                        name,
                        tf.constant(np.asarray(steps, np.int64)),
                        tf.constant(np.asarray(values, np.float32)),
                    )
        writer.flush()

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()


_LOGGED = ("loss", "accuracy", "top5")


def log_eval(step: int, epoch: float, results: dict, label: str | None = None) -> None:
    """One concise log line per evaluation (`label`: of another model, e.g. "swa")."""
    parts = [
        f"{k}={v:.4f}"
        for k, v in results.items()
        if k in _LOGGED or (label is None and k != "examples" and isinstance(v, float))
    ]
    what = f" {label}" if label else ""
    logging.info("eval step %d (epoch %.2f)%s: %s", step, epoch, what, " ".join(parts))


def write_metrics(model_dir: str, metrics: dict) -> str:
    """Writes model_dir/metrics.json atomically; returns its path."""
    path = os.path.join(model_dir, layout.METRICS_FILE)
    run_dir.write_text(path, json.dumps(metrics, indent=2, sort_keys=True))
    return path


class History:
    """Every evaluation of a run, across resumes; `best` and `final` come from all of them.

    On a resume the evaluations recorded in metrics.json up to the restored step are kept (a
    run killed after evaluating step 8 but checkpointed at step 6 evaluates 8 again).

    Every evaluation is written to metrics.json at once (chief), so a run stopped by a signal
    or a kill keeps what it evaluated.

    Args:
        model_dir: The run directory (metrics.json).
        restored_step: The global step training resumes from.
        write: Whether this worker writes metrics.json (the chief).
    """

    def __init__(self, model_dir: str, restored_step: int, write: bool = True):
        self.model_dir = model_dir
        self.write = write
        self.evals: list[dict] = []
        path = os.path.join(model_dir, layout.METRICS_FILE)
        if restored_step and tf.io.gfile.exists(path):
            try:
                with tf.io.gfile.GFile(path) as f:
                    old = json.load(f).get("history", [])
                self.evals = [e for e in old if int(e["step"]) <= restored_step]
            except (ValueError, KeyError, TypeError, AttributeError):
                logging.warning("%s is unreadable; the evaluation history restarts here", path)

    def record(self, step: int, results: dict) -> None:
        self.evals = [e for e in self.evals if e["step"] != step]
        self.evals.append(dict(results, step=step))
        if self.write:
            write_metrics(
                self.model_dir, {"final": self.final, "best": self.best, "history": self.evals}
            )

    @property
    def final(self) -> dict | None:
        return self.evals[-1] if self.evals else None

    @property
    def best(self) -> dict | None:
        # The earliest of equally good evaluations, as an uninterrupted run would keep.
        best = None
        for e in self.evals:
            if best is None or e["accuracy"] > best["accuracy"]:
                best = e
        return best


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
