"""Tests for every keras.applications family, block ids (models.blocks) and user models.

Backbones build offline with weights=none at their minimum input size; the layer order is the
trainer's flattened one (`trainer.lr.segments`), as `models.block_ids` documents.
"""

import socket
import time
import zipfile

import keras
import numpy as np
import pytest

import models
from models.preprocessing import ImagePreprocess
from tests import user_model_lib
from trainer.lr import segments

_APPS = keras.applications
# New family -> the keras.applications module whose preprocess_input it must match.
NEW_FAMILIES = {
    "convnext_tiny": _APPS.convnext,
    "convnext_small": _APPS.convnext,
    "convnext_base": _APPS.convnext,
    "efficientnetv2_b0": _APPS.efficientnet_v2,
    "efficientnetv2_b1": _APPS.efficientnet_v2,
    "efficientnetv2_b2": _APPS.efficientnet_v2,
    "efficientnetv2_b3": _APPS.efficientnet_v2,
    "efficientnetv2_s": _APPS.efficientnet_v2,
    "efficientnet_b1": _APPS.efficientnet,
    "efficientnet_b2": _APPS.efficientnet,
    "efficientnet_b3": _APPS.efficientnet,
    "mobilenet_v3_small": _APPS.mobilenet_v3,
    "mobilenet_v3_large": _APPS.mobilenet_v3,
    "xception": _APPS.xception,
    "inception_v3": _APPS.inception_v3,
    "densenet169": _APPS.densenet,
    "densenet201": _APPS.densenet,
    "resnet101v2": _APPS.resnet_v2,
    "resnet152v2": _APPS.resnet_v2,
    "vgg19": _APPS.vgg19,
}
MIN_SIZES = {"xception": 71, "inception_v3": 75}


def _flat(model):
    """(paths, weighted) of every layer in the trainer's flattened order."""
    rows = segments.layer_rows(model, ())
    paths = [f"{r.scope}/{r.name}" if r.scope else r.name for r in rows]
    return paths, [r.trainable_params > 0 for r in rows]


def _one_line_error(call, match):
    with pytest.raises(ValueError, match=match) as error:
        call()
    assert "\n" not in str(error.value)
    return str(error.value)


# Every family: build, preprocessing, presets, stages. ------------------------------------


@pytest.mark.parametrize("name", sorted(NEW_FAMILIES))
def test_family_builds_offline_and_splits_where_documented(name):
    size = models.min_image_size(name)
    assert size == MIN_SIZES.get(name, 32)
    model = models.build(name, 3, image_size=size)
    assert model.input_shape == (None, size, size, 3)
    assert model.output_shape == (None, 3)
    paths, weighted = _flat(model)
    assert len(paths) == len(set(paths))

    # Preprocessing: the family's own preprocess_input, as a layer.
    pixels = np.random.default_rng(0).uniform(0, 255, (2, size, size, 3)).astype("float32")
    preprocessed = keras.Model(model.input, model.get_layer("preprocess").output)(pixels)
    expected = NEW_FAMILIES[name].preprocess_input(pixels.copy())
    np.testing.assert_allclose(np.asarray(preprocessed), expected, rtol=1e-5, atol=1e-4)

    # default: 3 segments: stem to stride 8 / from the stride-16 stage / head.
    presets = models.presets(name)
    default = segments.layer_segments(model, presets["default"])
    assert default[-1] == 2
    head = default.index(2)
    assert paths[head] == "head_pool" and all(p.startswith("head_") for p in paths[head:])
    layers = segments.flatten_layers(model)
    middle = default.index(1)
    ratio = size / layers[middle].input.shape[1]
    if name.startswith("densenet") or name.endswith("v2") and name.startswith("resnet"):
        # A DenseNet transition and the last block of a keras ResNetV2 stage downsample at the
        # end of the stage before: conv4 starts at stride 16.
        assert ratio == 16
    else:
        assert 7 <= ratio <= 11, ratio  # the stride-16 stage starts from stride 8 (~ at 71, 75)
    for preset in presets.values():
        segments.layer_segments(model, preset)  # every name exists, in order

    # Stage groups start where the stages preset starts segments (plus the backbone's top
    # layers as a group of their own, where it has some).
    stage_starts = models.block_starts(paths, "stage", weighted)
    stages = segments.layer_segments(model, presets["stages"])
    preset_starts = [i for i in range(1, len(stages)) if stages[i] != stages[i - 1]]
    extra = set(stage_starts) - set(preset_starts)
    assert set(preset_starts) <= set(stage_starts) and len(extra) <= 1
    assert all(preset_starts[-2] < i < preset_starts[-1] for i in extra)

    # Blocks: stem 0, non-decreasing, head last, every group with weights.
    ids = models.block_ids(paths, "block", weighted)
    assert ids[0] == 0 and ids == sorted(ids)
    assert all(ids[i] == ids[-1] for i in range(head, len(ids)))
    assert ids[head - 1] < ids[-1]
    assert all(any(w for w, g in zip(weighted, ids) if g == group) for group in set(ids))


