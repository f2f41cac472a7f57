"""Experiment: segments and multipliers, the step plan, reports, files written, export."""

import json
import os

import keras
import numpy as np
import pytest

from tests import helpers
from tests.helpers import tiny_model
from trainer.config import Config
from trainer.errors import UserError
from trainer.experiment import Experiment
from trainer.loop import steps
from trainer.loop.controller import Action, Controller, When
from trainer.loop.strategy import make_strategy
from trainer.lr.table import resolve_split_at


def config(tmp_path, **kw):
    base = dict(
        synthetic_test_size=20,
        train_steps=6,
        first_cycle_steps=2,
        split_at=("2", "head"),
        lr_mults=(0.01, 0.1, 1.0),
        eval_every_epochs=1.0,
    )
    return helpers.tiny_config(tmp_path, **{**base, **kw})


def build(cfg):
    return helpers.build(cfg, plots=True)  # the plots are this module's to test


def test_lr_mults_count_must_match_segments(tmp_path):
    with pytest.raises(UserError, match="--lr_mults has 2 values but --split_at gives 3 segments"):
        build(config(tmp_path, lr_mults=(0.1, 1.0)))


def test_lr_spread_and_default_multipliers(tmp_path):
    assert build(config(tmp_path, lr_mults=None, lr_spread=100.0)).lr_mults == pytest.approx(
        (0.01, 0.1, 1.0)
    )
    assert build(config(tmp_path, lr_mults=None)).lr_mults == (1.0, 1.0, 1.0)


def test_split_at_presets_expand():
    import models

    cfg = Config(model_dir="/x", model="resnet20", split_at=("preset", "head_logits"))
    assert resolve_split_at(cfg) == (*models.split_preset("resnet20"), "head_logits")
    cfg = cfg.replace(split_at=("3",))
    assert resolve_split_at(cfg) == ("3",)


def test_lr_table_and_layer_report(tmp_path):
    exp = build(config(tmp_path))
    table = exp.lr_table().splitlines()
    assert len(table) == 4
    # Segment 2 is the head: 8*10 + 10 parameters at 1.0 * max_lr.
    assert table[3].split()[-3:] == ["90", "1", "0.01"]
    assert table[1].split()[-1] == "0.0001"
    assert "conv" in exp.layer_report()
    assert exp.learning_rates(0) == pytest.approx([1e-4, 1e-3, 1e-2])


def test_num_classes_inferred_and_epochs_resolved(tmp_path):
    exp = build(
        config(
            tmp_path,
            train_steps=None,
            epochs=2.5,
            first_cycle_epochs=1.0,
            first_cycle_steps=None,
            unfreeze_every=None,
        )
    )
    assert exp.config.num_classes == 10
    assert exp.plan.steps_per_epoch == 4
    assert exp.plan.total_steps == 10
    assert exp.plan.first_cycle_steps == 4
    assert exp.plan.eval_every_steps == 4


def test_next_boundary():
    # Checkpoints every 7, eval every 20 and at the end, epochs of 10, restarts at 3 and 9.
    class Due(Action):
        def __init__(self, when):
            self.when = when

        def __call__(self, step, logs):
            pass

    whens = [When(every=7), When(every=20, at_end=True), When(every=10, each_loop=True)]
    whens.append(When(steps=(3, 9)))
    controller = Controller(None, [Due(w) for w in whens], total_steps=35, steps_per_loop=4)
    ends, step = [], 0
    while step < 35:
        step = controller.next_boundary(step)
        ends.append(step)
    assert ends == [3, 7, 9, 10, 14, 18, 20, 21, 25, 28, 30, 34, 35]
    with pytest.raises(UserError, match="exactly one of --epochs / --train_steps"):
        steps.check_length(Config(model_dir="/x"))
    with pytest.raises(UserError, match="exactly one of --epochs / --train_steps"):
        steps.resolve(Config(model_dir="/x", epochs=1.0, train_steps=3), 10)


def test_train_writes_metrics_summaries_and_export(tmp_path):
    exp = build(config(tmp_path))
    assert exp.restore() == 0
    metrics = exp.train()
    assert metrics["step"] == 6 and metrics["final"]["step"] == 6
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["final"] == pytest.approx(metrics["final"])
    # Evaluated at the epoch end (step 4) and at the end (6); best is the higher accuracy.
    assert metrics["best"]["accuracy"] == max(
        metrics["best"]["accuracy"], metrics["final"]["accuracy"]
    )
    assert set(metrics["final"]) >= {"loss", "accuracy", "top5"}
    assert metrics["images_per_sec"] > 0
    for kind in ("train", "eval"):
        assert os.listdir(tmp_path / "tensorboard" / kind)
    assert "--num_classes=10" in (tmp_path / "flags.txt").read_text()
    # The interpretation of the final model: its confusion matrix agrees with the final eval.
    confusion = np.array(on_disk["confusion_matrix"])
    assert confusion.shape == (10, 10) and confusion.sum() == metrics["final"]["examples"] == 20
    assert np.trace(confusion) / 20 == pytest.approx(metrics["final"]["accuracy"])
    recalls = [c["recall"] for c in on_disk["per_class"]]
    support = confusion.sum(axis=1)
    assert recalls == pytest.approx(np.diag(confusion) / np.maximum(support, 1))
    for name in ("confusion_matrix.png", "top_losses.png"):
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG")
    path = exp.export()
    loaded = keras.saving.load_model(os.path.join(path, "model.keras"))
    x = np.random.default_rng(0).uniform(0, 255, (3, 8, 8, 3)).astype(np.float32)
    np.testing.assert_allclose(loaded(x), exp.model(x), atol=1e-6)
    assert os.path.exists(os.path.join(path, "model.weights.h5"))
    assert os.path.exists(os.path.join(path, "saved_model", "saved_model.pb"))


def test_tensorboard_scalars_readable(tmp_path):
    import tensorflow as tf

    exp = build(config(tmp_path, train_steps=4))
    exp.restore()
    exp.train()
    tags = set()
    for name in os.listdir(tmp_path / "tensorboard" / "train"):
        for event in tf.compat.v1.train.summary_iterator(
            str(tmp_path / "tensorboard" / "train" / name)
        ):
            tags.update(v.tag for v in event.summary.value)
    assert {"loss", "accuracy", "images_per_sec", "step_time", "lr/segment_0"} <= tags
    # The HParams experiment and session: tests/test_summaries.py reads them back.


def test_train_before_build_is_an_error(tmp_path):
    with pytest.raises(UserError, match="build"):
        Experiment(config(tmp_path), make_strategy("one_device")).train()


def test_a_signal_during_export_leaves_no_partial_export(tmp_path):
    import signal

    from trainer.errors import Preempted
    from trainer.loop.interrupts import Interrupts

    interrupts = Interrupts()
    exp = Experiment(
        config(tmp_path, train_steps=2),
        make_strategy("one_device"),
        model_fn=tiny_model,
        interrupts=interrupts,
    ).build()
    exp.restore()
    exp.train()
    interrupts.received.append(signal.SIGTERM)  # as if it arrived while model.keras was written
    with pytest.raises(Preempted, match="during the export"):
        exp.export()
    assert not (tmp_path / "export").exists() and not exp.export_complete()
    assert not list(tmp_path.glob("export.tmp-*"))
    interrupts.received.clear()
    exp.export()  # the next run writes it
    assert exp.export_complete()
