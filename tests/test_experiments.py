"""The transfer study's plan, protocol and report (experiments/), without training."""

import datetime
import json
import os
import statistics

import numpy as np
import pytest

from experiments import data as data_lib
from experiments import protocol, report, work
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
            if config.recipe == "fine_tune":  # phase 1 (head only) + phase 2 = the budget
                freeze = steps.epochs_to_steps(config.freeze_epochs, steps_per_epoch)
                assert freeze + config.train_steps == budget, row
                if row == "lp_ft":  # LP-FT: half head only, then one rate for all
                    assert freeze == budget // 2 and config.lr_spread == 1.0
                    assert not config.train_bn
                else:
                    assert freeze == budget // 7
                    assert config.train_bn == (row == "fine_tune_bn")
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


NEW_ROWS = {"rgn_sgdr", "rgn_layer_sgdr", "fine_tune_bn", "lp_ft"}


def test_every_row_of_a_cell_shares_the_budget_and_the_new_rows_are_in():
    rows = study.rows(42, 3)
    assert NEW_ROWS <= set(rows)
    assert "--adaptive_lr=rgn" in rows["rgn_sgdr"] and "--schedule=sgdr" in rows["rgn_sgdr"]
    for setting in study.SETTINGS.values():
        for regime in setting.regimes:  # one --train_steps for the whole cell (flags_of)
            assert regime.steps % 7 == 0
            assert regime.rows is None or NEW_ROWS <= set(regime.rows)


def test_plan_runs_the_grid_first_then_test_runs_seed_major():
    runs = study.plan("full")
    grid = [r for r in runs if r.split == protocol.VALIDATION]
    test = [r for r in runs if r.split == protocol.TEST]
    assert runs == grid + test  # a test run needs its row's grid
    assert {r.seed for r in grid} == set(protocol.GRID_SEEDS)
    assert {r.lr for r in grid} == set(protocol.GRID) >= {1e-3, 3e-3, 1e-2}
    seeds = [r.seed for r in test]
    assert seeds == sorted(seeds)  # a partial study has every row at its first seeds
    assert {r.seed for r in test} == {0, 1, 2, 3, 4}
    for run in runs:
        if run.regime.rows is not None:
            assert run.row in run.regime.rows
        assert (run.lr == "auto") == (run.split == "test" and run.row in study.GRIDLESS_ROWS)
    names = [r.name for r in grid] + [(r.cell, r.row, r.seed) for r in test]
    assert len(names) == len(set(names))
    assert study.plan("full", cells=["cross_k10"], grid_only=True) == [
        r for r in grid if r.cell == "cross_k10"
    ]
    with pytest.raises(ValueError, match="k7"):
        study.plan("full", cells=["cross_k7"])


def _record(setting, regime, row, seed, accuracy, split="test", lr=0.003, **extra):
    return dict(
        run=f"{row}_{split}_{lr}_{seed}",
        setting=setting,
        regime=regime,
        row=row,
        seed=seed,
        split=split,
        peak_lr=lr,
        accuracy=accuracy,
        wall_time_sec=10.0 + seed,
        flags=["--x=1"],
        max_lr=lr,
        steps=42,
        **extra,
    )


def _grid(setting, regime, row, best=0.003):
    """A complete validation grid of `row` whose best rate is `best` (with the rate beyond
    the edge when `best` is at one)."""
    rates = [*protocol.GRID, *([protocol.BEYOND[best]] if best in protocol.BEYOND else [])]
    return [
        _record(setting, regime, row, 0, 0.9 if lr == best else 0.5, "validation", lr)
        for lr in rates
    ]


