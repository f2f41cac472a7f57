"""What the trainer's command-line tools share: one-line errors with exit code 2, and a
TensorFlow import without Keras' optional start-up imports."""

from __future__ import annotations

import sys

# Imported by Keras at start-up only when installed, for features the trainer never uses:
# scikit-learn for `keras.wrappers` (the SKLearn* estimators), matplotlib.pyplot for
# `keras.visualization`, IPython for `keras.saving.KerasFileEditor`'s notebook display.
# Measured on 2 CPU cores: about 2.5 s of every process start.
OPTIONAL_KERAS_IMPORTS = ("sklearn", "matplotlib", "IPython")


def user_error(program: str, message: str) -> None:
    """Writes `PROGRAM: error: MESSAGE` as one line to stderr and exits with code 2."""
    sys.stderr.write(f"{program}: error: {str(message).replace(chr(10), ' ')}\n")
    sys.exit(2)


def flags_parser(program: str):
    """An absl `flags_parser` for `app.run`: a bad flag is one line and exit code 2 (not 1)."""

    def parse(argv):
        from absl import flags

        try:
            return flags.FLAGS(argv)
        except flags.Error as e:
            user_error(program, str(e))

    return parse


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
