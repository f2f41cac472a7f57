"""The shipped flagfiles, installed with the package.

`--flagfile=NAME` (no directory, no .flags) finds configs/NAME.flags when no file NAME exists,
so `lrtech train --flagfile=quickstart` works from any directory after `pip install .`.
"""

import os

DIR = os.path.dirname(os.path.abspath(__file__))


def names() -> list[str]:
    """The shipped flagfiles' names (without .flags)."""
    return sorted(f[: -len(".flags")] for f in os.listdir(DIR) if f.endswith(".flags"))


def path(name: str) -> str | None:
    """configs/NAME.flags when NAME is a shipped flagfile's name, else None."""
    if os.sep in name or name.endswith(".flags"):
        return None
    candidate = os.path.join(DIR, f"{name}.flags")
    return candidate if os.path.isfile(candidate) else None
