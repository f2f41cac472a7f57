"""Data of any size: folders and TFDS read on demand, per-worker shares, cache policy, full
resolution.

Tiny generated images; every assertion is on real TensorFlow pipelines.
"""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from tests import helpers
from trainer import data
from trainer.config import Config
from trainer.data import images as image_ops
from trainer.errors import UserError
from trainer.loop.strategy import distribute_dataset, make_strategy

CLASSES = ("ant", "bee", "cow")


def _write_folder(root, per_class=4, size=(20, 24), start=0, splits=("train", "test")):
    """JPEG and PNG files: class k is a flat color 80 * k with one random pixel, and a file
    number stamped in pixel (1, 1) so every image is distinct."""
    rng = np.random.default_rng(start)
    for split in splits:
        for label, name in enumerate(CLASSES):
            directory = root / split / name
            directory.mkdir(parents=True, exist_ok=True)
            for i in range(start, start + per_class):
                pixels = np.full((*size, 3), 80 * label, np.uint8)
                pixels[0, 0] = rng.integers(0, 255, 3)
                pixels[1, 1] = i * 7 % 256
                suffix = "png" if i % 2 else "jpg"
                Image.fromarray(pixels).save(directory / f"{i:03d}.{suffix}", quality=95)
    return root


def _config(root, **changes):
    base = dict(model_dir="/tmp/unused", dataset=f"folder:{root}", image_size=16, seed=4)
    return Config(**{**base, **changes})


def _batches(source, batch_size, count, **kwargs):
    return list(source.train_dataset(batch_size, **kwargs).take(count).as_numpy_iterator())


def _same(a, b):
    assert len(a) == len(b)
    return all(np.array_equal(x[0], y[0]) and np.array_equal(x[1], y[1]) for x, y in zip(a, b))


# Folder read on demand -------------------------------------------------------------------------


def test_folder_on_demand_keeps_only_the_listing_and_ignores_later_files(tmp_path):
    root = _write_folder(tmp_path)
    # The start-up check (first and last bytes, no decode) leaves a corrupt file out.
    (root / "train" / "bee" / "zzz.jpg").write_bytes(b"not an image")
    source = data.load(_config(root, cache="none", skip_corrupt=True))
    assert (source.info.num_train, source.info.num_eval, source.info.num_skipped) == (12, 12, 1)
    _write_folder(root, per_class=2, start=50)  # added after the listing: never read
    images = np.concatenate([b[0] for b in _batches(source, 12, 3, augment=False)])
    # 3 epochs of the 12 listed files.
    assert len(images) == 36 and len({x.tobytes() for x in images}) == 12
    assert source.skipped_on_read == []
    eval_labels = np.concatenate([y for _, y in source.eval_dataset(5).as_numpy_iterator()])
    np.testing.assert_array_equal(eval_labels, np.repeat([0, 1, 2], 4))


def test_deleted_file_is_named_or_skipped_counted_and_others_keep_their_place(tmp_path):
    root = _write_folder(tmp_path)
    strict = data.load(_config(root, cache="none"))
    lenient = data.load(_config(root, cache="none", skip_corrupt=True))
    before = _batches(lenient, 4, 6)
    victim = root / "train" / "cow" / "001.png"
    victim.unlink()  # mid-run
    with pytest.raises(tf.errors.InvalidArgumentError, match=str(victim)) as error:
        _batches(strict, 4, 6)
    assert "--skip_corrupt" in str(error.value)
    after = _batches(lenient, 4, 6)
    assert lenient.skipped_on_read == [str(victim)]
    changed = 0
    for (x0, y0), (x1, _) in zip(before, after):
        assert x1.shape == x0.shape  # batches keep their size
        for slot in range(len(y0)):
            if not np.array_equal(x0[slot], x1[slot]):
                changed += 1
                # The slot holds a copy of another example of the same batch.
                assert any(np.array_equal(x1[slot], x1[j]) for j in range(4) if j != slot)
    assert changed == 2  # each of the two epochs (3 steps of 4) visits the file once


