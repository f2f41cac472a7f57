"""Snapshot ensembles: the averaged softmax of the weights saved at SGDR restarts.

    python3 -m trainer.ensemble --model_dir=DIR [--snapshots=M]

Huang et al., "Snapshot Ensembles: Train 1, get M for free" (ICLR 2017): the weights at the
end of each cycle of a restarting schedule are M different models; averaging their predicted
probabilities usually beats the last one alone. A run trained with `--snapshot_at_restarts`
keeps them as DIR/snapshots/cycle_K.weights.h5 (`trainer.loop.actions.Snapshot`).

The command rebuilds the run's model and evaluation split from DIR/config.json (as
`python3 -m trainer.evaluate --source=checkpoint` does), takes the last M snapshots by cycle
(default: all), evaluates each one alone and their ensemble, prints a table and writes
DIR/ensemble.json (atomically). Nothing of the run itself is changed.

The library is `trainer.averaging.ensemble`.

Exit codes: 0 done; 2 bad input (one line on stderr, nothing printed before it).
"""

from __future__ import annotations

import json
import os

from absl import flags

from trainer import config as config_lib
from trainer import layout
from trainer.averaging.ensemble import ensemble_evaluate, select_snapshots
from trainer.errors import UserError
from trainer.run_dir import files as run_dir
from trainer.tools import cli
from trainer.tools import evaluate as evaluate_lib

PROGRAM = "ensemble"
ENSEMBLE_FILE = layout.ENSEMBLE_FILE


def read_run_config(model_dir: str | None) -> config_lib.Config:
    """The run's configuration from DIR/config.json.

    Raises:
        UserError: No such directory, or no readable config.json.
    """
    # trainer.tools.evaluate.locate does these checks too but also demands an export or a
    # checkpoint, which an ensemble does not use; its private file helpers are reused.
    if not model_dir:
        raise UserError("--model_dir is required (the directory of a training run)")
    if not evaluate_lib._isdir(model_dir):
        raise UserError(f"--model_dir={model_dir}: no such directory")
    path = os.path.join(model_dir, layout.CONFIG_FILE)
    if not evaluate_lib._exists(path):
        raise UserError(f"--model_dir={model_dir}: no config.json (not a training run directory)")
    try:
        record = json.loads(evaluate_lib._read_text(path))
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is unreadable ({e})") from None
    return evaluate_lib.config_from_record(record, model_dir)


# The command ------------------------------------------------------------------------------


def evaluate_snapshots(config, snapshots: list, strategy_name: str = "auto") -> dict:
    """Rebuilds the run's model and eval split; evaluates the snapshots and their ensemble.

    Returns:
        The ensemble.json record (also written to the run directory).
    """
    from trainer import experiment
    from trainer.loop import strategy as strategy_lib

    strategy = strategy_lib.make_strategy(strategy_name)
    # Every weight comes from the snapshots: no pretrained file to read (or download).
    exp = experiment.Experiment(config.replace(weights="none"), strategy).build()
    config = exp.config  # num_classes resolved

    def dataset_fn():
        dataset = exp.data.eval_dataset(config.global_batch_size)
        return strategy_lib.distribute_dataset(strategy, dataset)

    result = ensemble_evaluate(
        strategy, exp.model, [s.path for s in snapshots], dataset_fn, config.num_classes
    )
    members = [
        {"cycle": s.cycle, **{("path" if k == "source" else k): v for k, v in m.items()}}
        for s, m in zip(snapshots, result.pop("per_member"))
    ]
    record = {
        "model_dir": config.model_dir,
        "dataset": config.dataset,
        "eval_split": config.eval_split,
        "examples": result.pop("examples"),
        "ensemble": result,
        "snapshots": members,
    }
    run_dir.write_text(
        os.path.join(config.model_dir, ENSEMBLE_FILE), json.dumps(record, indent=2, sort_keys=True)
    )
    return record


def summary(record: dict) -> str:
    """The table: each snapshot alone, then the ensemble; where the record went."""
    has_top5 = "top5" in record["ensemble"]
    header = ["", "loss", "accuracy"] + (["top-5"] if has_top5 else [])

    def row(name, m):
        return [name, f"{m['loss']:.4f}", f"{m['accuracy']:.4f}"] + (
            [f"{m['top5']:.4f}"] if has_top5 else []
        )

    rows = [header] + [row(f"cycle_{m['cycle']}", m) for m in record["snapshots"]]
    rows.append(row(f"ensemble of {record['ensemble']['members']}", record["ensemble"]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]

    def line(cells):
        padded = [cells[0].ljust(widths[0])]
        padded += [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]
        return "  " + "  ".join(padded)

    lines = [line(r) for r in rows]
    data = f"{record['dataset']}, split {record['eval_split']}, {record['examples']} examples"
    path = os.path.join(record["model_dir"], ENSEMBLE_FILE)
    return "\n".join([f"  data: {data}", *lines, f"  results: {path}"])


def define_flags(fv: flags.FlagValues) -> None:
    """Defines this tool's flags on `fv` (only when run as a program)."""
    flags.DEFINE_string(
        "model_dir",
        None,
        "The training run's directory (config.json, snapshots/cycle_K.weights.h5).",
        flag_values=fv,
    )
    evaluate_lib._non_empty(fv, "model_dir", "must name the training run's directory")
    flags.DEFINE_integer(
        "snapshots",
        None,
        "Ensemble the last M snapshots by cycle (count of snapshots); default: all.",
        lower_bound=1,
        flag_values=fv,
    )


def main(argv):
    """flags -> run directory and snapshots -> TensorFlow -> model, data -> evaluate -> table."""
    fv = flags.FLAGS
    config = read_run_config(fv.model_dir)
    snapshots = select_snapshots(fv.model_dir, fv.snapshots)
    cli.start()
    record = evaluate_snapshots(config, snapshots)
    print(f"Snapshot ensemble of {fv.model_dir}", flush=True)
    print(summary(record), flush=True)
    return 0


def command() -> None:
    """`python -m trainer.ensemble` and `lrtech ensemble`."""
    cli.run(PROGRAM, define_flags, main)


if __name__ == "__main__":
    command()
