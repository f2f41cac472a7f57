"""Tests for trainer/data/corrupt.py: bad image files of a folder read on demand, found at
start-up or named at run time (also from inside the compiled loops), one-class datasets and
damaged IDX headers. Every folder is generated in tmp_path."""

import faulthandler
import io
import logging
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from trainer import data
from trainer.config import Config
from trainer.data import corrupt
from trainer.errors import UserError
from trainer.experiment import Experiment
from trainer.loop.strategy import make_strategy

CLASSES = ("ant", "bee")
SPLIT_DIRS = {"train": "train", "eval": "test"}


def _write_folder(root, per_class=(4, 3)):
    """JPEG and PNG files of 10x12 px, every one distinct: class k is a flat 100 * k with the
    file number in pixel (0, 0)."""
    for split, n in zip(("train", "test"), per_class):
        for label, name in enumerate(CLASSES):
            directory = root / split / name
            directory.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = np.full((10, 12, 3), 100 * label, np.uint8)
                pixels[0, 0] = 10 * i + 1
                suffix = "png" if i % 2 else "jpg"
                Image.fromarray(pixels).save(directory / f"{i:02d}.{suffix}", quality=95)
    return root


def _config(root, **changes):
    base = dict(model_dir="/tmp/unused", dataset=f"folder:{root}", image_size=8, seed=3)
    return Config(**{**base, **changes})


def _jpeg(size=40):
    pixels = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return tf.io.encode_jpeg(pixels).numpy()


