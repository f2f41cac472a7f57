"""A non-editable `pip install .` works outside the source tree (.ci/install_check.sh).

The check takes about 2 minutes (a venv, a wheel build, one epoch of the quickstart; 1 min 54 s
and 2 min 15 s measured on 2 cores at load average 6-7), so the suite skips it unless
LRTECH_INSTALL_TEST=1; .ci/run runs the script after the suite.

    LRTECH_INSTALL_TEST=1 python3 -m pytest -q -n 0 tests/test_install.py
"""

import os
import pathlib
import subprocess

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / ".ci" / "install_check.sh"


@pytest.mark.skipif(
    os.environ.get("LRTECH_INSTALL_TEST") != "1",
    reason="slow (about 2 min): set LRTECH_INSTALL_TEST=1, or run .ci/install_check.sh",
)
def test_installed_lrtech_trains_the_shipped_quickstart_from_another_directory():
    # The script installs into a temporary venv, checks that run_train, configs/*.flags and
    # the pretrained weights come from it, `lrtech --help`, `lrtech train --help/--helpfull`,
    # then runs `lrtech train --flagfile=quickstart --epochs=1` in an empty directory: exit 0,
    # "Run directory: runs/quickstart" first, the export under that directory.
    result = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "install_check: ok" in result.stdout
