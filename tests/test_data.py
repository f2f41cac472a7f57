"""Tests for trainer/data/: synthetic, folder and TFDS sources, exact-resume pipelines."""

import json
import logging
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from trainer import data
from trainer.config import Config
from trainer.data import synthetic
from trainer.errors import UserError


def _config(**changes):
    base = dict(model_dir="/tmp/unused", synthetic_train_size=200, synthetic_test_size=70)
    return Config(**{**base, **changes})


def _load(**changes):
    return data.load(_config(**changes))


def _batches(config, batch_size, count, **kwargs):
    ds = data.load(config).train_dataset(batch_size, **kwargs)
    return list(ds.take(count).as_numpy_iterator())


def _same(a, b):
    return all(np.array_equal(x[0], y[0]) and np.array_equal(x[1], y[1]) for x, y in zip(a, b))


# Synthetic ------------------------------------------------------------------------------------


def test_synthetic_is_deterministic_balanced_and_sized():
    images, labels = synthetic.generate("train", 100, 10)
    again, _ = synthetic.generate("train", 100, 10)
    assert images.shape == (100, 32, 32, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(images, again)
    np.testing.assert_array_equal(np.bincount(labels), [10] * 10)
    test_images, _ = synthetic.generate("test", 100, 10)
    assert not np.array_equal(images, test_images)
    info = _load(dataset="synthetic:5", synthetic_train_size=50, synthetic_test_size=20).info
    assert (info.num_classes, info.num_train, info.num_eval) == (5, 50, 20)
    assert info.class_names == ("disk", "square", "triangle", "plus", "ring")
    with pytest.raises(UserError, match="synthetic:11"):
        _load(dataset="synthetic:11")


def test_synthetic_is_learnable_well_above_chance():
    config = _config(synthetic_train_size=1536, synthetic_test_size=500, augment=False)
    source = data.load(config)
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            keras.layers.Rescaling(1 / 255.0),
            keras.layers.Conv2D(32, 3, activation="relu", padding="same"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(64, 3, activation="relu", padding="same"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(64, 3, activation="relu", padding="same"),
            keras.layers.GlobalMaxPooling2D(),
            keras.layers.Dense(10),
        ]
    )
    model.compile(
        keras.optimizers.Adam(3e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(source.train_dataset(64), steps_per_epoch=24, epochs=10, verbose=0)
    _, accuracy = model.evaluate(source.eval_dataset(250), verbose=0)
    print(f"synthetic test accuracy {accuracy:.3f}")
    assert accuracy > 0.4  # chance is 0.1


# Pipelines -------------------------------------------------------------------------------------


def test_train_batches_types_and_steps_per_epoch():
    config = _config()
    info = data.load(config).info
    assert data.steps_per_epoch(info, 32) == 6
    assert data.steps_per_epoch(info, 1000) == 1
    images, labels = _batches(config, 32, 1)[0]
    assert images.shape == (32, 32, 32, 3) and images.dtype == np.float32
    assert labels.shape == (32,) and labels.dtype == np.int32
    assert images.min() >= 0.0 and images.max() <= 255.0


@pytest.mark.parametrize("start_step", [1, 6, 9, 13])
def test_resume_at_step_equals_tail_bitwise(start_step):
    config = _config(seed=5)
    full = _batches(config, 32, 20)
    tail = _batches(config, 32, 20 - start_step, start_step=start_step)
    assert len(tail) == 20 - start_step and _same(full[start_step:], tail)


def test_epochs_are_permutations_and_seeds_matter():
    config = _config(augment=False, seed=1)
    raw = synthetic.generate("train", 200)[0].astype(np.float32).reshape(200, -1)
    lookup = {row.tobytes(): i for i, row in enumerate(raw)}
    batches = _batches(config, 50, 8)  # two epochs of 4 batches
    for epoch in (batches[:4], batches[4:]):
        ids = [lookup[x.reshape(-1).tobytes()] for b in epoch for x in b[0]]
        assert sorted(ids) == list(range(200))
    assert not _same(batches[:4], batches[4:])  # a new order each epoch
    assert _same(batches, _batches(config, 50, 8))
    assert not _same(batches, _batches(config.replace(seed=2), 50, 8))
    augmented = _batches(config.replace(augment=True), 50, 2)
    assert not _same(augmented, _batches(config.replace(augment=True, seed=2), 50, 2))


def test_augmentation_crops_and_flips_the_same_order():
    plain = _batches(_config(augment=False), 40, 1)[0]
    augmented = _batches(_config(augment=True), 40, 1)[0]
    np.testing.assert_array_equal(plain[1], augmented[1])
    assert not np.array_equal(plain[0], augmented[0])


def test_input_context_shards_union_to_the_global_batch():
    config = _config(seed=3)
    full = _batches(config, 48, 7)
    parts = []
    for pipeline in range(3):
        context = tf.distribute.InputContext(3, pipeline, 3)
        parts.append(_batches(config, 16, 3, start_step=4, input_context=context))
    for step in range(3):
        images = np.concatenate([p[step][0] for p in parts])
        labels = np.concatenate([p[step][1] for p in parts])
        np.testing.assert_array_equal(images, full[4 + step][0])
        np.testing.assert_array_equal(labels, full[4 + step][1])


def test_eval_is_ordered_unaugmented_and_keeps_last_batch():
    source = _load(augment=True)
    batches = list(source.eval_dataset(32).as_numpy_iterator())
    assert [len(b[1]) for b in batches] == [32, 32, 6]
    images, labels = synthetic.generate("test", 70)
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), images)
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), labels)
    x, y = source.as_numpy("eval", limit=10)
    np.testing.assert_array_equal(x, images[:10].astype(np.float32))
    np.testing.assert_array_equal(y, labels[:10])