def _make_bad(path: pathlib.Path, kind: str) -> None:
    if kind == "not_an_image":
        path.write_bytes(b"not an image, just text")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "directory":
        path.mkdir()
    elif kind == "symlink_loop":
        os.symlink(path.name, path)  # x.jpg -> x.jpg: opening it loops
    elif kind == "truncated_jpeg":
        jpeg = _jpeg()
        path.write_bytes(jpeg[: len(jpeg) // 2])
    else:
        raise AssertionError(kind)


# What each kind is called in the message (the start-up check's reason).
REASONS = {
    "not_an_image": "not a JPEG, PNG, GIF or BMP file (it starts with 6e 6f 74 20",
    "empty": "an empty file (0 bytes)",
    "directory": "a directory, not a file",
    "symlink_loop": "cannot open it (Too many levels of symbolic links)",
    "truncated_jpeg": "it does not decode (truncated or damaged)",
}


def _batches(source, count=4, batch=3):
    train = list(source.train_dataset(batch).take(count).as_numpy_iterator())
    return train, list(source.eval_dataset(batch).as_numpy_iterator())


def _same(a, b):
    assert len(a) == len(b)
    return all(np.array_equal(x[0], y[0]) and np.array_equal(x[1], y[1]) for x, y in zip(a, b))


# Found at start-up -----------------------------------------------------------------------------


@pytest.mark.parametrize("split", ["train", "eval"])
@pytest.mark.parametrize("kind", list(REASONS))
def test_bad_file_on_demand_is_named_at_start_up_or_skipped_as_in_memory(
    tmp_path, caplog, kind, split
):
    root = _write_folder(tmp_path / "d")
    bad = root / SPLIT_DIRS[split] / "bee" / "zz_bad.jpg"
    _make_bad(bad, kind)
    with pytest.raises(UserError) as error:
        data.load(_config(root, cache="none"))
    message = str(error.value)
    assert message.startswith(f"--dataset=folder:{root}: cannot read image {bad}: {REASONS[kind]}")
    assert message.endswith("(remove it or pass --skip_corrupt)") and "\n" not in message
    with pytest.raises(UserError) as in_memory:  # the memory path's words
        data.load(_config(root, cache="memory"))
    assert str(in_memory.value) == message

    with caplog.at_level(logging.WARNING):
        lenient = data.load(_config(root, cache="none", skip_corrupt=True))
    info = lenient.info
    assert info.num_skipped == 1
    assert (info.num_train, info.num_eval) == (8, 6)  # the readable files
    assert f"skipped 1 unreadable images, e.g. {bad} ({REASONS[kind]}" in caplog.text
    # Left out at start-up, as --cache=memory leaves it out: the same batches, bit for bit.
    held = data.load(_config(root, cache="memory", skip_corrupt=True))
    for on_demand, in_memory in zip(_batches(lenient), _batches(held)):
        assert _same(on_demand, in_memory)
    assert lenient.skipped_on_read == []  # nothing left to find at run time


def test_one_line_exit_2_before_training_for_a_bad_file_in_the_test_split(tmp_path):
    root = _write_folder(tmp_path / "d")
    bad = root / "test" / "ant" / "broken.png"
    _make_bad(bad, "empty")
    model_dir = tmp_path / "run"
    repo = pathlib.Path(__file__).resolve().parents[1]
    args = [
        f"--model_dir={model_dir}",
        f"--dataset=folder:{root}",
        "--cache=none",
        "--model=resnet8",
        "--weights=none",
        "--image_size=8",
        "--global_batch_size=4",
        "--epochs=1",
        "--progress=false",
    ]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run(
        [sys.executable, "run_train.py", *args],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"run_train.py: error: --dataset=folder:{root}: cannot read image {bad}: "
        "an empty file (0 bytes) (remove it or pass --skip_corrupt)"
    ]


def _encoded(kind):
    pixels = np.random.default_rng(1).integers(0, 256, (30, 30, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=kind)
    return buffer.getvalue()


@pytest.mark.parametrize("kind", ["JPEG", "PNG", "GIF", "BMP"])
def test_start_up_check_reads_the_ends_and_decodes_only_what_looks_truncated(tmp_path, kind):
    whole = _encoded(kind)
    paths = {
        "whole": tmp_path / "whole",
        "truncated": tmp_path / "truncated",
        "trailing": tmp_path / "trailing",
    }
    paths["whole"].write_bytes(whole)
    paths["truncated"].write_bytes(whole[: len(whole) * 3 // 4])
    paths["trailing"].write_bytes(whole + b"\x01" * 200)  # bytes after the end: decodes
    assert corrupt.check_file(str(paths["whole"])) == (None, True)
    assert corrupt.check_file(str(paths["truncated"])) == (None, False)
    bad = corrupt.check_files([str(p) for p in paths.values()])
    assert bad == {1: "it does not decode (truncated or damaged)"}


# Named at run time -----------------------------------------------------------------------------


def _damaged_jpeg(path):
    """Passes the start-up check (JPEG start, end marker) but does not decode."""
    path.write_bytes(_jpeg()[:300] + b"\xff\xd9")


def _damage_after_listing(root, split, **changes):
    """(the loaded Data, the damaged file): the damage is done after the start-up check, or
    passes it, so only decoding finds it."""
    source = data.load(_config(root, cache="none", **changes))
    bad = root / SPLIT_DIRS[split] / "ant" / "01.png"
    _damaged_jpeg(bad)
    return source, bad


def _expected(root, bad):
    hint = "(remove it or pass --skip_corrupt)"
    return f"--dataset=folder:{root}: cannot read or decode image {bad} {hint}"


@pytest.mark.parametrize("split", ["train", "eval"])
def test_file_that_only_decoding_finds_is_a_one_line_user_error(tmp_path, split):
    root = _write_folder(tmp_path / "d")
    source, bad = _damage_after_listing(root, split)
    # Iterating the dataset raises TensorFlow's error; user_error is its one line.
    dataset = source.train_dataset(8) if split == "train" else source.eval_dataset(8)
    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        list(dataset.take(2).as_numpy_iterator())
    named = corrupt.user_error(error.value)
    assert isinstance(named, UserError) and str(named) == _expected(root, bad)
    assert named.names == str(bad)
    # as_numpy, which iterates itself, raises it directly.
    with pytest.raises(corrupt.UnreadableImageError) as error:
        source.as_numpy(split)
    assert str(error.value) == _expected(root, bad)


def test_damage_inside_a_file_passes_the_start_up_check_and_is_named_when_read(tmp_path):
    root = _write_folder(tmp_path / "d")
    _damaged_jpeg(root / "train" / "bee" / "zz.jpg")
    source = data.load(_config(root, cache="none"))  # its ends look right: it loads
    with pytest.raises(corrupt.UnreadableImageError, match="zz.jpg"):
        source.as_numpy("train")


@pytest.mark.parametrize("split", ["train", "eval"])
def test_skip_corrupt_skips_and_counts_what_only_decoding_finds(tmp_path, split):
    root = _write_folder(tmp_path / "d")
    source, bad = _damage_after_listing(root, split, skip_corrupt=True)
    train, evaluation = _batches(source, count=6, batch=4)
    assert source.skipped_on_read == [str(bad)]
    if split == "train":
        assert all(len(y) == 4 for _, y in train)  # its slot filled, the batch keeps its size
        assert sum(len(y) for _, y in evaluation) == 6
    else:
        assert sum(len(y) for _, y in evaluation) == 5  # evaluation drops it


def _tiny_model(num_classes):
    return keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Rescaling(1 / 255.0),
            keras.layers.Conv2D(2, 3),
            keras.layers.Flatten(),
            keras.layers.Dense(num_classes, name="head"),
        ]
    )


def _experiment(root, tmp_path, strategy):
    config = _config(
        root,
        model_dir=str(tmp_path / "run"),
        cache="none",
        global_batch_size=4,
        train_steps=8,
        steps_per_loop=8,
        progress=False,
    )
    return Experiment(config, strategy, model_fn=_tiny_model).build()


@pytest.mark.parametrize("replicas", [1, 2])
def test_compiled_loops_raise_invalid_argument_that_user_error_names(tmp_path, replicas):
    """What the trainer sees: the compiled train loop (over `distribute_datasets_from_function`
    with 2 replicas) and the compiled evaluation raise `tf.errors.InvalidArgumentError`;
    `corrupt.user_error` gives the line to print. Evaluation on 2 replicas hung in about 2
    runs of 3 while its iterator was made inside the tf.function (`strategy.pass_iterator`):
    it runs 3 times here, each pass traced once, under a watchdog that ends this worker
    process with a traceback instead of letting the suite hang."""
    root = _write_folder(tmp_path / "d")
    strategy = (
        make_strategy("one_device")
        if replicas == 1
        else make_strategy("mirrored", devices=["/cpu:0", "/cpu:1"])
    )
    experiment = _experiment(root, tmp_path, strategy)
    _damaged_jpeg(root / "train" / "bee" / "00.jpg")
    _damaged_jpeg(root / "test" / "bee" / "02.jpg")
    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        experiment.trainer.train(8)  # four epochs of 8 files: every file is read
    assert str(corrupt.user_error(error.value)) == _expected(root, root / "train/bee/00.jpg")
    faulthandler.dump_traceback_later(120, exit=True)
    try:
        for _ in range(3):
            with pytest.raises(tf.errors.InvalidArgumentError) as error:
                experiment.evaluator.evaluate()
            expected = _expected(root, root / "test/bee/02.jpg")
            assert str(corrupt.user_error(error.value)) == expected
    finally:
        faulthandler.cancel_dump_traceback_later()
    assert experiment.evaluator._loop._fn.experimental_get_tracing_count() == 1


@pytest.mark.parametrize("replicas", [1, 2])
def test_an_input_error_mid_loop_leaves_the_step_count_equal_to_the_updates(replicas):
    """Batch 3 of 6 fails to decode inside the compiled loop: the optimizer's iterations (the
    run's global step, which the schedule and checkpoints read) is 3, and the weights are those
    of 3 clean steps. Before, the failing step's `iterations += 1` did not wait for its
    gradients and ran anyway: 4 steps counted, 3 made."""
    from tests.helpers import two_replicas
    from trainer.loop.compiled import TrainLoop

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(24, 4)).astype("float32"), np.arange(24) % 3

    def batches(fail_at):
        ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(4).enumerate()
        poison = lambda i, b: (  # noqa: E731  (an inf where the bad image would be)
            tf.debugging.check_numerics(b[0] * tf.where(i == fail_at, np.inf, 1.0), "decode"),
            b[1],
        )
        return ds.map(poison)

    strategy = two_replicas() if replicas == 2 else make_strategy("one_device")
    kernels, counts = [], []
    for fail_at, steps in [(None, 3), (3, 6)]:
        with strategy.scope():
            keras.utils.set_random_seed(0)
            model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="head")])
            optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
            optimizer.build(model.trainable_variables)
        loop = TrainLoop(strategy, model, optimizer, 4)
        iterator = iter(strategy.experimental_distribute_dataset(batches(fail_at or -1)))
        if fail_at is None:
            loop.run(iterator, steps, model.trainable_variables)
        else:
            with pytest.raises(tf.errors.InvalidArgumentError, match="decode"):
                loop.run(iterator, steps, model.trainable_variables)
        counts.append(int(optimizer.iterations.numpy()))
        kernels.append(model.get_layer("head").kernel.numpy())
    assert counts == [3, 3]
    np.testing.assert_array_equal(kernels[1], kernels[0])


