"""The transfer study: which fine-tuning recipe helps where, on real data, offline.

    python3 -m experiments.transfer_study --mode=quick   # ~15 minutes: 1 cell, 3 rows, 2 seeds
    python3 -m experiments.transfer_study --mode=full    # ~280 runs: 5-8 hours on 2 CPU cores
    python3 -m experiments.report                        # EXPERIMENTS.md and its plots

Needs Fashion-MNIST (`apt-get install dataset-fashion-mnist`, see BUILD.md) and
scikit-learn. Each run is one lrtech training run (the `Experiment` API that run_train.py
drives, with the flags printed in EXPERIMENTS.md), in this process, one after the other; each
result is written to ``--out``/runs/NAME.json as soon as the run ends, and an existing result
is not run again, so an interrupted study resumes where it stopped (``--rerun`` repeats).

Protocol (experiments/protocol.py, Kornblith et al. 2019): every row first runs a grid of
peak rates on a validation split held out of the training pool (``*_val_lr*`` results), plus
the next rate beyond an edge when the grid's best is at that edge (added by the test runs'
loop); once a row's grid is complete its test runs (5 seeds) use the rate of the best
validation accuracy. A test run whose row's grid another process is still running waits.

Settings (the pretrained model is lrtech's shipped ResNet-20, models/pretrained/):
  * ``near``: pretrained on Fashion-MNIST classes 0-4, fine-tuned on classes 5-9 (photos of
    the same kind, objects it never saw);
  * ``cross``: pretrained on all of Fashion-MNIST (clothing photos), fine-tuned on
    scikit-learn's 8x8 handwritten digits (another domain).

Each setting runs in a few-label regime (K labelled images per class, drawn per seed) and a
data-rich one; every row of one (setting, regime) gets the same step budget, batch size,
rate grid and seeds. See `ROWS` for the rows and why each has the flags it has.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import time

import numpy as np

from experiments import data as data_lib
from experiments import protocol
from experiments import work as work_lib

# Each row's peak learning rate (Adam; the head's, or the only one) is chosen from
# protocol.GRID on a validation split (Kornblith et al. 2019); --max_lr=auto picks its own.
GRIDLESS_ROWS = ("diff_lr_sgdr_auto", "diff_lr_sgdr_auto_min")
GRID = protocol.GRID
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
RICH_ROWS = (
    "scratch",
    "one_lr_sgdr",
    "diff_lr_sgdr",
    "fine_tune",
    "fine_tune_bn",
    "lp_ft",
    "rgn_sgdr",
    "rgn_layer_sgdr",
)

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
    fine_tune = [
        "--recipe=fine_tune",
        "--split_at=preset",
        f"--freeze_epochs={epochs(steps // 7)}",
        f"--train_steps={steps - steps // 7}",
    ]
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
        # fastai's fine_tune: phase 1 (head) + phase 2 (all) = the same budget; v1's row
        # (frozen BatchNorm) and fastai's default (--train_bn: frozen segments' BN trains).
        "fine_tune": [*fine_tune, "--notrain_bn"],
        "fine_tune_bn": [*fine_tune, "--train_bn"],
        # LP-FT (Kumar et al. 2022): half the budget head only on frozen features (BatchNorm
        # frozen too: linear probing), then everything at one lower rate (max_lr/2,
        # --lr_spread=1) on a fresh one-cycle. The fine_tune recipe's two phases do exactly
        # this; --freeze_segments + --unfreeze_every would keep one schedule across the
        # switch, so the body would join at whatever rate the head's schedule had reached.
        "lp_ft": [
            "--recipe=fine_tune",
            "--split_at=preset",
            "--lr_spread=1",
            "--notrain_bn",
            f"--freeze_epochs={epochs(steps // 2)}",
            f"--train_steps={steps - steps // 2}",
        ],
        # Auto-RGN (Lee et al. ICLR 2023): one segment, each tensor's rate from its relative
        # gradient norm at every step, under the same SGDR as the fixed rows.
        "rgn_sgdr": ["--adaptive_lr=rgn", *sgdr],
        # The same with one RGN per layer: a fresh zero bias (the new head's) has RGN
        # ||g|| / eps and, per tensor, holds every other variable at the floor (0) until it
        # has grown; per layer its kernel's norm counts too (trainer.lr.optimizers.segmented).
        "rgn_layer_sgdr": ["--adaptive_lr=rgn", "--adaptive_lr_granularity=layer", *sgdr],
        "diff_lr_sgdr_auto": [
            *diff,
            *sgdr,
            "--max_lr=auto",
            "--lr_find_start=1e-6",
            "--lr_find_end=1",
            "--lr_find_steps=50",
        ],
        # The same range test, training at its minimum/10 suggestion instead of the valley
        # (the valley row chose 3-10x below the grid's rate).
        "diff_lr_sgdr_auto_min": [
            *diff,
            *sgdr,
            "--max_lr=auto",
            "--lr_find_start=1e-6",
            "--lr_find_end=1",
            "--lr_find_steps=50",
            "--lr_find_suggestion=minimum",
        ],
    }


ROW_TITLES = {
    "scratch": "from scratch (one rate, SGDR)",
    "head_only": "head only, body frozen (SGDR)",
    "one_lr_constant": "full fine-tune, one rate, constant",
    "one_lr_sgdr": "full fine-tune, one rate, SGDR",
    "diff_lr_sgdr": "differential rates (3 segments, /10 spread), SGDR",
    "layer_decay_sgdr": "layer-wise decay (43 layers, /10 spread), SGDR",
    "fine_tune": "fine_tune recipe (head 1/7, then all), frozen BN",
    "fine_tune_bn": "fine_tune recipe, --train_bn (frozen segments' BN trains)",
    "lp_ft": "LP-FT (head only 1/2, then all at max_lr/2, one rate)",
    "rgn_sgdr": "Auto-RGN (--adaptive_lr=rgn), SGDR",
    "rgn_layer_sgdr": "Auto-RGN per layer (--adaptive_lr_granularity=layer), SGDR",
    "diff_lr_sgdr_auto": "differential rates, SGDR, --max_lr=auto",
    "diff_lr_sgdr_auto_min": "differential rates, SGDR, --max_lr=auto --lr_find_suggestion=minimum",
    "diff_lr_sgdr+swa": "differential rates, SGDR + SWA of the last 2 cycle ends",
    "diff_lr_sgdr+ensemble": "differential rates, SGDR + ensemble of the last 2 snapshots",
}

MODES = {
    # name: (cells "setting_tag", seeds, rows (None: all))
    "quick": (("cross_k10",), (0, 1), ("one_lr_sgdr", "layer_decay_sgdr", "rgn_sgdr")),
    "full": (("cross_k10", "cross_kall", "near_k10", "near_k500"), (0, 1, 2, 3, 4), None),
}


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run: a grid run (split "validation", lr from the grid) or a test run
    (split "test"; lr None until its row's grid has chosen it, "auto" for --max_lr=auto)."""

    setting: str
    regime: Regime
    row: str
    seed: int
    split: str = protocol.TEST
    lr: float | str | None = None

    @property
    def cell(self) -> str:
        return f"{self.setting}_{self.regime.tag}"

    @property
    def name(self) -> str:
        if self.lr is None:
            raise ValueError(f"{self.cell}_{self.row}_s{self.seed}: no rate chosen yet")
        split = "val_" if self.split == protocol.VALIDATION else ""
        lr = self.lr if isinstance(self.lr, str) else f"{self.lr:g}"
        return f"{self.cell}_{self.row}_{split}lr{lr}_s{self.seed}"


