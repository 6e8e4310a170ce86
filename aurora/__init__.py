"""aurora: Amazon Aurora's storage architecture for Python.

A writer in your process ships only redo records to a fleet of storage-node processes;
each protection group lives on 6 nodes across 3 failure domains and a write is durable at
4 of 6.  See docs/architecture.md.
"""
from aurora import errors
from aurora.errors import AuroraError
from aurora._native import crc32c, crc32c_backend
from aurora.cluster import Cluster
from aurora.sqlite import connect

__version__ = "0.1.0"

__all__ = ["AuroraError", "Cluster", "crc32c", "crc32c_backend", "errors", "__version__"]
