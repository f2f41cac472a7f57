"""The benchmark machinery: exact statistics, and the code paths bench/run_all.py drives.

Benchmarks are not tests: nothing here times anything. These tests keep the measurement
arithmetic right and the workloads runnable against the current trainer.
"""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import bench
from bench import common, suites, workloads
from trainer import data


def test_alternate_rotates_order_drops_warmup_and_pairs_ratios():
    calls = []
    script = {"a": iter([100.0, 10.0, 20.0, 40.0]), "b": iter([1.0, 5.0, 5.0, 8.0])}

    def candidate(name):
        def run():
            calls.append(name)
            return next(script[name])

        return run

    cmp = common.alternate({"a": candidate("a"), "b": candidate("b")}, reps=3, warmup=1)
    assert calls == ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert cmp.stats["a"].values == [10.0, 20.0, 40.0]
    assert cmp.stats["b"].values == [5.0, 5.0, 8.0]
    assert cmp.stats["a"].median == 20.0 and cmp.stats["a"].min == 10.0
    # Paired: b/a per repetition, not median(b) / median(a) (= 0.25).
    assert cmp.ratio("b").values == [0.5, 0.25, 0.2]
    assert cmp.ratio("b").median == 0.25
    assert cmp.ratio("b").max == 0.5


def test_alternate_rounds_combine_pairs_as_total_over_total():
    runs = iter([(100.0, 1.0), (100.0, 3.0), (50.0, 1.0), (50.0, 1.0)])
    cmp = common.alternate({"x": lambda: next(runs)}, reps=2, warmup=0, rounds=2)
    # 200 items in 4 s, then 100 items in 2 s (not the mean of rates 100 and 33.3).
    assert cmp.stats["x"].values == [50.0, 50.0]
    plain = iter([1.0, 2.0, 4.0, 8.0])
    assert common.alternate({"y": lambda: next(plain)}, reps=2, warmup=0, rounds=2).stats[
        "y"
    ].values == [1.5, 6.0]


def test_alternate_rejects_bad_counts():
    with pytest.raises(ValueError, match="reps=0"):
        common.alternate({"a": lambda: 1.0}, reps=0)
    with pytest.raises(ValueError, match="rounds=0"):
        common.alternate({"a": lambda: 1.0}, reps=1, rounds=0)


def test_formatting():
    assert common.fmt(1234.6) == "1235"
    assert common.fmt(0.012345) == "0.0123"
    assert common.fmt(1.0) == "1"
    assert common.spread(common.Stats([3.0, 1.0, 2.0])) == "2 (1-3)"
    assert common.table(["a", "b"], [["1", "2"]]) == "| a | b |\n|---|---|\n| 1 | 2 |"
    cmp = common.Comparison({"x": common.Stats([2.0]), "y": common.Stats([3.0])}, "x")
    text = common.comparison_table(cmp, "img/s", {"x": "base"})
    assert "| base | 2 (2-2) | 1 (baseline) |" in text
    assert "| y | 3 (3-3) | 1.5 (1.5-1.5) |" in text


def test_section_marks_goals():
    s = common.Section("T", "cmd", "setup", "body", "meaning", [("fast", True), ("lean", False)])
    text = s.markdown()
    assert "fast: **met**" in text and "lean: **NOT met**" in text
    assert "Reproduce: `cmd`" in text


def test_even_splits_give_the_asked_number_of_segments():
    import models
    from trainer.lr import segments

    model = models.build("resnet8", 10)
    for n in (3, 8):
        split = workloads.even_splits(model, n)
        assert len(split) == n - 1
        assert max(segments.assign(model, split).values()) == n - 1


