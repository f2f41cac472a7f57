"""What a run reports: log lines, TensorBoard, metrics.json and the closing summary.

TensorBoard scalars go to model_dir/tensorboard/{train,eval} and the hyperparameters to
model_dir/tensorboard; only the chief writes (the other workers get no-op writers). The
progress bar is `trainer.reporting.progress`.
"""

from __future__ import annotations

import json
import os

import tensorflow as tf
from absl import logging
from tensorflow.core.framework import summary_pb2

from trainer.run_dir import files as run_dir


def _scalar_metadata():
    # What tensorboard's scalar plugin writes; `tf.summary.scalar` itself needs the tensorboard
    # package, which a training machine need not have.
    metadata = summary_pb2.SummaryMetadata()
    metadata.plugin_data.plugin_name = "scalars"
    return metadata


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def hparams_plugin_data(hparams: dict) -> bytes:
    """TensorBoard's HParams `HParamsPluginData{version: 0, session_start_info}`, serialized.

    Written by hand (protobuf wire format) because the tensorboard package, which holds the
    message classes, is not a dependency of TensorFlow 2.21 nor of lrtech; TensorBoard reads
    it the same. Values become numbers, booleans or strings (tuples joined by commas).
    """
    from google.protobuf import struct_pb2

    entries = b""
    for key, value in sorted(hparams.items()):
        v = struct_pb2.Value()
        if isinstance(value, bool):
            v.bool_value = value
        elif isinstance(value, (int, float)):
            v.number_value = float(value)
        elif isinstance(value, (tuple, list)):
            v.string_value = ",".join(str(x) for x in value)
        else:
            v.string_value = "none" if value is None else str(value)
        entries += _field(1, _field(1, key.encode()) + _field(2, v.SerializeToString()))
    session_start_info = entries  # SessionStartInfo.hparams (field 1), a map
    return _varint(1 << 3 | 0) + _varint(0) + _field(3, session_start_info)


class Summaries:
    """TensorBoard writers for train and eval scalars (no-ops off the chief)."""

    def __init__(self, model_dir: str, enabled: bool = True):
        root = os.path.join(model_dir, "tensorboard")
        self._root = root
        self._enabled = enabled
        self._metadata = _scalar_metadata()
        if enabled:
            self._writers = {
                "train": tf.summary.create_file_writer(os.path.join(root, "train")),
                "eval": tf.summary.create_file_writer(os.path.join(root, "eval")),
            }
        else:
            noop = tf.summary.create_noop_writer()
            self._writers = {"train": noop, "eval": noop}

    def write_hparams(self, hparams: dict) -> None:
        """Records the run's hyperparameters for TensorBoard's HParams dashboard.

        Written to tensorboard/ itself, the parent of the train and eval runs, so the
        dashboard compares several model_dirs (`tensorboard --logdir_spec` or a common
        parent) by their flags and eval metrics.
        """
        if not self._enabled:
            return
        metadata = summary_pb2.SummaryMetadata()
        metadata.plugin_data.plugin_name = "hparams"
        metadata.plugin_data.content = hparams_plugin_data(hparams)
        writer = tf.summary.create_file_writer(self._root)
        with writer.as_default(step=0):
            tf.summary.write("_hparams_/session_start_info", tf.constant(""), metadata=metadata)
        writer.close()

    def write(self, kind: str, step: int, scalars: dict[str, float]) -> None:
        """Writes `scalars` at `step` to the `train` or `eval` writer."""
        writer = self._writers[kind]
        with writer.as_default(step=step):
            for name, value in scalars.items():
                tf.summary.write(name, tf.constant(value, tf.float32), metadata=self._metadata)
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


METRICS_FILE = "metrics.json"


def write_metrics(model_dir: str, metrics: dict) -> str:
    """Writes model_dir/metrics.json atomically; returns its path."""
    path = os.path.join(model_dir, METRICS_FILE)
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
        path = os.path.join(model_dir, METRICS_FILE)
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
    if metrics.get("images_per_sec"):
        timing += f", {metrics['images_per_sec']:.0f} images/s while training"
    rows.append(("wall time", timing))
    if export_dir:
        rows.append(("export", export_dir))
    rows.append(("TensorBoard", f"tensorboard --logdir {os.path.join(model_dir, 'tensorboard')}"))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"  {name:<{width}}  {value}" for name, value in rows)
