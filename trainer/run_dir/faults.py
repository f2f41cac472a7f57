"""Fault injection for the crash tests: kill this process at a named point of the driver.

`point(name)` does nothing unless the environment variable LRTECH_KILL_AT is
"NAME" or "NAME:K"; then the K-th time (default 1) the driver passes point NAME, the process
sends itself SIGKILL, exactly as a machine failure would stop it. tests/test_faults.py uses it
to kill a run during a checkpoint write and during the export, deterministically; nothing else
sets the variable.
"""

from __future__ import annotations

import os
import signal

ENV = "LRTECH_KILL_AT"
_passed: dict[str, int] = {}


def point(name: str) -> None:
    """Marks a point where a crash test may kill the process (see the module docstring)."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    target, _, count = spec.partition(":")
    if target != name:
        return
    _passed[name] = _passed.get(name, 0) + 1
    if _passed[name] == int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)
