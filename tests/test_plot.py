"""Tests of schedules.plot: the library function and the `python -m schedules.plot` tool."""

import os
import subprocess
import sys

import numpy as np
import pytest

from schedules import SGDR
from schedules.plot import plot_schedule

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _assert_png(path):
    with open(path, "rb") as f:
        data = f.read()
    assert data.startswith(PNG_MAGIC) and len(data) > 5000, (path, len(data))


def _run(*args, code=None):
    """Runs the tool in a fresh interpreter (as a user would); returns the CompletedProcess."""
    cmd = [sys.executable] + (["-c", code] if code else ["-m", "schedules.plot"]) + list(args)
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "first_cycle_steps, cycle_mult, restarts",
    [
        (1500, 1.0, [0]),  # (1) plain cosine annealing over the whole run
        (100, 1.0, list(range(0, 1500, 100))),  # (2) restarts every 100 steps
        (100, 2.0, [0, 100, 300, 700]),  # (3) cycles doubling
    ],
)
def test_article_figures(tmp_path, first_cycle_steps, cycle_mult, restarts):
    schedule = SGDR(max_lr=0.01, first_cycle_steps=first_cycle_steps, cycle_mult=cycle_mult)
    assert schedule.restart_steps(1500) == restarts
    out = str(tmp_path / "figure.png")
    assert plot_schedule(schedule, 1500, out, title="article figure") == out
    _assert_png(out)


def test_segments_on_log_axis(tmp_path):
    out = str(tmp_path / "segments.png")
    schedule = SGDR(max_lr=0.01, first_cycle_steps=100, cycle_mult=2.0, warmup_steps=10)
    plot_schedule(schedule, 800, out, lr_mults=[1e-5, 1e-2, 1.0])
    _assert_png(out)


def test_plot_schedule_rejects_bad_arguments(tmp_path):
    schedule = SGDR(0.01, 10)
    out = str(tmp_path / "x.png")
    with pytest.raises(ValueError, match="total_steps=0"):
        plot_schedule(schedule, 0, out)
    with pytest.raises(ValueError, match="lr_mults"):
        plot_schedule(schedule, 10, out, lr_mults=[1.0, -2.0])
    assert not os.path.exists(out)


def test_command_line_writes_png(tmp_path):
    out = str(tmp_path / "cli.png")
    result = _run(
        "--max_lr=0.02",
        "--first_cycle_steps=50",
        "--cycle_mult=1.5",
        "--max_lr_decay=0.8",
        "--warmup_steps=20",
        "--total_steps=400",
        "--lr_mults=0.1,1",
        f"--out={out}",
        "--title=cli test",
    )
    assert result.returncode == 0, result.stderr
    assert f"wrote {out}" in result.stdout
    _assert_png(out)


@pytest.mark.parametrize(
    "flag, shown",
    [
        ("--max_lr=0", "--max_lr=0.0"),
        ("--max_lr=nan", "--max_lr=nan"),
        ("--min_lr=-1", "--min_lr=-1.0"),
        ("--min_lr=0.5", "min_lr=0.5"),  # above the default max_lr: the cross-flag check
        ("--first_cycle_steps=0", "--first_cycle_steps=0.0"),
        ("--cycle_mult=0.5", "--cycle_mult=0.5"),
        ("--max_lr_decay=1.5", "--max_lr_decay=1.5"),
        ("--warmup_steps=-3", "--warmup_steps=-3"),
        ("--total_steps=0", "--total_steps=0"),
        ("--total_steps=ten", "ten"),
        ("--lr_mults=1,x", "--lr_mults="),
        ("--lr_mults=1,-1", "--lr_mults="),
        ("--out=plot.jpg", "--out=plot.jpg"),
        ("--out=/no/such/dir/a.png", "--out=/no/such/dir/a.png"),
        ("--no_such_flag=1", "no_such_flag"),
    ],
)
def test_bad_flag_is_one_line_exit_2(flag, shown):
    result = _run(flag)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("schedules.plot: error:") and shown in lines[0]
    assert "Traceback" not in result.stderr


def test_without_matplotlib_says_how_to_install(tmp_path):
    # A None entry in sys.modules makes `import matplotlib` fail as if it were not installed.
    code = (
        "import sys, runpy; sys.modules['matplotlib'] = None;"
        f"sys.argv = ['plot', '--out={tmp_path / 'x.png'}'];"
        "runpy.run_module('schedules.plot', run_name='__main__')"
    )
    result = _run(code=code)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert 'pip install -e ".[plots]"' in result.stderr
    assert not os.path.exists(tmp_path / "x.png")


def test_helpfull_documents_every_flag_with_unit():
    result = _run("--helpfull")  # absl exits 1 after printing help
    # One block per flag: its "--name:" line and the indented continuation lines.
    blocks, name = {}, None
    for line in result.stdout.splitlines():
        if line.startswith("  --"):
            name = line.split(":")[0].strip()[2:]
            blocks[name] = line
        elif line.startswith("    ") and name:
            blocks[name] += " " + line.strip()
    for name, unit in [
        ("max_lr", "> 0"),
        ("min_lr", "absolute"),
        ("first_cycle_steps", "steps"),
        ("cycle_mult", "unitless"),
        ("max_lr_decay", "unitless"),
        ("warmup_steps", "steps"),
        ("total_steps", "steps"),
        ("lr_mults", "unitless"),
        ("out", "PNG"),
        ("title", "Optional"),
    ]:
        assert unit in blocks[name], blocks.get(name)


def test_schedule_values_drawn_match_schedule():
    # plot_schedule evaluates the schedule in one vectorized call; that call must equal the
    # scalar calls it replaces.
    schedule = SGDR(0.01, 7, min_lr=1e-4, cycle_mult=1.5, warmup_steps=3)
    import tensorflow as tf

    steps = np.arange(60)
    vector = schedule(tf.constant(steps, tf.int64)).numpy()
    scalar = np.array([float(schedule(int(s))) for s in steps], dtype=np.float32)
    np.testing.assert_array_equal(vector, scalar)
