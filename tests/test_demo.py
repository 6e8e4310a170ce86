"""`aurora demo`, the README's main job, end to end on a fresh temporary fleet."""
import os
import subprocess
import sys

import pytest

from aurora.node.process import _package_root

pytestmark = pytest.mark.process


def test_demo_survives_an_az_and_the_writer_and_loses_nothing(tmp_path):
    env = dict(os.environ, PYTHONPATH=_package_root())
    result = subprocess.run([sys.executable, "-m", "aurora.cli", "demo", "--seconds", "6", "--customers", "3"],
                            capture_output=True, text=True, cwd=str(tmp_path), env=env, timeout=300)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "killed AZ az2" in out and "SIGKILL to the writer process" in out
    assert "[FAILED]" not in out
    assert ", 0 lost" in out
    assert "[ok] stock adds up" in out
