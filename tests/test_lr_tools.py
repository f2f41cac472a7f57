"""Learning-rate tools in a run: LR range test, --max_lr=auto, schedules, fine_tune, layer decay.

Each run is an `Experiment` of test_checkpoints' run (helpers.BN_RUN: conv, bn, head),
on the synthetic data; exactness is judged against a run without the tool.
"""

import json
import os
import signal

import numpy as np
import pytest

import schedules
from tests import helpers
from tests.helpers import bn_config as config
from tests.helpers import bn_experiment as experiment
from tests.helpers import state
from tests.helpers import tiny_bn_model as tiny_model
from trainer import config as config_lib
from trainer.errors import Preempted, UserError
from trainer.lr.table import layer_decay_mults
from trainer.lr_find import range_test
from trainer.run_dir import checkpoints

FIND = dict(lr_find=True, lr_find_steps=30, lr_find_start=1e-5, lr_find_end=10.0)


def assert_same_state(a, b):
    """Exactly equal states; `a` is an Experiment or a state list (conftest's bn_straight)."""
    x, y = a if isinstance(a, list) else state(a), state(b)
    assert len(x) == len(y)
    for i, (u, v) in enumerate(zip(x, y)):
        np.testing.assert_array_equal(u, v, err_msg=f"state variable {i}")


def test_lr_find_changes_nothing(tmp_path, bn_straight):
    exp = experiment(config(tmp_path / "found", **FIND))
    before = state(exp)
    result = exp.lr_find()
    assert_equal_lists(before, state(exp))  # weights, BN statistics, optimizer slots
    assert exp.step == 0 and exp.trainer.first_trainable is None
    assert len(result.lrs) >= 25 and result.stop_reason in ("completed", "diverged")
    assert result.lrs[0] == pytest.approx(1e-5) and np.all(np.diff(result.lrs) > 0)
    record = json.loads((tmp_path / "found" / range_test.JSON_FILE).read_text())
    assert record["suggestions"]["valley"] == pytest.approx(result.suggested_max_lr)
    assert (tmp_path / "found" / range_test.PLOT_FILE).stat().st_size > 1000
    exp.train()
    assert_same_state(bn_straight[0], exp)


def assert_equal_lists(a, b):
    assert len(a) == len(b)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)


def test_lr_find_mid_run_keeps_the_data_position(tmp_path, bn_straight):
    """A range test after a resume reads from the restored step on; training continues."""
    experiment(config(tmp_path / "resumed", train_steps=5)).train()
    resumed = experiment(config(tmp_path / "resumed", **FIND))
    assert resumed.step == 5
    resumed.lr_find()
    assert resumed.step == 5
    resumed.train()
    assert_same_state(bn_straight[0], resumed)


def test_max_lr_auto_trains_at_the_valley_and_records_the_number(tmp_path):
    exp = experiment(config(tmp_path, max_lr="auto", **FIND))
    valley = exp.lr_find_result.suggested_max_lr
    assert exp.config.max_lr == valley and exp.schedule.max_lr == valley
    flags_txt = (tmp_path / "flags.txt").read_text()
    assert f"--max_lr={valley!r}" in flags_txt
    assert checkpoints.read_config(str(tmp_path))["full"]["max_lr"] == valley
    exp.train()
    # The same command again resumes at the number chosen, without a second test.
    again = experiment(config(tmp_path, max_lr="auto", **FIND))
    assert again.lr_find_result is None and again.config.max_lr == valley
    # And the number in flags.txt repeats the run exactly.
    fixed = experiment(config(tmp_path / "fixed", max_lr=valley))
    fixed.train()
    assert_same_state(exp, fixed)


def test_max_lr_auto_trains_at_the_suggestion_named_by_lr_find_suggestion(tmp_path):
    exp = experiment(config(tmp_path, max_lr="auto", lr_find_suggestion="minimum", **FIND))
    found = exp.lr_find_result.suggestions
    assert tuple(found) == config_lib.LR_FIND_SUGGESTIONS  # the flag's choices are the finder's
    assert found["minimum"] != found["valley"]  # else this test could not tell them apart
    assert exp.config.max_lr == found["minimum"] == exp.lr_find_result.suggestion("minimum")
    assert exp.schedule.max_lr == found["minimum"]


