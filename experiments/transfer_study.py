"""The transfer study: which fine-tuning recipe helps where, on real data, offline.

    python3 -m experiments.transfer_study --mode=quick   # a few minutes: 1 setting, 2 seeds
    python3 -m experiments.transfer_study --mode=full    # about 90 minutes on 2 CPU cores
    python3 -m experiments.report                        # EXPERIMENTS.md and its plots

Needs Fashion-MNIST (`apt-get install dataset-fashion-mnist`, see BUILD.md) and
scikit-learn. Each run is one lrtech training run (the `Experiment` API that run_train.py
drives, with the flags printed in EXPERIMENTS.md), in this process, one after the other; each
result is written to ``--out``/runs/NAME.json as soon as the run ends, and an existing result
is not run again, so an interrupted study resumes where it stopped (``--rerun`` repeats).

Settings (the pretrained model is lrtech's shipped ResNet-20, models/pretrained/):
  * ``near``: pretrained on Fashion-MNIST classes 0-4, fine-tuned on classes 5-9 (photos of
    the same kind, objects it never saw);
  * ``cross``: pretrained on all of Fashion-MNIST (clothing photos), fine-tuned on
    scikit-learn's 8x8 handwritten digits (another domain).

Each setting runs in a few-label regime (K labelled images per class, drawn per seed) and a
data-rich one; every row of one (setting, regime) gets the same epoch budget, batch size,
peak learning rate and seeds. See `ROWS` for the rows and why each has the flags it has.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import time

import numpy as np

from experiments import data as data_lib

# One peak learning rate for every row (Adam): the head's (or the only) rate. Chosen once as
# a common Adam rate for small ResNets, never tuned per row; --max_lr=auto picks its own.
PEAK_LR = 3e-3
BATCH = 32
SPREAD = 10.0  # differential rates: first segment at 1/10 of the head, geometric in between


@dataclasses.dataclass(frozen=True)
class Regime:
    """K labelled images per class (None: all), the step budget of every row, its rows."""

    per_class: int | None
    steps: int  # a multiple of 7: SGDR cycles of 1, 2 and 4 sevenths end at the budget's end
    rows: tuple[str, ...] | None = None  # None: every row

    @property
    def name(self) -> str:
        return "all" if self.per_class is None else f"{self.per_class}/class"

    @property
    def tag(self) -> str:
        return "kall" if self.per_class is None else f"k{self.per_class}"


@dataclasses.dataclass(frozen=True)
class Setting:
    name: str
    title: str
    weights: str
    augment: bool
    regimes: tuple[Regime, ...]


# The data-rich regime runs the main rows only, to fit the study in about 90 minutes on 2 CPU
# cores (the few-label regime runs them all).
RICH_ROWS = ("scratch", "one_lr_sgdr", "diff_lr_sgdr", "fine_tune")

SETTINGS = {
    "near": Setting(
        "near",
        "near-domain: Fashion-MNIST classes 0-4 -> classes 5-9",
        "pretrained:resnet20_fashion_mnist_0to4",
        True,  # pad-and-crop + flip suits photos of clothes
        (Regime(10, 42), Regime(500, 105, RICH_ROWS)),
    ),
    "cross": Setting(
        "cross",
        "cross-domain: Fashion-MNIST -> scikit-learn digits",
        "pretrained:resnet20_fashion_mnist",
        False,  # a flipped digit is another shape
        (Regime(10, 42), Regime(None, 105, RICH_ROWS)),
    ),
}


def _layer_decay(num_weighted_layers: int) -> float:
    """The decay giving the first layer SPREAD times less than the head, as the segments do."""
    return SPREAD ** (-1.0 / (num_weighted_layers - 1))


# ResNet-20's layers with weights (convolutions, BatchNorms, the head): --list_layers.
RESNET20_WEIGHTED_LAYERS = 43


def rows(steps: int, steps_per_epoch: int, with_averaging: bool = True) -> dict[str, list[str]]:
    """Row name -> its flags (beyond the setting's), for a budget of `steps`."""

    def epochs(n):
        return f"{n / steps_per_epoch:.10g}"

    sgdr = ["--schedule=sgdr", f"--first_cycle_steps={steps // 7}", "--cycle_mult=2"]
    diff = ["--split_at=preset", f"--lr_spread={SPREAD:g}"]
    # On the method's row: they do not change its training, but each costs extra model
    # traces and evaluations (about 2x the run), so only this row carries them.
    averaging = [
        "--ensemble_snapshots=2",
        f"--swa_start_epoch={epochs(2 * steps // 7)}",
    ]
    return {
        "scratch": ["--weights=none", *sgdr],
        "head_only": ["--split_at=preset", "--freeze_segments=2", *sgdr],
        "one_lr_constant": ["--schedule=constant"],
        "one_lr_sgdr": sgdr,
        "diff_lr_sgdr": [*diff, *sgdr, *(averaging if with_averaging else [])],
        "layer_decay_sgdr": [
            f"--layer_decay={_layer_decay(RESNET20_WEIGHTED_LAYERS):.4f}",
            *sgdr,
        ],
        "fine_tune": [  # phase 1 (head) + phase 2 (all) = the same budget
            "--recipe=fine_tune",
            "--split_at=preset",
            f"--freeze_epochs={epochs(steps // 7)}",
            f"--train_steps={steps - steps // 7}",
        ],
        "diff_lr_sgdr_auto": [
            *diff,
            *sgdr,
            "--max_lr=auto",
            "--lr_find_start=1e-6",
            "--lr_find_end=1",
            "--lr_find_steps=50",
        ],
    }


ROW_TITLES = {
    "scratch": "from scratch (one rate, SGDR)",
    "head_only": "head only, body frozen (SGDR)",
    "one_lr_constant": "full fine-tune, one rate, constant",
    "one_lr_sgdr": "full fine-tune, one rate, SGDR",
    "diff_lr_sgdr": "differential rates (3 segments, /10 spread), SGDR",
    "layer_decay_sgdr": "layer-wise decay (43 layers, /10 spread), SGDR",
    "fine_tune": "fine_tune recipe (head 1/7, then all, one-cycle)",
    "diff_lr_sgdr_auto": "differential rates, SGDR, --max_lr=auto",
    "diff_lr_sgdr+swa": "differential rates, SGDR + SWA of the last 2 cycle ends",
    "diff_lr_sgdr+ensemble": "differential rates, SGDR + ensemble of the last 2 snapshots",
}

MODES = {
    # name: (settings, regimes per setting (indices), seeds, rows (None: all))
    "quick": (
        ("cross",),
        (0,),
        (0, 1),
        ("scratch", "one_lr_sgdr", "diff_lr_sgdr", "layer_decay_sgdr"),
    ),
    "full": (("near", "cross"), (0, 1), (0, 1, 2, 3, 4), None),
}


@dataclasses.dataclass(frozen=True)
class Run:
    setting: str
    regime: Regime
    row: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.setting}_{self.regime.tag}_{self.row}_s{self.seed}"