def test_resize_to_image_size():
    config = _config(image_size=48)
    images, _ = _batches(config, 8, 1)[0]
    assert images.shape == (8, 48, 48, 3)


# Image folder ----------------------------------------------------------------------------------


def _write_folder(root, corrupt=False, empty_class=False):
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 3), ("test", 2)):
        for label, name in enumerate(("cat", "dog", "emu")):
            directory = root / split / name
            directory.mkdir(parents=True)
            if empty_class and name == "dog" and split == "test":
                continue
            for i in range(per_class):
                pixels = np.full((20 + i, 24, 3), 60 * label, np.uint8)
                pixels[0, 0] = rng.integers(0, 255, 3)
                suffix = "png" if i % 2 == 0 else "jpg"
                Image.fromarray(pixels).save(directory / f"{i}.{suffix}")
    if corrupt:
        (root / "train" / "dog" / "broken.jpg").write_bytes(b"not an image")
    (root / "train" / "cat" / "notes.txt").write_text("ignored")


def test_folder_labels_sizes_and_pipeline(tmp_path):
    _write_folder(tmp_path)
    config = _config(dataset=f"folder:{tmp_path}", image_size=32, augment=False)
    source = data.load(config)
    info = source.info
    assert info.class_names == ("cat", "dog", "emu")
    assert (info.num_train, info.num_eval, info.image_shape) == (9, 6, (None, None, 3))
    images, labels = source.as_numpy("train")
    assert images.shape == (9, 32, 32, 3)
    np.testing.assert_array_equal(labels, [0, 0, 0, 1, 1, 1, 2, 2, 2])
    # Each image is a flat color 60 * label (but for one pixel), kept by resizing.
    np.testing.assert_allclose(np.median(images, axis=(1, 2, 3)), 60.0 * labels, atol=2)
    batch = _batches(config, 4, 3)
    assert all(b[0].shape == (4, 32, 32, 3) for b in batch)


def test_folder_loads_are_independent_copies(tmp_path):
    _write_folder(tmp_path)
    first = _load(dataset=f"folder:{tmp_path}")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "train" / "emu" / "new.png")
    # No cache: a second load sees the new file, the first Data keeps what it read.
    assert _load(dataset=f"folder:{tmp_path}").info.num_train == 10
    assert first.info.num_train == 9 and len(first.as_numpy("train")[1]) == 9