def test_memory_does_not_grow_with_the_images(tmp_path):
    small = data.load(_config(_write_folder(tmp_path / "s", per_class=4), cache="none"))
    large = data.load(
        _config(_write_folder(tmp_path / "l", per_class=40, size=(64, 96)), cache="none")
    )
    in_memory = data.load(_config(tmp_path / "l", cache="memory"))
    per_small = small.nbytes / (small.info.num_train + small.info.num_eval)
    per_large = large.nbytes / (large.info.num_train + large.info.num_eval)
    # File name ("cow/001.png": 11 bytes) and label (4 bytes) per image, whatever its size.
    assert per_small == per_large == 15
    on_disk = sum(p.stat().st_size for p in (tmp_path / "l").rglob("*.*"))
    assert in_memory.nbytes > on_disk  # the encoded files themselves


@pytest.mark.parametrize("image_size", [16, 160])  # small-data path, full-resolution path
def test_cache_policies_give_identical_batches(tmp_path, image_size):
    root = _write_folder(tmp_path)
    loads = [data.load(_config(root, cache=c, image_size=image_size)) for c in ("memory", "none")]
    assert loads[0].nbytes > 20 * loads[1].nbytes
    train = [_batches(source, 4, 4, start_step=2) for source in loads]
    assert _same(*train)
    evals = [list(source.eval_dataset(5).as_numpy_iterator()) for source in loads]
    assert [len(b[1]) for b in evals[0]] == [5, 5, 2] and _same(*evals)


def test_auto_cache_holds_small_splits_and_lists_large_ones(tmp_path, monkeypatch):
    root = _write_folder(tmp_path)
    auto = data.load(_config(root))
    assert auto.nbytes == data.load(_config(root, cache="memory")).nbytes
    # 12 train images of 20x24x3 = 17,280 decoded bytes: over a 10,000-byte budget.
    monkeypatch.setattr(data.sources, "CACHE_BUDGET_BYTES", 10_000)
    assert data.load(_config(root)).nbytes == data.load(_config(root, cache="none")).nbytes


@pytest.mark.parametrize("start_step", [1, 3, 7])
def test_folder_resume_at_step_equals_tail(tmp_path, start_step):
    source = data.load(_config(_write_folder(tmp_path), cache="none", image_size=160))
    full = _batches(source, 4, 9)
    tail = _batches(source, 4, 9 - start_step, start_step=start_step)
    assert _same(full[start_step:], tail)


def _run(base, model_dir, train_steps):
    """Trains `base` (a Config read on demand) to `train_steps`, resuming from model_dir."""
    config = dataclasses.replace(
        base,
        model_dir=str(model_dir),
        global_batch_size=4,
        train_steps=train_steps,
        first_cycle_steps=2,
        steps_per_loop=2,
        checkpoint_every_steps=3,
        progress=False,
    )
    experiment, _ = helpers.trained(config)
    return experiment


def _interrupted_equals_straight(base, tmp_path):
    straight = _run(base, tmp_path / "straight", 7)
    _run(base, tmp_path / "resumed", 5)  # stops mid-epoch (3 steps an epoch), checkpoint at 5
    resumed = _run(base, tmp_path / "resumed", 7)
    assert int(resumed.optimizer.iterations.numpy()) == 7
    for a, b in zip(straight.model.weights, resumed.model.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    return resumed


def test_streaming_folder_run_interrupted_and_resumed_equals_straight_through(tmp_path):
    root = _write_folder(tmp_path / "data")
    _interrupted_equals_straight(_config(root, cache="none", image_size=8), tmp_path)


# TFDS read on demand --------------------------------------------------------------------------


class LrtechTinyImages(tfds.core.GeneratorBasedBuilder):
    """A real TFDS dataset of 13 train and 5 test random 8x10 images, prepared in a tmp dir."""

    VERSION = tfds.core.Version("1.0.0")
    code_path = None  # no checksums or metadata files beside this test module

    def _info(self):
        features = {
            "image": tfds.features.Image(shape=(8, 10, 3)),
            "label": tfds.features.ClassLabel(names=CLASSES),
        }
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(features),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(13, 0), "test": self._generate_examples(5, 1)}

    def _generate_examples(self, n, seed):
        rng = np.random.default_rng(seed)
        for i in range(n):
            image = rng.integers(0, 256, (8, 10, 3), dtype=np.uint8)
            yield i, {"image": image, "label": (i * 7 + seed) % 3}


