"""Evaluate a training run: loss, accuracy, top-5, confusion matrix, per-class figures.

    python3 -m trainer.evaluate --model_dir=DIR [--dataset=SPEC] [--data_dir=PATH] \\
        [--eval_split=test] [--batch_size=128] [--source=export|checkpoint] [--output_dir=DIR]

By default the exported model (DIR/export/model.keras) is evaluated; `--source=checkpoint`,
or a run without an export, rebuilds the model from DIR/config.json and restores the newest
readable checkpoint. The data are the run's own evaluation split (config.json) unless the
flags say otherwise, and the metrics are the training loop's (`trainer.loop.compiled.EvalLoop`), so
on the run's data they equal metrics.json's final evaluation.

Writes, into DIR (or --output_dir): evaluation.json (metrics, per-class precision / recall /
support, the confusion matrix, the top losses), confusion_matrix.png and top_losses.png
(with matplotlib), and both pictures as TensorBoard images in tensorboard/eval. Nothing of
the run itself (checkpoints, config, metrics.json) is changed, so it can run beside a live
training run.

Exit codes: 0 done; 2 bad input (one line on stderr, nothing printed before it).
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os

from absl import flags

from trainer import config as config_lib
from trainer import layout
from trainer.errors import UserError
from trainer.run_dir import files as run_dir
from trainer.tools import cli

PROGRAM = "evaluate"
EVALUATION_FILE = layout.EVALUATION_FILE
SOURCES = ("export", "checkpoint")
MAX_BATCH = config_lib.MAX_GLOBAL_BATCH
_TUPLE_FIELDS = ("split_at", "lr_mults")


def _non_empty(fv, name: str, message: str) -> None:
    """A validator beside the definition: a value given must not be blank."""
    flags.register_validator(
        name, lambda v: v is None or bool(v.strip()), message=message, flag_values=fv
    )


def define_flags(fv: flags.FlagValues) -> None:
    """Defines this tool's flags on `fv` (only when run as a program: run_train.py has its
    own --dataset etc. on the global FLAGS)."""
    flags.DEFINE_string(
        "model_dir",
        None,
        "The training run's directory (config.json, ckpt/, export/).",
        flag_values=fv,
    )
    _non_empty(fv, "model_dir", "must name the training run's directory")
    flags.DEFINE_enum(
        "source",
        "export",
        SOURCES,
        "export: DIR/export/model.keras; checkpoint: the model rebuilt from config.json with "
        "the newest readable checkpoint (also used when there is no export).",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "dataset",
        None,
        "Dataset spec (as run_train.py's --dataset: TFDS name, folder:PATH, npz:PATH, idx:DIR, "
        "sklearn_digits, synthetic[:K]); default: the run's.",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "data_dir", None, "TFDS data directory; default: the run's.", flag_values=fv
    )
    flags.DEFINE_string(
        "eval_split", None, "Split to evaluate; default: the run's.", flag_values=fv
    )
    for name in ("dataset", "data_dir", "eval_split"):
        _non_empty(fv, name, "must not be empty (leave the flag out for the run's value)")
    flags.DEFINE_integer(
        "batch_size",
        128,
        "Examples per batch (changes speed and memory, not the results).",
        lower_bound=1,
        upper_bound=MAX_BATCH,
        flag_values=fv,
    )
    flags.DEFINE_integer(
        "top_losses",
        9,
        "Highest-loss examples to show in top_losses.png and evaluation.json.",
        lower_bound=0,
        upper_bound=1000,
        flag_values=fv,
    )
    flags.DEFINE_string(
        "output_dir", None, "Where the results go; default: --model_dir.", flag_values=fv
    )
    _non_empty(fv, "output_dir", "must not be empty (leave the flag out for --model_dir)")


# Locating the run (no TensorFlow) ----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Run:
    """What evaluation needs from a run directory, found before TensorFlow is imported."""

    model_dir: str
    config: config_lib.Config  # the run's own configuration
    source: str  # "export" or "checkpoint"
    note: str = ""  # why the source differs from the one asked for


def _tensorflow():
    # Only for paths with a URL scheme (gs://...); runtime.configure() has run by then.
    from trainer import runtime

    return runtime.import_tensorflow()


def _isdir(path: str) -> bool:
    if run_dir.is_local(path):
        return os.path.isdir(path)
    tf = _tensorflow()

    return tf.io.gfile.isdir(path)


def _exists(path: str) -> bool:
    if run_dir.is_local(path):
        return os.path.exists(path)
    tf = _tensorflow()

    return tf.io.gfile.exists(path)


def _has_checkpoint(model_dir: str) -> bool:
    pattern = os.path.join(model_dir, layout.CHECKPOINT_DIR, "ckpt-*.index")
    if run_dir.is_local(model_dir):
        return bool(glob.glob(pattern))
    tf = _tensorflow()

    return bool(tf.io.gfile.glob(pattern))


def _read_text(path: str) -> str:
    if run_dir.is_local(path):
        with open(path) as f:
            return f.read()
    tf = _tensorflow()

    with tf.io.gfile.GFile(path) as f:
        return f.read()


def config_from_record(record: dict, model_dir: str) -> config_lib.Config:
    """The run's `Config` from config.json's "full" record (unknown keys are ignored).

    Raises:
        UserError: The record has no usable "full" configuration.
    """
    full = record.get("full")
    path = os.path.join(model_dir, layout.CONFIG_FILE)
    if not isinstance(full, dict):
        raise UserError(f'{path} has no "full" configuration (made by an older lrtech?)')
    names = {f.name for f in dataclasses.fields(config_lib.Config)}
    values = {k: v for k, v in full.items() if k in names}
    for key in _TUPLE_FIELDS:
        if isinstance(values.get(key), list):
            values[key] = tuple(values[key])
    values["model_dir"] = model_dir  # where the run is now, wherever it was trained
    try:
        return config_lib.Config(**values)
    except TypeError as e:
        raise UserError(f"{path}: unusable configuration ({e})") from None


def locate(model_dir: str | None, source: str) -> Run:
    """Checks the run directory and picks the model to evaluate; reads no tensor.

    Raises:
        UserError: No such directory, no readable config.json, or nothing to evaluate.
    """
    if not model_dir:
        raise UserError("--model_dir is required (the directory of a training run)")
    if not _isdir(model_dir):
        raise UserError(f"--model_dir={model_dir}: no such directory")
    path = os.path.join(model_dir, layout.CONFIG_FILE)
    if not _exists(path):
        raise UserError(f"--model_dir={model_dir}: no config.json (not a training run directory)")
    try:
        record = json.loads(_read_text(path))
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is unreadable ({e})") from None
    config = config_from_record(record, model_dir)
    has_export = _exists(os.path.join(model_dir, layout.EXPORT_DIR, layout.EXPORT_MODEL))
    has_checkpoint = _has_checkpoint(model_dir)
    if source == "export" and has_export:
        return Run(model_dir, config, "export")
    if has_checkpoint:
        note = "" if source == "checkpoint" else "no export/model.keras; newest checkpoint"
        return Run(model_dir, config, "checkpoint", note)
    if source == "checkpoint":
        raise UserError(f"--model_dir={model_dir}: no checkpoint in {model_dir}/ckpt")
    raise UserError(f"--model_dir={model_dir}: no export/model.keras and no checkpoint in ckpt/")


# Loading the model -------------------------------------------------------------------------


@dataclasses.dataclass
class Loaded:
    model: object  # keras.Model giving logits
    path: str
    step: int | None
    data: object = None  # the run's `trainer.data.Data`, when loading needed it anyway


def load_export(run: Run) -> Loaded:
    """DIR/export/model.keras (built-in layers only) and the step labels.json records."""
    import keras

    directory = os.path.join(run.model_dir, layout.EXPORT_DIR)
    path = os.path.join(directory, layout.EXPORT_MODEL)
    model = keras.saving.load_model(path, compile=False)
    step = None
    try:
        step = json.loads(_read_text(os.path.join(directory, layout.LABELS_FILE))).get("step")
    except (OSError, ValueError, AttributeError):
        pass  # the step is a label for TensorBoard, not needed to evaluate
    return Loaded(model, path, step)


def load_checkpoint(run: Run) -> Loaded:
    """The run's model rebuilt from its configuration, with the newest readable checkpoint.

    Restores through a non-chief `Checkpointer`: read-only, so a checkpoint that a live run
    is still writing is skipped, never moved to ckpt/broken/.

    Raises:
        UserError: No checkpoint reads back.
    """
    from trainer import experiment
    from trainer.loop import strategy
    from trainer.run_dir import checkpoints

    exp = experiment.Experiment(run.config, strategy.make_strategy("one_device")).build()
    reader = checkpoints.Checkpointer(
        run.model_dir, 1, is_chief=False, model=exp.model, optimizer=exp.optimizer
    )
    path = reader.restore()
    if path is None:
        raise UserError(f"--model_dir={run.model_dir}: no checkpoint in {reader.directory}")
    return Loaded(exp.model, path, exp.step, exp.data)


# The evaluation ----------------------------------------------------------------------------


def eval_config(config, dataset=None, data_dir=None, eval_split=None):
    """The run's configuration with the data flags that were given."""
    changes = {"dataset": dataset, "data_dir": data_dir, "eval_split": eval_split}
    return config.replace(**{k: v for k, v in changes.items() if v is not None})


