"""trainer.tools.evaluate on a real (tiny) training run: the command, the checkpoint path,
bad input.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.config import Config
from trainer.errors import UserError
from trainer.experiment import Experiment
from trainer.loop.strategy import make_strategy
from trainer.tools import evaluate

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

    Yields (model_dir, the `python3 -m trainer.evaluate --model_dir=...` process): started at
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
    process = subprocess.Popen(
        [sys.executable, "-m", "trainer.evaluate", f"--model_dir={model_dir}"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    yield model_dir, process
    if process.poll() is None:
        process.kill()
        process.communicate()


def _final(model_dir):
    return json.loads((model_dir / "metrics.json").read_text())["final"]


def test_checkpoint_source_restores_the_same_model(run, tmp_path):
    run, _ = run
    located = evaluate.locate(str(run), "checkpoint")
    assert located.source == "checkpoint"
    result = evaluate.evaluate(located, located.config, output_dir=str(tmp_path))
    final = _final(run)
    assert result["model"].endswith("ckpt-2") and result["step"] == 2
    assert result["accuracy"] == final["accuracy"]
    assert abs(result["loss"] - final["loss"]) <= 1e-6
    assert (tmp_path / "evaluation.json").exists() and (tmp_path / "top_losses.png").exists()
    assert list((tmp_path / "tensorboard" / "eval").glob("events.out.tfevents.*"))


def test_defaults_come_from_the_run_and_flags_override(run):
    run, _ = run
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
    cases = {
        (f"--model_dir={tmp_path / 'missing'}",): "no such directory",
        (f"--model_dir={tmp_path / 'empty'}",): "no config.json",
        (f"--model_dir={tmp_path / 'bare'}",): "no export/model.keras and no checkpoint",
        (f"--model_dir={tmp_path / 'bare'}", "--dataset="): "flag --dataset=: must not be",
        ("--source=weights",): "--source=weights",
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
    run, process = run
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
    for name in ("confusion_matrix.png", "top_losses.png"):
        assert (run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"{final['accuracy']:.4f}" in stdout and "accuracy" in stdout
    assert "error" not in stderr.lower(), stderr
