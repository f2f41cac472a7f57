"""Tests for trainer/data*.py: synthetic, folder and TFDS sources, exact-resume pipelines."""

import logging

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from trainer import data, data_synthetic
from trainer.config import Config
from trainer.errors import UserError


@pytest.fixture(autouse=True)
def _fresh_cache():
    data._CACHE.clear()
    yield
    data._CACHE.clear()


def _config(**changes):
    base = dict(model_dir="/tmp/unused", synthetic_train_size=200, synthetic_test_size=70)
    return Config(**{**base, **changes})


def _batches(config, batch_size, count, **kwargs):
    info = data.info_from_config(config)
    ds = data.train_dataset(config, info, batch_size, **kwargs)
    return list(ds.take(count).as_numpy_iterator())


def _same(a, b):
    return all(np.array_equal(x[0], y[0]) and np.array_equal(x[1], y[1]) for x, y in zip(a, b))


# Synthetic ------------------------------------------------------------------------------------


def test_synthetic_is_deterministic_balanced_and_sized():
    images, labels = data_synthetic.generate("train", 100, 10)
    again, _ = data_synthetic.generate("train", 100, 10)
    assert images.shape == (100, 32, 32, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(images, again)
    np.testing.assert_array_equal(np.bincount(labels), [10] * 10)
    test_images, _ = data_synthetic.generate("test", 100, 10)
    assert not np.array_equal(images, test_images)
    info = data.get_info("synthetic:5", synthetic_train_size=50, synthetic_test_size=20)
    assert (info.num_classes, info.num_train, info.num_eval) == (5, 50, 20)
    assert info.class_names == ("disk", "square", "triangle", "plus", "ring")
    with pytest.raises(UserError, match="synthetic:11"):
        data.get_info("synthetic:11")


def test_synthetic_is_learnable_well_above_chance():
    config = _config(synthetic_train_size=1536, synthetic_test_size=500, augment=False)
    info = data.info_from_config(config)
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
    model.fit(data.train_dataset(config, info, 64), steps_per_epoch=24, epochs=10, verbose=0)
    _, accuracy = model.evaluate(data.eval_dataset(config, info, 250), verbose=0)
    print(f"synthetic test accuracy {accuracy:.3f}")
    assert accuracy > 0.4  # chance is 0.1


# Pipelines -------------------------------------------------------------------------------------


def test_train_batches_types_and_steps_per_epoch():
    config = _config()
    info = data.info_from_config(config)
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
    raw = data_synthetic.generate("train", 200)[0].astype(np.float32).reshape(200, -1)
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
    config = _config(augment=True)
    info = data.info_from_config(config)
    batches = list(data.eval_dataset(config, info, 32).as_numpy_iterator())
    assert [len(b[1]) for b in batches] == [32, 32, 6]
    images, labels = data_synthetic.generate("test", 70)
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), images)
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), labels)
    x, y = data.as_numpy(config, info, "eval", limit=10)
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
    info = data.info_from_config(config)
    assert info.class_names == ("cat", "dog", "emu")
    assert (info.num_train, info.num_eval, info.image_shape) == (9, 6, (None, None, 3))
    images, labels = data.as_numpy(config, info, "train")
    assert images.shape == (9, 32, 32, 3)
    np.testing.assert_array_equal(labels, [0, 0, 0, 1, 1, 1, 2, 2, 2])
    # Each image is a flat color 60 * label (but for one pixel), kept by resizing.
    np.testing.assert_allclose(np.median(images, axis=(1, 2, 3)), 60.0 * labels, atol=2)
    batch = _batches(config, 4, 3)
    assert all(b[0].shape == (4, 32, 32, 3) for b in batch)


def test_folder_corrupt_file_is_named_or_skipped_and_counted(tmp_path, caplog):
    _write_folder(tmp_path, corrupt=True)
    with pytest.raises(UserError, match="broken.jpg"):
        data.get_info(f"folder:{tmp_path}")
    with caplog.at_level(logging.WARNING):
        info = data.get_info(f"folder:{tmp_path}", skip_corrupt=True)
    assert (info.num_train, info.num_skipped) == (9, 1)
    assert "skipped 1 unreadable" in caplog.text


def test_folder_empty_class_keeps_label_index(tmp_path, caplog):
    _write_folder(tmp_path, empty_class=True)
    config = _config(dataset=f"folder:{tmp_path}", augment=False)
    with caplog.at_level(logging.WARNING):
        info = data.info_from_config(config)
    assert "has no images" in caplog.text
    assert info.num_classes == 3 and info.num_eval == 4
    _, labels = data.as_numpy(config, info, "eval")
    np.testing.assert_array_equal(labels, [0, 0, 2, 2])


def test_folder_missing_paths_raise_user_error(tmp_path):
    with pytest.raises(UserError, match="no such directory"):
        data.get_info(f"folder:{tmp_path / 'nope'}")
    (tmp_path / "train" / "a").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "train" / "a" / "0.png")
    with pytest.raises(UserError, match="missing directory .*test"):
        data.get_info(f"folder:{tmp_path}")


# TFDS ------------------------------------------------------------------------------------------


def test_tfds_mock_cifar10_pipeline(tmp_path):
    policy = tfds.testing.MockPolicy.USE_CODE
    with tfds.testing.mock_data(num_examples=24, policy=policy):
        config = _config(dataset="cifar10", data_dir=str(tmp_path), augment=True)
        info = data.info_from_config(config)
        assert (info.num_classes, info.num_train, info.num_eval) == (10, 24, 24)
        assert info.image_shape == (32, 32, 3)
        full = _batches(config, 8, 5)
        tail = _batches(config, 8, 3, start_step=2)
        assert _same(full[2:], tail)
        evaluated = list(data.eval_dataset(config, info, 10).as_numpy_iterator())
        assert [len(b[1]) for b in evaluated] == [10, 10, 4]


def test_tfds_unprepared_and_unknown_datasets(tmp_path):
    with pytest.raises(UserError, match=r"cifar10: not prepared .*tfds build cifar10"):
        data.get_info("cifar10", data_dir=str(tmp_path))
    with pytest.raises(UserError, match="did you mean .*cifar10"):
        data.get_info("cifar11", data_dir=str(tmp_path))
