"""EMA of the weights (--ema_decay): Keras' optimizer EMA through the segmented optimizer, the
float16 loss-scale path, against a NumPy reference; the EMA model's export."""

import json
from pathlib import Path

import keras
import numpy as np
import pytest

from tests import helpers
from tests.helpers import bn_config as config
from tests.helpers import tiny_bn_model as tiny_model
from trainer.averaging.weights import averaged_weights, batch_norm_layers
from trainer.lr import keras_private

DECAY = 0.7


def test_ema_equals_the_numpy_reference_with_float16_loss_scaling(tmp_path):
    cfg = config(
        tmp_path, mixed_precision="mixed_float16", ema_decay=DECAY, train_steps=6, steps_per_loop=1
    )
    exp = helpers.restored(cfg, tiny_model)
    config_of = exp.optimizer.get_config()
    assert type(exp.optimizer).__name__ == "SegmentedAdam"
    assert config_of["use_ema"] and config_of["ema_momentum"] == DECAY
    assert config_of["lr_mults"] == [0.1, 1.0]
    # A loss scale so large that the first step's float16 gradients overflow: the step is
    # skipped (the global step still advances), and Keras' EMA, which starts "at iterations
    # 0", would then average into zeros. Ours starts at the initial weights.
    exp.loss_scale.scale.assign(2.0**17)
    variables = averaged_weights(exp.model)
    weights = [[v.numpy().astype(np.float64) for v in variables]]
    applied = []
    train = exp.trainer.train

    def recording_train(num_steps):
        logs = train(num_steps)
        weights.append([v.numpy().astype(np.float64) for v in variables])
        applied.extend(logs["applied"].tolist())
        return logs

    exp.trainer.train = recording_train
    metrics = exp.train()
    assert len(applied) == 6 and not applied[0] and any(applied[1:])

    # Keras: avg <- w at the step taken at iterations 0, else D * avg + (1 - D) * w, after
    # each applied update; a skipped step leaves it.
    expected = weights[0]
    for step, (w, was_applied) in enumerate(zip(weights[1:], applied)):
        if was_applied:
            first = step == 0
            expected = [x if first else DECAY * e + (1 - DECAY) * x for e, x in zip(expected, w)]
    ema_model, record = exp.averaging._models["ema"]
    for e, v in zip(expected, averaged_weights(ema_model)):
        assert v.dtype == "float32"
        np.testing.assert_allclose(v.numpy(), e, rtol=1e-6, atol=1e-7)
    assert not np.allclose(averaged_weights(ema_model)[0].numpy(), weights[-1][0])

    # BN statistics recomputed for the EMA weights; the training model's are left alone.
    (bn,) = batch_norm_layers(ema_model)
    (trained_bn,) = batch_norm_layers(exp.model)
    assert not np.allclose(bn.moving_mean.numpy(), trained_bn.moving_mean.numpy())
    assert record["bn_batches"] == exp.plan.steps_per_epoch == 4
    assert metrics["ema"]["decay"] == DECAY and metrics["ema"]["step"] == 6
    assert {"loss", "accuracy", "top5"} <= set(metrics["ema"])
    assert "swa" not in metrics and "snapshot_ensemble" not in metrics

    # export/ema/ holds the EMA model, the mixed-precision policy included.
    path = Path(exp.export()) / "ema"
    loaded = keras.saving.load_model(path / "model.keras")
    assert loaded.get_layer("conv").dtype_policy.name == "mixed_float16"
    for e, v in zip(expected, averaged_weights(loaded)):
        np.testing.assert_allclose(v.numpy(), e, rtol=1e-6, atol=1e-7)
    assert json.loads((path / "labels.json").read_text())["decay"] == DECAY
    assert exp.export_complete()


def test_ema_decay_maps_to_keras_use_ema(tmp_path):
    exp = helpers.build(config(tmp_path, ema_decay=0.999, optimizer="momentum"), tiny_model)
    assert exp.optimizer.use_ema and exp.optimizer.ema_momentum == pytest.approx(0.999)
    assert exp.averaging.names == ["ema"] and exp.averaging.checkpoint_objects() == {}
    # The EMA copies start at the weights (Keras starts them at zero).
    built = keras_private.built_variables(exp.optimizer)
    copies = keras_private.ema_copies(exp.optimizer)
    assert len(built) == len(copies) == len(exp.model.trainable_variables)
    for variable, copy in zip(built, copies):
        np.testing.assert_array_equal(copy.numpy(), variable.numpy())
    without = helpers.build(config(tmp_path / "plain"), tiny_model)
    assert not without.optimizer.use_ema and without.averaging.names == []
