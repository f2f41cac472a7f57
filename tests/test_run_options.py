"""Run options wired through the Experiment: --adaptive_lr, --train_bn, block-wise
--layer_decay_groups, and a user's own model (--model=PATH.keras / module:function)."""

import json
import subprocess
import sys

import keras
import numpy as np
import pytest

from tests import helpers
from tests.helpers import ROOT
from trainer import layout
from trainer.lr import segments
from trainer.reporting.summaries import TRAIN


def _scalars(model_dir, kind, tag):
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(
        str(model_dir / layout.TENSORBOARD_DIR / kind), size_guidance={"tensors": 0}
    )
    acc.Reload()
    return [(e.step, float(keras.ops.convert_to_numpy(_value(e)))) for e in acc.Tensors(tag)]


def _value(event):
    import tensorflow as tf

    return tf.make_ndarray(event.tensor_proto)


# --adaptive_lr ---------------------------------------------------------------------------------


def test_adaptive_run_resumes_bitwise_and_reports_multipliers(tmp_path):
    run = dict(
        train_steps=8,
        first_cycle_steps=4,
        split_at=("mid",),
        lr_mults=(0.1, 1.0),
        adaptive_lr="rgn",
        adaptive_lr_floor=0.05,
        checkpoint_every_steps=4,
    )
    straight, _ = helpers.trained(helpers.tiny_config(tmp_path / "a", **run))
    first = helpers.restored(helpers.tiny_config(tmp_path / "b", **{**run, "train_steps": 4}))
    first.train()
    resumed, _ = helpers.trained(helpers.tiny_config(tmp_path / "b", **run))
    for a, b in zip(helpers.state(straight), helpers.state(resumed)):
        np.testing.assert_array_equal(a, b)  # no adaptive state: resume stays bitwise
    assert "adaptive_multipliers" not in json.dumps(
        [v.path for v in straight.checkpointer.checkpoint_variables()]
        if hasattr(straight.checkpointer, "checkpoint_variables")
        else []
    )
    points = {k: _scalars(tmp_path / "a", TRAIN, f"adaptive_lr/segment_{k}") for k in (0, 1)}
    assert [s for s, _ in points[0]] == [4, 8]  # one point per compiled loop (4 steps each)
    for values in points.values():
        assert all(0.05 - 1e-7 <= m <= 1.0 + 1e-7 for _, m in values)
    # Every step has a variable at multiplier 1 (the largest RGN): some segment mean is near 1
    # only if it has few variables; at least one segment's mean is above the floor.
    assert max(m for values in points.values() for _, m in values) > 0.05


def test_adaptive_off_and_on_differ_and_one_variable_equals_plain(tmp_path):
    base = dict(train_steps=4, first_cycle_steps=4, split_at=(), lr_mults=None)
    plain, _ = helpers.trained(helpers.tiny_config(tmp_path / "plain", **base))
    rgn, _ = helpers.trained(helpers.tiny_config(tmp_path / "rgn", **base, adaptive_lr="rgn"))
    differs = any(
        not np.array_equal(a, b) for a, b in zip(plain.model.get_weights(), rgn.model.get_weights())
    )
    assert differs  # the multipliers act

    def one_dense(num_classes):
        return keras.Sequential(
            [
                keras.Input((8, 8, 3)),
                keras.layers.Flatten(),
                keras.layers.Dense(num_classes, use_bias=False, name="head"),
            ]
        )

    one = helpers.trained(helpers.tiny_config(tmp_path / "one_plain", **base), model_fn=one_dense)[
        0
    ]
    one_rgn = helpers.trained(
        helpers.tiny_config(tmp_path / "one_rgn", **base, adaptive_lr="rgn"), model_fn=one_dense
    )[0]
    for a, b in zip(one.model.get_weights(), one_rgn.model.get_weights()):
        np.testing.assert_array_equal(a, b)  # one variable: m = 1 at every step


# --train_bn ------------------------------------------------------------------------------------


def test_train_bn_trains_frozen_batchnorm_and_nothing_else_frozen(tmp_path):
    run = dict(
        train_steps=4,
        first_cycle_steps=4,
        split_at=("head",),
        lr_mults=(1.0, 1.0),
        freeze_segments=1,
        max_lr=0.05,
    )

    def weights(exp):
        return {w.path: w.numpy() for w in exp.model.weights}

    for train_bn in (False, True):
        exp = helpers.restored(
            helpers.tiny_config(tmp_path / str(train_bn), **run, train_bn=train_bn),
            helpers.tiny_bn_model,
        )
        before = weights(exp)
        exp.train()
        after = weights(exp)
        changed = {p for p in before if not np.array_equal(before[p], after[p])}
        frozen_bn = {p for p in before if "/bn/" in p}
        frozen_other = {p for p in before if "/conv/" in p}
        assert frozen_other.isdisjoint(changed), changed  # frozen conv stays bitwise
        assert any("/head/" in p for p in changed)
        if train_bn:  # gamma, beta and the moving statistics all move
            assert frozen_bn <= changed, frozen_bn - changed
            assert len(frozen_bn) == 4
        else:
            assert frozen_bn.isdisjoint(changed)