class LrtechTinyPhotos(LrtechTinyImages):
    """JPEG images of varying sizes: held encoded, full-resolution path at image_size >= 128."""

    def _info(self):
        features = {
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
            "label": tfds.features.ClassLabel(names=CLASSES),
        }
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(features),
            supervised_keys=("image", "label"),
        )

    def _generate_examples(self, n, seed):
        rng = np.random.default_rng(seed)
        for i in range(n):
            shape = (int(rng.integers(12, 20)), int(rng.integers(12, 20)), 3)
            image = rng.integers(0, 256, shape, dtype=np.uint8)
            yield i, {"image": image, "label": (i * 7 + seed) % 3}


@pytest.fixture(scope="module")
def tfds_dirs(tmp_path_factory):
    """{file format: data_dir} of the tiny dataset prepared as ArrayRecord and as TFRecord."""
    dirs = {}
    for file_format in ("array_record", "tfrecord"):
        data_dir = str(tmp_path_factory.mktemp(file_format))
        builder = LrtechTinyImages(data_dir=data_dir, file_format=file_format)
        # Three TFRecord files (4, 5 and 4 train records): the stream interleaves files.
        shards = 3 if file_format == "tfrecord" else None
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(num_shards=shards)
        )
        dirs[file_format] = data_dir
    data_dir = str(tmp_path_factory.mktemp("photos"))
    LrtechTinyPhotos(data_dir=data_dir, file_format="array_record").download_and_prepare()
    dirs["photos"] = data_dir
    return dirs


def _tfds_config(data_dir, **changes):
    base = dict(dataset="lrtech_tiny_images", data_dir=data_dir, image_size=8)
    return _config("", **{**base, **changes})


def test_tfds_random_access_keeps_labels_only_and_equals_memory(tfds_dirs):
    loads = [
        data.load(_tfds_config(tfds_dirs["array_record"], cache=c)) for c in ("memory", "none")
    ]
    memory, none = loads
    assert memory._train.images.shape == (13, 8, 10, 3) and memory._train.source is None
    assert none._train.images is None and none._train.source is not None
    assert none.nbytes == (13 + 5) * 4  # the int32 labels: no image in memory
    np.testing.assert_array_equal(none._train.labels, memory._train.labels)
    # TFDS shuffles the examples when preparing; the class counts are the generator's.
    np.testing.assert_array_equal(np.bincount(none._train.labels), [5, 4, 4])
    train = [_batches(source, 4, 7, start_step=2) for source in loads]
    assert _same(*train)
    evals = [list(source.eval_dataset(2).as_numpy_iterator()) for source in loads]
    assert [len(b[1]) for b in evals[1]] == [2, 2, 1] and _same(*evals)
    # The order is the index stream's: batch 0 is the training split at the first indices.
    first = next(iter(none.train_indices(4)))
    assert int(first[2]) in range(13)


def test_tfds_random_access_full_resolution_equals_memory(tfds_dirs):
    config = _tfds_config(tfds_dirs["photos"], dataset="lrtech_tiny_photos", image_size=128)
    memory, none = (data.load(dataclasses.replace(config, cache=c)) for c in ("memory", "none"))
    assert memory._train.encoded and memory._train.images.dtype == object  # JPEG bytes
    assert none._train.images is None and none.info.image_shape == (None, None, 3)
    train = [_batches(source, 4, 3, start_step=1) for source in (memory, none)]
    assert train[0][0][0].shape == (4, 128, 128, 3) and _same(*train)
    evals = [list(source.eval_dataset(4).as_numpy_iterator()) for source in (memory, none)]
    assert _same(*evals)


@pytest.mark.parametrize("start_step", [1, 4])
def test_tfds_random_access_resume_at_step_equals_tail(tfds_dirs, start_step):
    source = data.load(_tfds_config(tfds_dirs["array_record"], cache="none"))
    full = _batches(source, 4, 7)
    assert not np.array_equal(full[0][0], full[3][0])  # augmented, epochs differ
    tail = _batches(source, 4, 7 - start_step, start_step=start_step)
    assert _same(full[start_step:], tail)


def test_tfds_auto_reads_on_demand_above_the_budget(tfds_dirs, monkeypatch):
    config = _tfds_config(tfds_dirs["array_record"])
    assert data.load(config)._train.images is not None  # 13 * 240 bytes: in memory
    monkeypatch.setattr(data.sources, "CACHE_BUDGET_BYTES", 1000)
    assert data.load(config).nbytes == (13 + 5) * 4