def test_choose_rate_takes_the_best_validation_mean_and_refuses_test_records():
    records = [
        _record("cross", "10/class", "one_lr_sgdr", s, a, "validation", lr)
        for lr, accs in ((1e-3, [0.5, 0.75]), (3e-3, [0.625, 0.625]), (1e-2, [0.25, 0.25]))
        for s, a in enumerate(accs)
    ]
    assert protocol.choose_rate(records) == 1e-3  # a tie of means: the smaller rate
    records[0]["accuracy"] = 0.25  # 1e-3's mean drops to 0.5
    assert protocol.choose_rate(records) == 3e-3
    test = _record("cross", "10/class", "one_lr_sgdr", 0, 0.99, "test", 1e-2)
    with pytest.raises(ValueError, match="validation records only"):
        protocol.choose_rate([*records, test])
    with pytest.raises(ValueError, match="several rows"):
        protocol.choose_rate([*records, *_grid("cross", "10/class", "scratch")])


def test_test_accuracy_does_not_feed_the_choice():
    """Feeding any test accuracies, at any rate, leaves every chosen rate unchanged."""
    grid = _grid("cross", "10/class", "one_lr_sgdr", best=1e-3)
    rng = np.random.default_rng(0)
    for trial in range(20):
        test = [
            _record("cross", "10/class", "one_lr_sgdr", s, float(rng.uniform()), "test", lr)
            for lr in protocol.GRID
            for s in range(5)
        ]
        if trial == 0:  # the test set would prefer 1e-2 by far
            for r in test:
                r["accuracy"] = 1.0 if r["peak_lr"] == 1e-2 else 0.1
        status = protocol.grid_status(grid + test)[("cross", "10/class", "one_lr_sgdr")]
        assert status["rate"] == 1e-3 and status["complete"]
        row = report.summarize(grid + test)[("cross", "10/class")]["one_lr_sgdr"]
        assert row["rate"] == 1e-3 and row["n"] == 5
        expected = [r["accuracy"] for r in test if r["peak_lr"] == 1e-3]
        assert row["mean"] == pytest.approx(statistics.mean(expected))


def test_a_grid_whose_best_is_at_an_edge_runs_the_rate_beyond_it_before_choosing():
    key = ("near", "10/class", "fine_tune")
    for best, beyond in ((3e-2, 1e-1), (1e-3, 3e-4)):
        grid = _grid(*key, best=best)
        base, extra = grid[:-1], grid[-1]
        assert extra["peak_lr"] == beyond
        status = protocol.grid_status(base)[key]
        assert not status["complete"] and status["missing"] == [(beyond, 0)]
        assert status["rates"] == sorted([*protocol.GRID, beyond])
        for accuracy, chosen in ((0.5, best), (0.95, beyond)):
            status = protocol.grid_status([*base, dict(extra, accuracy=accuracy)])[key]
            assert status["complete"] and status["rate"] == chosen
    # A best inside the grid adds nothing, and a record beyond it is not read.
    inner = _grid(*key, best=3e-3)
    stray = _record(*key, 0, 0.99, "validation", 1e-1)
    status = protocol.grid_status([*inner, stray])[key]
    assert status["complete"] and status["rate"] == 3e-3 and 1e-1 not in status["validation"]
    # Incomplete: only the grid's own rates missing, nothing beyond yet.
    status = protocol.grid_status(inner[1:])[key]
    assert status["missing"] == [(1e-3, 0)] and not status["complete"]


def test_work_runs_the_rate_beyond_an_edge_then_tests_at_the_choice(tmp_path):
    """Validation peaks at the grid's top, 3e-2, and higher still at 1e-1: the loop adds the
    1e-1 grid run (not in the plan) and the test runs train at 1e-1."""
    trained = []

    def train(run):
        trained.append(run)
        accuracy = {1e-3: 0.5, 3e-3: 0.6, 1e-2: 0.7, 3e-2: 0.8, 1e-1: 0.85}[run.lr]
        return _record(run.setting, run.regime.name, run.row, run.seed, accuracy, run.split, run.lr)

    runs = study.plan("full", ["head_only"], ["cross_k10"], [0, 1])
    assert {r.lr for r in runs} == {*protocol.GRID, None}
    assert work.work(runs, str(tmp_path), train) == []
    assert [(r.split, r.lr) for r in trained[4:]] == [
        ("validation", 1e-1),
        ("test", 1e-1),
        ("test", 1e-1),
    ]
    assert (tmp_path / "cross_k10_head_only_val_lr0.1_s0.json").exists()
    trained.clear()
    assert work.work(runs, str(tmp_path), train) == [] and trained == []


