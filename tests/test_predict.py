"""trainer.tools.predict on a tiny hand-weighted export and generated JPEG/PNG/BMP/GIF files."""

import csv
import dataclasses
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from tests import helpers
from trainer import runtime
from trainer.config import Config
from trainer.data import arrays, pipeline, sources
from trainer.errors import UserError
from trainer.tools import export_reader, predict
from trainer.tools.paths import check_output_file

ROOT = Path(__file__).resolve().parents[1]
SIZE = 16
CLASSES = ["a", "b", "c"]


def _model(num_classes=3):
    """Logit of class c = 10 * mean intensity of channel c: red -> a, green -> b, blue -> c."""
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    conv = keras.layers.Conv2D(4, 3, name="conv")
    x = keras.layers.GlobalAveragePooling2D()(conv(x))
    head = keras.layers.Dense(num_classes, name="head")
    model = keras.Model(inputs, head(x))
    kernel = np.zeros((3, 3, 3, 4), np.float32)
    for c in range(3):
        kernel[:, :, c, c] = 1 / 9
    conv.set_weights([kernel, np.zeros(4, np.float32)])
    dense = np.zeros((4, num_classes), np.float32)
    dense[:3, :3] = 10 * np.eye(3)
    head.set_weights([dense, np.zeros(num_classes, np.float32)])
    return model


def _write_export(model_dir, model, labels):
    export = model_dir / "export"
    export.mkdir(parents=True)
    model.save(export / "model.keras")
    (export / "labels.json").write_text(json.dumps(labels))


def _pixels(h, w, channel, seed):
    """Noise with one dominant channel, so the tiny model's top-1 class is known."""
    image = np.random.default_rng(seed).integers(0, 80, (h, w, 3))
    image[..., channel] += 150
    return image.astype(np.uint8)


def _bmp(image):
    """A 24-bit uncompressed BMP (bottom-up BGR rows padded to 4 bytes)."""
    h, w, _ = image.shape
    row = (3 * w + 3) // 4 * 4
    rows = np.zeros((h, row), np.uint8)
    rows[:, : 3 * w] = image[::-1, :, ::-1].reshape(h, 3 * w)
    size = 54 + rows.size
    header = b"BM" + np.array([size, 0, 54], "<u4").tobytes()
    info = np.array([40, w, h], "<i4").tobytes() + np.array([1, 24], "<u2").tobytes()
    info += np.array([0, rows.size, 2835, 2835, 0, 0], "<u4").tobytes()
    return header + info + rows.tobytes()