# TFDS TFRecord read as a stream -----------------------------------------------------------------


def _stream(tfds_dirs, **changes):
    return data.load(_tfds_config(tfds_dirs["tfrecord"], cache="none", **changes))


@pytest.mark.parametrize("cache", ["none", "auto"])
def test_tfds_tfrecord_above_memory_is_streamed_from_its_files(tfds_dirs, monkeypatch, cache):
    monkeypatch.setattr(data.sources, "CACHE_BUDGET_BYTES", 1000)  # 13 * 240 bytes: too many
    held = data.load(_tfds_config(tfds_dirs["tfrecord"], cache="memory"))
    stream = data.load(_tfds_config(tfds_dirs["tfrecord"], cache=cache))
    assert held._train.images.shape == (13, 8, 10, 3)
    records = stream._train.records
    assert stream.nbytes == 0 and stream._train.images is None  # only the file list
    assert records.take == (4, 5, 4) and len(set(records.files)) == 3
    assert (stream.info.num_train, stream.info.num_eval) == (13, 5)
    assert stream.info.class_names == CLASSES
    # Evaluation reads the files in order: the memory load's order.
    evals = [list(source.eval_dataset(2).as_numpy_iterator()) for source in (held, stream)]
    assert [len(b[1]) for b in evals[1]] == [2, 2, 1] and _same(*evals)
    x, y = stream.as_numpy("train")
    np.testing.assert_array_equal(x, held.as_numpy("train")[0])
    with pytest.raises(UserError, match="has no indices"):
        stream.train_indices(4)


def test_stream_evaluation_shards_as_the_index_pipelines_do(tfds_dirs):
    # 13 eval examples (the train split), 2 pipelines x 2 replicas x 2: global batches of 8.
    held, stream = (
        data.load(_tfds_config(tfds_dirs["tfrecord"], cache=c, eval_split="train"))
        for c in ("memory", "none")
    )
    assert stream._eval.records is not None and held._eval.images is not None
    sizes = []
    for i in range(2):
        context = tf.distribute.InputContext(2, i, 4)
        parts = [
            list(source.eval_dataset(2, input_context=context).as_numpy_iterator())
            for source in (held, stream)
        ]
        assert _same(*parts)
        sizes.append([len(labels) for _, labels in parts[1]])
    # Pipeline 0: [0,2) [2,4) | [8,10) [10,12); pipeline 1: [4,6) [6,8) | [12,13) and empty.
    assert sizes == [[2, 2, 2, 2], [2, 2, 1, 0]]


def _identities(images):
    """Each example's image as bytes: the tiny dataset's images are all distinct."""
    return [image.tobytes() for image in images]


def test_stream_epochs_visit_every_record_once_in_new_orders(tfds_dirs):
    source = _stream(tfds_dirs, augment=False)
    everything = sorted(_identities(source.as_numpy("train")[0]))
    assert len(set(everything)) == 13
    batches = _batches(source, 13, 3)  # one batch of 13 = one epoch of the one pipeline
    epochs = [_identities(images) for images, _ in batches]
    for epoch in epochs:
        assert sorted(epoch) == everything
    assert epochs[0] != epochs[1] != epochs[2]  # files and buffer reshuffled per epoch
    assert _same(batches, _batches(_stream(tfds_dirs, augment=False), 13, 3))  # deterministic
    other_seed = _batches(_stream(tfds_dirs, augment=False, seed=5), 13, 1)
    assert _identities(other_seed[0][0]) != epochs[0]


def test_stream_does_not_depend_on_the_global_seed(tfds_dirs):
    # run_train.py sets the global seed to --seed (0 by default); tf.data's own shuffle
    # would follow it, and fail for a tensor seed when it is 0.
    batches = []
    for global_seed in (0, 123):
        tf.random.set_seed(global_seed)
        batches.append(_batches(_stream(tfds_dirs, seed=0), 4, 5))
    assert _same(*batches)


@pytest.mark.parametrize("start_step", [1, 4, 7])
def test_stream_resume_at_step_equals_tail(tfds_dirs, start_step):
    source = _stream(tfds_dirs)
    full = _batches(source, 4, 10)
    assert not np.array_equal(full[0][0], full[4][0])
    # 13 records, 4 a step: step 4 starts 3 records into the second epoch, step 7 2 into the third.
    tail = _batches(source, 4, 10 - start_step, start_step=start_step)
    assert _same(full[start_step:], tail)


