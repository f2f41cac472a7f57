"""Tests for models/: builders, preprocessing, split presets, ImageNet offline error, transfer."""

import os
import socket
import time

import keras
import numpy as np
import pytest

import models
from models import transfer


@pytest.fixture(scope="module")
def resnet50():
    # The only ResNet50 build with weights=none (a few seconds): shared by the tests below.
    return models.build("resnet50", 10, image_size=32)


def _layer_names(model):
    return [layer.name for layer in model.layers]


def _preprocess_output(model, pixels):
    return keras.Model(model.input, model.get_layer("preprocess").output)(pixels).numpy()


def test_resnet20_shapes_names_and_params():
    model = models.build("resnet20", 7)
    assert model.input_shape == (None, 32, 32, 3)
    assert model.output_shape == (None, 7)
    names = _layer_names(model)
    assert len(names) == len(set(names))
    assert names[:3] == ["image", "preprocess", "stem_conv"]
    assert names[-2:] == ["head_pool", "head_logits"]
    # He et al. report 0.27M parameters for ResNet-20 (with a 10-way head).
    assert 265_000 < models.build("resnet20", 10).count_params() < 280_000
    assert sum("_conv" in n and "shortcut" not in n for n in names) == 19


def test_small_resnet_preprocess_scales_to_unit():
    model = models.build("resnet8", 3)
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(_preprocess_output(model, pixels), pixels / 255.0, rtol=1e-6)


def test_resnet50_preprocess_matches_keras_applications(resnet50):
    pixels = np.random.default_rng(1).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    expected = keras.applications.resnet50.preprocess_input(pixels.copy())
    np.testing.assert_array_equal(_preprocess_output(resnet50, pixels), expected)


def test_resnet50_keeps_application_names_and_head(resnet50):
    names = set(_layer_names(resnet50))
    assert {"conv1_conv", "conv2_block1_1_conv", "conv5_block3_out"} <= names
    assert resnet50.output_shape == (None, 10)
    assert resnet50.get_layer("head_logits").dtype_policy.compute_dtype == "float32"


@pytest.mark.parametrize("name", ["resnet20", "resnet50"])
def test_split_presets_name_existing_layers(name, resnet50):
    model = resnet50 if name == "resnet50" else models.build(name, 10)
    names = _layer_names(model)
    for preset, split_at in models.presets(name).items():
        positions = [names.index(layer) for layer in split_at]  # raises if a name is missing
        assert positions == sorted(positions), preset
    assert models.split_preset("resnet50") == ("conv4_block1_1_conv", "head_pool")
    assert models.split_preset(name, "head") == ("head_pool",)


def test_unknown_preset_model_head_and_weights_raise_value_error():
    with pytest.raises(ValueError, match="choose one of default, stages, head"):
        models.split_preset("resnet20", "nope")
    with pytest.raises(ValueError, match="--model='resnet21'.*resnet20"):
        models.build("resnet21", 10)
    with pytest.raises(ValueError, match="--head='big'"):
        models.build("resnet8", 10, head="big")
    with pytest.raises(ValueError, match="no ImageNet weights"):
        models.build("resnet8", 10, weights="imagenet")


def test_bad_num_classes_and_image_size_name_the_flag():
    with pytest.raises(TypeError, match="--num_classes=2.5 must be a positive integer"):
        models.build("resnet8", 2.5)
    with pytest.raises(ValueError, match="--num_classes=0 must be a positive integer"):
        models.build("resnet8", 0)
    with pytest.raises(ValueError, match="--image_size=16: resnet8 needs at least 32 pixels"):
        models.build("resnet8", 10, image_size=16)
    with pytest.raises(TypeError, match="--image_size=32.0 must be an integer"):
        models.build("resnet8", 10, image_size=32.0)


def test_article_head_layers():
    model = models.build("resnet8", 4, head="article")
    names = _layer_names(model)
    head = names[names.index("head_pool") :]
    assert head == [
        "head_pool",
        "head_dense1",
        "head_dropout1",
        "head_dense2",
        "head_bn",
        "head_dropout2",
        "head_logits",
    ]
    assert model.get_layer("head_dropout1").rate == 0.5


def _online():
    try:
        socket.create_connection(("storage.googleapis.com", 443), timeout=2).close()
        return True
    except OSError:
        return False


