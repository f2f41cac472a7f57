"""Tests for trainer/data/: synthetic, folder, TFDS and array sources, exact-resume pipelines."""

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
            keras.layers.Conv2D(16, 3, activation="relu", padding="same"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(32, 3, activation="relu", padding="same"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(32, 3, activation="relu", padding="same"),
            keras.layers.GlobalMaxPooling2D(),
            keras.layers.Dense(10),
        ]
    )
    model.compile(
        keras.optimizers.Adam(3e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(source.train_dataset(64), steps_per_epoch=24, epochs=10, verbose=0, shuffle=False)
    _, accuracy = model.evaluate(source.eval_dataset(250), verbose=0)
    print(f"synthetic test accuracy {accuracy:.3f}")
    assert accuracy > 0.4  # chance is 0.1; 0.58 on this seed (7 s)


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
    for name in ("a", "b"):
        (tmp_path / "train" / name).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "train" / name / "0.png")
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


# Arrays: npz, IDX, scikit-learn digits ---------------------------------------------------------


def _distinct_images(rng, n, shape):
    """n uint8 images of `shape`, pairwise different (each has its index in pixel [0, 0])."""
    images = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    images.reshape(n, -1)[:, 0] = np.arange(n)
    return images


def _rgb(images):
    """[N, H, W] or [N, H, W, 1|3] uint8 -> float32 [N, H, W, 3], as the pipelines yield them."""
    images = images.reshape(*images.shape[:3], -1)
    return np.broadcast_to(images, (*images.shape[:3], 3)).astype(np.float32)


def _assert_batches_match(source, batch_size, steps, images, labels):
    """Every example of `steps` training batches is exactly images[i], with labels[i].

    Returns the indices i in the order the batches visit them.
    """
    lookup = {x.tobytes(): i for i, x in enumerate(_rgb(images))}
    seen = []
    for x, y in source.train_dataset(batch_size).take(steps).as_numpy_iterator():
        for image, label in zip(x, y):
            index = lookup[image.tobytes()]  # exact pixels: a KeyError otherwise
            assert label == labels[index]
            seen.append(index)
    return seen


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return f"npz:{path}"


def _npz_arrays(rng, train=12, test=5, shape=(6, 6)):
    return dict(
        x_train=_distinct_images(rng, train, shape),
        y_train=np.arange(train) % 3,
        x_test=_distinct_images(rng, test, shape),
        y_test=np.arange(test) % 3,
    )


def test_npz_grayscale_class_names_and_exact_pixels(tmp_path):
    arrays = _npz_arrays(np.random.default_rng(0))
    arrays["x_test"] = arrays["x_test"][..., np.newaxis]  # [N, H, W, 1] is grayscale too
    names = np.array(["cat", "dog", "emu"])
    spec = _npz(tmp_path / "d.npz", **arrays, class_names=names)
    source = _load(dataset=spec, image_size=6, augment=False, seed=2)
    info = source.info
    assert (info.num_train, info.num_eval, info.num_classes) == (12, 5, 3)
    assert info.image_shape == (6, 6, 3) and info.class_names == ("cat", "dog", "emu")
    # Two epochs of 3 batches of 4: every training image once per epoch, pixels exact.
    seen = _assert_batches_match(source, 4, 6, arrays["x_train"], arrays["y_train"])
    assert sorted(seen[:12]) == sorted(seen[12:]) == list(range(12))
    x, y = source.as_numpy("eval")
    np.testing.assert_array_equal(x, _rgb(arrays["x_test"]))
    np.testing.assert_array_equal(y, arrays["y_test"])
    resized, _ = _load(dataset=spec, image_size=12).as_numpy("eval")
    assert resized.shape == (5, 12, 12, 3)


def test_npz_rgb_default_class_names_keras_labels_and_named_splits(tmp_path):
    rng = np.random.default_rng(1)
    x_train = _distinct_images(rng, 8, (5, 5, 3))
    y_train = np.array([[0], [1], [2], [0], [1], [2], [0], [1]], np.uint8)  # Keras' [N, 1]
    x_val = _distinct_images(rng, 3, (4, 7, 3))  # another size: resized by the pipeline
    y_val = np.array([0, 6, 1], np.int64)  # K = 7 from the eval split's largest label
    spec = _npz(tmp_path / "d.npz", x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val)
    source = _load(dataset=spec, eval_split="val", image_size=5, augment=False)
    info = source.info
    assert info.class_names == tuple("0123456") and info.image_shape == (None, None, 3)
    _assert_batches_match(source, 4, 2, x_train, y_train[:, 0])
    x, y = source.as_numpy("eval")
    assert x.shape == (3, 5, 5, 3) and list(y) == [0, 6, 1]


def _one_line_error(dataset, match, **changes):
    with pytest.raises(UserError, match=match) as raised:
        _load(dataset=dataset, **changes)
    message = str(raised.value)
    assert "\n" not in message and message.startswith(f"--dataset={dataset}: ")
    return message


_NPZ_ERRORS = [
    ("missing key", lambda a: a.pop("y_test"), r"has no array 'y_test' \(for --eval_split=test"),
    ("count", lambda a: a.update(y_train=a["y_train"][:-1]), "x_train has 12 images but y_train"),
    ("negative", lambda a: a["y_test"].__setitem__(2, -1), "y_test has negative label -1 .*2"),
    (
        "range",
        lambda a: a["y_test"].__setitem__(1, 3),
        "y_test has label 3, but there are 3 class names .* in class_names",
    ),
    ("float labels", lambda a: a.update(y_train=a["y_train"] * 1.0), "y_train has dtype float64"),
    ("one-hot", lambda a: a.update(y_train=np.eye(3)[a["y_train"]]), "y_train has shape"),
    ("empty", lambda a: a.update(x_test=a["x_test"][:0]), "x_test is empty"),
    ("float images", lambda a: a.update(x_train=a["x_train"] / 255), "x_train has dtype float64"),
    ("image shape", lambda a: a.update(x_train=a["x_train"][:, 0]), "x_train has shape .12, 6."),
    ("names dtype", lambda a: a.update(class_names=np.arange(3)), "class_names has dtype int"),
    ("names repeated", lambda a: a.update(class_names=np.array(["a", "b", "a"])), "repeats a"),
    ("names object", lambda a: a.update(class_names=np.array(["a", None])), "object array"),
]


@pytest.mark.parametrize(
    "change, match", [c[1:] for c in _NPZ_ERRORS], ids=[c[0] for c in _NPZ_ERRORS]
)
def test_npz_errors_are_one_line(tmp_path, change, match):
    arrays = _npz_arrays(np.random.default_rng(2))
    arrays["class_names"] = np.array(["a", "b", "c"])
    change(arrays)
    spec = _npz(tmp_path / "d.npz", **arrays)
    _one_line_error(spec, match)


def test_npz_file_errors_are_one_line(tmp_path):
    _one_line_error(f"npz:{tmp_path / 'none.npz'}", "no such file")
    (tmp_path / "text.npz").write_text("not numpy")
    _one_line_error(f"npz:{tmp_path / 'text.npz'}", "is not a NumPy .npz file")
    np.save(tmp_path / "single.npy", np.zeros(3))
    _one_line_error(f"npz:{tmp_path / 'single.npy'}", "is a single .npy array")
    spec = _npz(tmp_path / "ok.npz", **_npz_arrays(np.random.default_rng(3)))
    _one_line_error(spec, r"no array 'x_val' \(for --train_split=val", train_split="val")
    big = _npz_arrays(np.random.default_rng(4))
    big["y_train"][0] = 10**9
    _one_line_error(_npz(tmp_path / "big.npz", **big), "label 1000000000, too large")


def _write_idx(path, array, gz):
    """An IDX file: magic (0x0000 08 ndim), big-endian uint32 sizes, uint8 data."""
    header = bytes([0, 0, 8, array.ndim]) + np.array(array.shape, ">u4").tobytes()
    content = header + array.astype(np.uint8).tobytes()
    if gz:
        import gzip

        path = path.with_name(path.name + ".gz")
        content = gzip.compress(content)
    path.write_bytes(content)
    return path


def _idx_dir(root, rng, names=("train", "t10k"), shape=(7, 7), sizes=(10, 4), gz=(True, False)):
    root.mkdir(parents=True)
    arrays = {}
    for name, size, compress in zip(names, sizes, gz):
        images = _distinct_images(rng, size, shape)
        labels = rng.integers(0, 10, size).astype(np.uint8)
        _write_idx(root / f"{name}-images-idx3-ubyte", images, compress)
        _write_idx(root / f"{name}-labels-idx1-ubyte", labels, compress)
        arrays[name] = images, labels
    return arrays


def test_idx_gz_and_plain_grayscale_fashion_names_and_exact_pixels(tmp_path):
    root = tmp_path / "fashion-mnist"
    arrays = _idx_dir(root, np.random.default_rng(5))
    (root / "README").write_text("other files are ignored")
    source = _load(dataset=f"idx:{root}", image_size=7, augment=False)
    info = source.info
    assert (info.num_train, info.num_eval, info.image_shape) == (10, 4, (7, 7, 3))
    assert info.class_names[0] == "T-shirt/top" and info.class_names[9] == "Ankle boot"
    seen = _assert_batches_match(source, 5, 4, *arrays["train"])
    assert sorted(seen[:10]) == list(range(10))
    x, y = source.as_numpy("eval")
    images, labels = arrays["t10k"]
    np.testing.assert_array_equal(x, _rgb(images))
    np.testing.assert_array_equal(y, labels)


def test_idx_test_prefix_kaggle_names_and_class_names_file(tmp_path):
    root = tmp_path / "digits"
    arrays = _idx_dir(root, np.random.default_rng(6), names=("train", "test"), gz=(False, True))
    # Kaggle's MNIST spells train-images.idx3-ubyte; plain wins over a .gz of the same name.
    (root / "train-images-idx3-ubyte").rename(root / "train-images.idx3-ubyte")
    (root / "train-labels-idx1-ubyte").rename(root / "train-labels.idx1-ubyte")
    _write_idx(root / "train-labels.idx1-ubyte", np.zeros(1), gz=True)  # ignored
    info = _load(dataset=f"idx:{root}").info
    assert (info.num_train, info.num_eval) == (10, 4)
    largest = max(int(labels.max()) for _, labels in arrays.values())
    assert info.class_names == tuple(str(k) for k in range(largest + 1))
    names = [f"digit {k}" for k in range(10)]
    (root / "class_names.txt").write_text("\n".join(names) + "\n\n")
    assert _load(dataset=f"idx:{root}").info.class_names == tuple(names)
    (root / "class_names.txt").write_text("zero\none\n")
    message = rf"labels.* has label {largest}, but there are 2 class names .* in .*class_names.txt$"
    _one_line_error(f"idx:{root}", message)


def test_idx_errors_are_one_line(tmp_path):
    _one_line_error(f"idx:{tmp_path / 'none'}", "no such directory")
    root = tmp_path / "mnist"
    _idx_dir(root, np.random.default_rng(7))
    spec = f"idx:{root}"
    _one_line_error(spec, "no val images file .*it has t10k-images", eval_split="val")
    plain = root / "t10k-labels-idx1-ubyte"
    _write_idx(plain, np.zeros(3), gz=False)
    _one_line_error(spec, "t10k-images-idx3-ubyte has 4 images but .*t10k-labels.* has 3 labels")
    _write_idx(plain, np.zeros((3, 1)), gz=False)  # 2 dimensions: magic 0x00000802
    _one_line_error(spec, r"not an IDX labels file \(magic number 0x00000802, expected 0x0000080")
    plain.write_bytes(plain.read_bytes()[:-1])
    _one_line_error(spec, "not an IDX labels file")
    _write_idx(plain, np.zeros(4), gz=False)
    plain.write_bytes(plain.read_bytes()[:-1])  # 3 data bytes, the header says 4
    _one_line_error(spec, "its header says 4 labels, more than its 3 data bytes hold")
    _write_idx(plain, np.zeros(4), gz=False)
    (root / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip")
    _one_line_error(spec, "cannot read .*train-images-idx3-ubyte.gz")
    _write_idx(root / "train-images-idx3-ubyte", np.zeros((2, 3, 3)), gz=False)
    _write_idx(root / "extra-train-images-idx3-ubyte", np.zeros((2, 3, 3)), gz=False)
    _one_line_error(spec, "several train images files .*: extra-train-.*, train-images-")


def test_sklearn_digits_split_is_fixed_stratified_and_exact():
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    source = _load(dataset="sklearn_digits", image_size=8, augment=False)
    info = source.info
    assert (info.num_train, info.num_eval, info.image_shape) == (1442, 355, (8, 8, 3))
    assert info.class_names == tuple("0123456789")
    digits = sklearn_datasets.load_digits()
    test = np.zeros(len(digits.target), bool)
    for k in range(10):
        test[np.flatnonzero(digits.target == k)[4::5]] = True
    expected = np.round(digits.images[test] * 255 / 16).astype(np.uint8)
    x, y = source.as_numpy("eval")
    np.testing.assert_array_equal(x, _rgb(expected))
    np.testing.assert_array_equal(y, digits.target[test])
    assert x.max() == 255 and np.all(np.bincount(y) >= 34)
    train_images = np.round(digits.images[~test] * 255 / 16).astype(np.uint8)
    _assert_batches_match(source, 64, 3, train_images, digits.target[~test])
    _one_line_error("sklearn_digits", r"no split 'val' \(--eval_split\)", eval_split="val")


def test_sklearn_digits_without_sklearn_says_pip_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # import raises ImportError
    _one_line_error("sklearn_digits", "needs scikit-learn: pip install scikit-learn")


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
    (folder / "train" / "emu").mkdir()  # a second class with images (one class is an error)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "train" / "emu" / "0.png")
    truncated, header = _corrupt_jpegs(folder / "train" / "cat")
    spec = f"folder:{folder}"
    nowhere = str(tmp_path / "no_tfds_here")
    npz = _npz(tmp_path / "d.npz", **_npz_arrays(np.random.default_rng(0)))
    idx = tmp_path / "idx"
    _idx_dir(idx, np.random.default_rng(0))
    _write_idx(idx / "t10k-labels-idx1-ubyte", np.zeros((4, 1)), gz=False)  # bad magic
    cases = [
        f"decode:{truncated}",
        f"decode:{header}",
        {"dataset": spec},  # fails at the first corrupt file (header.jpg, in sorted order)
        {"dataset": spec, "skip_corrupt": True},  # loads: the warnings, nothing else
        {"dataset": spec, "skip_corrupt": True, "eval_split": "val"},  # fails after train
        {"dataset": "cifar10", "data_dir": nowhere},
        {"dataset": "cifar11", "data_dir": nowhere},
        {"dataset": npz},  # loads silently
        {"dataset": npz, "eval_split": "val"},
        {"dataset": f"idx:{idx}"},
    ]
    lines = _stderr_lines(cases)
    decode_truncated, decode_header, corrupt, skipped, no_eval, unprepared, unknown = lines[:7]
    npz_loaded, npz_no_val, idx_bad_magic = lines[7:]
    assert decode_truncated and decode_header  # without the capture, the decoders print
    assert len(corrupt) == 1 and f"cannot read image {header}: it does not decode" in corrupt[0]
    assert len(skipped) == 2, skipped
    assert "has no images" in skipped[0] and "skipped 2 unreadable images" in skipped[1]
    assert len(no_eval) == 1 and f"missing directory {folder / 'val'}" in no_eval[0]
    assert len(unprepared) == 1 and "--dataset=cifar10: not prepared" in unprepared[0]
    assert len(unknown) == 1 and "--dataset=cifar11: no such TFDS dataset" in unknown[0]
    assert npz_loaded == []
    assert len(npz_no_val) == 1 and "has no array 'x_val'" in npz_no_val[0]
    assert len(idx_bad_magic) == 1 and "magic number 0x00000802" in idx_bad_magic[0]