def test_work_runs_test_seeds_at_the_rate_validation_chose(tmp_path):
    """The study's loop, with a stand-in for training: validation accuracy peaks at 1e-2,
    test accuracy at 1e-3; the test runs must train at 1e-2."""
    trained = []

    def train(run):
        trained.append(run)
        if run.split == protocol.VALIDATION:
            accuracy = {1e-3: 0.5, 3e-3: 0.6, 1e-2: 0.7, 3e-2: 0.4}[run.lr]
        else:
            accuracy = {1e-3: 0.99, 3e-3: 0.6, 1e-2: 0.7, 3e-2: 0.98}[run.lr]
        return _record(run.setting, run.regime.name, run.row, run.seed, accuracy, run.split, run.lr)

    runs = study.plan("full", ["one_lr_sgdr"], ["cross_k10"], [0, 1])
    left = work.work(runs, str(tmp_path), train)
    assert left == []
    assert [r.split for r in trained] == ["validation"] * 4 + ["test"] * 2
    assert [r.lr for r in trained[4:]] == [1e-2, 1e-2]
    saved = json.loads((tmp_path / "cross_k10_one_lr_sgdr_lr0.01_s1.json").read_text())
    assert saved["validation_by_rate"] == {"0.001": 0.5, "0.003": 0.6, "0.01": 0.7, "0.03": 0.4}
    # A second pass trains nothing; a run missing from the grid blocks its test runs.
    trained.clear()
    assert work.work(runs, str(tmp_path), train) == [] and trained == []
    os.remove(tmp_path / "cross_k10_one_lr_sgdr_val_lr0.003_s0.json")
    left = work.work([r for r in runs if r.split == "test"], str(tmp_path), train, poll=0)
    assert len(left) == 2 and trained == []
    # --stop_at in the past: nothing starts; the runs left are the waiting and the unstarted.
    assert work.work(runs, str(tmp_path), train, stop_at=0.0) == runs[1:] and trained == []
    left = work.work(runs[2:], str(tmp_path), train, stop_at=0.0)
    assert left == runs[4:] and trained == []  # nothing to start: the test runs wait


def test_stop_at_passed_today_means_now_and_late_evening_means_tomorrow():
    at = datetime.datetime(2026, 12, 7, 3, 31)
    assert work.deadline("03:30", at) == datetime.datetime(2026, 12, 7, 3, 30).timestamp()
    assert work.deadline("04:00", at) == datetime.datetime(2026, 12, 7, 4, 0).timestamp()
    late = datetime.datetime(2026, 12, 7, 23, 0)
    assert work.deadline("01:00", late) == datetime.datetime(2026, 12, 8, 1, 0).timestamp()
    assert work.deadline("") is None


def test_validation_split_comes_from_the_training_pool(tmp_path):
    train_path = data_lib.target_npz("cross", 10, 0, str(tmp_path))
    val_path = data_lib.validation_npz("cross", 10, 0, str(tmp_path))
    with np.load(train_path) as t, np.load(val_path) as v:
        test_images = {x.tobytes() for x in t["x_test"]}
        val_images = [x.tobytes() for x in v["x_test"]]
        assert len(val_images) == 10 * data_lib.VALIDATION_PER_CLASS["cross"]
        assert np.bincount(v["y_test"]).tolist() == [30] * 10
        assert not test_images & set(val_images)  # never the test set
        assert not {x.tobytes() for x in v["x_train"]} & set(val_images)
        assert np.bincount(v["y_train"]).tolist() == [10] * 10
    again = data_lib.validation_npz("cross", None, 3, str(tmp_path / "other"))
    with np.load(again) as a:  # the same fixed split for every seed and regime
        assert sorted(x.tobytes() for x in a["x_test"]) == sorted(val_images)
        assert len(a["y_train"]) + len(val_images) == 1442


