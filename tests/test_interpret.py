"""trainer.reporting.interpret against numpy references computed from the model's own logits."""

import glob
import logging
import os
import struct
import sys

import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import tiny_model
from trainer.loop.compiled import EvalLoop
from trainer.reporting import interpret

K = 7  # > 5: top-5 is reported
N, BATCH = 23, 8  # batches of 8, 8 and a partial 7
NAMES = ["a", "b", "c", "d"]  # shorter than K: classes 4..6 are named by index


def _data(num_classes=K, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, (N, 8, 8, 3)).astype(np.float32)
    labels = rng.integers(0, num_classes, N).astype(np.int32)
    return images, labels


def _dataset(images, labels):
    return tf.data.Dataset.from_tensor_slices((images, labels)).batch(BATCH)


def _reference(model, images, labels):
    """Per-example logits batch by batch (as analyze sees them), then plain numpy."""
    logits = np.concatenate(
        [
            np.asarray(model(images[i : i + BATCH], training=False), np.float64)
            for i in range(0, N, BATCH)
        ]
    )
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = -log_probs[np.arange(N), labels]
    predicted = logits.argmax(axis=1)
    confusion = np.zeros((K, K), np.int64)
    for actual, pred in zip(labels, predicted):
        confusion[actual, pred] += 1
    top5 = np.argsort(-logits, axis=1)[:, :5]
    in_top5 = np.array([labels[i] in top5[i] for i in range(N)])
    probability = np.exp(log_probs).max(axis=1)
    return loss, predicted, confusion, in_top5, probability


@pytest.fixture(scope="module")
def case():
    tf.keras.utils.set_random_seed(1)
    model = tiny_model(K)
    images, labels = _data()
    analysis = interpret.analyze(
        model, _dataset(images, labels), K, top_losses=5, class_names=NAMES
    )
    return model, images, labels, analysis


def test_confusion_and_metrics_equal_numpy(case):
    model, images, labels, analysis = case
    loss, predicted, confusion, in_top5, _ = _reference(model, images, labels)
    assert analysis.confusion.dtype == np.int64
    np.testing.assert_array_equal(analysis.confusion, confusion)
    assert analysis.examples == N
    assert analysis.accuracy == np.mean(predicted == labels)
    assert analysis.top5 == np.mean(in_top5)
    np.testing.assert_allclose(analysis.loss, loss.mean(), rtol=1e-6)


def test_metrics_equal_the_training_eval_loop(case):
    model, images, labels, analysis = case
    expected = EvalLoop(tf.distribute.get_strategy(), model, K).run(_dataset(images, labels))
    assert set(analysis.metrics) == set(expected) == {"loss", "accuracy", "top5", "examples"}
    assert analysis.accuracy == expected["accuracy"]
    assert analysis.top5 == expected["top5"]
    assert analysis.examples == expected["examples"]
    np.testing.assert_allclose(analysis.loss, expected["loss"], rtol=1e-9)


def test_top_losses_are_exactly_the_k_highest(case):
    model, images, labels, analysis = case
    loss, predicted, _, _, probability = _reference(model, images, labels)
    worst = np.argsort(-loss, kind="stable")[:5]
    top = analysis.top_losses
    assert len(top) == 5
    np.testing.assert_array_equal(top.index, worst)
    np.testing.assert_allclose(top.loss, loss[worst], rtol=1e-5)
    assert np.all(np.diff(top.loss) <= 0), "worst first"
    np.testing.assert_array_equal(top.images, images[worst])
    np.testing.assert_array_equal(top.actual, labels[worst])
    np.testing.assert_array_equal(top.predicted, predicted[worst])
    np.testing.assert_allclose(top.probability, probability[worst], rtol=1e-5)


def test_top_losses_keep_everything_or_nothing():
    model = tiny_model(K)
    images, labels = _data()
    everything = interpret.analyze(model, _dataset(images, labels), K, top_losses=100)
    assert sorted(everything.top_losses.index.tolist()) == list(range(N))
    nothing = interpret.analyze(model, _dataset(images, labels), K, top_losses=0)
    assert len(nothing.top_losses) == 0 and nothing.top_losses.images.shape == (0, 8, 8, 3)
    np.testing.assert_array_equal(nothing.confusion, everything.confusion)