def regime_of(cell: str) -> tuple[str, Regime]:
    setting, tag = cell.split("_", 1)
    if setting not in SETTINGS:
        raise ValueError(f"cell {cell!r}: setting {setting!r} is not one of {sorted(SETTINGS)}")
    for regime in SETTINGS[setting].regimes:
        if regime.tag == tag:
            return setting, regime
    tags = [r.tag for r in SETTINGS[setting].regimes]
    raise ValueError(f"cell {cell!r}: regime {tag!r} is not one of {tags}")


def plan(mode: str, only_rows=None, cells=None, seeds=None, grid_only=False) -> list[Run]:
    """The grid runs of every cell first, then the test runs, seed-major (a partial study
    has every row at its first seeds); each cell's rows in `ROW_TITLES` order."""
    mode_cells, mode_seeds, mode_rows = MODES[mode]
    wanted = only_rows or mode_rows
    grid, test = [], []
    for cell in cells or mode_cells:
        setting, regime = regime_of(cell)
        for row in rows(regime.steps, 1):
            if regime.rows is not None and row not in regime.rows:
                continue
            if wanted and row not in wanted:
                continue
            if row in GRIDLESS_ROWS:
                test += [Run(setting, regime, row, s, lr="auto") for s in seeds or mode_seeds]
                continue
            for s in protocol.GRID_SEEDS:
                grid += [Run(setting, regime, row, s, protocol.VALIDATION, lr) for lr in GRID]
            test += [Run(setting, regime, row, s) for s in seeds or mode_seeds]
    test.sort(key=lambda r: r.seed)  # stable: cells and rows keep their order within a seed
    return grid if grid_only else grid + test