def test_folder_corrupt_file_is_named_or_skipped_and_counted(tmp_path, caplog):
    _write_folder(tmp_path, corrupt=True)
    with pytest.raises(UserError, match="broken.jpg"):
        _load(dataset=f"folder:{tmp_path}")
    with caplog.at_level(logging.WARNING):
        info = _load(dataset=f"folder:{tmp_path}", skip_corrupt=True).info
    assert (info.num_train, info.num_skipped) == (9, 1)
    assert "skipped 1 unreadable" in caplog.text


def test_folder_empty_class_keeps_label_index(tmp_path, caplog):
    _write_folder(tmp_path, empty_class=True)
    config = _config(dataset=f"folder:{tmp_path}", augment=False)
    with caplog.at_level(logging.WARNING):
        source = data.load(config)
    assert "has no images" in caplog.text
    info = source.info
    assert info.num_classes == 3 and info.num_eval == 4
    _, labels = source.as_numpy("eval")
    np.testing.assert_array_equal(labels, [0, 0, 2, 2])


def test_folder_warnings_only_after_a_successful_load(tmp_path, caplog):
    _write_folder(tmp_path, corrupt=True, empty_class=True)
    (tmp_path / "test" / "emu" / "0.png").unlink()
    (tmp_path / "test" / "emu" / "1.jpg").write_bytes(b"not an image either")
    config = _config(dataset=f"folder:{tmp_path}", skip_corrupt=True)
    with caplog.at_level(logging.WARNING):
        data.load(config)
    assert caplog.text.count("has no images") == 1 and caplog.text.count("skipped 1") == 2
    caplog.clear()
    # The train split loads (with a skipped file), then the eval split fails: no warning.
    (tmp_path / "test" / "cat" / "0.png").unlink()
    (tmp_path / "test" / "cat" / "1.jpg").unlink()
    with caplog.at_level(logging.WARNING), pytest.raises(UserError, match="no readable images"):
        data.load(config)
    assert caplog.records == []


def test_folder_missing_paths_raise_user_error(tmp_path):
    with pytest.raises(UserError, match="no such directory"):
        _load(dataset=f"folder:{tmp_path / 'nope'}")
    (tmp_path / "train" / "a").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "train" / "a" / "0.png")
    with pytest.raises(UserError, match="missing directory .*test"):
        _load(dataset=f"folder:{tmp_path}")


# TFDS ------------------------------------------------------------------------------------------


def test_tfds_mock_cifar10_pipeline(tmp_path, caplog):
    policy = tfds.testing.MockPolicy.USE_CODE
    config = _config(dataset="cifar10", data_dir=str(tmp_path), augment=True)
    with tfds.testing.mock_data(num_examples=24, policy=policy):
        # run_train.py shows absl INFO lines; TFDS's own ("Constructing tf.data.Dataset ...")
        # are silenced during the load, and the level is restored after it.
        with caplog.at_level(logging.INFO, logger="absl"):
            source = data.load(config)
            assert "tf.data.Dataset" not in caplog.text
            assert logging.getLogger("absl").level == logging.INFO
        info = source.info
        assert (info.num_classes, info.num_train, info.num_eval) == (10, 24, 24)
        assert info.image_shape == (32, 32, 3)
        full = list(source.train_dataset(8).take(5).as_numpy_iterator())
        tail = _batches(config, 8, 3, start_step=2)
        assert _same(full[2:], tail)
        evaluated = list(source.eval_dataset(10).as_numpy_iterator())
        assert [len(b[1]) for b in evaluated] == [10, 10, 4]
    # Outside the mock the same configuration is read again (no cache), and is not prepared.
    with pytest.raises(UserError, match="not prepared"):
        data.load(config)


def test_tfds_unprepared_and_unknown_datasets(tmp_path):
    with pytest.raises(UserError, match=r"cifar10: not prepared .*tfds build cifar10"):
        _load(dataset="cifar10", data_dir=str(tmp_path))
    with pytest.raises(UserError, match="did you mean .*cifar10"):
        _load(dataset="cifar11", data_dir=str(tmp_path))