def test_imagenet_offline_is_one_line_value_error(monkeypatch, tmp_path):
    if _online():
        pytest.skip("network reachable: imagenet weights would download")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))  # no cached copy in ~/.keras/models either
    start = time.monotonic()
    with pytest.raises(ValueError) as error:
        models.build("resnet50", 10, weights="imagenet")
    assert time.monotonic() - start < 30
    message = str(error.value)
    assert "\n" not in message
    assert "--weights=/path/to/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5" in message
    assert "--weights=none" in message


def test_missing_weights_file_names_path(tmp_path):
    path = str(tmp_path / "nope.weights.h5")
    with pytest.raises(ValueError, match="nope.weights.h5"):
        models.build("resnet8", 10, weights=path)


def _backbone_values(model):
    return {
        layer.name: [w.numpy() for w in layer.weights]
        for layer in model.layers
        if layer.weights and not layer.name.startswith("head_")
    }


@pytest.mark.parametrize("suffix", [".weights.h5", ".keras"])
def test_transfer_loads_backbone_and_keeps_fresh_head(tmp_path, suffix):
    keras.utils.set_random_seed(1)
    source = models.build("resnet8", 10, head="article")
    # Non-default BatchNorm statistics, so a round trip of moving averages is checked too.
    for layer in source.layers:
        for w in layer.weights:
            w.assign(np.random.default_rng(len(w.path)).normal(size=w.shape).astype("float32"))
    path = str(tmp_path / f"source{suffix}")
    if suffix == ".keras":
        source.save(path)
    else:
        models.save_backbone_weights(source, path)
    keras.utils.set_random_seed(2)
    fresh = models.build("resnet8", 5)
    keras.utils.set_random_seed(2)
    target = models.build("resnet8", 5, weights=path)
    expected, got = _backbone_values(source), _backbone_values(target)
    assert expected.keys() == got.keys() and len(got) == 18  # 9 conv + 9 BN
    for name in expected:
        for a, b in zip(expected[name], got[name]):
            np.testing.assert_array_equal(a, b, err_msg=name)
    assert target.get_layer("head_logits").kernel.shape == (64, 5)
    np.testing.assert_array_equal(
        target.get_layer("head_logits").kernel.numpy(),
        fresh.get_layer("head_logits").kernel.numpy(),
    )


def test_transfer_rejects_other_architectures(tmp_path):
    path = str(tmp_path / "r20.weights.h5")
    models.build("resnet20", 10).save_weights(path)
    with pytest.raises(ValueError, match="r20.weights.h5.*same architecture"):
        models.build("resnet8", 10, weights=path)
    dense = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    other = str(tmp_path / "dense.weights.h5")
    dense.save_weights(other)
    with pytest.raises(ValueError, match="dense.weights.h5.*no backbone layer"):
        models.build("resnet8", 10, weights=other)


def test_weight_keys_match_keras_file_layout(tmp_path):
    import h5py

    model = models.build("resnet8", 3)
    path = str(tmp_path / "m.weights.h5")
    model.save_weights(path)
    with h5py.File(path) as f:
        stored = {f"layers/{k}" for k in f["layers"] if len(f[f"layers/{k}/vars"])}
    assert set(transfer.weight_keys(model)) == stored


def test_exported_model_reloads_with_preprocessing(tmp_path):
    model = models.build("resnet8", 3)
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    reloaded = keras.models.load_model(path)
    pixels = np.random.default_rng(3).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(reloaded(pixels), model(pixels), rtol=1e-5, atol=1e-5)


def test_pretrained_spec_errors_name_the_choice():
    with pytest.raises(ValueError, match="unknown pretrained weights; choose one of pretrained:"):
        models.build("resnet20", 10, weights="pretrained:nope")
    with pytest.raises(ValueError, match="fits --model=resnet20, not --model=resnet8"):
        models.build("resnet8", 10, weights="pretrained:resnet20_fashion_mnist")


def test_shipped_pretrained_weights_load_into_the_backbone():
    import h5py

    path = models.pretrained_path("pretrained:resnet20_fashion_mnist", "resnet20")
    assert os.path.getsize(path) < 5 * 2**20  # the size the repository can carry
    fresh = models.build("resnet20", 7, weights="none")
    model = models.build("resnet20", 7, weights="pretrained:resnet20_fashion_mnist")
    with h5py.File(path, "r") as f:
        stem = f["layers/conv2d/vars/0"][()]
    kernel = model.get_layer("stem_conv").kernel.numpy()
    np.testing.assert_array_equal(kernel, stem)
    assert not np.array_equal(kernel, fresh.get_layer("stem_conv").kernel.numpy())
    assert model.get_layer("head_logits").kernel.shape == (64, 7)  # a new head
