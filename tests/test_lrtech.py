"""The `lrtech` command (trainer/tools/lrtech.py): its usage, the command line each subcommand
runs, help that lists a command's flags, and the dispatch to run_train.py and the tools.

The installed console script itself: tests/test_install.py and .ci/install_check.sh.
"""

import os
import pathlib
import subprocess
import sys

import pytest

from trainer.tools import lrtech

ROOT = pathlib.Path(__file__).resolve().parents[1]
NAMES = ("train", "lr-find", "layers", "predict", "evaluate", "ensemble")


def _lrtech(cwd, *args):
    """`lrtech ARGS` in a subprocess (run_train defines absl's global flags when imported)."""
    return subprocess.run(
        [sys.executable, "-m", "trainer.tools.lrtech", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("argv", [["lrtech"], ["lrtech", "--help"], ["lrtech", "-h"]])
def test_usage_lists_the_six_subcommands_one_line_each(argv, capsys):
    assert lrtech.main(argv) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "usage: lrtech COMMAND [--flag=value ...]"
    for name in NAMES:
        assert sum(line.startswith(f"  {name} ") for line in lines) == 1, name
    assert "lrtech train --flagfile=quickstart" in out
    assert "quickstart" in out.split("shipped flagfiles", 1)[1]  # the names users can pass


@pytest.mark.parametrize("name", ["tran", "--flagfile=quickstart"])
def test_an_unknown_subcommand_is_one_line_and_exit_code_2(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        lrtech.main(["lrtech", name, "--epochs=1"])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert captured.err.startswith(f"lrtech: error: unknown command {name!r} (one of train, ")


def test_train_runs_the_command_line_as_given_under_its_program_name():
    command, argv = lrtech.command_argv(["lrtech", "train", "--flagfile=quickstart", "--epochs=1"])
    assert command.module == "run_train"
    assert argv == ["lrtech train", "--flagfile=quickstart", "--epochs=1"]


@pytest.mark.parametrize(("name", "flag"), [("layers", "--list_layers"), ("lr-find", "--lr_find")])
def test_layers_and_lr_find_append_their_flag_after_the_users(name, flag):
    command, argv = lrtech.command_argv(["lrtech", name, "--flagfile=quickstart"])
    assert command.module == "run_train"
    assert argv == [f"lrtech {name}", "--flagfile=quickstart", flag]
    # Before a `--` that ends the flags, where absl still reads it as a flag.
    _, argv = lrtech.command_argv(["lrtech", name, "--flagfile=f", "--", "x"])
    assert argv == [f"lrtech {name}", "--flagfile=f", flag, "--", "x"]


@pytest.mark.parametrize("name", ["predict", "evaluate", "ensemble"])
def test_tools_keep_their_arguments_and_module(name):
    command, argv = lrtech.command_argv(["lrtech", name, "--model_dir=d", "a.png"])
    assert command.module == f"trainer.tools.{name}"
    assert argv == [f"lrtech {name}", "--model_dir=d", "a.png"]


def test_a_help_flag_counts_only_before_the_end_of_flags():
    assert lrtech.wants_help(["--model_dir=d", "-h"])
    assert lrtech.wants_help(["--helpshort"])
    assert not lrtech.wants_help(["--model_dir=d", "--", "--help"])  # a file named --help
    assert not lrtech.wants_help(["--helpfull"])  # absl's own


def test_tool_help_shows_its_flags_and_its_docstring_as_lrtech(capsys):
    assert lrtech.main(["lrtech", "predict", "--model_dir=d", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("lrtech predict: ")
    assert "lrtech predict --model_dir=DIR" in out  # the docstring's `python3 -m trainer.predict`
    for flag in ("--model_dir", "--top_k", "--output", "--[no]skip_corrupt"):
        assert f"\n  {flag}:" in out, flag


def test_train_help_shows_the_training_flags_not_only_try_helpfull(tmp_path):
    result = _lrtech(tmp_path, "train", "--help")
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert out.startswith("lrtech train: ")
    assert "lrtech train --flagfile=quickstart [--flag=value ...]" in out
    for flag in ("--max_lr", "--epochs", "--split_at", "--model_dir"):
        assert f"\n  {flag}:" in out, flag
    assert "Try --helpfull" not in out


def test_run_train_help_lists_the_training_flags():
    result = subprocess.run(
        [sys.executable, str(ROOT / "run_train.py"), "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stderr[-2000:]  # absl's --help exit code
    assert "\n  --max_lr:" in result.stdout
    assert "\n  --[no]list_layers:" in result.stdout


def test_train_errors_name_lrtech_train_and_exit_2(tmp_path):
    result = _lrtech(tmp_path, "train", "--flagfile=quickstart", "--epochs=-1")
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("lrtech train: error: ")
    assert "epochs" in result.stderr
    assert not (tmp_path / "runs").exists()  # refused before the run directory


def test_layers_lists_the_layers_of_a_local_flagfile(tmp_path):
    (tmp_path / "tiny.flags").write_text(
        "--dataset=synthetic\n--synthetic_train_size=32\n--synthetic_test_size=16\n"
        "--model=resnet8\n--image_size=32\n--global_batch_size=16\n--epochs=1\n"
        "--max_lr=0.01\n--split_at=preset\n--lr_mults=0.1,0.3,1\n"
    )
    result = _lrtech(tmp_path, "layers", "--flagfile=tiny.flags")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0].split()[:2] == ["index", "layer"] and "segment" in lines[0]
    assert any(line.split()[1:2] == ["stem_conv"] for line in lines[1:])
    assert "Run directory" not in result.stdout  # --list_layers reached run_train: no run
    assert not (tmp_path / "runs").exists()