@pytest.mark.parametrize(
    "name, size, minimum", [("xception", 70, 71), ("inception_v3", 74, 75), ("vgg19", 31, 32)]
)
def test_image_size_below_minimum_is_one_line(name, size, minimum):
    message = _one_line_error(lambda: models.build(name, 10, image_size=size), "needs at least")
    assert message == f"--image_size={size}: {name} needs at least {minimum} pixels"


def _online():
    try:
        socket.create_connection(("storage.googleapis.com", 443), timeout=2).close()
        return True
    except OSError:
        return False


def test_new_family_imagenet_offline_uses_the_same_one_line_error(monkeypatch, tmp_path):
    if _online():
        pytest.skip("network reachable: imagenet weights would download")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    start = time.monotonic()
    message = _one_line_error(
        lambda: models.build("mobilenet_v3_small", 10, weights="imagenet"), "cannot download"
    )
    assert time.monotonic() - start < 30
    assert "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5" in message


# Block ids against hand-written groupings. -----------------------------------------------


def _ids_from_starts(paths, starts):
    ids, group = [], 0
    for path in paths:
        group += path in starts
        ids.append(group)
    return ids


def test_resnet20_blocks_and_stages():
    model = models.build("resnet20", 10)
    paths, weighted = _flat(model)
    assert paths[:5] == ["image", "preprocess", "stem_conv", "stem_bn", "stem_relu"]
    blocks = [f"stage{s}_block{b}_conv1" for s in (1, 2, 3) for b in (1, 2, 3)]
    expected = _ids_from_starts(paths, [*blocks, "head_pool"])
    assert expected[-1] == 10  # stem, 9 blocks, head
    assert models.block_ids(paths) == expected
    assert models.block_ids(paths, "block", weighted) == expected
    starts = models.block_starts(paths, "block", weighted)
    assert [paths[i] for i in starts] == [*blocks, "head_pool"]
    stages = ["stage1_block1_conv1", "stage2_block1_conv1", "stage3_block1_conv1", "head_pool"]
    assert models.block_ids(paths, "stage", weighted) == _ids_from_starts(paths, stages)
    # The blocks are split points: one segment per block.
    assert segments.layer_segments(model, starts)[-1] == 10


def test_convnext_tiny_blocks_and_stages():
    model = models.build("convnext_tiny", 10)
    paths, weighted = _flat(model)
    c = "convnext_tiny_"

    def block(stage, index):
        return f"{c}stage_{stage}_block_{index}_depthwise_conv"

    def downsampling(i):
        return f"{c}downsampling_block_{i}/{c}downsampling_layernorm_{i}"

    top = paths[paths.index(f"{c}stage_3_block_2_identity") + 1]  # keras' unnamed final norm
    assert isinstance(
        segments.flatten_layers(model)[paths.index(top)], keras.layers.LayerNormalization
    )
    assert paths[:5] == [
        "image",
        "preprocess",
        f"{c}prestem_normalization",
        f"{c}stem/{c}stem_conv",
        f"{c}stem/{c}stem_layernorm",
    ]
    # A downsampling block opens the next stage: it joins that stage's block 0.
    blocks = (
        [block(0, 0), block(0, 1), block(0, 2)]
        + [downsampling(0), block(1, 1), block(1, 2)]
        + [downsampling(1)]
        + [block(2, i) for i in range(1, 9)]
        + [downsampling(2), block(3, 1), block(3, 2)]
        + [top, "head_pool"]
    )
    expected = _ids_from_starts(paths, blocks)
    assert expected[-1] == 20  # stem, 3 + 3 + 9 + 3 blocks, final norm, head
    assert models.block_ids(paths, "block", weighted) == expected
    stages = [block(0, 0), downsampling(0), downsampling(1), downsampling(2), top, "head_pool"]
    assert models.block_ids(paths, "stage", weighted) == _ids_from_starts(paths, stages)


