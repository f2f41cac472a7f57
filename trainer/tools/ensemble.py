"""Snapshot ensembles: the averaged softmax of the weights saved at SGDR restarts.

    python3 -m trainer.ensemble --model_dir=DIR [--snapshots=M]

Huang et al., "Snapshot Ensembles: Train 1, get M for free" (ICLR 2017): the weights at the
end of each cycle of a restarting schedule are M different models; averaging their predicted
probabilities usually beats the last one alone. A run trained with `--snapshot_at_restarts`
keeps them as DIR/snapshots/cycle_K.weights.h5 (`trainer.loop.actions.Snapshot`).

The command rebuilds the run's model and evaluation split from DIR/config.json (as
`python3 -m trainer.evaluate --source=checkpoint` does), takes the last M snapshots by cycle
(default: all), evaluates each one alone and their ensemble, prints a table and writes
DIR/ensemble.json (atomically). Nothing of the run itself is changed, except that a damaged
snapshot (truncated, garbage, empty, a directory, weights that do not load) is moved to
DIR/snapshots/broken/ with one log line and left out: the ensemble says it has fewer
members, and with none left the command says so in one line.

The library is `trainer.averaging.ensemble`.

Exit codes: 0 done; 2 bad input (one line on stderr, nothing printed before it).
"""

from __future__ import annotations

import json
import os

from absl import flags, logging

from trainer import layout
from trainer.averaging.ensemble import ensemble_evaluate, select_snapshots, set_aside
from trainer.run_dir import files as run_dir
from trainer.tools import cli, paths
from trainer.tools.runs import read_run_config

PROGRAM = "ensemble"
ENSEMBLE_FILE = layout.ENSEMBLE_FILE


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

    def unreadable(path, reason):
        logging.warning("%s", set_aside(path, reason))

    result = ensemble_evaluate(
        strategy,
        exp.model,
        [s.path for s in snapshots],
        dataset_fn,
        config.num_classes,
        on_unreadable=unreadable,
    )
    cycle_of = {s.path: s.cycle for s in snapshots}
    members = [
        {
            "cycle": cycle_of[m["source"]],
            **{("path" if k == "source" else k): v for k, v in m.items()},
        }
        for m in result.pop("per_member")
    ]
    left_out = [cycle_of[path] for path in result.pop("unreadable", [])]
    record = {
        "model_dir": config.model_dir,
        "dataset": config.dataset,
        "eval_split": config.eval_split,
        "examples": result.pop("examples"),
        "ensemble": result,
        "snapshots": members,
    }
    if left_out:
        record["unreadable_cycles"] = left_out
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
    left_out = record.get("unreadable_cycles", [])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]

    def line(cells):
        padded = [cells[0].ljust(widths[0])]
        padded += [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]
        return "  " + "  ".join(padded)

    lines = [line(r) for r in rows]
    data = f"{record['dataset']}, split {record['eval_split']}, {record['examples']} examples"
    path = os.path.join(record["model_dir"], ENSEMBLE_FILE)
    notes = []
    if left_out:
        cycles = ", ".join(f"cycle_{k}" for k in left_out)
        broken = os.path.join(layout.SNAPSHOT_DIR, layout.BROKEN_DIR)
        notes = [f"  left out: {cycles} (unreadable, moved to {broken}/)"]
    return "\n".join([f"  data: {data}", *lines, *notes, f"  results: {path}"])


def define_flags(fv: flags.FlagValues) -> None:
    """Defines this tool's flags on `fv` (only when run as a program)."""
    flags.DEFINE_string(
        "model_dir",
        None,
        "The training run's directory (config.json, snapshots/cycle_K.weights.h5).",
        flag_values=fv,
    )
    cli.non_empty(fv, "model_dir", "must name the training run's directory")
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
    paths.check_output_dir("--model_dir", fv.model_dir)  # ensemble.json goes there
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