def test_fine_tune_recipe_trains_bn_by_default():
    from trainer.config import Config

    assert Config(model_dir="x", recipe="fine_tune", split_at=("preset",)).trains_bn
    assert not Config(model_dir="x").trains_bn
    assert not Config(model_dir="x", recipe="fine_tune", train_bn=False).trains_bn


def test_freeze_with_train_bn_marks_only_batchnorm_trainable():
    model = helpers.tiny_bn_model(3)
    trainable = segments.freeze(model, ("head",), 1, train_bn=True)
    assert sorted(v.path.split("/")[-2] for v in trainable) == ["bn", "bn", "head", "head"]


# --layer_decay_groups ---------------------------------------------------------------------------


def test_block_layer_decay_groups_resnet20_by_block(tmp_path):
    import models

    cfg = helpers.tiny_config(
        tmp_path, model="resnet20", image_size=32, layer_decay=0.8, layer_decay_groups="block"
    )
    exp = helpers.build(cfg, model_fn=None)
    rows = segments.layer_rows(exp.model, ())
    paths = [f"{r.scope}/{r.name}" if r.scope else r.name for r in rows]
    ids = models.block_ids(paths, "block", [r.trainable_params > 0 for r in rows])
    assert exp.num_segments == max(ids) + 1 == 11  # stem, 9 residual blocks, head
    assert exp.lr_mults[-1] == 1.0 and exp.lr_mults[0] == pytest.approx(0.8**10)
    per_layer = segments.layer_segments(exp.model, exp.split_at)
    assert per_layer == ids  # every layer's segment is its block
    report = exp.layer_report()
    assert "segment" in report and f"{0.8**10:.4g}" in report


def test_layer_decay_underflow_names_the_flag(tmp_path):
    from trainer.errors import UserError

    cfg = helpers.tiny_config(tmp_path, layer_decay=1e-300)
    with pytest.raises(UserError, match=r"--layer_decay=1e-300: .* float32's smallest"):
        helpers.build(cfg)


# A user's own model -----------------------------------------------------------------------------


def test_builder_model_trains_resumes_exports_and_loads_in_plain_keras(tmp_path):
    run = dict(
        model="tests.user_model_lib:classifier",
        image_size=16,
        input_scale="unit",
        train_steps=4,
        first_cycle_steps=4,
        split_at=("preset",),
        lr_mults=None,
        checkpoint_every_steps=2,
    )
    exp, metrics = helpers.trained(helpers.tiny_config(tmp_path / "run", **run), model_fn=None)
    assert metrics["final"]["examples"] == 16
    path = exp.export()
    labels = json.loads((tmp_path / "run" / layout.EXPORT_DIR / layout.LABELS_FILE).read_text())
    assert labels["input_scale"] == "unit" and labels["image_size"] == 16
    # A fresh process with plain Keras and only the user's module (its custom layer).
    code = (
        "import os; os.environ['TF_CPP_MIN_LOG_LEVEL'] = '2'\n"
        "import keras, numpy as np, tests.user_model_lib\n"
        f"m = keras.saving.load_model({str(tmp_path / 'run' / 'export' / 'model.keras')!r})\n"
        "print(m.predict(np.zeros((2, 16, 16, 3), 'float32'), verbose=0).shape)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0 and out.stdout.strip().endswith("(2, 10)"), out.stderr[-2000:]
    assert path.endswith(layout.EXPORT_DIR)


def test_saved_user_model_with_a_custom_layer_resumes_exactly_and_predicts(tmp_path):
    from tests import user_model_lib
    from trainer.tools import predict

    saved = tmp_path / "mine.keras"
    user_model_lib.classifier(4, 16).save(saved)  # a custom Scale layer, softmax, 4 classes
    run = dict(
        model=str(saved),
        custom_objects="tests.user_model_lib",
        train_steps=8,
        first_cycle_steps=4,
        split_at=("preset",),
        lr_mults=None,
        checkpoint_every_steps=4,
        image_size=None,  # the saved model's own 16 px
    )
    straight, _ = helpers.trained(helpers.tiny_config(tmp_path / "a", **run), model_fn=None)
    assert straight.config.image_size == 16
    assert straight.model.output_shape == (None, 10)  # a new head for the 10 synthetic classes
    first = helpers.restored(
        helpers.tiny_config(tmp_path / "b", **{**run, "train_steps": 4}), model_fn=None
    )
    first.train()
    resumed, _ = helpers.trained(helpers.tiny_config(tmp_path / "b", **run), model_fn=None)
    for a, b in zip(helpers.state(straight), helpers.state(resumed)):
        np.testing.assert_array_equal(a, b)
    straight.export()
    image = tmp_path / "x.png"
    import PIL.Image

    PIL.Image.fromarray(np.full((20, 20, 3), 128, np.uint8)).save(image)
    results = predict.predict(str(tmp_path / "a"), [str(image)], top_k=3)
    assert len(results) == 1 and len(results[0][1]) == 3
    # A uniform image stays uniform at any size: the model's own softmax on 128s.
    logits = straight.model(np.full((1, 16, 16, 3), 128.0, np.float32), training=False)
    probs = keras.ops.convert_to_numpy(keras.ops.softmax(logits))[0]
    name, prob = results[0][1][0]
    assert name == straight.info.class_names[int(np.argmax(probs))]
    assert prob == pytest.approx(float(np.max(probs)), abs=1e-5)