def _gif(frames):
    """An animated GIF; decoding keeps only the first frame (expand_animations=False)."""
    image_lib = pytest.importorskip("PIL.Image")
    out = io.BytesIO()
    pil = [image_lib.fromarray(f) for f in frames]
    pil[0].save(out, format="GIF", save_all=True, append_images=pil[1:])
    return out.getvalue()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """model_dir with export/, images/ (4 good files, nested) and bad/ (2 unreadable files)."""
    root = tmp_path_factory.mktemp("predict")
    _write_export(root / "run", _model(), {"class_names": CLASSES, "image_size": SIZE})
    images = root / "images"
    (images / "x" / "y").mkdir(parents=True)
    (images / "z").mkdir()
    jpeg = tf.io.encode_jpeg(_pixels(20, 30, 0, 1)).numpy()
    files = {
        images / "blue.bmp": _bmp(_pixels(40, 40, 2, 2)),
        images / "x" / "Red.JPG": jpeg,
        images / "x" / "y" / "green.png": tf.io.encode_png(_pixels(16, 16, 1, 3)).numpy(),
        images / "z" / "anim.gif": _gif([_pixels(24, 24, 1, 4), _pixels(24, 24, 0, 5)]),
    }
    (images / "notes.txt").write_text("not an image")
    bad = root / "bad"
    bad.mkdir()
    # A truncated JPEG makes libjpeg write to fd 2; random bytes are no format at all.
    files[bad / "a_truncated.jpg"] = jpeg[: len(jpeg) // 2]
    files[bad / "b_garbage.png"] = np.random.default_rng(0).bytes(300)
    for path, data in files.items():
        path.write_bytes(data)
    good = [str(p) for p in files if p.parent != bad]
    return root, sorted(good), sorted(str(p) for p in bad.iterdir())


def _expected_probs(model_path, files):
    """Softmax of the model's logits on the files decoded and resized as training evaluates."""
    images = []
    for path in files:
        image = tf.io.decode_image(Path(path).read_bytes(), channels=3, expand_animations=False)
        image = tf.image.resize(image, [SIZE, SIZE], antialias=True)
        images.append(tf.clip_by_value(image, 0, 255))
    images = tf.stack(images).numpy()
    # Exactly what training's evaluation pipeline makes of the same encoded files.
    split = sources.Split(
        np.array([Path(p).read_bytes() for p in files], dtype=object),
        np.zeros(len(files), np.int32),
        True,
        tuple(CLASSES),
        (None, None, 3),
    )
    np.testing.assert_array_equal(pipeline.as_numpy(split, image_size=SIZE)[0], images)
    model = keras.saving.load_model(model_path)
    return tf.nn.softmax(model(images)).numpy()


def test_evaluates_encoded_is_false_exactly_for_the_decoded_array_sources():
    for dataset in ("npz:a", "idx:b", "sklearn_digits", "synthetic", "synthetic:4", "cifar10"):
        held_decoded = dataset.startswith("synthetic") or arrays.is_spec(dataset)
        assert export_reader.evaluates_encoded(dataset) is not held_decoded


def test_full_resolution_predict_equals_the_model_on_the_eval_pipeline(tmp_path):
    """At --image_size >= 128 predict center-crops --eval_crop from config.json, as eval does."""
    size, crop = 128, 0.5
    inputs = keras.Input((size, size, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255.0)(inputs))
    head = keras.layers.Dense(3)
    model = keras.Model(inputs, head(x))
    head.set_weights([10 * np.eye(3, dtype=np.float32), np.zeros(3, np.float32)])
    _write_export(tmp_path / "run", model, {"class_names": CLASSES, "image_size": size})
    full = {"dataset": "folder:/data", "eval_crop": crop, "image_size": size}
    (tmp_path / "run" / "config.json").write_text(json.dumps({"full": full}))
    pixels = _pixels(150, 200, 2, 7)
    pixels[:, :50] = [255, 0, 0]  # a red left band: outside the centered half
    jpeg = tf.io.encode_jpeg(pixels, quality=90).numpy()
    (tmp_path / "photo.jpg").write_bytes(jpeg)
    results = predict.predict(tmp_path / "run", [tmp_path / "photo.jpg"], top_k=3)
    split = sources.Split(
        np.array([jpeg], dtype=object), np.zeros(1, np.int32), True, (), (None,) * 2 + (3,)
    )
    views = [pipeline.as_numpy(split, image_size=size, eval_crop=c)[0] for c in (crop, 1.0)]
    expected, uncropped = (tf.nn.softmax(model(v)).numpy()[0] for v in views)
    got = dict(results[0][1])
    np.testing.assert_allclose([got[c] for c in CLASSES], expected, rtol=1e-5, atol=1e-7)
    assert results[0][1][0][0] == "c"  # blue-dominant crop
    assert abs(got["a"] - uncropped[0]) > 0.01  # the crop left out the red band


class LrtechPredictDecoded(tfds.core.GeneratorBasedBuilder):
    """A real TFDS dataset of fixed-size 12x16 PNG images (8 train, 4 test), like cifar10:
    held decoded in memory, so evaluation resizes the whole image even at image_size 128."""

    VERSION = tfds.core.Version("1.0.0")
    code_path = None  # no checksums or metadata files beside this test module

    def _info(self):
        features = {
            "image": tfds.features.Image(shape=(12, 16, 3)),
            "label": tfds.features.ClassLabel(names=CLASSES),
        }
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(features),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(8, 0), "test": self._generate_examples(4, 1)}

    def _generate_examples(self, n, seed):
        for i in range(n):
            image = _pixels(12, 16, i % 3, 10 * seed + i)
            image[:, :3] = 255 - image[:, :3]  # a left band a center crop leaves out
            yield i, {"image": image, "label": i % 3}


def _spatial_model(num_classes, size=128):
    """Flatten keeps where things are: a crop changes the logits."""
    return keras.Sequential(
        [
            keras.Input((size, size, 3)),
            keras.layers.Rescaling(1 / 255.0),
            keras.layers.Conv2D(3, 8, strides=8, name="conv"),
            keras.layers.Flatten(),
            keras.layers.Dense(num_classes, name="head"),
        ]
    )


