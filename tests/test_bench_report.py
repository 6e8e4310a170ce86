"""Smoke tests of the peer comparison, ``python -m bench.report`` (bench/report.py).

The first runs the quick report at its smallest setting on SQLite and aurora only (no other
binaries needed); the others start a 3-member etcd cluster, and PostgreSQL with two
synchronous standbys, for one short cell each, and skip, saying why, where the binaries (or,
for PostgreSQL, psycopg from the ``bench`` extra) are absent
(``bench/install_peers.sh`` installs them; .ci/run does when apt-get is available).  Both run
the report in a child process into a temporary directory: the committed results and
bench/README.md are never touched.  They check that the report is produced and well formed,
never how fast anything is.
"""
import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPORT_TIMEOUT_S = 180


def run_report(tmp_path, *args):
    import aurora   # the report's child must import the same aurora as this test does
    paths = [os.path.dirname(os.path.dirname(os.path.abspath(aurora.__file__))), ROOT]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(dict.fromkeys(paths)), MPLBACKEND="Agg")
    out = tmp_path / "results"
    done = subprocess.run([sys.executable, "-m", "bench.report", "--quick", "--out", str(out), *args],
                          cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=REPORT_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads((out / "peers-quick.json").read_text())
    assert (out / "peers.md").read_text().startswith("Machine: `nproc`")
    return data, out, done


def cells_of(data, peer):
    return [c for c in data["cells"] if c["peer"] == peer]


@pytest.mark.process
def test_quick_report_sqlite_and_aurora(tmp_path):
    data, out, done = run_report(tmp_path, "--only", "sqlite-wal-full,aurora", "--clients", "1,4",
                                 "--workloads", "bookstore,select", "--seconds", "0.3", "--sizes-mib", "1")
    assert not data["skipped"], data["skipped"]
    for peer in ("aurora", "sqlite-wal-full"):
        cells = cells_of(data, peer)
        assert len(cells) == 4, cells
        for c in cells:
            assert c["txns"] > 0 and c["errors"] == 0, c
            assert c["p50_ms"] <= c["p99_ms"] <= c["p999_ms"], c
    bookstore = [c for c in cells_of(data, "aurora") if c["workload"] == "bookstore"]
    for c in bookstore:
        assert 0 < c["replicated_bytes"] < c["whole_page_bytes"], c
    assert [p["size_mib"] for p in data["recovery"]["aurora"]] == [1]
    assert data["recovery"]["sqlite-wal-full"][0]["recovery_s"] > 0
    assert data["benchmarks"], "rows for bench/summarize.py"
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "no plots" in done.stderr
    else:
        for name in ("throughput", "latency", "bytes", "recovery"):
            png = out / "plots" / ("peers-%s.png" % name)
            assert 0 < png.stat().st_size < 100 * 1024, png


def why_missing(module):
    import importlib
    return importlib.import_module("bench.peers." + module).available()


@pytest.mark.process
@pytest.mark.parametrize("peer, module", [("etcd-3", "etcd_peer"), ("pg-sync-any1", "postgres_peer")])
def test_quick_report_server_peers(tmp_path, monkeypatch, peer, module):
    """etcd needs only its binary; PostgreSQL needs its binaries and psycopg (the bench extra)."""
    monkeypatch.syspath_prepend(ROOT)
    why = why_missing(module)
    if why:
        pytest.skip(why)
    if peer.startswith("pg") and os.geteuid() == 0 and shutil.which("useradd") is None:
        pytest.skip("running as root and useradd is missing: PostgreSQL needs an unprivileged user")
    data, _, _ = run_report(tmp_path, "--only", peer, "--clients", "1", "--workloads", "update",
                            "--seconds", "0.3", "--no-recovery")
    assert not data["skipped"], data["skipped"]
    (c,) = cells_of(data, peer)
    assert c["txns"] > 0 and c["errors"] == 0, c
    assert c["replicated_bytes"] > 0, c