@pytest.mark.parametrize("pipelines,files", [(2, [[0, 2], [1]]), (5, None)])
def test_stream_pipelines_read_disjoint_shares_of_the_files(tfds_dirs, pipelines, files):
    source = _stream(tfds_dirs, augment=False)
    records = source._train.records
    everything = sorted(_identities(source.as_numpy("train")[0]))
    seen = []
    for i in range(pipelines):
        context = tf.distribute.InputContext(pipelines, i, pipelines)
        mine, every, first = records.share(i, pipelines)
        n = records.pipeline_examples(i, pipelines)
        if files is not None:  # file i goes to pipeline i mod W
            assert mine.files == tuple(records.files[f] for f in files[i]) and every == 1
        else:  # fewer files than pipelines: each keeps every W-th record
            assert mine == records and (every, first) == (5, i)
        one_epoch = _batches(source, n, 1, input_context=context)[0][0]
        seen += _identities(one_epoch)
    assert sorted(seen) == everything  # together the pipelines read each record once


def test_stream_replicas_of_one_pipeline_take_the_global_batch_in_order(tfds_dirs):
    source = _stream(tfds_dirs)
    context = tf.distribute.InputContext(1, 0, 2)  # one worker, 2 replicas of 2 examples
    halves = _batches(source, 2, 8, start_step=3, input_context=context)
    for step, (images, labels) in enumerate(_batches(source, 4, 4, start_step=3)):
        np.testing.assert_array_equal(
            np.concatenate([h[0] for h in halves[2 * step : 2 * step + 2]]), images
        )
        np.testing.assert_array_equal(
            np.concatenate([h[1] for h in halves[2 * step : 2 * step + 2]]), labels
        )


def test_streamed_tfds_run_interrupted_and_resumed_equals_straight_through(tfds_dirs, tmp_path):
    # Checkpoint at step 5: 20 records in, 7 into the stream's second epoch.
    base = _tfds_config(tfds_dirs["tfrecord"], cache="none")
    resumed = _interrupted_equals_straight(base, tmp_path)
    assert resumed.data._train.records is not None


def _corrupt_one_train_record(data_dir, tmp_path):
    """A copy of the TFRecord-prepared dataset whose second file's record 1 has an image
    that does not decode; returns (data_dir, the record's name)."""
    import shutil

    copy = tmp_path / "corrupt"
    shutil.copytree(data_dir, copy)
    (path,) = [p for p in copy.rglob("*train.tfrecord-00001-of-00003")]
    records = [r.numpy() for r in tf.data.TFRecordDataset(str(path))]
    example = tf.train.Example.FromString(records[1])
    example.features.feature["image"].bytes_list.value[0] = b"\x89PNG not an image"
    records[1] = example.SerializeToString()
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record)
    return str(copy), f"{path.name} record 1"


def test_stream_names_an_image_that_does_not_decode_or_skips_it_in_place(tfds_dirs, tmp_path):
    data_dir, name = _corrupt_one_train_record(tfds_dirs["tfrecord"], tmp_path)
    clean = _batches(_stream(tfds_dirs, augment=False), 13, 1)[0]
    config = _tfds_config(data_dir, cache="none", augment=False)
    with pytest.raises(
        tf.errors.InvalidArgumentError, match=f"cannot read or decode image.*{name}"
    ):
        _batches(data.load(config), 13, 1)
    skipping = data.load(dataclasses.replace(config, skip_corrupt=True))
    images, labels = _batches(skipping, 13, 1)[0]
    assert skipping.skipped_on_read == [name]
    # The bad slot holds a copy of another image of the batch; the other 12 keep their place.
    same = [np.array_equal(a, b) for a, b in zip(images, clean[0])]
    assert (
        sum(same) == 12 and _identities(images).count(_identities(images)[same.index(False)]) == 2
    )
    np.testing.assert_array_equal(
        np.delete(labels, same.index(False)), np.delete(clean[1], same.index(False))
    )
    assert len(skipping.as_numpy("train")[1]) == 12  # evaluation drops it