def test_block_patterns_and_errors():
    paths = ["image", "embed", "layer_0_a", "layer_0_b", "x", "layer_1_a", "pool", "classes"]
    # Without head_* layers the layers after the last block are the head.
    assert models.block_ids(paths, [r"layer_\d+"]) == [0, 0, 1, 1, 1, 2, 3, 3]
    # A capturing group names the block; a weightless group joins the next one.
    weighted = [False, True, True, False, False, False, False, True]
    assert models.block_ids(paths, [r"layer_(\d+)_"], weighted) == [0, 0, 1, 1, 1, 2, 2, 2]
    assert models.block_starts(paths, [r"layer_(\d+)_"], weighted) == (2, 5)
    # Patterns look at every container of a path, innermost first.
    nested = ["image", "hub/transformer_layer_0/query", "hub/transformer_layer_1/query", "out"]
    assert models.block_ids(nested, [r"transformer_layer_\d+"]) == [0, 1, 2, 3]
    _one_line_error(lambda: models.block_ids(paths, "blocks"), "choose one of block, stage")
    _one_line_error(lambda: models.block_ids(paths, ["("]), "not a regular expression")
    _one_line_error(lambda: models.block_ids(paths), "no layer name matches.*--list_layers")
    _one_line_error(lambda: models.block_ids(paths, ["nothing"]), "no layer name matches")


# User models: .keras files and builders. --------------------------------------------------


@pytest.fixture
def saved_model(tmp_path):
    """A 5-class softmax classifier with the custom Scale layer, saved as .keras."""
    model = user_model_lib.classifier(5, 32)
    path = str(tmp_path / "user.keras")
    model.save(path)
    return path, model


def test_saved_model_loads_through_custom_objects_and_gets_a_new_head(saved_model, monkeypatch):
    path, source = saved_model
    # As in a new process that has not imported the module defining Scale.
    monkeypatch.delitem(keras.saving.get_custom_objects(), "lrtech_tests>Scale")
    _one_line_error(
        lambda: models.build(path, 3), "unknown class 'Scale'; pass --custom_objects=MODULE"
    )
    model = models.build(path, 3, custom_objects="tests.user_model_lib")
    names = [layer.name for layer in model.layers]
    assert names[:3] == ["image", "scale", "conv0"] and names[-2:] == ["pool", "head_logits"]
    assert "classes" not in names
    assert model.input_shape == (None, 32, 32, 3) and model.output_shape == (None, 3)
    assert model.get_layer("head_logits").dtype_policy.compute_dtype == "float32"
    np.testing.assert_array_equal(
        model.get_layer("conv1").kernel.numpy(), source.get_layer("conv1").kernel.numpy()
    )
    # Thirds of the 7 weighted layers below the head (past the BatchNorms), then the head.
    assert models.split_preset(path, model=model) == ("conv1", "conv2", "head_logits")
    assert segments.layer_segments(model, models.split_preset(path, model=model))[-1] == 3
    _one_line_error(lambda: models.split_preset(path), "pass the built model")


def test_saved_model_of_same_width_keeps_its_classifier_as_logits(saved_model):
    path, source = saved_model
    model = models.build(path, 5)
    assert model.get_layer("classes").activation is keras.activations.linear
    pixels = np.random.default_rng(1).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    probabilities = np.asarray(keras.ops.softmax(model(pixels)))
    np.testing.assert_allclose(probabilities, np.asarray(source(pixels)), rtol=1e-5, atol=1e-6)
    fresh = models.build(path, 5, new_head=True)
    assert fresh.layers[-1].name == "head_logits"
    _one_line_error(
        lambda: models.build(path, 3, new_head=False), "outputs 5 classes, not --num_classes=3"
    )
    _one_line_error(
        lambda: models.build(path, 5, image_size=64), "--image_size=64: .*takes 32x32 inputs"
    )


