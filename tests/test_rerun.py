"""Nothing lost around a finished run: re-runs keep its results, a damaged metrics.json is set
aside before training (never after), --restart moves every file a run wrote."""

import json
import logging
import os

import pytest

from tests import helpers
from trainer import layout
from trainer.reporting import summaries
from trainer.run_dir import files as run_dir

RUN = dict(train_steps=8, first_cycle_steps=4, split_at=("mid",), lr_mults=(0.1, 1.0))


def _finished(tmp_path):
    cfg = helpers.tiny_config(tmp_path, **RUN)
    exp = helpers.build(cfg, plots=True)
    exp.restore()
    exp.train()
    return cfg, json.loads((tmp_path / layout.METRICS_FILE).read_text())


def test_re_running_a_finished_run_keeps_every_result(tmp_path):
    cfg, first = _finished(tmp_path)
    assert first["per_class"] and first["confusion_matrix"] and first["train"]
    pictures = {
        f: (tmp_path / f).read_bytes() for f in (layout.CONFUSION_PLOT, layout.TOP_LOSSES_PLOT)
    }
    for _ in range(2):
        exp = helpers.build(cfg, plots=True)
        exp.restore()
        analyzed = []
        exp.interpret = lambda analyzed=analyzed: analyzed.append(1) or {}
        again = exp.train()
        assert analyzed == []  # recorded already: not done again
        assert again == first
        assert json.loads((tmp_path / layout.METRICS_FILE).read_text()) == first
    for name, data in pictures.items():
        assert (tmp_path / name).read_bytes() == data


def test_a_killed_end_of_run_does_only_the_missing_work(tmp_path):
    cfg, first = _finished(tmp_path)
    # As after a kill during interpretation: the history is recorded, the figures are not.
    partial = {k: first[k] for k in ("final", "best", "history")}
    (tmp_path / layout.METRICS_FILE).write_text(json.dumps(partial))
    os.remove(tmp_path / layout.TOP_LOSSES_PLOT)
    exp = helpers.build(cfg, plots=True)
    exp.restore()
    metrics = exp.train()
    assert metrics["history"] == first["history"]
    assert metrics["confusion_matrix"] == first["confusion_matrix"]
    assert (tmp_path / layout.TOP_LOSSES_PLOT).exists()


@pytest.mark.parametrize(
    "content, why",
    [
        ({"history": [{"step": 8}]}, "step 8: loss None is not a number"),
        ({"history": [{"step": 8, "loss": 0.5, "accuracy": "x"}]}, "accuracy 'x' is not a number"),
        ({"history": [{"step": 8, "loss": 0.5, "accuracy": float("nan")}]}, "accuracy is nan"),
        ({"history": [{"step": 1e400, "loss": 0.5, "accuracy": 0.5}]}, "step inf is not"),
        ({"history": [{"step": 4, "loss": 0.5, "accuracy": 1.5}]}, "outside [0, 1]"),
        ("[1, 2]", "not a JSON object"),
        ("{", "Expecting"),
    ],
)
def test_an_invalid_metrics_json_is_set_aside_before_training(tmp_path, content, why):
    cfg = helpers.tiny_config(tmp_path, **{**RUN, "train_steps": 4, "checkpoint_every_steps": 4})
    helpers.trained(cfg)
    text = content if isinstance(content, str) else json.dumps(content)
    (tmp_path / layout.METRICS_FILE).write_text(text)
    with helpers.absl_messages(logging.WARNING) as messages:
        exp, metrics = helpers.trained(cfg.replace(train_steps=8))
    aside = [f for f in os.listdir(tmp_path) if f.startswith(layout.METRICS_FILE + ".broken-")]
    assert len(aside) == 1 and (tmp_path / aside[0]).read_text() == text
    warnings = [m for m in messages if "is invalid" in m]
    assert len(warnings) == 1 and why in warnings[0] and "\n" not in warnings[0]
    steps = [e["step"] for e in metrics["history"]]
    assert steps == [8] and metrics["best"]["step"] == 8  # a fresh history from the checkpoint


def test_metrics_json_that_is_a_directory_is_set_aside(tmp_path):
    (tmp_path / layout.METRICS_FILE).mkdir()
    assert summaries.read_metrics(str(tmp_path)) is None
    assert not (tmp_path / layout.METRICS_FILE).exists()


def test_restart_moves_every_file_a_run_wrote(tmp_path):
    for name in layout.RUN_FILES:
        (tmp_path / name).write_text("x")
    (tmp_path / "mine.txt").write_text("the user's")
    moved = run_dir.move_aside(str(tmp_path))
    assert sorted(os.listdir(moved)) == sorted(layout.RUN_FILES)
    assert sorted(os.listdir(tmp_path)) == sorted([layout.PREVIOUS_DIR, "mine.txt"])


def test_damaged_weights_file_is_one_line_naming_it(tmp_path):
    import models

    path = str(tmp_path / "w.weights.h5")
    models.build("resnet20", 10).save_weights(path)
    data = bytearray(open(path, "rb").read())
    for i in range(len(data) // 2, len(data) // 2 + 4000):
        data[i] ^= 0xFF
    (tmp_path / "bad.weights.h5").write_bytes(bytes(data))
    with pytest.raises(ValueError) as error:
        models.build("resnet20", 10, weights=str(tmp_path / "bad.weights.h5"))
    message = str(error.value)
    assert message.startswith(f"--weights={tmp_path / 'bad.weights.h5'}: damaged (")
    assert "\n" not in message


def test_auto_max_lr_below_min_lr_names_both_flags(tmp_path):
    from trainer.errors import UserError

    cfg = helpers.tiny_config(
        tmp_path,
        **RUN,
        max_lr="auto",
        min_lr=100.0,
        lr_find_steps=23,
        lr_find_start=1e-5,
    )
    with pytest.raises(UserError, match=r"--min_lr=100 is above the --max_lr=auto the LR range"):
        helpers.build(cfg)


def test_plot_command_prints_no_tensorflow_log_lines(tmp_path):
    import subprocess
    import sys

    # A user's shell: neither TensorFlow variable set (the suite sets both).
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS")
    }
    out = tmp_path / "p.png"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "schedules.plot",
            "--max_lr=0.01",
            "--first_cycle_steps=10",
            "--total_steps=40",
            f"--out={out}",
        ],
        cwd=helpers.ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"wrote {out}\n"
    # No INFO/WARNING line of TensorFlow's C++ logging (cpu_feature_guard etc.); only the
    # start-up banners TensorFlow prints whatever the level may remain where oneDNN is on.
    banners = ("before absl::InitializeLog()", "oneDNN custom operations are on")
    noise = [line for line in result.stderr.splitlines() if not any(b in line for b in banners)]
    assert noise == []
