"""Peers that ``python -m bench.report`` compares aurora with, each started by the benchmark.

Every peer lives in a temporary directory, listens on 127.0.0.1 only, and is stopped (and its
directory removed) by ``stop()``; every wait in here is bounded.  ``bench/install_peers.sh``
installs the Debian packages and Python modules they need.

    sqlite_peer    plain SQLite files: rollback journal FULL, WAL FULL, WAL NORMAL
    aurora_peer    aurora.connect on a local fleet of 6 storage-node processes
    postgres_peer  PostgreSQL 15 primary + 2 streaming standbys, synchronous replication
    etcd_peer      a 3-member etcd cluster, driven through its v3 JSON gateway
"""
