"""models.portable: built-in layers only, same outputs, loadable by plain Keras elsewhere."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import models
from models import transfer
from models.layers import BatchNormalization
from models.preprocessing import MODES, ImagePreprocess

PIXELS = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")


def _perturbed_resnet8():
    """resnet8 with non-trivial BatchNorm statistics, scales and offsets."""
    model = models.build("resnet8", 10, image_size=32)
    rng = np.random.default_rng(1)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            shape = layer.moving_mean.shape
            layer.moving_mean.assign(rng.normal(0, 0.5, shape))
            layer.moving_variance.assign(rng.uniform(0.2, 3.0, shape))
            layer.gamma.assign(rng.uniform(0.5, 1.5, shape))
            layer.beta.assign(rng.normal(0, 0.2, shape))
    return model


def _preprocess_model(mode):
    image = keras.Input((32, 32, 3), name="image")
    return keras.Model(image, ImagePreprocess(mode, name="preprocess")(image), name=mode)


def _assert_builtin(model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            _assert_builtin(layer)
        assert type(layer).__module__.startswith("keras."), (layer.name, type(layer))


def test_resnet8_same_outputs_names_and_weights():
    model = _perturbed_resnet8()
    out = portable_model = models.portable(model)
    _assert_builtin(out)
    assert out.name == model.name and out.compiled is False
    assert [layer.name for layer in out.layers] == [layer.name for layer in model.layers]
    bns = [layer for layer in out.layers if "_bn" in layer.name]
    assert len(bns) == 9 and all(type(b) is keras.layers.BatchNormalization for b in bns)
    assert out.get_layer("stem_bn").get_config() == model.get_layer("stem_bn").get_config()
    for old, new in zip(model.weights, out.weights, strict=True):
        np.testing.assert_array_equal(old.numpy(), new.numpy(), err_msg=old.path)
    np.testing.assert_allclose(out(PIXELS), model(PIXELS), rtol=0, atol=1e-5)
    # Independent copies: the original keeps its layers and values.
    assert type(model.get_layer("stem_bn")) is BatchNormalization
    portable_model.get_layer("stem_bn").moving_mean.assign(np.zeros(16, "float32"))
    assert np.abs(model.get_layer("stem_bn").moving_mean.numpy()).sum() > 0


EXPECTED_CLASS = {
    "caffe": keras.layers.Dense,
    "torch": keras.layers.Normalization,
    "tf": keras.layers.Rescaling,
    "unit": keras.layers.Rescaling,
    "none": keras.layers.Identity,
}


@pytest.mark.parametrize("mode", MODES)
def test_each_preprocess_mode_becomes_one_builtin_layer(mode):
    model = _preprocess_model(mode)
    out = models.portable(model)
    layer = out.get_layer("preprocess")
    assert type(layer) is EXPECTED_CLASS[mode]
    assert [x.name for x in out.layers] == ["image", "preprocess"]
    np.testing.assert_allclose(out(PIXELS), model(PIXELS), rtol=0, atol=1e-5)
    if mode == "caffe":  # a fixed permutation and bias: exact, and not trained by accident
        np.testing.assert_array_equal(out(PIXELS), model(PIXELS))
        assert not layer.trainable and not out.trainable_weights


def test_keeps_backbone_weight_keys_so_exports_transfer():
    # A caffe-mode backbone: the preprocessing Dense must not shift the conv2d_N keys.
    model = models.build("vgg16", 10, image_size=32)
    keys = {layer.name: key for key, layer in transfer.weight_keys(model).items()}
    out = {layer.name: key for key, layer in transfer.weight_keys(models.portable(model)).items()}
    backbone = [name for name in keys if not name.startswith("head_")]
    assert len(backbone) == 13
    assert {name: out[name] for name in backbone} == {name: keys[name] for name in backbone}


def test_nested_sequential_mixed_precision_and_plain_models():
    inner = keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            ImagePreprocess("torch", dtype="mixed_float16", name="preprocess"),
            keras.layers.Conv2D(4, 3, dtype="mixed_float16", name="conv"),
            BatchNormalization(dtype="mixed_float16", name="bn"),
        ],
        name="inner",
    )
    image = keras.Input((32, 32, 3), name="image")
    x = keras.layers.GlobalAveragePooling2D(name="pool")(inner(image))
    model = keras.Model(image, keras.layers.Dense(3, dtype="float32", name="logits")(x))
    model.get_layer("inner").get_layer("bn").moving_mean.assign(np.full(4, 0.3, "float32"))
    out = models.portable(model)
    _assert_builtin(out)
    new_inner = out.get_layer("inner")
    assert isinstance(new_inner, keras.Sequential)
    assert new_inner.get_layer("bn").dtype_policy.name == "mixed_float16"
    assert new_inner.get_layer("preprocess").dtype_policy.name == "mixed_float16"
    np.testing.assert_allclose(out(PIXELS), model(PIXELS), rtol=0, atol=2e-3)  # float16

    # No custom layer at all: an equal, independent, uncompiled copy.
    plain = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="d")], name="plain")
    plain.compile(optimizer="adam", loss="mse")
    copy = models.portable(plain)
    assert copy is not plain and copy.compiled is False and copy.name == "plain"
    for a, b in zip(plain.get_weights(), copy.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


class Custom(keras.layers.Layer):
    def call(self, x):
        return x * 2.0


def custom_activation(x):
    return x * 2.0


def test_custom_code_is_refused_by_name():
    image = keras.Input((4,))
    with pytest.raises(ValueError, match="layer 'doubler' \\(Custom\\)"):
        models.portable(keras.Model(image, Custom(name="doubler")(image)))
    dense = keras.layers.Dense(2, activation=custom_activation, name="odd")
    with pytest.raises(ValueError, match="'odd'.*custom_activation"):
        models.portable(keras.Model(image, dense(image)))
    with pytest.raises(ValueError, match="Lambda"):
        models.portable(keras.Model(image, keras.layers.Lambda(lambda t: t, name="lam")(image)))

    class Subclassed(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(ValueError, match="subclassed model.*Subclassed"):
        models.portable(Subclassed())
    with pytest.raises(TypeError, match="keras.Model"):
        models.portable(keras.layers.Dense(2))


# Runs where lrtech cannot be imported: imports only keras and numpy, then checks that. The
# unconverted model is the control: plain Keras must refuse it.
_LOAD_IN_PLAIN_KERAS = textwrap.dedent(
    """
    import glob, sys
    import keras
    import numpy as np

    x = np.load("pixels.npy")
    for path in sorted(glob.glob("*.keras")):
        name = path[: -len(".keras")]
        got = np.asarray(keras.saving.load_model(path)(x))
        want = np.load(name + ".npy")
        # An untrained MobileNetV2's activations shrink to ~1e-12 by its logits: there the
        # tolerance is relative to the output's size.
        atol = 1e-5 * min(1.0, np.abs(want).max())
        np.testing.assert_allclose(got, want, rtol=0, atol=atol, err_msg=name)
        print("loaded", name)
    try:
        keras.saving.load_model("control/model.keras")
    except Exception as e:
        assert "ImagePreprocess" in str(e), e
        print("refused control")
    ours = [m for m in sys.modules if m.split(".")[0] in ("models", "trainer", "schedules")]
    assert not ours, ours
    """
)


def test_exports_load_in_plain_keras_without_lrtech(tmp_path):
    cases = {"resnet8": _perturbed_resnet8()}
    cases.update({f"preprocess_{mode}": _preprocess_model(mode) for mode in MODES})
    cases["mobilenet_v2"] = models.build("mobilenet_v2", 10, image_size=32, weights="none")
    np.save(tmp_path / "pixels.npy", PIXELS)
    for name, model in cases.items():
        want = np.asarray(model(PIXELS))
        assert np.abs(want).max() > 1e-14, name
        np.save(tmp_path / f"{name}.npy", want)
        models.portable(model).save(str(tmp_path / f"{name}.keras"))
    os.mkdir(tmp_path / "control")
    cases["resnet8"].save(str(tmp_path / "control" / "model.keras"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    done = subprocess.run(
        [sys.executable, "-c", _LOAD_IN_PLAIN_KERAS],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = [word for name in sorted(cases) for word in ("loaded", name)]
    assert done.stdout.split() == [*loaded, "refused", "control"]
