"""trainer.lr.keras_private: every private Keras name we rely on still exists and still works.

One check per row of `keras_private.PRIVATE`, on real Keras objects. A Keras upgrade that
removes or changes one fails here with the attribute, its use and the Keras version.
"""

import os
import pathlib
import re
import tempfile

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

from schedules import SGDR
from trainer.lr import keras_private, optimizers

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _variables():
    return [keras.Variable(np.ones((2, 3), "float32"), name="w"), keras.Variable([0.5], name="b")]


def _built(optimizer):
    variables = _variables()
    optimizer.build(variables)
    return optimizer, variables


def _slot_names(optimizer):
    return {name for name, _ in keras_private.slot_lists(optimizer)}


class _Recording:
    """Mixin that records calls of the hooks the segmented optimizer overrides."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = []

    def _apply_weight_decay(self, variables):
        self.calls.append("_apply_weight_decay")
        return super()._apply_weight_decay(variables)

    def _all_reduce_sum_gradients(self, grads_and_vars):
        self.calls.append("_all_reduce_sum_gradients")
        return super()._all_reduce_sum_gradients(grads_and_vars)


def check_get_variable_index():
    opt, (w, b) = _built(keras.optimizers.Adam())
    assert keras_private.variable_index(opt, w) == 0
    assert keras_private.variable_index(opt, b) == 1
    with pytest.raises(KeyError):
        keras_private.variable_index(opt, keras.Variable(1.0, name="stranger"))


def check_optimizer_trainable_variables():
    opt, variables = _built(keras.optimizers.SGD(momentum=0.9))
    assert [id(v) for v in keras_private.built_variables(opt)] == [id(v) for v in variables]


def check_slot_lists():
    expected = {
        keras.optimizers.SGD(momentum=0.9): {"momentums"},  # public name, same structure
        keras.optimizers.Adam(): {"_momentums", "_velocities"},
        keras.optimizers.AdamW(): {"_momentums", "_velocities"},
        keras.optimizers.Nadam(): {"_momentums", "_velocities"},
        keras.optimizers.RMSprop(momentum=0.9): {"_velocities", "_momentums"},
    }
    for opt, names in expected.items():
        _built(opt)
        assert _slot_names(opt) == names, type(opt).__name__
        for _, slots in keras_private.slot_lists(opt):
            assert [tuple(s.shape) for s in slots] == [(2, 3), (1,)]


def check_accumulators():
    opt, _ = _built(keras.optimizers.Adagrad(initial_accumulator_value=0.3))
    assert _slot_names(opt) == {keras_private.ADAGRAD_ACCUMULATORS}
    assert keras_private.slot_initial_value(opt, "_accumulators") == pytest.approx(0.3)
    for slot in dict(keras_private.slot_lists(opt))["_accumulators"]:
        np.testing.assert_allclose(slot.numpy(), 0.3)


def check_not_state_lists():
    opt, _ = _built(keras.optimizers.Adam(use_ema=True, gradient_accumulation_steps=2))
    for name in keras_private.NOT_STATE:
        value = getattr(opt, name)  # exists with these options
        assert len(value) == 2 and all(isinstance(v, keras.Variable) for v in value), name
    assert _slot_names(opt) == {"_momentums", "_velocities"}  # they are not reset


def check_learning_rate():
    schedule = SGDR(0.1, 10)
    assert keras_private.learning_rate_object(keras.optimizers.Adam(schedule)) is schedule
    assert keras_private.learning_rate_object(keras.optimizers.Adam(0.1)) is None


def check_ema_copies():
    w, b = _variables()
    opt = keras.optimizers.Adam(0.1, use_ema=True, ema_momentum=0.5)
    opt.build([w, b])
    copies = keras_private.ema_copies(opt)
    assert len(copies) == 2 and tuple(copies[0].shape) == tuple(w.shape)
    opt.apply([keras.ops.ones_like(w), keras.ops.ones_like(b)], [w, b])
    # Keras starts the average at the first step's weights: the copy follows the variable.
    np.testing.assert_allclose(copies[0].numpy(), w.numpy(), rtol=1e-6)


def check_exclude_from_weight_decay():
    w, b = _variables()
    source = keras.optimizers.AdamW(weight_decay=0.5)
    source.exclude_from_weight_decay(var_list=[w])
    target = keras.optimizers.AdamW(weight_decay=0.5)
    keras_private.copy_weight_decay_exclusions(source, target)
    assert not keras_private.uses_weight_decay(target, w)
    assert keras_private.uses_weight_decay(target, b)


def check_exclude_from_weight_decay_pattern():
    w, b = _variables()
    source = keras.optimizers.AdamW(weight_decay=0.5)
    source.exclude_from_weight_decay(var_names=["b"])
    target = keras.optimizers.AdamW(weight_decay=0.5)
    keras_private.copy_weight_decay_exclusions(source, target)
    assert keras_private.uses_weight_decay(target, w)
    assert not keras_private.uses_weight_decay(target, b)


def check_use_weight_decay():
    # Also end to end: an excluded variable does not decay in the segmented optimizer.
    w, b = _variables()
    base = optimizers.make("sgd", 0.1, weight_decay=0.5)
    base.exclude_from_weight_decay(var_list=[w])
    opt = optimizers.segmented(base, {w.path: 0, b.path: 0}, (1.0,))
    opt.apply([tf.zeros_like(w), tf.zeros_like(b)], [w, b])
    np.testing.assert_array_equal(w.numpy(), np.ones((2, 3)))
    np.testing.assert_allclose(b.numpy(), [0.5 * (1 - 0.5 * 0.1)], rtol=1e-6)


def check_hook(name):
    recording = type("RecordingAdam", (_Recording, keras.optimizers.Adam), {})
    keras_private.check_hooks(keras.optimizers.Adam)
    opt = recording(0.1, weight_decay=0.1)
    w, b = _variables()
    opt.apply([tf.ones_like(w), tf.ones_like(b)], [w, b])
    assert name in opt.calls, f"Keras' apply() no longer calls {name}"


def check_all_reduce_sum_gradients():
    check_hook("_all_reduce_sum_gradients")
    # It gets the clipped gradients and returns those update_step applies: Auto-RGN's
    # multipliers are computed from its result.
    received = []

    class Doubling(keras.optimizers.SGD):
        def _all_reduce_sum_gradients(self, grads_and_vars):
            grads_and_vars = super()._all_reduce_sum_gradients(grads_and_vars)
            received.extend(g.numpy() for g, _ in grads_and_vars)
            return [(2 * g, v) for g, v in grads_and_vars]

    w = keras.Variable([0.0, 0.0], name="w")
    Doubling(1.0, global_clipnorm=1.0).apply([tf.constant([3.0, 4.0])], [w])
    np.testing.assert_allclose(received[0], [0.6, 0.8], rtol=1e-6)
    np.testing.assert_allclose(w.numpy(), [-1.2, -1.6], rtol=1e-6)


def check_layer_trainable_variables():
    layer = keras.layers.Dense(2)
    layer.build((None, 3))
    layer.trainable = False
    assert layer.trainable_weights == []
    created = keras_private.created_trainable_variables(layer)
    assert [id(v) for v in created] == [id(layer.kernel), id(layer.bias)]


def check_layers():
    class Block(keras.layers.Layer):
        def __init__(self):
            super().__init__()
            self.inner = keras.layers.Dense(2)
            self.norms = [keras.layers.BatchNormalization()]

    block = Block()
    assert keras_private.tracked_sublayers(block) == [block.inner, block.norms[0]]


def check_to_snake_case():
    from keras.src.utils import naming

    assert naming.to_snake_case("BatchNormalization") == "batch_normalization"
    assert naming.to_snake_case("Conv2D") == "conv2d"
    # The keys of a weights file come from it.
    model = keras.Sequential([keras.Input((3,)), keras.layers.BatchNormalization()])
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m.weights.h5")
        model.save_weights(path)
        with h5py.File(path) as f:
            assert "layers/batch_normalization/vars" in f


CHECKS = {
    ("_get_variable_index", "keras.optimizers.Optimizer"): check_get_variable_index,
    ("_trainable_variables", "keras.optimizers.Optimizer"): check_optimizer_trainable_variables,
    ("_momentums, _velocities, _accumulators, ... (slot lists)", None): check_slot_lists,
    ("_accumulators", None): check_accumulators,
    ("_model_variables_moving_average, _accumulated_gradients", None): check_not_state_lists,
    ("_learning_rate", None): check_learning_rate,
    ("_model_variables_moving_average", None): check_ema_copies,
    ("_exclude_from_weight_decay", None): check_exclude_from_weight_decay,
    ("_exclude_from_weight_decay_pattern", None): check_exclude_from_weight_decay_pattern,
    ("_use_weight_decay", None): check_use_weight_decay,
    ("_apply_weight_decay", None): lambda: check_hook("_apply_weight_decay"),
    ("_all_reduce_sum_gradients", None): check_all_reduce_sum_gradients,
    ("_trainable_variables", "keras.layers.Layer"): check_layer_trainable_variables,
    ("_layers", None): check_layers,
    ("to_snake_case", None): check_to_snake_case,
}


def _check_for(row):
    return CHECKS.get((row.name, row.owner)) or CHECKS.get((row.name, None))


@pytest.mark.parametrize("row", keras_private.PRIVATE, ids=lambda r: f"{r.owner}.{r.name}")
def test_private_keras_name_still_works(row):
    check = _check_for(row)
    assert check is not None, f"no check in this file for {row.owner}.{row.name}"
    try:
        check()
    except Exception as e:
        pytest.fail(
            f"Keras {keras.__version__}: {row.owner}.{row.name} no longer works as lrtech "
            f"expects ({row.used_by}: {row.used_for}): {type(e).__name__}: {e}"
        )


def test_missing_attribute_names_it_and_the_keras_version():
    with pytest.raises(keras_private.KerasPrivateError) as error:
        keras_private.variable_index(object(), keras.Variable(1.0))
    message = str(error.value)
    assert "object._get_variable_index is missing" in message
    assert f"Keras {keras.__version__}" in message and "learning-rate multiplier" in message

    class NoHooks:
        pass

    with pytest.raises(keras_private.KerasPrivateError, match="NoHooks._apply_weight_decay"):
        keras_private.check_hooks(NoHooks)


_PRIVATE_NAME = re.compile(r"\.(_[a-z]\w*)")
_KERAS_SRC = re.compile(r"keras\.src(?:\.\w+)+")


def test_every_private_use_in_our_modules_is_listed():
    listed = {token for row in keras_private.PRIVATE for token in row.name.split(", ")}
    owners = {row.owner for row in keras_private.PRIVATE}
    files = [
        p for p in sorted((ROOT / "trainer" / "lr").glob("*.py")) if p.name != "keras_private.py"
    ]
    files += sorted((ROOT / "models").glob("*.py"))
    for path in files:
        code = path.read_text()
        for match in _PRIVATE_NAME.finditer(code):
            if code[: match.start()].endswith("self"):
                continue  # our own attributes
            name = match.group(1)
            assert name in listed, f"{path.name}: private Keras name {name} not in keras_private"
        for module in _KERAS_SRC.findall(code):
            assert any(owner.startswith(module) for owner in owners), f"{path.name}: {module}"