def test_every_pipeline_sets_the_documented_tf_data_options(tmp_path, tfds_dirs):
    folder = data.load(_config(_write_folder(tmp_path), cache="none"))
    datasets = [
        folder.train_dataset(4),
        folder.eval_dataset(4),
        data.load(_config("", dataset="synthetic", synthetic_train_size=8)).train_dataset(4),
        _stream(tfds_dirs).train_dataset(4),
        _stream(tfds_dirs).eval_dataset(4),
    ]
    for dataset in datasets:
        options = dataset.options()
        assert options.deterministic is True
        assert options.autotune.enabled is False  # no iterator waits for its model thread
        assert options.threading.max_intra_op_parallelism == 1


def test_distributed_iterators_are_not_checkpointable():
    """Why the TFRecord stream resumes by re-reading instead of saving iterator state
    (docs/DATA.md): TensorFlow 2.21's distributed iterators are not trackable. When this
    fails, a TensorFlow release made them checkpointable: revisit the stream's resume."""
    strategy = make_strategy("one_device")
    dataset = tf.data.Dataset.range(8).batch(2)
    iterator = iter(distribute_dataset(strategy, dataset))
    with pytest.raises(ValueError, match="expecting data to be a trackable object"):
        tf.train.Checkpoint(data=iterator)
    assert tf.train.Checkpoint(data=iter(dataset))  # a plain tf.data iterator is


# A registered TFDS dataset under tfds.testing.mock_data ------------------------------------------


@pytest.fixture
def mocked_tfds(monkeypatch):
    """`tfds.testing.mock_data` of 20 generated examples per split.

    TFDS 4.9's mock gives its random-access source a `__getitems__` that is not bound to the
    mock (it fails for any batch read); bound here, it returns what `__getitem__` returns.
    """
    from tensorflow_datasets.testing import mocking

    unbound = mocking._getitems
    monkeypatch.setattr(
        mocking,
        "_getitems",
        lambda record_keys, generator, serialized=False: unbound(
            None, record_keys, generator, serialized
        ),
    )
    with tfds.testing.mock_data(num_examples=20):
        yield


@pytest.mark.parametrize("cache", ["memory", "none"])
def test_registered_tfds_dataset_loads_and_trains_under_mock_data(mocked_tfds, tmp_path, cache):
    config = _config(
        "",
        dataset="mnist",
        data_dir=str(tmp_path / "never_prepared"),
        cache=cache,
        image_size=8,
        model_dir=str(tmp_path / "run"),
        global_batch_size=4,
        train_steps=4,
        first_cycle_steps=2,
        steps_per_loop=2,
        progress=False,
    )
    source = data.load(config)
    assert source.info.class_names == tuple(str(i) for i in range(10))
    assert (source.info.num_train, source.info.num_eval) == (20, 20)
    assert source.info.image_shape == (28, 28, 3)  # grayscale MNIST as RGB
    if cache == "memory":
        assert source._train.images.shape == (20, 28, 28, 3)
    else:  # the random-access path: labels only
        assert source._train.images is None and source.nbytes == 2 * 20 * 4
    full = _batches(source, 4, 6)
    assert full[0][0].shape == (4, 8, 8, 3) and full[0][1].dtype == np.int32
    assert all(0 <= int(y) < 10 for _, labels in full for y in labels)
    assert _same(full[2:], _batches(data.load(config), 4, 4, start_step=2))
    experiment, _ = helpers.trained(config)
    assert int(experiment.optimizer.iterations.numpy()) == 4
    assert experiment.evaluator.evaluate()["examples"] == 20


# Per-worker shares -----------------------------------------------------------------------------


