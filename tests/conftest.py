import os
import shutil
import tempfile

import pytest
from hypothesis import HealthCheck, settings

# Named hypothesis profiles: "ci" is the default; "dev" is quicker, "soak" much longer.
settings.register_profile("ci", max_examples=200, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=50, deadline=None)
settings.register_profile("soak", max_examples=20000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def short_dir():
    """A directory with a short path, removed after the test: Unix socket paths are limited to
    about 100 bytes, and pytest's tmp_path can be longer."""
    path = tempfile.mkdtemp(prefix="aur-")
    yield path
    shutil.rmtree(path, ignore_errors=True)