def _output_width(model) -> int | None:
    try:
        return int(model.output_shape[-1])
    except (AttributeError, TypeError, ValueError, IndexError):
        return None


def evaluate(run: Run, config, *, batch_size=128, top_losses=9, output_dir=None) -> dict:
    """Evaluates `run`'s model on `config`'s eval split; writes and returns the record.

    Args:
        run: From `locate`.
        config: The configuration whose data to use (`eval_config(run.config, ...)`).
        batch_size: Examples per batch.
        top_losses: Highest-loss examples to keep.
        output_dir: Where the files go; default run.model_dir.

    Raises:
        UserError: The data cannot be loaded or have more classes than the model predicts.
    """
    from trainer import data
    from trainer.reporting import interpret

    output_dir = output_dir or run.model_dir
    same_data = config == run.config
    source = None
    if not (run.source == "checkpoint" and same_data):
        source = data.load(config)  # before the model: a bad --dataset fails fast
    loaded = load_export(run) if run.source == "export" else load_checkpoint(run)
    if source is None:
        source = loaded.data
    num_classes = _output_width(loaded.model) or config.num_classes
    if source.info.num_classes > num_classes:
        raise UserError(
            f"--dataset={config.dataset} has {source.info.num_classes} classes; the model "
            f"predicts {num_classes}"
        )
    names = list(source.info.class_names)
    analysis = interpret.analyze(
        loaded.model,
        source.eval_dataset(batch_size),
        num_classes,
        top_losses=top_losses,
        class_names=names,
    )
    record = interpret.write(analysis, names, output_dir, step=loaded.step or 0)
    top = analysis.top_losses
    result = {
        "model": loaded.path,
        "source": run.source,
        "step": loaded.step,
        "dataset": config.dataset,
        "eval_split": config.eval_split,
        "image_size": config.image_size,
        **analysis.metrics,
        **record,
        "top_losses": [
            {
                "index": int(top.index[i]),
                "actual": interpret.class_name(names, int(top.actual[i])),
                "predicted": interpret.class_name(names, int(top.predicted[i])),
                "probability": float(top.probability[i]),
                "loss": float(top.loss[i]),
            }
            for i in range(len(top))
        ],
    }
    run_dir.write_text(
        os.path.join(output_dir, EVALUATION_FILE), json.dumps(result, indent=2, sort_keys=True)
    )
    return result