def test_builder_with_input_scale():
    model = models.build("tests.user_model_lib:build", 4, image_size=40, input_scale="unit")
    assert model.input_shape == (None, 40, 40, 3) and model.output_shape == (None, 4)
    assert [layer.name for layer in model.layers] == [
        "image",
        "preprocess",
        "conv",
        "pool",
        "classes",
    ]
    assert models.build("tests.user_model_lib:build", 4).input_shape == (None, 32, 32, 3)


@pytest.mark.parametrize("scale", sorted(set(models.INPUT_SCALES) - {"raw"}))
def test_input_scale_is_a_builtin_layer_matching_image_preprocess(scale):
    model = models.build("tests.user_model_lib:build", 2, input_scale=scale)
    layer = model.get_layer("preprocess")
    assert type(layer).__module__.startswith("keras.")
    pixels = np.random.default_rng(2).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    got = np.asarray(keras.Model(model.input, layer.output)(pixels))
    expected = np.asarray(ImagePreprocess(models.INPUT_SCALES[scale])(pixels))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)
    models.portable(model)  # nothing of ours to replace: plain Keras already


def test_raw_input_scale_adds_no_layer():
    model = models.build("tests.user_model_lib:build", 2)
    assert "preprocess" not in [layer.name for layer in model.layers]


def test_nested_backbone_splits_by_name_and_index():
    model = models.build("tests.user_model_lib:build_nested", 4, image_size=16)
    paths, weighted = _flat(model)
    assert paths[:3] == ["image", "backbone/backbone_input", "backbone/embed_conv"]
    preset = models.split_preset("tests.user_model_lib:build_nested", model=model)
    assert preset == ("encoder_layer_1_conv", "encoder_layer_2_conv", "classes")
    assert segments.layer_segments(model, preset) == [0] * 6 + [1] * 3 + [2] * 4 + [3]
    by_index = segments.layer_segments(model, [paths.index("backbone/encoder_layer_1_conv")])
    assert by_index == [0] * 6 + [1] * 8
    ids = models.block_ids(paths, [r"encoder_layer_\d+"], weighted)
    assert ids == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4]
    renewed = models.build("tests.user_model_lib:build_nested", 6, image_size=16, new_head=True)
    assert renewed.layers[-1].name == "head_logits" and renewed.output_shape == (None, 6)


def test_lrtech_export_fine_tunes_as_a_user_model(tmp_path):
    source = models.build("resnet8", 10, head="article")
    path = str(tmp_path / "export.keras")
    models.portable(source).save(path)
    model = models.build(path, 3)
    assert model.output_shape == (None, 3) and model.layers[-1].name == "head_logits"
    assert model.get_layer("head_dense2").kernel.shape == (256, 128)  # the rest of the head
    np.testing.assert_array_equal(
        model.get_layer("stem_conv").kernel.numpy(), source.get_layer("stem_conv").kernel.numpy()
    )
    # Thirds snap to the blocks models.blocks recognizes (the CIFAR ResNet's).
    preset = models.split_preset(path, model=model)
    assert preset == ("stage2_block1_conv1", "stage3_block1_conv1", "head_logits")


def _truncated(path, tmp_path):
    out = tmp_path / "truncated.keras"
    out.write_bytes(open(path, "rb").read()[:500])
    return str(out)


def _zip_without_model(tmp_path):
    out = tmp_path / "other.keras"
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("notes.txt", "not a model")
    return str(out)


def _lambda_model(tmp_path):
    out = tmp_path / "lambda.keras"
    model = keras.Sequential(
        [keras.Input((8, 8, 3)), keras.layers.Lambda(lambda x: x * 2), keras.layers.Flatten()]
    )
    model.add(keras.layers.Dense(2))
    model.save(out)
    return str(out)