def test_each_pipeline_reads_only_its_share(tmp_path):
    root = _write_folder(tmp_path)
    source = data.load(_config(root, cache="none", augment=False))
    # 2 pipelines (workers) x 2 local replicas x 2 examples: global batch 8.
    contexts = [tf.distribute.InputContext(2, i, 4) for i in range(2)]
    full = _batches(source, 8, 3, start_step=1)
    shares = [
        list(source.train_indices(2, start_step=1, input_context=c).take(8)) for c in contexts
    ]
    everything = list(source.train_indices(8, start_step=1).take(16))
    for step in range(2):
        union = shares[0][4 * step : 4 * step + 4] + shares[1][4 * step : 4 * step + 4]
        assert [tuple(t.numpy() for t in x) for x in union] == [
            tuple(t.numpy() for t in x) for x in everything[8 * step : 8 * step + 8]
        ]
    for i, context in enumerate(contexts):
        parts = _batches(source, 2, 6, start_step=1, input_context=context)
        for step in range(3):
            images = np.concatenate([parts[2 * step][0], parts[2 * step + 1][0]])
            np.testing.assert_array_equal(images, full[step][0][4 * i : 4 * i + 4])
    # Delete every file outside pipeline 0's share of the first step: it still reads that step,
    # pipeline 1 fails naming one of them.
    files = [str(root / "train" / f.decode()) for f in source._train.files]
    mine = {files[int(x[2])] for x in shares[0][:4]}
    for path in set(files) - mine:
        tf.io.gfile.remove(path)
    assert len(_batches(source, 2, 2, start_step=1, input_context=contexts[0])) == 2
    with pytest.raises(tf.errors.InvalidArgumentError, match="cannot read or decode image"):
        _batches(source, 2, 2, start_step=1, input_context=contexts[1])


def test_mirrored_replicas_take_the_global_batch_in_order(tmp_path):
    source = data.load(_config(_write_folder(tmp_path), cache="none"))
    strategy = helpers.two_replicas()

    def per_worker(context):
        return source.train_dataset(context.get_per_replica_batch_size(8), input_context=context)

    iterator = iter(distribute_dataset(strategy, per_worker))
    for images, labels in _batches(source, 8, 3):
        replicas = next(iterator)
        for value, expected in zip(replicas, (images, labels)):
            got = strategy.experimental_local_results(value)
            assert [len(g) for g in got] == [4, 4]  # replica 0 takes the first half
            np.testing.assert_array_equal(np.concatenate([g.numpy() for g in got]), expected)


# Full-resolution ops -----------------------------------------------------------------------------


def _jpeg(height=90, width=120):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    pixels[:10] = 0  # a dark top band
    return tf.io.encode_jpeg(tf.constant(pixels), quality=95)


def test_random_resized_crop_shapes_and_determinism():
    contents = _jpeg()
    seed = tf.constant([1, 2], tf.int64)
    out = image_ops.random_resized_crop(contents, 64, seed)
    assert out.shape == (64, 64, 3) and out.dtype == tf.float32
    assert 0.0 <= float(tf.reduce_min(out)) and float(tf.reduce_max(out)) <= 255.0
    np.testing.assert_array_equal(out, image_ops.random_resized_crop(contents, 64, seed))
    other = image_ops.random_resized_crop(contents, 64, tf.constant([1, 3], tf.int64))
    assert not np.array_equal(out, other)
    # Decoding the whole JPEG then cropping gives the same window (libjpeg may round the
    # partial-block edges differently by a few levels).
    whole = image_ops.random_resized_crop(contents, 64, seed, decode_whole=True)
    assert float(tf.reduce_mean(tf.abs(whole - out))) < 2.0
    png = tf.io.encode_png(tf.io.decode_jpeg(contents))
    assert image_ops.random_resized_crop(png, 48, seed).shape == (48, 48, 3)


def test_center_crop_takes_the_centered_fraction():
    contents = _jpeg()  # 90 x 120 with a dark top band of 10 rows
    full = image_ops.center_crop(contents, 32, 1.0)
    cropped = image_ops.center_crop(contents, 32, 0.5)
    assert full.shape == cropped.shape == (32, 32, 3)
    assert float(tf.reduce_mean(full[:2])) < 40  # the band is in the whole square's top
    assert float(tf.reduce_mean(cropped[:2])) > 80  # and out of the centered half
    assert image_ops.full_resolution(True, 128) and not image_ops.full_resolution(True, 64)
    assert not image_ops.full_resolution(False, 224)


# Bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change,message",
    [
        (dict(cache="disk"), "--cache=disk: must be one of auto, memory, none"),
        (dict(eval_crop=0.0), r"--eval_crop=0.0: must be in \(0, 1\]"),
        (dict(eval_crop=1.5), r"--eval_crop=1.5: must be in \(0, 1\]"),
        (dict(cache="none", dataset="cifar10"), "--dataset=cifar10: not prepared in"),
    ],
)
def test_bad_cache_or_eval_crop_is_a_user_error(tmp_path, change, message):
    with pytest.raises(UserError, match=message) as error:
        data.load(_config(tmp_path, data_dir=str(tmp_path), **change))
    assert "\n" not in str(error.value)
