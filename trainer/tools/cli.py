"""The one `main` of every lrtech command: one-line errors with exit code 2, exit codes for
signals and failed training, and a TensorFlow import without Keras' optional imports.

    if __name__ == "__main__":
        cli.run("predict", define_flags, main)

Exit codes: 0 done; 1 training failed (non-finite loss); 2 bad input (one line on stderr,
`PROGRAM: error: ...`, no traceback); 3 interrupted by SIGTERM/SIGINT after saving (the same
command resumes); 130 interrupted by Ctrl-C where nothing was being saved.
"""

from __future__ import annotations

import sys

# Imported by Keras at start-up only when installed, for features the trainer never uses:
# scikit-learn for `keras.wrappers` (the SKLearn* estimators), matplotlib.pyplot for
# `keras.visualization`, IPython for `keras.saving.KerasFileEditor`'s notebook display.
# Measured on 2 CPU cores: about 2.5 s of every process start.
OPTIONAL_KERAS_IMPORTS = ("sklearn", "matplotlib", "IPython")


def user_error(program: str, message) -> None:
    """Writes `PROGRAM: error: MESSAGE` as one line to stderr and exits with code 2."""
    sys.stderr.write(f"{program}: error: {str(message).replace(chr(10), ' ')}\n")
    sys.exit(2)


def flags_parser(program: str, cross_check=None):
    """An absl `flags_parser` for `app.run`: a bad flag is one line and exit code 2 (not 1).

    `cross_check(FLAGS)`, when given, runs after parsing (checks between flags) and may raise
    `absl.flags.Error`, `ValueError` or `TypeError`.
    """

    def parse(argv):
        from absl import flags

        try:
            argv = flags.FLAGS(argv)
            if cross_check is not None:
                cross_check(flags.FLAGS)
            return argv
        except (flags.Error, ValueError, TypeError) as e:
            user_error(program, str(e))

    return parse


def non_empty(fv, name: str, message: str) -> None:
    """A validator beside a flag's definition: a value given must not be blank."""
    from absl import flags

    flags.register_validator(
        name, lambda v: v is None or bool(v.strip()), message=message, flag_values=fv
    )


def guarded(program: str, body, argv) -> int:
    """Runs `body(argv)`; the one place that turns errors into exit codes.

    Library code raises ValueError/TypeError (and `trainer.errors.UserError`) for bad input,
    the Keras way: here they become one line and exit code 2.
    """
    from absl import logging

    from trainer.errors import NonFiniteError, Preempted

    if len(argv) > 1:
        user_error(program, f"unexpected positional arguments: {' '.join(argv[1:])}")
    try:
        return body(argv)
    except Preempted as e:
        logging.warning("%s", e)
        sys.exit(Preempted.EXIT_CODE)
    except NonFiniteError as e:
        sys.stderr.write(f"{program}: training stopped: {e}\n")
        sys.exit(1)
    except (ValueError, TypeError) as e:  # UserError is a ValueError
        user_error(program, str(e))
    except KeyboardInterrupt:
        sys.stderr.write(f"{program}: interrupted\n")
        sys.exit(130)


def run(program: str, define_flags, body, *, cross_check=None, positional: bool = False):
    """`app.run` of a command: defines its flags, parses them (one-line errors), runs `body`.

    Args:
        program: The name in error lines (`PROGRAM: error: ...`).
        define_flags: `define_flags(absl.flags.FLAGS)`.
        body: `body(argv) -> int`, called with the positional arguments left by absl.
        cross_check: Optional checks between flags after parsing (see `flags_parser`).
        positional: Whether the command takes positional arguments (else they are an error).
    """
    from absl import app, flags

    define_flags(flags.FLAGS)

    def main(argv):
        if positional:
            return guarded(program, lambda _: body(argv), argv[:1])
        return guarded(program, body, argv)

    app.run(main, flags_parser=flags_parser(program, cross_check))


def import_tensorflow():
    """`trainer.runtime.import_tensorflow()`, with Keras' optional imports of scikit-learn,
    matplotlib and IPython (`OPTIONAL_KERAS_IMPORTS`) skipped; returns TensorFlow.

    While TensorFlow (and with it Keras) imports, those packages look uninstalled, so Keras
    leaves its scikit-learn wrappers and `keras.visualization` without them (they raise if
    used). Afterwards they import normally: `--dataset=sklearn_digits` and the plots work.
    Packages imported before the call (e.g. IPython in a notebook) are left alone.
    """
    from trainer import runtime

    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    blocked = [name for name in OPTIONAL_KERAS_IMPORTS if name not in sys.modules]
    for name in blocked:
        sys.modules[name] = None  # `import name` raises ImportError
    try:
        return runtime.import_tensorflow()
    finally:
        for name in blocked:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]


def start(quiet_unless_verbosity: bool = True) -> None:
    """The runtime set-up every command does first: runtime defaults before TensorFlow is
    imported, TensorFlow's C++ and absl INFO logs quiet unless `--verbosity` was given, then
    TensorFlow without Keras' optional imports."""
    from absl import flags

    from trainer import runtime

    runtime.configure(quiet=True)
    fv = flags.FLAGS
    if quiet_unless_verbosity and not (fv.is_parsed() and fv["verbosity"].present):
        runtime.quiet_logging()
    import_tensorflow()