def test_user_model_errors_are_one_line_value_errors(saved_model, tmp_path):
    path, _ = saved_model
    (tmp_path / "text.keras").write_text("hello")
    cases = [
        (str(tmp_path / "nope.keras"), {}, "nope.keras: no such file"),
        (_truncated(path, tmp_path), {}, "truncated, or not a zip file"),
        (str(tmp_path / "text.keras"), {}, "not a .keras archive"),
        (_zip_without_model(tmp_path), {}, "not a saved Keras model"),
        (_lambda_model(tmp_path), {}, "Lambda layer"),
        (path, {"custom_objects": "tests.nope"}, "--custom_objects=tests.nope: cannot import"),
        ("tests.nope:build", {}, "cannot import tests.nope .*PYTHONPATH"),
        ("tests.user_model_lib:nope", {}, "has no attribute 'nope'"),
        ("tests.user_model_lib:NOT_CALLABLE", {}, "NOT_CALLABLE is a int, not callable"),
        ("tests.user_model_lib:no_arguments", {}, r"no_arguments\(num_classes, image_size\)"),
        ("tests.user_model_lib:not_a_model", {}, "returned a str, not a keras.Model"),
        ("tests.user_model_lib:", {}, "expected PATH.keras or package.module:function"),
        ("tests.user_model_lib:conv_head", {"new_head": True}, "output is not a Dense layer"),
        ("tests.user_model_lib:build", {"input_scale": "bgr"}, "--input_scale='bgr' is unknown"),
        ("tests.user_model_lib:build", {"weights": "imagenet"}, "brings its own weights"),
        ("tests.user_model_lib:build", {"head": "article"}, "--head=article"),
        ("resnet8", {"input_scale": "unit"}, "--input_scale=unit applies to --model=PATH"),
    ]
    for spec, kwargs, match in cases:
        _one_line_error(lambda: models.build(spec, 2, **kwargs), match)  # noqa: B023


# Fused BatchNorm in keras.applications backbones (models.applications.fuse_batch_norm). ----


def _mild_batch_norm_weights(model, seed=0):
    """Gamma, beta and moving statistics near 1, 0, 0, 1, so inference uses all four without
    blowing up the activations of a deep trunk."""
    rng = np.random.default_rng(seed)
    near = {"gamma": 1.0, "moving_variance": 1.0, "beta": 0.0, "moving_mean": 0.0}
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            for v in layer.weights:
                center = near[v.name]
                v.assign(rng.uniform(center - 0.1, center + 0.1, v.shape).astype("float32"))


@pytest.mark.parametrize("name", ["resnet50", "efficientnetv2_b0"])
def test_backbone_batch_norm_is_fused_keeps_keras_outputs_and_exports_plain_keras(name):
    from models import applications
    from models.layers import BatchNormalization

    spec = applications.BACKBONES[name]
    image = keras.Input((32, 32, 3))
    keras.utils.set_random_seed(0)
    trunk = spec.constructor(
        include_top=False, weights=None, input_tensor=ImagePreprocess(spec.preprocess)(image)
    )
    _mild_batch_norm_weights(trunk)
    fused = applications.fuse_batch_norm(trunk)
    keras_bns = [
        layer for layer in trunk.layers if isinstance(layer, keras.layers.BatchNormalization)
    ]
    fused_bns = [
        layer for layer in fused.layers if isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert keras_bns and all(type(layer) is keras.layers.BatchNormalization for layer in keras_bns)
    assert [layer.name for layer in fused_bns] == [layer.name for layer in keras_bns]
    assert all(type(layer) is BatchNormalization for layer in fused_bns)
    assert [layer.name for layer in fused.layers] == [layer.name for layer in trunk.layers]
    assert fused.inputs[0] is image  # still the caller's graph: models.build stays flat

    pixels = np.random.default_rng(1).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    want = np.asarray(trunk([pixels], training=False))
    got = np.asarray(fused([pixels], training=False))
    assert np.abs(want).max() > 1e-3
    assert np.abs(got - want).max() <= 1e-6 * max(1.0, np.abs(want).max())

    # models.build fuses them; the export is plain Keras again, with the same outputs.
    model = models.build(name, 3, image_size=32)
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(bns) == len(keras_bns) and all(type(layer) is BatchNormalization for layer in bns)
    _mild_batch_norm_weights(model, seed=2)
    export = models.portable(model)
    modules = {type(layer).__module__.split(".")[0] for layer in export.layers}
    assert modules == {"keras"}
    want = np.asarray(model(pixels, training=False))
    got = np.asarray(export(pixels, training=False))
    assert np.abs(got - want).max() <= 1e-6 * max(1.0, np.abs(want).max())


def test_backbones_without_batch_norm_are_not_cloned():
    from models import applications

    image = keras.Input((32, 32, 3))
    trunk = keras.applications.ConvNeXtTiny(include_top=False, weights=None, input_tensor=image)
    assert applications.fuse_batch_norm(trunk) is trunk
