import subprocess
import sys

import aurora
from aurora import _native, errors


def test_crc32c_check_value():
    assert aurora.crc32c(b"123456789") == 0xE3069283


def test_every_status_code_maps_to_an_aurora_error_class():
    table = _native.status_codes()
    assert len(table) == 16
    assert all(code < 0 for code in table)
    for cls in table.values():
        assert issubclass(cls, (errors.AuroraError, ValueError))


def test_cli_info_names_the_crc_backend():
    out = subprocess.run([sys.executable, "-m", "aurora.cli", "info"], check=True,
                         capture_output=True, text=True).stdout
    assert aurora.crc32c_backend in out
    assert "4096 bytes" in out
