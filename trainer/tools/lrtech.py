"""`lrtech`, the installed command: the training run and the tools under one name.

    lrtech train --flagfile=quickstart [--flag=value ...]
    lrtech lr-find --flagfile=NAME          (= lrtech train ... --lr_find)
    lrtech layers --flagfile=NAME           (= lrtech train ... --list_layers)
    lrtech predict --model_dir=DIR IMAGE_OR_FOLDER...
    lrtech evaluate --model_dir=DIR
    lrtech ensemble --model_dir=DIR

Each subcommand is an existing entry point, unchanged: train, lr-find and layers run
run_train.py's absl app (the design card's entry point, with its flags, parsing, exit codes),
predict, evaluate and ensemble their `trainer.tools.*.command()`. Only the program name
differs: "lrtech train" in usage and error lines.

`lrtech COMMAND --help` (or -h) prints the command's own flags here: absl's --help lists only
the key flags of the main module, which under a console script is the generated wrapper, so
it would show none; `--helpfull` is absl's, every flag.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
import sys
import textwrap
from collections.abc import Sequence

from trainer.tools import cli

PROGRAM = "lrtech"
HELP = frozenset({"--help", "-help", "-h", "--helpshort", "-helpshort", "-?"})
RUN_TRAIN = "run_train"


@dataclasses.dataclass(frozen=True)
class Command:
    """A subcommand: the module that runs it and the flags it adds to the command line."""

    name: str
    summary: str  # one line in `lrtech --help`
    module: str  # run_train, or a trainer.tools module with define_flags() and command()
    extra: tuple[str, ...] = ()  # appended to the command line (later flags win)


COMMANDS = (
    Command("train", "fine-tune a model: segments, SGDR, checkpoints, resume, export", RUN_TRAIN),
    Command(
        "lr-find",
        "the LR range test alone: lr_find.png and a suggested --max_lr",
        RUN_TRAIN,
        ("--lr_find",),
    ),
    Command(
        "layers",
        "every layer with its index, segment and learning rate (to choose --split_at)",
        RUN_TRAIN,
        ("--list_layers",),
    ),
    Command(
        "predict", "top-k classes of images with a trained run's export", "trainer.tools.predict"
    ),
    Command(
        "evaluate",
        "a run's export or checkpoint on an eval split: evaluation.json, confusion matrix",
        "trainer.tools.evaluate",
    ),
    Command(
        "ensemble",
        "the snapshot ensemble of a run's SGDR cycles: ensemble.json",
        "trainer.tools.ensemble",
    ),
)
_BY_NAME = {c.name: c for c in COMMANDS}


def usage() -> str:
    """`lrtech --help`: the subcommands, one line each, and examples."""
    import configs

    width = max(len(c.name) for c in COMMANDS)
    lines = [
        f"usage: {PROGRAM} COMMAND [--flag=value ...]",
        "",
        "Fine-tune with differential learning rates and SGDR, then use the trained model.",
        "",
        "commands:",
        *(f"  {c.name:<{width}}  {c.summary}" for c in COMMANDS),
        "",
        "examples:",
        f"  {PROGRAM} train --flagfile=quickstart            # a shipped flagfile, by name",
        f"  {PROGRAM} train --flagfile=my.flags --epochs=3   # later flags override the file",
        f"  {PROGRAM} lr-find --flagfile=quickstart",
        f"  {PROGRAM} predict --model_dir=runs/quickstart digit.png",
        f"  {PROGRAM} evaluate --model_dir=runs/quickstart",
        "",
        *textwrap.wrap(
            f"shipped flagfiles (--flagfile=NAME): {', '.join(configs.names())}",
            width=96,
            subsequent_indent="  ",
        ),
        f"{PROGRAM} COMMAND --help lists the command's flags; --helpfull adds absl's own.",
    ]
    return "\n".join(lines) + "\n"


def command_argv(argv: Sequence[str]) -> tuple[Command, list[str]]:
    """The subcommand of `argv` (`lrtech COMMAND ARGS...`) and the command line it runs:
    `["lrtech COMMAND", *ARGS, *extra]`, the extra flags before a `--` that ends the flags.

    Raises:
      ValueError: no subcommand, or an unknown one.
    """
    if len(argv) < 2:
        raise ValueError(f"a command is missing ({_choices()})")
    name, args = argv[1], list(argv[2:])
    if name not in _BY_NAME:
        hint = f"; did you mean {PROGRAM} train {name}?" if name.startswith("-") else ""
        raise ValueError(f"unknown command {name!r} ({_choices()}){hint}")
    command = _BY_NAME[name]
    end = args.index("--") if "--" in args else len(args)
    return command, [f"{PROGRAM} {name}", *args[:end], *command.extra, *args[end:]]


def _choices() -> str:
    return f"one of {', '.join(c.name for c in COMMANDS)}; {PROGRAM} --help"


def wants_help(args: Sequence[str]) -> bool:
    """Whether a help flag comes before the end of the flags (`--`)."""
    for arg in args:
        if arg == "--":
            return False
        if arg in HELP:
            return True
    return False


def command_help(command: Command) -> str:
    """`lrtech COMMAND --help`: the command's docstring, named as typed, and its flags."""
    from absl import flags

    program = f"{PROGRAM} {command.name}"
    module = importlib.import_module(command.module)
    if command.module == RUN_TRAIN:  # its import defined the flags, as its key flags
        module.INTERRUPTS.uninstall()  # only help is printed: signals act as usual
        flag_help = flags.FLAGS.module_help(RUN_TRAIN)
    else:
        fv = flags.FlagValues()
        module.define_flags(fv)
        flag_help = fv.module_help(command.module)
    # The docstrings show the commands they document (python3 -m trainer.predict, ...) and
    # flagfiles by path in the source tree; lrtech finds the shipped ones by name.
    doc = re.sub(r"python3? (-m trainer\.\w+|run_train\.py)", program, module.__doc__.strip())
    doc = re.sub(r"--flagfile=configs/(\w+)\.flags", r"--flagfile=\1", doc)
    extra = f" (= {PROGRAM} train ... {' '.join(command.extra)})" if command.extra else ""
    return (
        f"{program}: {command.summary}{extra}\n\n{doc}\n\nflags ({program} --helpfull: every "
        f"flag, absl's included):\n\n{flag_help.strip(chr(10))}\n"
    )


def _run_train(argv: list[str]) -> None:
    from absl import app

    import run_train

    run_train.PROGRAM = argv[0]  # its error and warning lines name the command as typed
    app.run(run_train.main, argv=argv, flags_parser=run_train.parse_flags)


def main(argv: Sequence[str] | None = None) -> int:
    """The `lrtech` console script; train and the tools end the process with their exit code."""
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] in HELP:
        sys.stdout.write(usage())
        return 0
    try:
        command, args = command_argv(argv)
    except ValueError as e:
        cli.user_error(PROGRAM, e)
    if wants_help(args[1:]):
        sys.stdout.write(command_help(command))
        return 0
    sys.argv = args  # absl's usage lines and the tools' app.run read sys.argv
    if command.module == RUN_TRAIN:
        _run_train(args)
    else:
        importlib.import_module(command.module).command()
    return 0


if __name__ == "__main__":
    sys.exit(main())
