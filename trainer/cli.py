"""What the trainer's command-line tools share: one-line errors with exit code 2."""

from __future__ import annotations

import sys


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