def test_user_error_recognizes_only_the_pipelines_unreadable_images():
    names = tf.constant(["cifar10 train #3", "f.tfrecord-00001 record 7"])

    def failing(slot):
        check = tf.debugging.Assert(slot < 0, ["a decode error"])
        with tf.control_dependencies([check]):
            return slot, tf.zeros([4, 4, 3])

    failures = corrupt.ReadFailures("--dataset=cifar10", skip=False)

    @tf.function  # as in the pipelines: tf.debugging.Assert words its eager errors otherwise
    def read():
        examples = tf.data.Dataset.range(2).map(lambda i: failing(tf.cast(i, tf.int32)))
        return corrupt.decode_batch(examples, names, tf.constant([0, 1]), 4, failures, fill=True)

    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        read()
    assert str(corrupt.user_error(error.value)) == (
        "--dataset=cifar10: cannot read or decode image cifar10 train #3, "
        "f.tfrecord-00001 record 7 (remove it or pass --skip_corrupt)"
    )
    with pytest.raises(tf.errors.InvalidArgumentError) as other:
        tf.debugging.Assert(False, ["something else"])
    assert corrupt.user_error(other.value) is None
    assert corrupt.user_error(ValueError("cannot read or decode image x")) is None
    with pytest.raises(tf.errors.InvalidArgumentError), corrupt.user_errors():
        raise other.value  # passes unchanged


