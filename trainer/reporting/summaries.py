"""What a run reports: log lines, TensorBoard, metrics.json and the closing summary.

TensorBoard scalars go to model_dir/tensorboard/{train,eval}, and the HParams experiment
and session to the eval run beside its metrics; only the chief writes (the other workers get
no-op writers). The progress bar is `trainer.reporting.progress`.
"""

from __future__ import annotations

import json
import math
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
    about 0.5 ms a point). One per writer: a trace captures the writer it ran under. The tag
    is a string tensor, so every tag shares one trace (a Python string traced once per tag:
    TensorFlow's retracing warning in every longer run)."""

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
                        tf.constant(name),
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


def _eval_problem(entry) -> str | None:
    """Why an evaluation record of metrics.json is invalid, or None."""
    if not isinstance(entry, dict):
        return f"an evaluation is {type(entry).__name__}, not an object"
    step = entry.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        return f"step {step!r} is not a whole number >= 0"
    for key in ("loss", "accuracy"):
        value = entry.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"step {step}: {key} {value!r} is not a number"
        if not math.isfinite(value):
            return f"step {step}: {key} is {value}"
    if not 0 <= entry["accuracy"] <= 1:
        return f"step {step}: accuracy {entry['accuracy']} is outside [0, 1]"
    return None


def read_metrics(model_dir: str, write: bool = True) -> dict | None:
    """metrics.json, checked; None when there is none.

    A file that cannot be read, or whose history holds an invalid evaluation (a missing or
    non-numeric loss or accuracy, NaN, a step that is no whole number), is named in one log
    line and, by the chief (`write`), moved aside to metrics.json.broken-<time>: the run goes
    on as if there were none (the history starts again from the checkpoint).
    """
    path = os.path.join(model_dir, layout.METRICS_FILE)
    if not tf.io.gfile.exists(path):
        return None
    problem = None
    try:
        if tf.io.gfile.isdir(path):
            raise ValueError("a directory")
        with tf.io.gfile.GFile(path) as f:
            record = json.loads(f.read())
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
        history = record.get("history", [])
        if not isinstance(history, list):
            raise ValueError("its history is not a list")
        for entry in history:
            problem = problem or _eval_problem(entry)
        if problem:
            raise ValueError(problem)
        return record
    except (OSError, ValueError, tf.errors.OpError) as e:
        aside = f"{path}.broken-{time.strftime('%Y%m%dT%H%M%S')}"
        if write:
            tf.io.gfile.rename(path, aside, overwrite=True)
        logging.warning(
            "%s is invalid (%s)%s; the evaluation history starts again from the checkpoint",
            path,
            str(e).splitlines()[0] if str(e) else type(e).__name__,
            f": moved to {aside}" if write else "",
        )
        return None


# metrics.json keys that come from the evaluation history (recomputed by every process).
HISTORY_KEYS = ("step", "epochs", "final", "best", "history")


def kept(previous: dict | None) -> dict:
    """What a re-run of a complete run keeps of the earlier record: all but the history."""
    return {k: v for k, v in (previous or {}).items() if k not in HISTORY_KEYS}


def interpreted(previous: dict, config) -> bool:
    """Whether an earlier process recorded the interpretation (figures and pictures)."""
    files = (layout.CONFUSION_PLOT, layout.TOP_LOSSES_PLOT)
    return "confusion_matrix" in previous and all(
        tf.io.gfile.exists(os.path.join(config.model_dir, f)) for f in files
    )


def run_record(history, step: int, steps_per_epoch: int, report, seconds: float, extra) -> dict:
    """metrics.json at the end of a run: the history, the training loop's last numbers (none
    when nothing trained in this process), the wall time, then `extra` (interpretation,
    averaged models; on a re-run, what the earlier record had)."""
    return {
        "step": step,
        "epochs": step / steps_per_epoch if steps_per_epoch else math.nan,
        "final": history.final,
        "best": history.best,
        "history": history.evals,
        "train": report.last if report else None,
        "images_per_sec": report.images_per_sec if report else None,
        "wall_time_sec": seconds,
        **extra,
    }


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
        # The record of earlier processes of this run (interpretation, averaging, timing):
        # what a re-run of a complete run keeps (`Experiment.train`).
        self.previous = read_metrics(model_dir, write) if restored_step else None
        if self.previous:
            old = self.previous.get("history", [])
            self.evals = [e for e in old if e["step"] <= restored_step]

    def record(self, step: int, results: dict) -> None:
        self.evals = [e for e in self.evals if e["step"] != step]
        self.evals.append(dict(results, step=step))
        if self.write:  # what earlier processes recorded stays beside the history
            write_metrics(
                self.model_dir,
                {
                    **(self.previous or {}),
                    "final": self.final,
                    "best": self.best,
                    "history": self.evals,
                },
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
