import os
import subprocess
import sys
from pathlib import Path

import pytest

import aurora
from aurora import _native, errors

ROOT = Path(__file__).resolve().parent.parent


def test_crc32c_check_value():
    assert aurora.crc32c(b"123456789") == 0xE3069283


def test_every_status_code_maps_to_an_aurora_error_class():
    table = _native.status_codes()
    assert len(table) == 16
    assert all(code < 0 for code in table)
    for cls in table.values():
        assert issubclass(cls, (errors.AuroraError, ValueError))


def test_cli_info_names_the_crc_backend(tmp_path):
    # Run from outside the source tree (whose aurora/ has no compiled _native), importing
    # aurora from where this process did.
    from aurora.node.process import _package_root
    env = dict(os.environ, PYTHONPATH=_package_root())
    out = subprocess.run([sys.executable, "-m", "aurora.cli", "info"], check=True,
                         capture_output=True, text=True, cwd=tmp_path, env=env).stdout
    assert aurora.crc32c_backend in out
    assert "4096 bytes" in out


def test_pyproject_lists_every_package():
    """A package folder missing from [tool.setuptools] packages is silently left out of the
    wheel, and only a clean install notices."""
    pyproject = ROOT / "pyproject.toml"
    if not pyproject.is_file() or not (ROOT / "aurora").is_dir():
        pytest.skip("pyproject.toml and the source tree are not next to this test suite")
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        tomllib = pytest.importorskip("tomli")
    with open(pyproject, "rb") as f:
        listed = set(tomllib.load(f)["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts)
             for p in (ROOT / "aurora").rglob("__init__.py")}
    assert listed == found