# One class -------------------------------------------------------------------------------------


def test_one_class_npz_and_folder_are_user_errors(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (6, 5, 5), dtype=np.uint8)
    path = tmp_path / "one.npz"
    zeros = np.zeros(6, np.int64)
    np.savez(path, x_train=x, y_train=zeros, x_test=x[:2], y_test=zeros[:2])
    with pytest.raises(UserError) as error:
        data.load(_config("", dataset=f"npz:{path}"))
    assert str(error.value) == (
        f"--dataset=npz:{path}: has one class (0); a classifier needs at least 2 "
        "(as --num_classes does)"
    )
    named = tmp_path / "named.npz"
    labels = np.ones(6, np.int64)  # three class names, but the training labels are all "b"
    names = np.array(["a", "b", "c"])
    np.savez(named, x_train=x, y_train=labels, x_test=x[:2], y_test=labels[:2], class_names=names)
    with pytest.raises(UserError, match=r"has one class \(b\) in its train split \(of 3 class"):
        data.load(_config("", dataset=f"npz:{named}"))

    root = tmp_path / "folder"
    for split in ("train", "test"):
        (root / split / "cat").mkdir(parents=True)
        Image.fromarray(x[0]).save(root / split / "cat" / "0.png")
    for cache in ("none", "memory"):
        with pytest.raises(UserError) as error:
            data.load(_config(root, cache=cache))
        assert str(error.value).startswith(f"--dataset=folder:{root}: has one class (cat); ")
    (root / "train" / "dog").mkdir()  # a second class without a training image
    with pytest.raises(UserError, match=r"has one class \(cat\) in its train split \(of 2"):
        data.load(_config(root))


# IDX headers -----------------------------------------------------------------------------------


def _idx(path, magic, dims, payload):
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)
    path.write_bytes(header + payload)


def test_idx_dimension_of_0xffffffff_is_named_not_multiplied(tmp_path):
    _idx(tmp_path / "train-images-idx3-ubyte", 0x803, (0xFFFFFFFF, 2, 3), bytes(12))
    _idx(tmp_path / "train-labels-idx1-ubyte", 0x801, (2,), bytes(2))
    _idx(tmp_path / "t10k-images-idx3-ubyte", 0x803, (1, 2, 3), bytes(6))
    _idx(tmp_path / "t10k-labels-idx1-ubyte", 0x801, (0xFFFFFFFF,), bytes(1))
    spec = f"idx:{tmp_path}"
    with pytest.raises(UserError) as error:
        data.load(_config("", dataset=spec))
    images = tmp_path / "train-images-idx3-ubyte"
    assert str(error.value) == (
        f"--dataset={spec}: {images}: its header says 4294967295 images, more than its 12 "
        "data bytes hold (header dimensions 4294967295, 2, 3)"
    )
    _idx(images, 0x803, (2, 0xFFFFFFFF, 3), bytes(12))
    with pytest.raises(UserError, match="says 4294967295 rows, more than its 12 data bytes"):
        data.load(_config("", dataset=spec))
    _idx(images, 0x803, (2, 2, 3), bytes(12))
    with pytest.raises(UserError) as error:
        data.load(_config("", dataset=spec))
    labels = tmp_path / "t10k-labels-idx1-ubyte"
    assert f"{labels}: its header says 4294967295 labels, more than its 1 data" in str(error.value)
    assert "12884901887" not in str(error.value)
