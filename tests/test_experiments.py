"""The transfer study's plan and report (experiments/), without its data or training."""

import statistics

import pytest

from experiments import report
from experiments import transfer_study as study
from trainer import flags as flags_lib
from trainer.loop import steps

BASE = [
    "--model_dir=/nonexistent/run",
    "--dataset=npz:/nonexistent/d.npz",  # parsing reads no data
    "--model=resnet20",
    "--global_batch_size=32",
    "--optimizer=adam",
    "--max_lr=0.003",
]


@pytest.mark.parametrize("budget, steps_per_epoch", [(42, 1), (42, 3), (105, 78), (105, 45)])
def test_every_row_parses_and_trains_the_same_number_of_steps(budget, steps_per_epoch):
    for with_averaging in (True, False):
        for row, extra in study.rows(budget, steps_per_epoch, with_averaging).items():
            argv = study._merged([*BASE, f"--train_steps={budget}", *extra])
            config = flags_lib.parse_config(argv, "transfer_study")
            if row == "fine_tune":  # phase 1 (head only) + phase 2 = the budget
                freeze = steps.epochs_to_steps(config.freeze_epochs, steps_per_epoch)
                assert freeze + config.train_steps == budget, row
            else:
                assert config.train_steps == budget, row
            if config.schedule == "sgdr" and config.recipe == "none":
                # Cycles of 1, 2 and 4 sevenths: the last one ends at the budget's end.
                assert config.first_cycle_steps * 7 == budget and config.cycle_mult == 2.0
            if "+swa" in row or config.swa_start_epoch is not None:
                assert with_averaging and row == "diff_lr_sgdr"
                start = steps.epochs_to_steps(config.swa_start_epoch, steps_per_epoch)
                assert start == 2 * budget // 7  # the last two cycle ends are averaged


def test_merged_flags_keep_the_last_value_in_place():
    merged = study._merged(["--a=1", "--augment", "--b=2", "--a=3", "--noaugment"])
    assert merged == ["--a=3", "--noaugment", "--b=2"]


def test_layer_decay_gives_the_first_layer_the_segments_spread():
    d = study._layer_decay(study.RESNET20_WEIGHTED_LAYERS)
    assert d ** (study.RESNET20_WEIGHTED_LAYERS - 1) == pytest.approx(1 / study.SPREAD)


def test_plan_is_seed_major_and_rich_regimes_run_their_rows_only():
    runs = study.plan("full")
    seeds = [r.seed for r in runs]
    assert seeds == sorted(seeds)  # a partial study has every row at its first seeds
    for run in runs:
        if run.regime.rows is not None:
            assert run.row in run.regime.rows
    names = [r.name for r in runs]
    assert len(names) == len(set(names))
    assert {r.seed for r in runs} == {0, 1, 2, 3, 4}


def _record(setting, regime, row, seed, accuracy, **extra):
    return dict(
        setting=setting,
        regime=regime,
        row=row,
        seed=seed,
        accuracy=accuracy,
        wall_time_sec=10.0 + seed,
        flags=["--x=1"],
        max_lr=0.003,
        steps=42,
        **extra,
    )


def test_summary_is_mean_and_sample_std_and_splits_averaged_models():
    records = [
        _record("near", "10/class", "one_lr_sgdr", s, a) for s, a in enumerate([0.5, 0.7, 0.9])
    ] + [
        _record("near", "10/class", "diff_lr_sgdr", s, a, swa=a + 0.01, snapshot_ensemble=a)
        for s, a in enumerate([0.6, 0.8])
    ]
    summary = report.summarize(records)[("near", "10/class")]
    one = summary["one_lr_sgdr"]
    assert one["mean"] == pytest.approx(0.7)
    assert one["std"] == pytest.approx(statistics.stdev([0.5, 0.7, 0.9]))
    assert one["n"] == 3 and one["wall"] == pytest.approx(11.0)
    assert summary["diff_lr_sgdr+swa"]["mean"] == pytest.approx(0.71)
    assert summary["diff_lr_sgdr+ensemble"]["n"] == 2
    records += [_record("near", "10/class", "layer_decay_sgdr", s, a) for s, a in [(0, 0.8)]]
    table = report.headline(report.summarize(records))
    assert "| 0.700 ± 0.200 |" in table and "| 0.700 ± 0.141 |" in table
    assert "| **0.800 ± nan** |" in table  # the best of the column in bold
    assert "1-3 seeds" in table and "SWA" not in table  # averaged rows: EXPERIMENTS.md only


def test_helper_processes_start_no_helpers_of_their_own():
    command = study.helper_command(["--mode=quick", "--jobs=3", "--rerun", "--out=/x"])
    assert command[1:3] == ["-m", "experiments.transfer_study"]
    assert command[3:] == ["--mode=quick", "--out=/x", "--jobs=1"]
    assert study.helper_command(["--mode=full"])[-1] == "--jobs=1"  # default --jobs is 2
