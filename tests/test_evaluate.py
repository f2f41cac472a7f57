"""trainer.tools.evaluate on a real (tiny) training run: the command, the checkpoint path,
bad input.
"""

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from trainer.config import Config
from trainer.data import synthetic
from trainer.errors import UserError
from trainer.experiment import Experiment
from trainer.loop.strategy import make_strategy
from trainer.tools import evaluate
from trainer.tools.paths import check_output_dir

ROOT = Path(__file__).resolve().parents[1]


def _evaluate(*args):
    return subprocess.run(
        [sys.executable, "-m", "trainer.evaluate", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """What `run_train.py --dataset=synthetic --model=resnet8 --train_steps=2` leaves behind,
    made in-process with its library parts (a subprocess would import TensorFlow again).

    Yields (model_dir, the `python3 -m trainer.evaluate --model_dir=...` process, the run's
    own pictures and TensorBoard eval files before it started: {name: bytes}): started at
    once, it imports TensorFlow on the second core while the in-process tests run.
    """
    model_dir = tmp_path_factory.mktemp("evaluate") / "run"
    config = Config(
        model_dir=str(model_dir),
        dataset="synthetic",
        synthetic_train_size=64,
        synthetic_test_size=32,
        model="resnet8",
        global_batch_size=32,
        train_steps=2,
        progress=False,
    )
    experiment = Experiment(config, make_strategy("auto")).build()
    experiment.restore()
    experiment.train()
    experiment.export()
    own = [model_dir / "confusion_matrix.png", model_dir / "top_losses.png"]
    own += sorted((model_dir / "tensorboard" / "eval").iterdir())
    before = {str(path.relative_to(model_dir)): path.read_bytes() for path in own}
    process = subprocess.Popen(
        [sys.executable, "-m", "trainer.evaluate", f"--model_dir={model_dir}"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    yield model_dir, process, before
    if process.poll() is None:
        process.kill()
        process.communicate()


def _final(model_dir):
    return json.loads((model_dir / "metrics.json").read_text())["final"]


def test_checkpoint_source_restores_the_same_model(run, tmp_path):
    run, _, _ = run
    located = evaluate.locate(str(run), "checkpoint")
    assert located.source == "checkpoint"
    result = evaluate.evaluate(located, located.config, output_dir=str(tmp_path))
    final = _final(run)
    assert result["model"].endswith("ckpt-2") and result["step"] == 2
    assert result["accuracy"] == final["accuracy"]
    assert abs(result["loss"] - final["loss"]) <= 1e-6
    # evaluate's own names beside evaluation.json, no TensorBoard images (not the run's).
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "evaluation.json",
        "evaluation_confusion_matrix.png",
        "evaluation_top_losses.png",
    ]


def _folder(root, classes):
    """folder:ROOT with train/ and test/ holding the synthetic test images of `classes` (names
    of the synthetic classes, or others: their images are those of the first class)."""
    images, labels = synthetic.generate("test", 32)
    for split in ("train", "test"):
        for name in classes:
            k = synthetic.CLASS_NAMES.index(name) if name in synthetic.CLASS_NAMES else 0
            directory = root / split / name
            directory.mkdir(parents=True)
            for i in np.flatnonzero(labels == k):
                (directory / f"{i:02d}.png").write_bytes(tf.io.encode_png(images[i]).numpy())
    return f"folder:{root}"


def test_other_class_sets_are_mapped_by_name_or_refused(run, tmp_path):
    """A dataset with 2 of the model's 10 classes, in another order of labels: each label goes
    to the model's output of the same name; a class the model does not know is refused."""
    run, _, _ = run
    located = evaluate.locate(str(run), "export")
    own = evaluate.evaluate(located, located.config, output_dir=str(tmp_path / "own"))
    assert "class_mapping" not in own
    # The folder's labels: square 0, triangle 1 (sorted names); the model's: 1 and 2.
    dataset = _folder(tmp_path / "two", ["triangle", "square"])
    config = evaluate.eval_config(located.config, dataset)
    result = evaluate.evaluate(located, config, output_dir=str(tmp_path / "out"))
    assert result["class_mapping"] == {
        "note": "the dataset has 2 of the model's 10 classes, matched by name",
        "dataset_to_model": {"square": 1, "triangle": 2},
    }
    # The same images give the same predictions as in the run's own split: rows 1 and 2 of
    # its confusion matrix, the others empty.
    expected = np.zeros((10, 10), np.int64)
    expected[1:3] = np.array(own["confusion_matrix"])[1:3]
    np.testing.assert_array_equal(result["confusion_matrix"], expected)
    assert result["examples"] == expected.sum() > 0
    assert result["accuracy"] == np.trace(expected) / expected.sum()
    assert [c["class"] for c in result["per_class"]] == list(synthetic.CLASS_NAMES)
    lines = evaluate.summary(result, located, str(tmp_path)).splitlines()
    assert "classes" in lines[2] and lines[2].endswith(
        "2 of the model's 10 classes, matched by name"
    )
    unknown = evaluate.eval_config(located.config, _folder(tmp_path / "abc", ["a", "square"]))
    with pytest.raises(UserError, match=r"1 of its 2 classes \(a\) are not among the model's 10"):
        evaluate.evaluate(located, unknown, output_dir=str(tmp_path / "abc_out"))
    assert not (tmp_path / "abc_out").exists()


def test_a_damaged_export_is_one_user_error_as_in_predict(run, tmp_path):
    run, _, _ = run
    shutil.copy(run / "config.json", tmp_path / "config.json")
    shutil.copytree(run / "export", tmp_path / "export", ignore=shutil.ignore_patterns("saved*"))
    path = tmp_path / "export" / "model.keras"
    good = path.read_bytes()
    garbage = tmp_path / "garbage.keras"  # whole, with garbage weights inside
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(garbage, "w") as target:
        for info in source.infolist():
            data = source.read(info)
            target.writestr(info, b"garbage" * 100 if info.filename.endswith(".h5") else data)
    located = evaluate.locate(str(tmp_path), "export")
    for data, message in [
        (b"", r"empty \(0 bytes\), not a Keras file"),
        (good[:1000], r"truncated \(1000 bytes"),
        (garbage.read_bytes(), r"cannot load \(OSError"),
    ]:
        path.write_bytes(data)
        with pytest.raises(UserError, match=f"^{path}: {message}"):
            evaluate.load_export(located)


def test_output_dir_is_checked_before_any_work(tmp_path):
    (tmp_path / "file").write_text("x")
    for path, message in [
        ("/proc/x", "not a place for result files"),
        (str(tmp_path / "file"), "is a file, not a directory"),
        (str(tmp_path / "file" / "x"), f"{tmp_path / 'file'} is a file, not a directory"),
    ]:
        with pytest.raises(UserError, match=f"^--output_dir={path}: {message}"):
            check_output_dir("--output_dir", path)
    check_output_dir("--output_dir", str(tmp_path / "new" / "deeper"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # nothing created


def test_defaults_come_from_the_run_and_flags_override(run):
    run, _, _ = run
    located = evaluate.locate(str(run), "export")
    assert (located.config.dataset, located.config.eval_split) == ("synthetic", "test")
    assert located.config.synthetic_test_size == 32 and located.config.num_classes == 10
    config = evaluate.eval_config(located.config, dataset="synthetic:3", eval_split="train")
    assert (config.dataset, config.eval_split, config.image_size) == ("synthetic:3", "train", 32)
    missing = f"folder:{run / 'no_such_folder'}"
    with pytest.raises(UserError, match="no such directory"):
        evaluate.evaluate(located, evaluate.eval_config(located.config, missing))


def test_missing_export_falls_back_to_the_checkpoint(tmp_path):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "ckpt-4.index").write_bytes(b"")
    (tmp_path / "config.json").write_text(json.dumps({"full": {"model_dir": "elsewhere"}}))
    located = evaluate.locate(str(tmp_path), "export")
    assert located.source == "checkpoint" and "no export" in located.note
    assert located.config.model_dir == str(tmp_path)


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "config.json").write_text(json.dumps({"full": {}}))
    (tmp_path / "ckpt_only" / "ckpt").mkdir(parents=True)
    (tmp_path / "ckpt_only" / "ckpt" / "ckpt-1.index").write_bytes(b"")
    (tmp_path / "ckpt_only" / "config.json").write_text(json.dumps({"full": {}}))
    cases = {
        (f"--model_dir={tmp_path / 'missing'}",): "no such directory",
        (f"--model_dir={tmp_path / 'empty'}",): "no config.json",
        (f"--model_dir={tmp_path / 'bare'}",): "no export/model.keras and no checkpoint",
        (f"--model_dir={tmp_path / 'bare'}", "--dataset="): "flag --dataset=: must not be",
        ("--source=weights",): "--source=weights",
        # Checked before TensorFlow, so before minutes of evaluation (it was a traceback).
        (f"--model_dir={tmp_path / 'ckpt_only'}", "--output_dir=/proc/x"): "not a place for",
    }
    for args, message in cases.items():
        result = _evaluate(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stdout == ""
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("evaluate: error: "), result.stderr
        assert message in lines[0], lines[0]


def test_command_evaluates_the_export_like_training_did(run):
    # Last in the module: the process started with the fixture ran beside the other tests.
    run, process, before = run
    stdout, stderr = process.communicate(timeout=180)
    assert process.returncode == 0, stderr[-3000:]
    final = _final(run)
    record = json.loads((run / "evaluation.json").read_text())
    assert record["source"] == "export" and record["step"] == 2 == final["step"]
    assert record["examples"] == final["examples"] == 32
    # Same model, same data, same metrics as the training loop's final evaluation.
    assert abs(record["accuracy"] - final["accuracy"]) <= 1e-6
    assert abs(record["top5"] - final["top5"]) <= 1e-6
    assert abs(record["loss"] - final["loss"]) <= 1e-4
    assert len(record["per_class"]) == 10 and record["per_class"][0]["class"] == "disk"
    assert sum(map(sum, record["confusion_matrix"])) == 32
    assert len(record["top_losses"]) == 9
    for name in ("evaluation_confusion_matrix.png", "evaluation_top_losses.png"):
        assert (run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The run's own pictures and TensorBoard images are untouched; no image was added.
    after = [run / name for name in before if "/" not in name]
    after += sorted((run / "tensorboard" / "eval").iterdir())
    assert {str(p.relative_to(run)): p.read_bytes() for p in after} == before
    assert f"{final['accuracy']:.4f}" in stdout and "accuracy" in stdout
    assert "error" not in stderr.lower(), stderr