def plan(mode: str, only_rows=None) -> list[Run]:
    settings, regimes, seeds, rows_of_mode = MODES[mode]
    runs = []
    for seed in seeds:  # seed-major: a partial study has every row at the first seeds
        for s in settings:
            for r in regimes:
                regime = SETTINGS[s].regimes[r]
                for row in rows(regime.steps, 1):
                    if regime.rows is not None and row not in regime.rows:
                        continue
                    if (only_rows or rows_of_mode) and row not in (only_rows or rows_of_mode):
                        continue
                    runs.append(Run(s, regime, row, seed))
    return runs


def flags_of(run: Run, data_dir: str, work: str, fashion_mnist: str) -> list[str]:
    """The run_train.py flags of `run` (its dataset file is written here if missing)."""
    setting = SETTINGS[run.setting]
    dataset = data_lib.target_npz(
        run.setting, run.regime.per_class, run.seed, data_dir, fashion_mnist
    )
    with np.load(dataset) as arrays:
        steps_per_epoch = max(len(arrays["y_train"]) // BATCH, 1)
    base = [
        f"--model_dir={os.path.join(work, 'runs', run.name)}",
        f"--dataset=npz:{dataset}",
        "--model=resnet20",
        f"--weights={setting.weights}",
        "--image_size=32",
        "--augment" if setting.augment else "--noaugment",
        f"--global_batch_size={BATCH}",
        f"--train_steps={run.regime.steps}",
        "--optimizer=adam",
        f"--max_lr={PEAK_LR:g}",
        f"--eval_every_epochs={run.regime.steps / steps_per_epoch:.10g}",
        "--steps_per_loop=6",
        "--checkpoint_every_steps=100000",
        "--noprogress",
        f"--seed={run.seed}",
    ]
    averaging = run.regime.rows is None  # SWA and the ensemble in the few-label regime only
    return _merged(base + rows(run.regime.steps, steps_per_epoch, averaging)[run.row])


def _merged(argv: list[str]) -> list[str]:
    """Each flag once, a later value replacing an earlier one in place (as absl would)."""
    out: dict[str, str] = {}
    for arg in argv:
        name = arg.split("=", 1)[0]
        if "=" not in arg and name.startswith("--no"):  # --noaugment sets --augment
            name = "--" + name[4:]
        out[name] = arg
    return list(out.values())


def _train_scalars(model_dir: str) -> dict[str, list]:
    """TensorBoard's train scalars (loss, lr/segment_K) as {tag: [[step, value], ...]}."""
    import glob

    import tensorflow as tf

    out: dict[str, list] = {}
    for path in sorted(glob.glob(os.path.join(model_dir, "tensorboard", "train", "events.*"))):
        for record in tf.data.TFRecordDataset(path):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                if value.tag == "loss" or value.tag.startswith("lr/"):
                    number = float(tf.make_ndarray(value.tensor))
                    out.setdefault(value.tag, []).append([int(event.step), number])
    return out


def execute(run: Run, argv: list[str]) -> dict:
    """Trains one run in this process; returns its result record."""
    import shutil

    from trainer import experiment as experiment_lib
    from trainer import flags as flags_lib
    from trainer.loop import strategy as strategy_lib

    config = flags_lib.parse_config(argv, "transfer_study")
    shutil.rmtree(config.model_dir, ignore_errors=True)
    started = time.time()
    experiment = experiment_lib.Experiment(config, strategy_lib.make_strategy("auto"))
    experiment.build()
    experiment.restore()
    # The confusion matrix and top-losses plots are not needed here (and cost a pass).
    experiment.interpret = lambda: {}
    metrics = experiment.train()
    wall = time.time() - started
    record = {
        "run": run.name,
        "setting": run.setting,
        "regime": run.regime.name,
        "row": run.row,
        "seed": run.seed,
        "flags": argv,
        "accuracy": metrics["final"]["accuracy"],
        "loss": metrics["final"]["loss"],
        "examples": metrics["final"]["examples"],
        "steps": metrics["step"],
        "max_lr": experiment.config.max_lr,
        "wall_time_sec": wall,
        "train_images_per_sec": metrics["images_per_sec"],
        "scalars": _train_scalars(config.model_dir),
    }
    for key in ("swa", "snapshot_ensemble"):
        if metrics.get(key):
            record[key] = metrics[key].get("accuracy")
    return record


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=sorted(MODES), default="quick")
    parser.add_argument("--out", default="experiments/results", help="results directory")
    parser.add_argument("--work", default="/tmp/lrtech_study", help="datasets and model_dirs")
    parser.add_argument("--fashion_mnist", default=data_lib.FASHION_MNIST_DIR)
    parser.add_argument("--rows", default="", help="comma-separated subset of rows")
    parser.add_argument("--rerun", action="store_true", help="repeat runs that have results")
    parser.add_argument(
        "--jobs",
        type=int,
        default=2,
        help="processes working through the runs together (each claims a run before it "
        "starts it); 2 keeps both cores busy while the other traces its model",
    )
    args = parser.parse_args(argv)
    if not os.path.isdir(args.fashion_mnist):
        sys.stderr.write(
            f"transfer_study: error: --fashion_mnist={args.fashion_mnist} does not exist; "
            "apt-get install dataset-fashion-mnist (BUILD.md)\n"
        )
        return 2
    from trainer import runtime

    runtime.configure(quiet=True)
    runtime.quiet_logging()
    runtime.import_tensorflow()
    only = [r for r in args.rows.split(",") if r] or None
    runs = plan(args.mode, only)
    out = os.path.join(args.out, "runs")
    os.makedirs(out, exist_ok=True)
    data_dir = os.path.join(args.work, "data")
    if args.rerun:
        for run in runs:
            for suffix in (".json", ".claim"):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(out, run.name + suffix))
    helpers = [subprocess.Popen(helper_command(argv)) for _ in range(args.jobs - 1)]
    started = time.time()
    for i, run in enumerate(runs):
        path = os.path.join(out, f"{run.name}.json")
        if os.path.exists(path) or not _claim(path):
            continue
        if os.path.exists(path):  # finished by another process just before the claim
            os.remove(path[: -len(".json")] + ".claim")
            continue
        argv = flags_of(run, data_dir, args.work, args.fashion_mnist)
        record = execute(run, argv)
        record["cpu"] = _cpu_model()
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(record, f)
        os.replace(tmp, path)
        os.remove(path[: -len(".json")] + ".claim")
        elapsed = time.time() - started
        print(
            f"[{i + 1}/{len(runs)} {elapsed / 60:.1f} min] {run.name}: "
            f"accuracy {record['accuracy']:.4f}  {record['wall_time_sec']:.0f} s",
            flush=True,
        )
    return max([0] + [h.wait() for h in helpers])


def helper_command(argv) -> list[str]:
    """The command of one more process of a --jobs study: one process (it starts no more of
    its own), the same runs, and no --rerun (the first process already removed the results)."""
    argv = sys.argv[1:] if argv is None else argv
    kept = [a for a in argv if not a.startswith("--jobs") and a != "--rerun"]
    return [sys.executable, "-m", "experiments.transfer_study", *kept, "--jobs=1"]


def _claim(result_path: str) -> bool:
    """Takes the run for this process: True unless a live process has claimed it.

    The claim file holds the claiming pid; a claim by a process that no longer runs (a killed
    study) is taken over.
    """
    claim = result_path[: -len(".json")] + ".claim"
    for _ in range(2):
        try:
            fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                with open(claim) as f:
                    pid = int(f.read().strip() or 0)
                os.kill(pid, 0)
                return False  # a live process runs it
            except (ProcessLookupError, ValueError):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(claim)  # stale: its process is gone
                continue
            except FileNotFoundError:
                continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return True
    return False


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} x {os.cpu_count()}"
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    sys.exit(main())