def test_per_class_against_numpy(case):
    _, _, labels, analysis = case
    c = analysis.confusion
    rows = analysis.per_class
    assert [r["class"] for r in rows] == ["a", "b", "c", "d", 4, 5, 6]
    for k, row in enumerate(rows):
        predicted, support = c[:, k].sum(), c[k, :].sum()
        assert row["support"] == support == np.sum(labels == k)
        assert row["precision"] == (c[k, k] / predicted if predicted else 0.0)
        assert row["recall"] == (c[k, k] / support if support else 0.0)


def test_per_class_conventions():
    # Class 1 is never predicted (precision 0.0), class 2 has no examples (recall 0.0).
    confusion = np.array([[3, 0, 1], [2, 0, 0], [0, 0, 0]])
    rows = interpret.per_class(confusion, ["cat"])
    assert rows == [
        {"class": "cat", "precision": 0.6, "recall": 0.75, "support": 4},
        {"class": 1, "precision": 0.0, "recall": 0.0, "support": 2},
        {"class": 2, "precision": 0.0, "recall": 0.0, "support": 0},
    ]


def test_few_classes_have_no_top5_and_bad_input_raises():
    model = tiny_model(3)
    images, labels = _data(num_classes=3)
    analysis = interpret.analyze(model, _dataset(images, labels), 3)
    assert analysis.top5 is None and "top5" not in analysis.metrics
    with pytest.raises(ValueError, match="label 3 is outside 0..2"):
        interpret.analyze(model, _dataset(images, np.full(N, 3, np.int32)), 3)
    with pytest.raises(ValueError, match="gives 3 logits; num_classes=4"):
        interpret.analyze(model, _dataset(images, labels), 4)
    with pytest.raises(ValueError, match="top_losses"):
        interpret.analyze(model, _dataset(images, labels), 3, top_losses=-1)


def _png_size(png: bytes):
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", png[16:24])


def test_plots_are_pngs(case, tmp_path):
    _, _, _, analysis = case
    path = str(tmp_path / "cm.png")
    png = interpret.plot_confusion_matrix(analysis.confusion, NAMES, path)
    assert open(path, "rb").read() == png
    width, height = _png_size(png)
    assert 300 <= width <= 3000 and 300 <= height <= 3000 and 5_000 < len(png) < 2_000_000
    png = interpret.plot_top_losses(analysis, NAMES, None)  # bytes only
    width, height = _png_size(png)
    assert 300 <= width <= 3000 and 300 <= height <= 3000 and 5_000 < len(png) < 2_000_000


def _events(logdir):
    found = {}
    for path in glob.glob(os.path.join(logdir, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                found[value.tag] = (event.step, value)
    return found


def test_write_files_tensorboard_and_record(case, tmp_path):
    _, _, _, analysis = case
    record = interpret.write(analysis, NAMES, str(tmp_path), step=7)
    assert record == {
        "per_class": analysis.per_class,
        "confusion_matrix": analysis.confusion.tolist(),
    }
    for name in ("confusion_matrix.png", "top_losses.png"):
        png = (tmp_path / name).read_bytes()
        _png_size(png)
        assert len(png) > 5_000
    events = _events(str(tmp_path / "tensorboard" / "eval"))
    assert set(events) == {"confusion_matrix", "top_losses"}
    for tag, (step, value) in events.items():
        assert step == 7
        assert value.metadata.plugin_data.plugin_name == "images"
        # tf.summary.image's [width, height, png]: the picture of the file, pixel for pixel.
        width, height, png = value.tensor.string_val
        picture = (tmp_path / f"{tag}.png").read_bytes()
        assert (int(width), int(height)) == _png_size(picture)
        np.testing.assert_array_equal(tf.io.decode_png(png), tf.io.decode_png(picture))


def test_write_without_matplotlib_warns_once_and_keeps_the_numbers(
    case, tmp_path, monkeypatch, caplog
):
    _, _, _, analysis = case
    # A None entry in sys.modules makes the import fail as if matplotlib were not installed.
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with caplog.at_level(logging.WARNING):
        record = interpret.write(analysis, NAMES, str(tmp_path), step=1)
    assert record["confusion_matrix"] == analysis.confusion.tolist()
    assert not list(tmp_path.rglob("*.png")) and not (tmp_path / "tensorboard").exists()
    warnings = [r for r in caplog.records if "matplotlib" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
