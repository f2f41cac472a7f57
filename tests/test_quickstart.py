"""The README's main command: configs/quickstart.flags, real transfer learning offline."""

import re
import subprocess
import sys
from pathlib import Path

from trainer import flags as flags_lib

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.flags"


def test_quickstart_is_transfer_learning_with_differential_rates_and_sgdr():
    config = flags_lib.parse_config([f"--flagfile={QUICKSTART}"])
    assert config.dataset == "sklearn_digits"  # real data inside the scikit-learn wheel
    assert config.weights == "pretrained:resnet20_fashion_mnist"  # the shipped model
    assert config.model == "resnet20"
    assert config.split_at == ("preset",) or "preset" in str(config.split_at)
    assert config.lr_spread == 10.0
    assert config.schedule == "sgdr" and config.cycle_mult == 2.0
    header = QUICKSTART.read_text().split("\n--", 1)[0]
    # The header states the measured wall time and test accuracy.
    assert re.search(r"\d+ min \d+ s wall", header), header
    assert re.search(r"test accuracy 0\.\d{4}", header), header


def test_quickstart_two_steps_end_to_end_quiet_with_a_summary(tmp_path):
    # The README's main command cut to 2 steps: no Python warnings, no absl-prefixed lines,
    # one plain line per epoch, the closing summary.
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "run_train.py"),
            f"--flagfile={QUICKSTART}",
            f"--model_dir={tmp_path}",
            "--global_batch_size=32",
            "--epochs=0.05",  # 1,442 // 32 = 45 steps per epoch: 2 steps
            "--steps_per_loop=2",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    text = result.stdout + result.stderr
    assert "Warning" not in text and "warnings.warn" not in text, text[-3000:]
    absl_prefixed = [ln for ln in text.splitlines() if re.match(r"^[IWEF]\d{4} ", ln)]
    assert absl_prefixed == [], absl_prefixed[:3]
    assert "Saved checkpoint" in result.stderr  # the project's own lines still show
    lines = result.stdout.splitlines()
    assert lines[0] == f"Run directory: {tmp_path} (starts)", lines[:3]
    assert re.match(r"Epoch 1/1 +2/2  total ", lines[1]), lines[:3]
    # 2 steps in all: the one-line warning names the batch and the length.
    assert "run_train.py: warning: this run trains 2 steps in all" in result.stderr
    summary = "\n".join(lines[lines.index(f"Done: {tmp_path}") :])
    for label in ("eval accuracy", "wall time", "export", "tensorboard --logdir"):
        assert label in summary, summary
    metrics = (tmp_path / "metrics.json").read_text()
    assert '"examples": 355' in metrics  # evaluated on the digits' whole test split
