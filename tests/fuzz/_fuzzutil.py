"""Shared by the fuzz targets: a scratch directory on a RAM file system where there is one
(every target opens real files, and fsync there is nearly free), removed at exit."""
import atexit
import os
import shutil
import tempfile


def scratch_dir(prefix):
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    path = tempfile.mkdtemp(prefix=prefix, dir=base)
    atexit.register(shutil.rmtree, path, True)
    return path