def test_trainer_and_fit_workloads_train_the_same_examples(tmp_path):
    config = workloads.make_config("resnet8", 8, 32, model_dir=str(tmp_path / "t"))
    trainer = workloads.Trainer(config)
    fit = workloads.Fit(config)
    with workloads.closing(trainer, fit):
        assert trainer.run_steps(3) == 24
        assert fit.run_steps(2) == 16
        assert trainer.run_epoch() == fit.run_epoch() == 32
        # fit trains on exactly the pixels the trainer's (unaugmented) pipeline gathers.
        images, labels = data.load(config).as_numpy("train")
        np.testing.assert_array_equal(fit.x, images)
        np.testing.assert_array_equal(fit.y, labels)
        assert trainer.exp.optimizer.iterations.numpy() == 3 + 4
        trainer.checkpoint(7)
        assert trainer.exp.checkpointer.latest().endswith("ckpt-7")
        # Timed epochs: fit's epoch time excludes the rest of its fit() call.
        start = time.perf_counter()
        images, seconds = fit.timed_epoch()
        wall = time.perf_counter() - start
        assert images == 32 and 0 < seconds < wall
        assert fit.call_overheads[-1] == pytest.approx(wall - seconds, abs=0.05)
        images, seconds = trainer.timed_epoch()
        assert images == 32 and seconds > 0
        # The compute floor steps the same optimizer on one fixed batch.
        assert trainer.run_floor(2) == 16
        assert trainer.exp.optimizer.iterations.numpy() == 3 + 4 + 4 + 2
    assert not os.path.exists(config.model_dir)


def test_run_updates_applies_each_segments_rate_to_fixed_gradients(tmp_path):
    # SGD without momentum: each update moves a variable by exactly lr * mult * 1e-3.
    import models

    model = models.build("resnet8", 10)
    split = workloads.even_splits(model, 3)
    config = workloads.make_config(
        "resnet8",
        8,
        32,
        model_dir=str(tmp_path / "u"),
        optimizer="sgd",
        max_lr=10.0,  # updates far above float32 round-off of the weights
        split_at=split,
        lr_spread=100.0,
    )
    trainer = workloads.Trainer(config)
    with workloads.closing(trainer):
        before = {v.path: v.numpy() for v in trainer.variables}
        assert trainer.run_updates(4) == 4
        assert trainer.exp.optimizer.iterations.numpy() == 4
        lrs = [float(trainer.exp.schedule(i)) for i in range(4)]
        moved = {}
        for v in trainer.variables:
            mult = trainer.exp.lr_mults[trainer.exp.segment_of[v.path]]
            step = (before[v.path] - v.numpy()) / (1e-3 * sum(lrs))
            np.testing.assert_allclose(step, mult, rtol=1e-3)
            moved[mult] = True
        assert len(moved) == 3  # three segments, three different rates


def test_child_reports_start_up_and_peak_memory():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(
        [sys.executable, os.path.join(root, "bench", "child.py"), "fit", "resnet8", "8", "2", "0"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    # LAUNCHED_AT=0 makes first_step_sec the epoch time of the first step: a recent one.
    assert result["first_step_sec"] > 1.7e9
    assert 100 < result["peak_rss_mib"] < 20000
    assert result["train_sec"] > 0


def test_run_all_flags_reject_unknown_benchmark():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(
        [sys.executable, os.path.join(root, "bench", "run_all.py"), "--only=nope"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1
    assert "run_all.py: error:" in proc.stderr and "--only takes names from" in proc.stderr
    assert list(bench.NAMES) == list(suites.RUNNERS)


def test_floor_and_keras_batch_norm_copy(tmp_path):
    import keras

    import models
    from models.layers import BatchNormalization

    config = workloads.make_config("resnet8", 8, 16, model_dir=str(tmp_path / "f"))
    model = models.build("resnet8", 10)
    plain = workloads.keras_batch_norm(model)
    ours = [layer for layer in model.layers if type(layer) is BatchNormalization]
    theirs = [layer for layer in plain.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert ours and [layer.name for layer in theirs] == [layer.name for layer in ours]
    assert all(type(layer) is keras.layers.BatchNormalization for layer in theirs)
    images, labels = data.load(config).as_numpy("train")
    np.testing.assert_allclose(plain(images[:8]), model(images[:8]), rtol=1e-5, atol=1e-6)
    before = plain.get_layer("stem_conv").kernel.numpy()
    floor = workloads.Floor(plain, workloads.floor_optimizer(config, plain), images[:8], labels[:8])
    assert floor.run(3) == 24
    assert not np.array_equal(plain.get_layer("stem_conv").kernel.numpy(), before)
    # The copy is independent: training it leaves the original's weights alone.
    np.testing.assert_array_equal(model.get_layer("stem_conv").kernel.numpy(), before)