def test_decoded_tfds_run_at_full_size_predicts_as_it_evaluated(tmp_path):
    """A TFDS run whose fixed-size images were held decoded evaluated whole resized images at
    --image_size 128; labels.json records it and predict resizes too (no center crop)."""
    data_dir = str(tmp_path / "tfds")
    LrtechPredictDecoded(data_dir=data_dir).download_and_prepare()
    config = Config(
        model_dir=str(tmp_path / "run"),
        dataset="lrtech_predict_decoded",
        data_dir=data_dir,
        image_size=128,
        global_batch_size=4,
        progress=False,
    )
    run = helpers.restored(config, _spatial_model)  # writes config.json; no training needed
    labels_path = Path(run.export()) / "labels.json"
    labels = json.loads(labels_path.read_text())
    assert (labels["preprocessing"], labels["eval_crop"]) == ("resize", 0.875)
    assert "the whole image resized" in labels["input"]
    split = run.data._eval
    assert not split.encoded and split.images.shape == (4, 12, 16, 3)  # held decoded
    files = []
    for i, pixels in enumerate(split.images):
        files.append(tmp_path / f"{i}.png")
        files[-1].write_bytes(tf.io.encode_png(pixels).numpy())
    ((views, _),) = list(run.data.eval_dataset(4).as_numpy_iterator())
    model = keras.saving.load_model(tmp_path / "run" / "export" / "model.keras")
    expected = tf.nn.softmax(model(views)).numpy()

    def probabilities():
        results = predict.predict(tmp_path / "run", files, top_k=3)
        return np.array([[dict(top)[c] for c in CLASSES] for _, top in results])

    np.testing.assert_allclose(probabilities(), expected, rtol=1e-5, atol=1e-6)
    # An export from before labels.json recorded the regime: predict center-crops (0.875
    # from config.json), which is not what evaluation did.
    labels_path.write_text(json.dumps({k: labels[k] for k in ("class_names", "image_size")}))
    old = probabilities()
    assert np.abs(old - expected).max() > 1e-3
    # A labels.json that says center_crop (and its crop) is followed, config.json aside.
    regime = dict(labels, preprocessing="center_crop", eval_crop=0.875)
    labels_path.write_text(json.dumps(regime))
    np.testing.assert_allclose(probabilities(), old, rtol=1e-6, atol=1e-7)
    assert pipeline.eval_preprocessing(dataclasses.replace(split, encoded=True), 128) == (
        "center_crop"
    )


def test_find_images_recursive_sorted_and_checked(setup, tmp_path):
    root, good, bad = setup
    assert predict.find_images(root / "images") == good  # sorted, recursive, .txt ignored
    # Arguments keep their order; a file's extension matches in any case.
    assert predict.find_images([good[1], str(root / "bad")]) == [good[1], *bad]
    for paths, message in [
        ([str(root / "nope.jpg")], "nope.jpg: no such file"),
        ([str(root / "images" / "notes.txt")], "notes.txt: not an image"),
        ([str(tmp_path)], "no images"),
    ]:
        with pytest.raises(UserError, match=message):
            predict.find_images(paths)


def test_predict_matches_the_model_on_training_preprocessing(setup):
    root, good, _ = setup
    # batch_size=3: a full batch and a partial one.
    results = predict.predict(root / "run", [root / "images"], top_k=5, batch_size=3)
    expected = _expected_probs(root / "run" / "export" / "model.keras", good)
    assert [path for path, _ in results] == good
    for (_, top), probs in zip(results, expected):
        assert len(top) == 3  # top_k capped at the number of classes
        assert top[0][0] == CLASSES[int(np.argmax(probs))]
        assert [p for _, p in top] == sorted((p for _, p in top), reverse=True)
        np.testing.assert_allclose([p for _, p in top], [probs[CLASSES.index(c)] for c, _ in top])
        assert sum(p for _, p in top) == pytest.approx(1.0, abs=1e-5)
    # The hand-set weights make the dominant channel win; the GIF's first frame is green.
    assert [top[0][0] for _, top in results] == ["c", "a", "b", "b"]
    two = predict.predict(root / "run", good[:2], top_k=2, batch_size=64)
    assert [[c for c, _ in top] for _, top in two] == [
        [c for c, _ in top[:2]] for _, top in results[:2]
    ]


