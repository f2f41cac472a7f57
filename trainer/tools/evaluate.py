"""Evaluate a training run: loss, accuracy, top-5, confusion matrix, per-class figures.

    python3 -m trainer.evaluate --model_dir=DIR [--dataset=SPEC] [--data_dir=PATH] \\
        [--eval_split=test] [--batch_size=128] [--source=export|checkpoint] [--output_dir=DIR]

By default the exported model (DIR/export/model.keras) is evaluated, loaded and checked as
`trainer.predict` loads it (`trainer.tools.export_reader`: a damaged export is one line);
`--source=checkpoint`, or a run without an export, rebuilds the model from DIR/config.json
and restores the newest readable checkpoint. The data are the run's own evaluation split
(config.json) unless the flags say otherwise, and the metrics are the training loop's
(`trainer.loop.compiled.EvalLoop`), so on the run's data they equal metrics.json's final
evaluation.

Classes are matched by name: the run's class names (export/labels.json, or the run's data for
a checkpoint) against the dataset's. Every class of the dataset must be one of the model's;
a dataset with fewer classes, or the same ones in another order, has its labels mapped to
the model's outputs by name, and the summary and evaluation.json ("class_mapping") say so.
A dataset with a class the model does not know is refused in one line: its accuracy would
mean nothing.

Writes, into --output_dir (default DIR): evaluation.json (metrics, per-class precision /
recall / support, the confusion matrix, the top losses), evaluation_confusion_matrix.png and
evaluation_top_losses.png (with matplotlib). Nothing of the run itself (checkpoints, config,
metrics.json, its own pictures, tensorboard/) is changed, so it can run beside a live
training run. The output directory is checked before anything heavy.

Exit codes: 0 done; 2 bad input (one line on stderr, nothing printed before it).
"""

from __future__ import annotations

import dataclasses
import json
import os

from absl import flags

from trainer import config as config_lib
from trainer import layout
from trainer.errors import UserError
from trainer.run_dir import files as run_dir
from trainer.tools import cli, export_reader, paths
from trainer.tools.runs import Run, locate

PROGRAM = "evaluate"
EVALUATION_FILE = layout.EVALUATION_FILE
SOURCES = ("export", "checkpoint")
MAX_BATCH = config_lib.MAX_GLOBAL_BATCH


def define_flags(fv: flags.FlagValues) -> None:
    """Defines this tool's flags on `fv` (only when run as a program: run_train.py has its
    own --dataset etc. on the global FLAGS)."""
    flags.DEFINE_string(
        "model_dir",
        None,
        "The training run's directory (config.json, ckpt/, export/).",
        flag_values=fv,
    )
    cli.non_empty(fv, "model_dir", "must name the training run's directory")
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
        cli.non_empty(fv, name, "must not be empty (leave the flag out for the run's value)")
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
        "Highest-loss examples to show in evaluation_top_losses.png and evaluation.json.",
        lower_bound=0,
        upper_bound=1000,
        flag_values=fv,
    )
    flags.DEFINE_string(
        "output_dir",
        None,
        "Where evaluation.json and its pictures go (created if needed); default: --model_dir.",
        flag_values=fv,
    )
    cli.non_empty(fv, "output_dir", "must not be empty (leave the flag out for --model_dir)")


# Loading the model -------------------------------------------------------------------------


@dataclasses.dataclass
class Loaded:
    model: object  # keras.Model giving logits
    path: str
    step: int | None
    class_names: tuple[str, ...]  # the run's, per output (may be fewer than the outputs)
    data: object = None  # the run's `trainer.data.Data`, when loading needed it anyway


def load_export(run: Run) -> Loaded:
    """DIR/export/model.keras and labels.json (class names, step), as predict loads them.

    Raises:
        UserError: A missing, incomplete or damaged export (`export_reader.load_export`).
    """
    export = export_reader.load_export(run.model_dir)
    return Loaded(export.model, export.path, export.step, export.class_names)


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
    return Loaded(exp.model, path, exp.step, tuple(exp.data.info.class_names), exp.data)


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