# One-line errors -------------------------------------------------------------------------------

# Runs in a fresh Python as run_train.py does (absl handler at INFO verbosity, TensorFlow's C++
# log at level 2). For each case it loads the data with fd 2 redirected to a file and prints
# a failure as run_train.py does: one line. "decode:PATH" cases decode a file with plain
# TensorFlow instead, to show that the file does make the decoder write to stderr.
_SCRIPT = r"""
import json, os, sys, tempfile
from absl import flags, logging as absl_logging
flags.FLAGS.mark_as_parsed()
absl_logging.use_absl_handler()
absl_logging.set_verbosity(absl_logging.INFO)
import tensorflow as tf
from trainer import data
from trainer.config import Config

def run(case):
    if case.startswith("decode:"):
        try:
            tf.io.decode_image(open(case[len("decode:"):], "rb").read(), channels=3)
        except tf.errors.InvalidArgumentError:
            pass
        return
    try:
        data.load(Config(model_dir="unused", **json.loads(case)))
    except ValueError as e:
        print(f"run_train.py: error: {e}", file=sys.stderr)

def stderr_of(case):
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            run(case)
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        return captured.read().decode(errors="replace").splitlines()

print(json.dumps([stderr_of(case) for case in json.loads(sys.argv[1])]))
"""


def _stderr_lines(cases):
    """Each case's stderr lines, from one subprocess (its TensorFlow import costs seconds)."""
    root = pathlib.Path(__file__).resolve().parents[1]
    args = [json.dumps(c) if isinstance(c, dict) else c for c in cases]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run(
        [sys.executable, "-c", _SCRIPT, json.dumps(args)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def _corrupt_jpegs(directory):
    """Two JPEG files that do not decode: libjpeg and TensorFlow each print about one."""
    pixels = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    jpeg = tf.io.encode_jpeg(pixels).numpy()
    truncated, header = directory / "truncated.jpg", directory / "header.jpg"
    truncated.write_bytes(jpeg[: len(jpeg) // 2])  # TensorFlow logs "Premature end of JPEG"
    header.write_bytes(jpeg[:200])  # libjpeg prints "Improper call to JPEG library"
    return truncated, header


def test_load_errors_are_one_line_with_nothing_before(tmp_path):
    folder = tmp_path / "folder"
    for split in ("train", "test"):
        (folder / split / "cat").mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / split / "cat" / "0.png")
    (folder / "train" / "dog").mkdir()  # empty: a warning
    truncated, header = _corrupt_jpegs(folder / "train" / "cat")
    spec = f"folder:{folder}"
    nowhere = str(tmp_path / "no_tfds_here")
    cases = [
        f"decode:{truncated}",
        f"decode:{header}",
        {"dataset": spec},  # fails at the first corrupt file (header.jpg, in sorted order)
        {"dataset": spec, "skip_corrupt": True},  # loads: the warnings, nothing else
        {"dataset": spec, "skip_corrupt": True, "eval_split": "val"},  # fails after train
        {"dataset": "cifar10", "data_dir": nowhere},
        {"dataset": "cifar11", "data_dir": nowhere},
    ]
    decode_truncated, decode_header, corrupt, skipped, no_eval, unprepared, unknown = _stderr_lines(
        cases
    )
    assert decode_truncated and decode_header  # without the capture, the decoders print
    assert len(corrupt) == 1 and f"cannot decode image {header}" in corrupt[0]
    assert len(skipped) == 2, skipped
    assert "has no images" in skipped[0] and "skipped 2 unreadable images" in skipped[1]
    assert len(no_eval) == 1 and f"missing directory {folder / 'val'}" in no_eval[0]
    assert len(unprepared) == 1 and "--dataset=cifar10: not prepared" in unprepared[0]
    assert len(unknown) == 1 and "--dataset=cifar11: no such TFDS dataset" in unknown[0]