def test_unreadable_images_raise_or_are_skipped_and_stay_quiet(setup, capfd):
    root, good, bad = setup
    run = root / "run"
    # The check below can fail: decoding the truncated JPEG does write to fd 2.
    with pytest.raises(tf.errors.InvalidArgumentError):
        tf.io.decode_image(Path(bad[0]).read_bytes())
    assert capfd.readouterr().err
    with pytest.raises(UserError, match=f"{bad[0]}: cannot read or decode"):
        predict.predict(run, [root / "images", root / "bad"])
    skipped = []
    results = predict.predict(
        run,
        [root / "bad", root / "images"],
        batch_size=2,
        skip_corrupt=True,
        on_skip=skipped.append,
    )
    assert skipped == bad and [p for p, _ in results] == good
    with pytest.raises(UserError, match="no readable images among 2 files"):
        predict.predict(run, [root / "bad"], skip_corrupt=True)
    assert capfd.readouterr() == ("", "")


def test_bad_exports_and_arguments_name_the_file(setup, tmp_path):
    root, good, _ = setup
    with pytest.raises(UserError, match="no such directory"):
        export_reader.read_labels(tmp_path / "nope")
    with pytest.raises(UserError, match="export/model.keras: no export; run training"):
        export_reader.read_labels(tmp_path)
    export = tmp_path / "export"
    export.mkdir()
    (export / "model.keras").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="labels.json: missing, the export is incomplete"):
        export_reader.read_labels(tmp_path)
    (export / "labels.json").write_text('{"class_names": ["a"]}')
    with pytest.raises(UserError, match="labels.json: unreadable .*image_size"):
        export_reader.read_labels(tmp_path)
    for bad, message in [({"preprocessing": "crop"}, "preprocessing='crop' is not one of"),
                         ({"eval_crop": 0}, r"eval_crop=0 is not in \(0, 1\]")]:  # fmt: skip
        labels = {"class_names": CLASSES, "image_size": SIZE, **bad}
        (export / "labels.json").write_text(json.dumps(labels))
        with pytest.raises(UserError, match=f"labels.json: unreadable .*{message}"):
            export_reader.read_labels(tmp_path)
    (export / "labels.json").write_text(json.dumps({"class_names": CLASSES, "image_size": SIZE}))
    with pytest.raises(UserError, match=r"model.keras: not a Keras file \(9 bytes, no zip"):
        export_reader.load_export(tmp_path)
    _write_export(tmp_path / "four", _model(4), {"class_names": CLASSES, "image_size": SIZE})
    with pytest.raises(UserError, match="outputs 4 classes but labels.json names 3"):
        export_reader.load_export(tmp_path / "four")
    for kwargs in ({"top_k": 0}, {"batch_size": 0}, {"batch_size": 2.5}):
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            predict.predict(root / "run", good, **kwargs)


def _garbage_weights(model_keras: Path, out: Path) -> None:
    """A whole .keras archive whose weights file inside is garbage."""
    with zipfile.ZipFile(model_keras) as source, zipfile.ZipFile(out, "w") as target:
        for info in source.infolist():
            data = source.read(info)
            target.writestr(info, b"garbage" * 100 if info.filename.endswith(".h5") else data)