def test_summary_is_mean_and_sample_std_and_splits_averaged_models():
    records = [
        _record("near", "10/class", "one_lr_sgdr", s, a) for s, a in enumerate([0.5, 0.7, 0.9])
    ] + [
        _record("near", "10/class", "diff_lr_sgdr", s, a, swa=a + 0.01, snapshot_ensemble=a)
        for s, a in enumerate([0.6, 0.8])
    ]
    records += _grid("near", "10/class", "one_lr_sgdr") + _grid("near", "10/class", "diff_lr_sgdr")
    records += _grid("near", "10/class", "layer_decay_sgdr")
    summary = report.summarize(records)[("near", "10/class")]
    one = summary["one_lr_sgdr"]
    assert one["mean"] == pytest.approx(0.7)
    assert one["std"] == pytest.approx(statistics.stdev([0.5, 0.7, 0.9]))
    assert one["n"] == 3 and one["wall"] == pytest.approx(11.0)
    assert summary["diff_lr_sgdr+swa"]["mean"] == pytest.approx(0.71)
    assert summary["diff_lr_sgdr+ensemble"]["n"] == 2
    records += [_record("near", "10/class", "layer_decay_sgdr", s, a) for s, a in [(0, 0.8)]]
    table = report.headline(report.summarize(records))
    assert "| 0.700 ± 0.200 @0.003 (n=3) |" in table and "| 0.700 ± 0.141 @0.003 (n=2) |" in table
    assert "| **0.800 ± nan** @0.003 (n=1) |" in table  # the best of the column in bold
    assert "SWA" not in table  # averaged rows: EXPERIMENTS.md only
    records += [_record("near", "10/class", "diff_lr_sgdr_auto", 0, 0.6, lr=0.002)]
    table = report.format_table(report.summarize(records)[("near", "10/class")])
    assert "| auto: 0.002-0.002 | - | 0.6000 ± nan | 1 |" in table
    assert "| 0.003 | - / 0.500 / 0.900 / 0.500 / 0.500 / - | 0.7000 ± 0.2000 | 3 |" in table
    # A row with an incomplete grid has no test entry yet, and the status says so.
    records += [_record("near", "10/class", "rgn_sgdr", 0, 0.9, "validation", 1e-3)]
    records += [_record("near", "10/class", "rgn_sgdr", 0, 0.95)]
    summary = report.summarize(records)
    assert "rgn_sgdr" not in summary[("near", "10/class")]
    status = report.status(records, summary)
    assert "| near, 10/class | Auto-RGN (--adaptive_lr=rgn), SGDR | 1 of 4 | (grid incomplete)" in (
        status
    )
    assert "Not run under this protocol yet: near, 500/class; cross, 10/class; cross, all" in (
        status
    )


def test_rgn_goal_compares_with_the_best_other_row():
    records = _grid("cross", "all", "rgn_sgdr") + _grid("cross", "all", "one_lr_sgdr")
    records += [_record("cross", "all", "rgn_sgdr", s, 0.90) for s in range(2)]
    records += [_record("cross", "all", "one_lr_sgdr", s, 0.915) for s in range(2)]
    text = report.rgn_goal(report.summarize(records))
    assert "gap +0.0150" in text and "**no**" in text
    records += [_record("cross", "all", "rgn_sgdr", 2, 0.93)]  # mean 0.91: within 0.01
    assert "**yes**" in report.rgn_goal(report.summarize(records))


def test_helper_processes_start_no_helpers_of_their_own():
    command = work.helper_command(["--mode=quick", "--jobs=3", "--rerun", "--out=/x"])
    assert command[1:3] == ["-m", "experiments.transfer_study"]
    assert command[3:] == ["--mode=quick", "--out=/x", "--jobs=1"]
    assert work.helper_command(["--mode=full"])[-1] == "--jobs=1"  # default --jobs is 2