def test_one_cycle_and_cosine_schedules_of_a_run(tmp_path):
    exp = experiment(config(tmp_path / "one", schedule="one_cycle", first_cycle_steps=None))
    assert isinstance(exp.schedule, schedules.OneCycle)
    assert exp.schedule.total_steps == exp.plan.total_steps == 12
    assert exp.config.cycles_momentum and exp.optimizer.get_config()["cycle_momentum"] is True
    lrs = exp.learning_rates(3)  # the peak: 0.25 * 12 steps
    assert lrs == pytest.approx([0.001, 0.01])
    exp.train()
    scalars = _momentum_scalars(tmp_path / "one")
    assert scalars and all(0.85 <= m <= 0.95 for m in scalars)
    cos = experiment(
        config(tmp_path / "cos", schedule="cosine", first_cycle_steps=None, warmup_steps=2)
    )
    assert isinstance(cos.schedule, schedules.Cosine) and not cos.config.cycles_momentum
    assert cos.learning_rates(2) == pytest.approx([0.001, 0.01])
    assert cos.learning_rates(12)[-1] == pytest.approx(0.0, abs=1e-12)


def _momentum_scalars(model_dir):
    import tensorflow as tf

    found = []
    directory = model_dir / "tensorboard" / "train"
    for name in os.listdir(directory):
        for event in tf.compat.v1.train.summary_iterator(str(directory / name)):
            for value in event.summary.value:
                if value.tag == "momentum":
                    found.append(float(tf.make_ndarray(value.tensor)))
    return found


RECIPE = dict(
    recipe="fine_tune",
    schedule="one_cycle",
    first_cycle_steps=None,
    split_at=("head",),  # segment 0: conv and bn; segment 1: the head
    lr_mults=None,
    freeze_epochs=1.0,  # 4 steps of 16 from 64 examples
    train_steps=8,
    steps_per_loop=2,
    checkpoint_every_steps=1000,
)


def test_fine_tune_recipe_phases(tmp_path):
    # Keras' frozen BatchNorm here; the recipe's default --train_bn: tests/test_run_options.py.
    exp = experiment(config(tmp_path, **RECIPE, train_bn=False))
    assert exp.plan.total_steps == 12 and exp.plan.unfreeze_steps() == [4]
    assert exp.lr_mults == pytest.approx((0.01, 1.0))  # fastai's lr_mult=100
    assert exp.schedule.boundaries == [4]
    # Phase 1 peaks at max_lr near its end; phase 2 starts at max_lr / 2 / 5.
    assert exp.learning_rates(0)[1] == pytest.approx(0.01 / 25)
    assert exp.learning_rates(4)[1] == pytest.approx(0.01 / 2 / 5)
    conv, bn = exp.model.get_layer("conv"), exp.model.get_layer("bn")
    initial = [v.numpy() for v in conv.weights + bn.weights]
    train = exp.trainer.train

    def stop_at_phase_end(num_steps):
        out = train(num_steps)
        if out["end"] == 4:
            frozen = [v.numpy() for v in conv.weights + bn.weights]
            # The frozen segment did not move, and its BatchNorm ran in inference mode.
            assert_equal_lists(initial, frozen)
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    exp.trainer.train = stop_at_phase_end
    with pytest.raises(Preempted, match="step 4"):
        exp.train()


def test_fine_tune_resumed_across_the_phase_boundary_equals_straight_through(tmp_path):
    straight = experiment(config(tmp_path / "straight", **RECIPE))
    straight.train()
    cfg = config(tmp_path / "resumed", **RECIPE)
    first = experiment(cfg)
    train = first.trainer.train

    def signal_at_step_2(num_steps):
        out = train(num_steps)
        if out["end"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    first.trainer.train = signal_at_step_2
    with pytest.raises(Preempted, match="step 2"):
        first.train()
    resumed = experiment(cfg)
    assert resumed.step == 2
    resumed.train()  # crosses the boundary at step 4 in this process
    assert resumed.step == 12
    x, y = state(straight), state(resumed)
    for u, v in zip(x, y):
        np.testing.assert_allclose(u, v, atol=1e-6, rtol=0)


def test_layer_decay_gives_every_weighted_layer_its_multiplier(tmp_path):
    exp = experiment(config(tmp_path, split_at=(), lr_mults=None, layer_decay=0.5))
    # conv, bn and head have weights: three segments at 0.25, 0.5 and 1.
    assert exp.table.num_segments == 3
    assert exp.lr_mults == pytest.approx((0.25, 0.5, 1.0)) == layer_decay_mults(3, 0.5)
    by_layer = {
        layer.name: {exp.segment_of[v.path] for v in layer.trainable_weights}
        for layer in exp.model.layers
        if layer.trainable_weights
    }
    assert by_layer == {"conv": {0}, "bn": {1}, "head": {2}}
    report = exp.layer_report().splitlines()
    layers = report[1 : report.index("")]
    mults = {line.split()[1]: line.split()[-1] for line in layers if len(line.split()) == 6}
    assert mults == {"conv": "0.25", "bn": "0.5", "head": "1"}
    exp.train()
    assert exp.step == 12


def test_recipe_needs_two_segments(tmp_path):
    cfg = config(tmp_path, **dict(RECIPE, split_at=()))
    with pytest.raises(UserError, match="needs at least 2 segments"):
        helpers.build(cfg, tiny_model)