def test_damaged_model_keras_is_named_not_file_not_found(setup, tmp_path):
    """Keras reports an empty or cut-off model.keras as "File not found"; the export reader
    says what it is (before TensorFlow is imported), and a whole archive with garbage weights
    inside is one UserError naming the file."""
    root, _, _ = setup
    good = (root / "run" / "export" / "model.keras").read_bytes()
    model_dir = tmp_path / "run"
    _write_export(model_dir, _model(), {"class_names": CLASSES, "image_size": SIZE})
    path = model_dir / "export" / "model.keras"
    for data, message in [
        (b"", r"empty \(0 bytes\), not a Keras file"),
        (good[: len(good) // 2], rf"truncated \({len(good) // 2} bytes: a zip archive without"),
        (b"\x89HDF" + bytes(500), r"not a Keras file \(504 bytes, no zip archive\)"),
    ]:
        path.write_bytes(data)
        with pytest.raises(UserError, match=f"{path}: {message}.*re-run the same training"):
            export_reader.read_labels(model_dir)
    _garbage_weights(root / "run" / "export" / "model.keras", path)
    export_reader.read_labels(model_dir)  # a whole zip archive...
    with pytest.raises(UserError, match=f"{path}: cannot load \\(OSError: .*signature"):
        export_reader.load_export(model_dir)  # ...whose weights do not load


def test_output_paths_are_checked_before_any_work(tmp_path):
    (tmp_path / "file").write_text("x")
    for path, message in [
        ("/proc/preds.csv", "not a place for result files"),
        (str(tmp_path), "is a directory, not a file"),
        (str(tmp_path / "no" / "p.csv"), f"no such directory {tmp_path / 'no'}"),
        (str(tmp_path / "file" / "p.csv"), f"{tmp_path / 'file'} is a file, not a directory"),
    ]:
        with pytest.raises(UserError, match=f"^--output={path}: {message}"):
            check_output_file("--output", path)
    check_output_file("--output", str(tmp_path / "p.csv"))
    assert sorted(os.listdir(tmp_path)) == ["file"]  # the check leaves nothing behind
    if os.geteuid() != 0:  # root writes anywhere
        (tmp_path / "ro").mkdir(mode=0o500)
        with pytest.raises(UserError, match="cannot write in"):
            check_output_file("--output", str(tmp_path / "ro" / "p.csv"))


def test_lines_are_aligned_and_csv_round_trips(tmp_path):
    results = [("x.jpg", [("cat", 0.9123), ("frog", 0.05)]), ("dir/y.png", [("frog", 1.0)])]
    assert predict.format_lines(results) == [
        "x.jpg      cat  0.912  frog 0.050",
        "dir/y.png  frog 1.000",
    ]
    out = tmp_path / "p.csv"
    predict.write_csv(str(out), results)
    assert list(csv.reader(out.open())) == [
        ["path", "class_1", "prob_1", "class_2", "prob_2"],  # each name once
        ["x.jpg", "cat", "0.912300", "frog", "0.050000"],
        ["dir/y.png", "frog", "1.000000"],
    ]
    assert os.listdir(tmp_path) == ["p.csv"]  # no temporary file left


def _cli(*args):
    """Starts `python3 -m trainer.predict` without the runtime settings the tests' process has,
    so the command must quiet TensorFlow itself."""
    unset = (*runtime.DEFAULTS, "TF_CPP_MIN_LOG_LEVEL")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    return subprocess.Popen(
        [sys.executable, "-m", "trainer.predict", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_command_line(setup, tmp_path):
    root, good, bad = setup
    run, out = f"--model_dir={root / 'run'}", tmp_path / "preds.csv"
    # Two processes import TensorFlow (run side by side); the others fail before importing it.
    started = {
        "ok": _cli(run, "--top_k=2", "--batch_size=3", f"--output={out}", "--skip_corrupt",
                   str(root / "images"), str(root / "bad")),
        "corrupt": _cli(run, str(root / "bad")),
        "missing path": _cli(run, str(root / "nope")),
        "no export": _cli(f"--model_dir={tmp_path}", str(root / "images")),
        "bad flag": _cli(run, "--top_k=0", str(root / "images")),
        "output in /proc": _cli(run, "--output=/proc/preds.csv", str(root / "images")),
    }  # fmt: skip
    done = {name: (*p.communicate(timeout=240), p.returncode) for name, p in started.items()}

    stdout, stderr, code = done["ok"]
    assert code == 0, stderr
    expected = predict.predict(root / "run", [root / "images"], top_k=2)
    assert stdout.splitlines() == predict.format_lines(expected)
    assert stderr == f"predict: skipped 2 unreadable images, e.g. {bad[0]}\n"
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["path", "class_1", "prob_1", "class_2", "prob_2"]
    assert [r[0] for r in rows[1:]] == good
    for row, (_, top) in zip(rows[1:], expected):
        assert row[1::2] == [c for c, _ in top]
        np.testing.assert_allclose([float(p) for p in row[2::2]], [p for _, p in top], atol=1e-6)

    for name, message in [
        ("corrupt", f"{bad[0]}: cannot read or decode the image"),
        ("missing path", f"{root / 'nope'}: no such file or directory"),
        ("no export", "no export; run training first"),
        ("bad flag", "--top_k=0: must be >= 1"),
        ("output in /proc", "--output=/proc/preds.csv: not a place for result files"),
    ]:
        stdout, stderr, code = done[name]
        assert (code, stdout) == (2, ""), (name, code, stdout, stderr)
        assert stderr.startswith("predict: error: ") and message in stderr, (name, stderr)
        assert stderr.count("\n") == 1, (name, stderr)
