"""trainer.lr.segments: flattened layer order, split points, variable ownership, freezing."""

import keras
import numpy as np
import pytest

from schedules import SGDR
from trainer.errors import UserError
from trainer.lr import segments


def nested_model():
    """Functional model with a Sequential inside: flattened x(0), a(1), b(2), head(3)."""
    inner = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(5, name="a"), keras.layers.Dense(6, name="b")],
        name="inner",
    )
    x = keras.Input((4,), name="x")
    return keras.Model(x, keras.layers.Dense(3, name="head")(inner(x)), name="outer")


class Block(keras.layers.Layer):
    """A residual block with a variable of its own (`scale`) and two sublayers."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.inside = keras.layers.Dense(4, name="inside")
        self.norm = keras.layers.BatchNormalization(name="norm")

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(), initializer="ones", name="scale")
        self.inside.build(input_shape)
        self.norm.build(input_shape)

    def call(self, x, training=None):
        return x + self.scale * self.norm(self.inside(x), training=training)


def block_model():
    """Flattened: x(0), first(1), block(2), inside(3), norm(4), head(5)."""
    x = keras.Input((4,), name="x")
    h = keras.layers.Dense(4, name="first")(x)
    h = Block(name="block")(h)
    return keras.Model(x, keras.layers.Dense(2, name="head")(h))


def paths(layer):
    return {v.path for v in layer.trainable_weights}


def test_nested_model_is_expanded_depth_first():
    model = nested_model()
    assert [layer.name for layer in segments.flatten_layers(model)] == ["x", "a", "b", "head"]
    assert segments.layer_segments(model, ["b"]) == [0, 0, 1, 1]
    seg = segments.assign(model, ["b"])  # the split falls inside the nested model
    inner = model.get_layer("inner")
    a, b, head = inner.get_layer("a"), inner.get_layer("b"), model.get_layer("head")
    assert seg == {**dict.fromkeys(paths(a), 0), **dict.fromkeys(paths(b) | paths(head), 1)}
    assert len(seg) == len(model.trainable_variables) == 6


@pytest.mark.parametrize("split_at", [[2, "head"], ["b", 3], "2,head", ["2", "head"], ("b", "3")])
def test_indices_and_names_mixed(split_at):
    model = nested_model()
    assert segments.layer_segments(model, split_at) == [0, 0, 1, 2]
    assert sorted(set(segments.assign(model, split_at).values())) == [0, 1, 2]


def test_container_name_means_its_first_layer():
    model = block_model()
    assert segments.layer_segments(model, ["block"]) == [0, 0, 1, 1, 1, 1]


def test_layer_with_own_variables_and_sublayers():
    model = block_model()
    names = [layer.name for layer in segments.flatten_layers(model)]
    assert names == ["x", "first", "block", "inside", "norm", "head"]
    block = model.get_layer("block")
    seg = segments.assign(model, ["inside", "head"])
    assert seg[block.scale.path] == 0  # owned directly by the block, in the block's segment
    assert {seg[p] for p in paths(block.inside) | paths(block.norm)} == {1}
    assert {seg[p] for p in paths(model.get_layer("head"))} == {2}
    assert len(seg) == len(model.trainable_variables)
    rows = segments.layer_rows(model, ["inside"])
    assert [(r.name, r.params, r.trainable_params) for r in rows[2:5]] == [
        ("block", 1, 1),
        ("inside", 20, 20),
        ("norm", 16, 8),  # gamma, beta trainable; moving mean / variance not
    ]
    assert rows[3].scope == "block"


def test_keras_applications_backbone_split_by_name_and_index():
    backbone = keras.applications.MobileNet(
        input_shape=(32, 32, 3), weights=None, include_top=False, alpha=0.25
    )
    x = keras.Input((32, 32, 3))
    h = keras.layers.GlobalAveragePooling2D()(backbone(x))
    model = keras.Model(x, keras.layers.Dense(10, name="fc")(h))
    layers = segments.flatten_layers(model)
    assert len(layers) == 1 + len(backbone.layers) + 2
    assert layers[1] is backbone.layers[0]
    split = "10,conv_pw_5,fc"
    seg = segments.assign(model, split)
    assert len(seg) == len(model.trainable_variables)
    first = layers.index(backbone.get_layer("conv_pw_5"))
    assert seg[backbone.get_layer("conv_pw_5").kernel.path] == 2
    assert [layer.name for layer in layers[first - 2 : first]] == ["conv_dw_5_bn", "conv_dw_5_relu"]
    assert seg[backbone.get_layer("conv_dw_5_bn").gamma.path] == 1
    assert seg[model.get_layer("fc").kernel.path] == 3
    # Index 10 is backbone layer 9 (the outer Input is 0): conv_pw_1_bn is 9, before it.
    assert [layer.name for layer in layers[9:12]] == [
        "conv_pw_1_bn",
        "conv_pw_1_relu",
        "conv_pad_2",
    ]
    assert seg[backbone.get_layer("conv_pw_1_bn").gamma.path] == 0
    assert seg[backbone.get_layer("conv_dw_2").kernel.path] == 1


@pytest.mark.parametrize(
    "split_at, match",
    [
        ([4], r"split_at index 4 out of range \[1, 3\]"),
        (["0"], r"split_at index 0 out of range \[1, 3\]"),
        ([-1], r"out of range"),
        (["heda"], r"no layer named 'heda'; close matches: head"),
        ([3, 2], r"strictly increasing; 2 \(layer 2\) comes after layer 3"),
        (["head", "b"], r"strictly increasing"),
        ([2, "b"], r"'b' repeats split point 2 \(b\)"),
        (["2", 2], r"repeats split point 2"),
        (["inner"], r"segment 0 \(layers 0-0: x\) has no trainable variables"),
        ([1.5], r"neither a layer index nor a layer name"),
    ],
)
def test_split_at_errors(split_at, match):
    with pytest.raises(UserError, match=match):
        segments.assign(nested_model(), split_at)


def test_segment_of_parameterless_layers_is_an_error():
    x = keras.Input((4,), name="x")
    h = keras.layers.Dense(4, name="d")(x)
    h = keras.layers.Activation("relu", name="act")(h)
    model = keras.Model(x, keras.layers.Dense(2, name="out")(h))
    with pytest.raises(UserError, match=r"segment 1 \(layers 2-2: act\)"):
        segments.assign(model, ["act", "out"])


def test_shared_layer_across_segments_is_an_error():
    shared = keras.layers.Dense(4, name="shared")
    inner = keras.Sequential([keras.Input((4,)), shared, keras.layers.Dense(4, name="mid")])
    x = keras.Input((4,), name="x")
    model = keras.Model(x, keras.layers.Dense(2, name="head")(shared(inner(x))))
    names = [layer.name for layer in segments.flatten_layers(model)]
    assert names == ["x", "shared", "mid", "shared", "head"]
    with pytest.raises(UserError, match=r"shared/kernel is shared by layer 1 .* and layer 3"):
        segments.assign(model, ["mid"])
    with pytest.raises(UserError, match=r"'shared' is ambiguous \(indices \[1, 3\]\)"):
        segments.assign(model, ["shared"])
    assert set(segments.assign(model, ["head"]).values()) == {0, 1}  # both uses in segment 0


def test_unbuilt_model_is_an_error():
    model = keras.Sequential([keras.layers.Dense(2), keras.layers.Dense(2)])
    with pytest.raises(UserError, match="no trainable variables; build it first"):
        segments.assign(model, [1])


def test_format_layer_table():
    model = nested_model()
    table = segments.format_layer_table(model, ["b"], lr_mults=(0.1, 1.0), base_lr=0.01)
    lines = table.splitlines()
    assert lines[0].split()[-1] == "lr_mult"
    assert lines[1].split() == ["0", "x", "InputLayer", "0", "0"]  # no weights, no multiplier
    assert lines[2].split() == ["1", "inner/a", "Dense", "25", "0", "0.1"]
    assert lines[4].split() == ["3", "head", "Dense", "21", "1", "1"]
    summary = lines[lines.index("") + 2 :]
    # segment, first-last, #layers, trainable params, lr_mult, peak lr
    assert summary[0].split() == ["0", "0-1", "2", "25", "0.1", "0.001"]
    assert summary[1].split() == ["1", "2-3", "2", str(36 + 21), "1", "0.01"]
    plain = segments.format_layer_table(model, [])
    assert plain.splitlines()[-1].split() == ["0", "0-3", "4", str(25 + 57), "-", "-"]
    assert plain.splitlines()[2].split() == ["1", "inner/a", "Dense", "25", "0"]


def test_peak_lr_of_each_schedule():
    from schedules import Cosine, OneCycle, Phases
    from trainer.lr.table import peak_lr

    # With warmup the learning rate at step 0 is min_lr; the table shows the peak.
    assert peak_lr(SGDR(0.01, 10, warmup_steps=5)) == 0.01
    assert peak_lr(OneCycle(0.02, 100)) == 0.02
    assert peak_lr(Cosine(0.03, 100, warmup_steps=10)) == 0.03
    assert peak_lr(Phases([(10, OneCycle(0.02, 10)), (20, OneCycle(0.01, 20))])) == 0.02
    assert peak_lr(0.5) == 0.5


def bn_model():
    """Flattened: x(0), d1(1), bn(2), d2(3)."""
    x = keras.Input((4,), name="x")
    h = keras.layers.BatchNormalization(name="bn")(keras.layers.Dense(8, name="d1")(x))
    return keras.Model(x, keras.layers.Dense(3, name="d2")(h))


def test_freeze_puts_frozen_batchnorm_in_inference_mode():
    model = bn_model()
    bn = model.get_layer("bn")
    x = np.random.default_rng(0).normal(3.0, 2.0, (16, 4)).astype("float32")
    everything = segments.assign(model, [3])

    trainable = segments.freeze(model, [3], 1)
    assert {v.path for v in trainable} == paths(model.get_layer("d2"))
    assert segments.assign(model, [3]) == everything  # frozen variables are still covered
    mean = bn.moving_mean.numpy().copy()
    model(x, training=True)
    np.testing.assert_array_equal(bn.moving_mean.numpy(), mean)

    trainable = segments.freeze(model, [3], 0)
    assert {v.path for v in trainable} == set(everything)
    model(x, training=True)
    assert not np.allclose(bn.moving_mean.numpy(), mean)


def test_freeze_inside_nested_layers():
    model = block_model()
    model.get_layer("block").trainable = False  # freeze() owns the flags from now on
    trainable = segments.freeze(model, ["inside", "head"], 1)
    block = model.get_layer("block")
    want = paths(block.inside) | paths(block.norm) | paths(model.get_layer("head"))
    assert {v.path for v in trainable} == want
    assert block.scale.path not in {v.path for v in trainable}
    assert len(segments.freeze(model, ["inside", "head"], 0)) == len(segments.assign(model, []))
    with pytest.raises(UserError, match=r"freeze_segments=3 out of range \[0, 2\]"):
        segments.freeze(model, ["inside", "head"], 3)