def summary(result: dict, run: Run, output_dir: str) -> str:
    """A few aligned lines: what was evaluated on what, the metrics, the weakest classes."""
    model = f"{result['model']} ({result['source']}, step {result['step']})"
    rows = [
        ("model", model + (f"; {run.note}" if run.note else "")),
        (
            "data",
            f"{result['dataset']}, split {result['eval_split']}, {result['examples']} examples",
        ),
        ("loss", f"{result['loss']:.4f}"),
        ("accuracy", f"{result['accuracy']:.4f}"),
    ]
    if "top5" in result:
        rows.append(("top-5", f"{result['top5']:.4f}"))
    with_examples = [c for c in result["per_class"] if c["support"]]
    weakest = sorted(with_examples, key=lambda c: c["recall"])[:3]
    if weakest:
        rows.append(
            ("lowest recall", ", ".join(f"{c['class']} {c['recall']:.2f}" for c in weakest))
        )
    rows.append(("results", os.path.join(output_dir, EVALUATION_FILE)))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows)


# Command line ------------------------------------------------------------------------------


def main(argv):
    """flags -> run directory -> TensorFlow -> data -> model -> analyze -> write -> summary."""
    fv = flags.FLAGS
    run = locate(fv.model_dir, fv.source)
    config = eval_config(run.config, fv.dataset, fv.data_dir, fv.eval_split)
    cli.start()
    output_dir = fv.output_dir or run.model_dir
    result = evaluate(
        run,
        config,
        batch_size=fv.batch_size,
        top_losses=fv.top_losses,
        output_dir=output_dir,
    )
    print(f"Evaluated {run.model_dir}", flush=True)
    print(summary(result, run, output_dir), flush=True)
    return 0


def command() -> None:
    """`python -m trainer.evaluate` and `lrtech evaluate`."""
    cli.run(PROGRAM, define_flags, main)


if __name__ == "__main__":
    command()