def class_mapping(model_names, data_names, dataset: str) -> list[int] | None:
    """The model output of each of the dataset's classes, matched by name.

    Returns:
        None when the dataset's classes are the model's first ones in the same order (labels
        need no change), else the model's index of each dataset class.

    Raises:
        UserError: A dataset class that none of the model's outputs is named.
    """
    index = {}
    for i, name in enumerate(model_names):
        index.setdefault(name, i)
    unknown = [name for name in data_names if name not in index]
    if unknown:
        shown = ", ".join(unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        known = ", ".join(list(model_names)[:10]) + (", ..." if len(model_names) > 10 else "")
        raise UserError(
            f"--dataset={dataset}: {len(unknown)} of its {len(data_names)} classes ({shown}) "
            f"are not among the model's {len(model_names)} ({known}); classes are matched by "
            "name, so its accuracy would mean nothing"
        )
    mapping = [index[name] for name in data_names]
    return None if mapping == list(range(len(mapping))) else mapping


def _mapping_note(model_names, data_names, mapping) -> str:
    """'' when the dataset has exactly the model's classes in its order, else what was done."""
    if len(data_names) < len(model_names):
        return (
            f"the dataset has {len(data_names)} of the model's {len(model_names)} classes, "
            "matched by name"
        )
    if mapping is not None:
        return f"the model's {len(model_names)} classes in another order, mapped by name"
    return ""


def _mapped(dataset, mapping):
    """`dataset` of (images, labels) with each label replaced by the model's index of it."""
    if mapping is None:
        return dataset
    from trainer import runtime

    tf = runtime.import_tensorflow()
    table = tf.constant(mapping, tf.int32)
    return dataset.map(lambda images, labels: (images, tf.gather(table, labels)))


def evaluate(run: Run, config, *, batch_size=128, top_losses=9, output_dir=None) -> dict:
    """Evaluates `run`'s model on `config`'s eval split; writes and returns the record.

    Args:
        run: From `locate`.
        config: The configuration whose data to use (`eval_config(run.config, ...)`).
        batch_size: Examples per batch.
        top_losses: Highest-loss examples to keep.
        output_dir: Where the files go (evaluation.json, evaluation_*.png); default
            run.model_dir.

    Raises:
        UserError: The data or the model cannot be loaded, the data have a class the model
            does not know (see `class_mapping`), or the results cannot be written.
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
    names, data_names = list(loaded.class_names), list(source.info.class_names)
    mapping = class_mapping(names, data_names, config.dataset)
    note = _mapping_note(names, data_names, mapping)
    analysis = interpret.analyze(
        loaded.model,
        _mapped(source.eval_dataset(batch_size), mapping),
        num_classes,
        top_losses=top_losses,
        class_names=names,
    )
    try:
        record = interpret.write(
            analysis,
            names,
            output_dir,
            step=loaded.step or 0,
            tensorboard=False,  # the run's tensorboard/ holds the run's own pictures
            confusion_path=os.path.join(output_dir, layout.EVALUATION_CONFUSION_PLOT),
            top_losses_path=os.path.join(output_dir, layout.EVALUATION_TOP_LOSSES_PLOT),
        )
        result = _result(run, config, loaded, analysis, record, names)
        if note:
            indices = mapping or range(len(data_names))
            result["class_mapping"] = {
                "note": note,
                "dataset_to_model": dict(zip(data_names, indices)),
            }
        run_dir.write_text(
            os.path.join(output_dir, EVALUATION_FILE), json.dumps(result, indent=2, sort_keys=True)
        )
    except OSError as e:
        raise UserError(f"{output_dir}: cannot write the results ({e.strerror or e})") from None
    return result


def _result(run: Run, config, loaded: Loaded, analysis, record: dict, names) -> dict:
    from trainer.reporting import interpret

    top = analysis.top_losses
    return {
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


def summary(result: dict, run: Run, output_dir: str) -> str:
    """A few aligned lines: what was evaluated on what, the metrics, the weakest classes."""
    model = f"{result['model']} ({result['source']}, step {result['step']})"
    rows = [
        ("model", model + (f"; {run.note}" if run.note else "")),
        (
            "data",
            f"{result['dataset']}, split {result['eval_split']}, {result['examples']} examples",
        ),
    ]
    if "class_mapping" in result:
        rows.append(("classes", result["class_mapping"]["note"]))
    rows += [
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
    output_dir = fv.output_dir or run.model_dir
    paths.check_output_dir("--output_dir" if fv.output_dir else "--model_dir", output_dir)
    cli.start()
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