def flags_of(run: Run, data_dir: str, work: str, fashion_mnist: str) -> list[str]:
    """The run_train.py flags of `run` (its dataset file is written here if missing)."""
    setting = SETTINGS[run.setting]
    npz = data_lib.validation_npz if run.split == protocol.VALIDATION else data_lib.target_npz
    dataset = npz(run.setting, run.regime.per_class, run.seed, data_dir, fashion_mnist)
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
        f"--max_lr={run.lr if isinstance(run.lr, str) else format(run.lr, 'g')}",
        f"--eval_every_epochs={run.regime.steps / steps_per_epoch:.10g}",
        "--steps_per_loop=6",
        "--checkpoint_every_steps=100000",
        "--noprogress",
        f"--seed={run.seed}",
    ]
    # SWA and the ensemble: test runs of the few-label regime only (not training, not chosen).
    averaging = run.regime.rows is None and run.split == protocol.TEST
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
    """Trains one run in this process; returns its result record (``accuracy`` is on the
    run's evaluation split: validation for a grid run, test for a test run)."""
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
        "split": run.split,
        "peak_lr": experiment.config.max_lr,
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
    parser.add_argument("--cells", default="", help="e.g. cross_k10,near_k500 (default: mode's)")
    parser.add_argument("--seeds", default="", help="test seeds, e.g. 0,1 (default: mode's)")
    parser.add_argument(
        "--grid_only",
        action="store_true",
        help="only the rate grid's runs (without the rate beyond an edge)",
    )
    parser.add_argument(
        "--stop_at", default="", help="HH:MM local time: start no run after it (resumable)"
    )
    parser.add_argument("--rerun", action="store_true", help="repeat runs that have results")
    parser.add_argument(
        "--jobs",
        type=int,
        default=2,
        help="processes working through the runs together (each claims a run before it "
        "starts it); 2 keeps both cores busy while the other traces its model",
    )
    args = parser.parse_args(argv)
    only = [r for r in args.rows.split(",") if r] or None
    cells = [c for c in args.cells.split(",") if c] or None
    seeds = [int(s) for s in args.seeds.split(",") if s] or None
    try:
        runs = plan(args.mode, only, cells, seeds, args.grid_only)
    except ValueError as e:
        sys.stderr.write(f"transfer_study: error: {e}\n")
        return 2
    if any(r.setting == "near" for r in runs) and not os.path.isdir(args.fashion_mnist):
        sys.stderr.write(
            f"transfer_study: error: --fashion_mnist={args.fashion_mnist} does not exist; "
            "apt-get install dataset-fashion-mnist (BUILD.md)\n"
        )
        return 2
    from trainer import runtime

    runtime.configure(quiet=True)
    runtime.quiet_logging()
    runtime.import_tensorflow()
    out = os.path.join(args.out, "runs")
    os.makedirs(out, exist_ok=True)
    data_dir = os.path.join(args.work, "data")
    if args.rerun:
        work_lib.remove_results(out, runs)
    helpers = [subprocess.Popen(work_lib.helper_command(argv)) for _ in range(args.jobs - 1)]

    def train(run: Run) -> dict:
        record = execute(run, flags_of(run, data_dir, args.work, args.fashion_mnist))
        record["cpu"] = work_lib.cpu_model()
        record["load_average"] = os.getloadavg()
        return record

    work_lib.work(runs, out, train, work_lib.deadline(args.stop_at))
    return max([0] + [h.wait() for h in helpers])


if __name__ == "__main__":
    sys.exit(main())
