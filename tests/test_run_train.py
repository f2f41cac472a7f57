"""run_train.py end to end on the offline synthetic dataset, as a user runs it; its start-up
checks and --list_layers in-process."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from absl import flags

from trainer import flags as flags_lib
from trainer.errors import UserError
from trainer.experiment import Experiment
from trainer.loop.strategy import make_strategy
from trainer.run_dir import files as run_dir

ROOT = Path(__file__).resolve().parents[1]

# A tiny, fast run: few examples, the small ResNet, three segments, SGDR with restarts.
TINY = [
    "--dataset=synthetic",
    "--synthetic_train_size=128",
    "--synthetic_test_size=64",
    "--model=resnet8",
    "--global_batch_size=32",
    "--split_at=preset",
    "--lr_mults=0.01,0.1,1",
    "--max_lr=0.01",
    "--first_cycle_steps=2",
    "--cycle_mult=2",
    "--steps_per_loop=2",
    "--checkpoint_every_steps=4",
    "--noprogress",
]


PLAIN_KERAS_LOAD = """
import sys
# Keras without its optional extras (as where they are not installed): seconds less start-up.
sys.modules.update(sklearn=None, matplotlib=None, IPython=None)
import keras, numpy as np, tensorflow as tf
assert not any(m.split(".")[0] in ("trainer", "models", "schedules") for m in sys.modules)
model = keras.saving.load_model(sys.argv[1] + "/model.keras")
served = tf.saved_model.load(sys.argv[1] + "/saved_model")
x = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
np.testing.assert_allclose(model(x), served.serve(x), atol=1e-5)
print("equal")
"""


def _run(*args, timeout=240, env=None):
    return subprocess.run(
        [sys.executable, str(ROOT / "run_train.py"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


FIND = ["--lr_find_steps=30", "--lr_find_start=1e-5"]


def _tiny_without(*names):
    return [a for a in TINY if not any(a.startswith(f"--{n}=") for n in names)]


def test_end_to_end_writes_everything(tmp_path):
    # One run checks everything a training run writes, and --max_lr=auto (an LR range test
    # before training): each run_train.py process pays TensorFlow's start-up again.
    model_dir = tmp_path / "run"
    command = [f"--model_dir={model_dir}", "--max_lr=auto", *FIND, *_tiny_without("max_lr")]
    result = _run(*command, "--train_steps=8", "--snapshot_at_restarts")
    assert result.returncode == 0, result.stderr[-3000:]
    # --max_lr=auto trained at the range test's valley and recorded the number.
    chosen = re.search(r"^--max_lr=auto: training at --max_lr=(\S+)$", result.stdout, re.M)
    assert chosen, result.stdout
    flags_txt = (model_dir / "flags.txt").read_text()
    value = float(re.search(r"^--max_lr=(\S+)$", flags_txt, re.M).group(1))
    assert value == pytest.approx(float(chosen.group(1)), rel=1e-3)
    assert value == pytest.approx(
        json.loads((model_dir / "lr_find.json").read_text())["suggestions"]["valley"]
    )
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["step"] == 8
    assert 0.0 <= metrics["final"]["accuracy"] <= 1.0
    assert list((model_dir / "ckpt").glob("ckpt-*.index")), "no checkpoint written"
    assert list(model_dir.rglob("events.out.tfevents.*")), "no TensorBoard events"
    assert (model_dir / "export" / "model.keras").stat().st_size > 0
    assert (model_dir / "export" / "saved_model" / "saved_model.pb").exists()
    # Cycles of 2, 4 steps start at steps 0, 2, 6: cycles 0 and 1 ended inside 8 steps.
    snapshots = sorted(p.name for p in (model_dir / "snapshots").iterdir())
    assert snapshots[:2] == ["cycle_0.weights.h5", "cycle_1.weights.h5"], snapshots
    # The resolved configuration repeats the run with one command.
    flagfile = (model_dir / "flags.txt").read_text()
    assert "--num_classes=10" in flagfile and "--lr_mults=0.01,0.1,1.0" in flagfile

    # model.keras loads in plain Keras, in a process that never sees lrtech, and agrees with
    # the SavedModel.
    plain = subprocess.run(
        [sys.executable, "-c", PLAIN_KERAS_LOAD, str(model_dir / "export")],
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert plain.returncode == 0, plain.stderr[-3000:]
    assert plain.stdout.strip() == "equal", plain.stdout

    # The same command again: the run is complete; nothing trains, nothing is rewritten.
    exported = (model_dir / "export" / "model.keras").stat().st_mtime_ns
    same = _run(*command, "--train_steps=8")
    assert same.returncode == 0, same.stderr[-3000:]
    assert "complete at step 8" in same.stderr
    assert (model_dir / "export" / "model.keras").stat().st_mtime_ns == exported
    assert json.loads((model_dir / "metrics.json").read_text())["final"]["step"] == 8

    # Run again with more steps: it resumes from step 8 by itself.
    shutil.rmtree(model_dir / "export" / "saved_model")  # an incomplete export is rewritten
    again = _run(*command, "--train_steps=10")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "step 8" in again.stderr.lower() or "step=8" in again.stderr.lower(), again.stderr
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["step"] == 10 and [e["step"] for e in metrics["history"]] == [4, 8, 10]
    assert (model_dir / "export" / "saved_model" / "saved_model.pb").exists()


def test_list_layers_prints_layers_and_segments(tmp_path):
    # In-process, what run_train.py --list_layers prints: the built Experiment's layer report.
    config = flags_lib.parse_config([f"--model_dir={tmp_path}", "--list_layers", *TINY])
    out = Experiment(config, make_strategy(config.strategy)).build().layer_report()
    assert "segment" in out.lower()
    for mult in ("0.01", "0.1", "1"):
        assert mult in out


USER_ERRORS = [
    (["--model=nosuchnet"], "nosuchnet"),
    (["--split_at=no_such_layer"], "no_such_layer"),
    (["--lr_mults=1,1"], "--lr_mults"),
    (["--dataset=folder:/nonexistent/images"], "/nonexistent/images"),
    (["--dataset=cifar10", "--data_dir=/nonexistent/tfds"], "cifar10"),
    (["--first_cycle_epochs=0.01", "--first_cycle_steps="], "--first_cycle_epochs=0.01"),
    (["--num_classes=3"], "--num_classes=3"),
    (["--freeze_segments=5"], "--freeze_segments=5"),
]


def _user_error_argv(model_dir, args):
    """TINY with `args` replacing its flags of the same names (`--NAME=` drops one)."""
    base = [a for a in TINY if not any(a.startswith(x.split("=")[0] + "=") for x in args)]
    args = [a for a in args if not a.endswith("=")]
    return [f"--model_dir={model_dir}", "--train_steps=2", *base, *args]


@pytest.mark.parametrize("args,message", USER_ERRORS)
def test_user_errors_name_the_flag_or_file(tmp_path, args, message):
    # In-process, the path run_train.py takes (parse, strategy, Experiment.build): each error
    # is one of the exception types run_train.main turns into one line and exit code 2. The
    # process-level contract (exit code 2, exactly one line on stderr, nothing else) is
    # test_user_error_exits_2_with_one_line's; TFDS and the other data sources print nothing
    # before their one line: test_data.test_load_errors_are_one_line_with_nothing_before.
    config = flags_lib.parse_config(_user_error_argv(tmp_path, args))
    with pytest.raises((UserError, ValueError, TypeError)) as raised:  # run_train.main's
        Experiment(config, make_strategy(config.strategy)).build()
    line = str(raised.value).replace("\n", " ")
    assert message in line, line


def test_user_error_exits_2_with_one_line(tmp_path):
    # The last of USER_ERRORS' checks to run (the model is built, its segments assigned): a
    # whole run_train.py process up to it writes one line and exits with code 2.
    result = _run(*_user_error_argv(tmp_path, ["--freeze_segments=5"]))
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith("run_train.py: error: --freeze_segments=5"), lines
    assert "Traceback" not in result.stderr


def test_tensorflow_imports_without_kerass_optional_imports():
    # conftest.py imported TensorFlow as run_train.py does (trainer.tools.cli.import_tensorflow):
    # Keras skipped scikit-learn, matplotlib.pyplot and IPython, which still import afterwards.
    from keras.src.saving import file_editor
    from keras.src.visualization import plot_image_gallery
    from keras.src.wrappers import fixes

    assert fixes.sklearn is None and plot_image_gallery.plt is None
    assert file_editor.ipython is None
    assert not [
        m for m in ("sklearn", "matplotlib", "IPython") if m in sys.modules and not sys.modules[m]
    ]
    from sklearn.datasets import load_digits

    assert load_digits().images.shape == (1797, 8, 8)
    import matplotlib.pyplot

    assert matplotlib.pyplot.figure is not None


@pytest.mark.parametrize(
    "args,message",
    [
        (["--global_batch_size=99999999999999999999999"], "--global_batch_size"),
        (["--synthetic_train_size=10000000000"], "--synthetic_train_size"),
        (["--image_size=100000"], "--image_size=100000"),
        (["--model_dir=/proc/lrtech"], "--model_dir=/proc/lrtech"),
        (["--model_dir={file}"], "is a file"),
        (["--model_dir={file}/run"], "is a file, not a directory"),
    ],
)
def test_bad_flags_fail_before_heavy_work(tmp_path, args, message):
    # In-process, the checks run_train.py makes before it imports TensorFlow: the flags
    # (parse_flags), then --model_dir (run_dir.check in _take_model_dir). Neither needs
    # TensorFlow; the process-level contract is test_user_error_exits_2_with_one_line's.
    a_file = tmp_path / "a_file"
    a_file.write_text("not a directory")
    args = [a.format(file=a_file) for a in args]
    model_dir = (
        [] if any(a.startswith("--model_dir") for a in args) else [f"--model_dir={tmp_path}"]
    )
    with pytest.raises((flags.Error, UserError)) as raised:
        config = flags_lib.parse_config([*model_dir, "--train_steps=2", *TINY, *args])
        run_dir.check(config.model_dir)
    assert message in str(raised.value)


def test_sigterm_during_start_up_exits_3_without_traceback(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "run_train.py"), f"--model_dir={tmp_path}", "--train_steps=2"]
        + TINY,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.0)  # inside the imports (TensorFlow takes several seconds)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert "before training" in err
    assert not list(tmp_path.glob("ckpt/ckpt-*.index"))


def test_sigterm_saves_and_exits_3_then_resumes(tmp_path):
    model_dir = tmp_path / "run"
    args = [f"--model_dir={model_dir}", "--train_steps=100000", *TINY]
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "run_train.py"), *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 180
    while time.time() < deadline and not list((model_dir / "ckpt").glob("ckpt-*.index")):
        time.sleep(0.5)
    # A second run on the same model_dir (another seed) is refused while the first lives.
    second = _run(*args, "--seed=7")
    assert second.returncode == 2, second.stderr[-3000:]
    assert f"pid {proc.pid}" in second.stderr and "in use by another run" in second.stderr
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err[-3000:]
    assert "Traceback" not in err
    assert list((model_dir / "ckpt").glob("ckpt-*.index"))


def test_non_finite_loss_stops_with_exit_1(tmp_path):
    model_dir = tmp_path / "run"
    args = [a for a in TINY if not a.startswith(("--max_lr", "--lr_mults"))]
    result = _run(
        f"--model_dir={model_dir}",
        "--train_steps=40",
        "--optimizer=sgd",
        "--max_lr=1e30",
        "--lr_mults=1,1,1",
        *args,
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert "step" in result.stderr and "non-finite" in result.stderr.lower()


def test_lr_find_alone_end_to_end(tmp_path):
    # --max_lr=auto end to end: test_end_to_end_writes_everything.
    alone = _run(f"--model_dir={tmp_path / 'find'}", "--lr_find", *FIND, *TINY)
    assert alone.returncode == 0, alone.stderr
    line = re.search(r"^suggested --max_lr=(\S+) \(valley;", alone.stdout, re.M)
    assert line, alone.stdout
    record = json.loads((tmp_path / "find" / "lr_find.json").read_text())
    assert record["suggestions"]["valley"] == pytest.approx(float(line.group(1)), rel=1e-2)
    assert (tmp_path / "find" / "lr_find.png").exists()
    assert not (tmp_path / "find" / "ckpt").exists()  # the test alone trains nothing
