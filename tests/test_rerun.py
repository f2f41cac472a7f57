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
