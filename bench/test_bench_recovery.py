"""Writer recovery time against volume size (issue 4): 1 GiB and 4 GiB of 4 KiB pages.

    pytest bench/test_bench_recovery.py -m slow --benchmark-json=bench/results/recovery.json
    python bench/summarize.py --trim

For each size, on 6 local node processes (``Cluster.local``, 1 GiB segments, so 1 and 4 PGs):

1. build: a writer in a child process writes every page once (262,144 or 1,048,576 pages) in
   MTRs of ``MTR_PAGES`` pages, two MTRs in flight; the build rate goes in extra_info.  The
   writer sends PGMRPL (SET_LWM) as in service, so the nodes materialize and garbage-collect
   while it writes;
2. settle: the builder streams for a moment and is SIGKILLed; then the nodes are left until
   their background work (materialization, GC of the build's log) has caught up, as a fleet
   in service would be: every segment down to at most SETTLED_LOG_FILES log files, or
   SETTLE_TIMEOUT_S.  Log bytes before and after, and the time it took, go in extra_info;
3. each round: a writer in a child process opens the volume (a recovery of its own), keeps
   committing MTRs of random pages with several in flight, and is SIGKILLed mid-stream; then
   a fresh ``Volume`` in this process opens the volume: that open (fence, read quorum, VCL/VDL,
   truncation, wait for the recovered chain on a write quorum) is the timed part, with the
   time of each step (``volume.recovery["phases"]``).  Every commit the killed writer saw
   acknowledged must be at or below the recovered VDL.

Both sizes never hold their data at once: each size's data directory is deleted when it is
done (4 GiB on 6 nodes is 24 GiB of pages alone).  AURORA_BENCH_RECOVERY_GIB picks the sizes
(default "1,4"), AURORA_BENCH_RECOVERY_ROUNDS the rounds (default 5), AURORA_BENCH_DIR the
parent directory of the data (default: the system temporary directory).

The builder knows what the writer does not: every page of a new volume is zero.  It puts a
zero image of each page in the buffer pool before writing it, so the writer computes the
redo without a GetPage round trip per page, and drops each MTR's pages from the pool once
durable, so the pool's eviction scan (O(pool size) per insert once full) is never run.  Both
are the writer's bottlenecks for bulk loads (see the report in docs/writer.md); the builder
works around them so the build measures the redo path to the nodes.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from aurora.cluster import Cluster
from aurora.node.process import _package_root

pytestmark = [pytest.mark.slow, pytest.mark.process]

PAGE_SIZE = 4096
GIB = 1 << 30
SIZES_GIB = [float(s) for s in os.environ.get("AURORA_BENCH_RECOVERY_GIB", "1,4").split(",") if s.strip()]
ROUNDS = int(os.environ.get("AURORA_BENCH_RECOVERY_ROUNDS", "5"))
LOG_FILE_BYTES = 256 << 20
MTR_PAGES = 1024                 # 4 MiB of redo per MTR while building
BUILD_WINDOW = 2                 # MTRs in flight while building
STREAM_PAGES = 4096              # the hot set the killed writer keeps changing
STREAM_MTR_PAGES = 64
STREAM_WINDOW = 8                # MTRs in flight when the writer is killed
STREAM_SECONDS = 1.5             # commits streamed before the kill
BUILD_TIMEOUT_S = 3600
LINE_TIMEOUT_S = 600
DISK_FREE_BYTES_MIN = 6 * GIB    # the build stops (and the test fails) below this much free disk
SETTLED_LOG_FILES = 2            # per segment, once the nodes' GC has caught up with the build
SETTLE_TIMEOUT_S = 1800
SETTLE_POLL_S = 2.0

# The child writer.  Prints one line per event: "open <recovery s>", "progress <pages> <s>",
# "built <pages> <s>", "streaming", "acked <lsn>".
CHILD = r"""
import collections, os, random, sys, time
from aurora.cluster import Cluster

data_dir, pages, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
(MTR_PAGES, BUILD_WINDOW, STREAM_PAGES, STREAM_MTR_PAGES, STREAM_WINDOW) = map(int, sys.argv[4:9])
cluster = Cluster.local(data_dir)
volume = cluster.open_volume("bench", 4096, buffer_pool_pages=1 << 40, commit_timeout=300.0)
print("open %.6f" % volume.recovery_seconds, flush=True)
zero = bytes(4096)
blob = os.urandom(4096 + 65536)

if mode == "build":
    pending = collections.deque()
    started = time.perf_counter()
    for first in range(0, pages, MTR_PAGES):
        last = min(pages, first + MTR_PAGES)
        for n in range(first, last):
            volume.pool.put(n, zero, 0, volume.vdl)    # a new volume's page is zero
            offset = (n * 97) % 65536
            volume.write(n, blob[offset:offset + 4096])
        pending.append((volume.commit_nowait(), first, last))
        while len(pending) > BUILD_WINDOW:
            lsn, a, b = pending.popleft()
            volume.wait_durable(lsn)
            for n in range(a, b):
                volume.pool.pages.pop(n, None)
        if (first // MTR_PAGES) % 16 == 0:
            print("progress %d %.3f" % (last, time.perf_counter() - started), flush=True)
    while pending:
        volume.wait_durable(pending.popleft()[0])
    print("built %d %.3f" % (pages, time.perf_counter() - started), flush=True)
rng = random.Random(os.getpid())
pending = collections.deque()
print("streaming", flush=True)
while True:
    for n in sorted(rng.sample(range(STREAM_PAGES), STREAM_MTR_PAGES)):
        offset = rng.randrange(65536)
        volume.write(n, blob[offset:offset + 4096])
    pending.append(volume.commit_nowait())
    while len(pending) > STREAM_WINDOW:
        lsn = pending.popleft()
        volume.wait_durable(lsn)
        print("acked %d" % lsn, flush=True)
"""


class ChildWriter:
    def __init__(self, data_dir, pages, mode, workdir):
        env = dict(os.environ, PYTHONPATH=_package_root())
        args = [sys.executable, "-c", CHILD, data_dir, str(pages), mode] + [
            str(x) for x in (MTR_PAGES, BUILD_WINDOW, STREAM_PAGES, STREAM_MTR_PAGES, STREAM_WINDOW)]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, env=env, cwd=workdir, text=True)
        self.acked = 0
        self.open_seconds = None

    def until(self, word, timeout=LINE_TIMEOUT_S, on_line=None, disk_path=None):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if disk_path is not None and shutil.disk_usage(disk_path).free < DISK_FREE_BYTES_MIN:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
                raise AssertionError("less than %d GiB of disk left under %s: build stopped"
                                     % (DISK_FREE_BYTES_MIN // GIB, disk_path))
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError("child writer exited (%s) before %r" % (self.proc.poll(), word))
            fields = line.split()
            if fields[0] == "open":
                self.open_seconds = float(fields[1])
            elif fields[0] == "acked":
                self.acked = max(self.acked, int(fields[1]))
            if on_line is not None:
                on_line(fields)
            if fields[0] == word:
                return fields
        raise AssertionError("child writer: no %r within %d s" % (word, timeout))

    def stream_then_kill(self, seconds):
        """Read acks for ``seconds`` after streaming starts, then SIGKILL mid-stream."""
        self.until("streaming")
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if line.startswith("acked"):
                self.acked = max(self.acked, int(line.split()[1]))
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        for line in self.proc.stdout:       # acks printed just before the kill still count
            if line.startswith("acked"):
                self.acked = max(self.acked, int(line.split()[1]))
        self.proc.stdout.close()


def fleet_segments(cluster):
    """Every node's STATUS segment entries, as (node id, entry)."""
    out = []
    for node in cluster.nodes:
        for segment in node.status(timeout=30.0)["segments"]:
            out.append((node.node_id, segment))
    return out


def background_slices(cluster):
    """The nodes' background slice statistics (how long materialization, scrub and GC held
    each node's loop at a time), summed over the fleet, with the longest single slice."""
    stats = [node.status(timeout=30.0)["background"] for node in cluster.nodes]
    return {"background_slices": sum(s["slices"] for s in stats),
            "background_slice_seconds_max": max(s["seconds_max"] for s in stats),
            "background_slices_over_50ms": sum(s["slices_over_50ms"] for s in stats)}


def disk_bytes(path):
    """(bytes allocated on disk, apparent bytes) under ``path``: page stores are sparse, so
    the apparent size overstates what they take."""
    allocated = apparent = 0
    for directory, _, names in os.walk(path):
        for name in names:
            try:
                st = os.lstat(os.path.join(directory, name))
            except OSError:
                continue
            allocated += st.st_blocks * 512
            apparent += st.st_size
    return allocated, apparent


def settle(cluster):
    """Wait until every segment's GC has caught up (at most SETTLED_LOG_FILES log files);
    returns what it took and what the nodes hold before and after."""
    started = time.monotonic()
    before = fleet_segments(cluster)
    status = before
    while time.monotonic() - started < SETTLE_TIMEOUT_S:
        status = fleet_segments(cluster)
        if all(s["log_files"] <= SETTLED_LOG_FILES for _, s in status):
            break
        time.sleep(SETTLE_POLL_S)
    return {
        "settle_seconds": time.monotonic() - started,
        "settled": all(s["log_files"] <= SETTLED_LOG_FILES for _, s in status),
        "log_bytes_after_build": sum(s["log_bytes"] for _, s in before),
        "log_bytes_settled": sum(s["log_bytes"] for _, s in status),
        "log_files_settled_max": max(s["log_files"] for _, s in status),
        "log_files_deleted": sum(s["gc"]["log_files_deleted"] for _, s in status),
        "page_versions_settled": sum(s["page_versions"] for _, s in status),
        "materialized_behind_scl_max": max(s["scl"] - s["materialized_lsn"] for _, s in status),
    }


RESULTS = {}


@pytest.mark.parametrize("gib", SIZES_GIB, ids=["%gGiB" % g for g in SIZES_GIB])
def test_recovery_time(benchmark, gib):
    benchmark.group = "recovery after SIGKILL mid-stream"
    pages = int(gib * GIB) // PAGE_SIZE
    root = tempfile.mkdtemp(prefix="aur-rec-%gg-" % gib, dir=os.environ.get("AURORA_BENCH_DIR"))
    workdir = tempfile.mkdtemp(prefix="aur-rec-cwd-")
    data_dir = os.path.join(root, "fleet")
    cluster = Cluster.local(data_dir, log_file_bytes=LOG_FILE_BYTES)
    try:
        builder = ChildWriter(data_dir, pages, "build", workdir)
        progress = []
        built = builder.until("built", BUILD_TIMEOUT_S,
                              on_line=lambda f: progress.append((int(f[1]), float(f[2])))
                              if f[0] == "progress" else None, disk_path=root)
        build_seconds = float(built[2])
        builder.stream_then_kill(STREAM_SECONDS)
        settled = settle(cluster)
        disk_settled = disk_bytes(data_dir)
        rounds = []
        state = {"child": builder}

        def kill_a_writer_mid_stream():
            if state["child"] is None:
                child = ChildWriter(data_dir, pages, "stream", workdir)
                child.stream_then_kill(STREAM_SECONDS)
                state["child"] = child
            return (), {}

        def recover():
            child, state["child"] = state["child"], None
            started = time.perf_counter()
            volume = cluster.open_volume("bench", PAGE_SIZE)
            seconds = time.perf_counter() - started
            info = dict(volume.recovery)
            volume.close()
            # Invariant 1 across the kill: every acknowledged commit is at or below VDL.
            assert info["vdl"] >= child.acked, (info, child.acked)
            rounds.append({"seconds": seconds, "records_listed": info["records_listed"],
                           "vdl_minus_base": info["vdl"] - info["base"], "acked_before_kill": child.acked,
                           "child_open_seconds": child.open_seconds, "phases": info.get("phases")})

        benchmark.pedantic(recover, setup=kill_a_writer_mid_stream, rounds=ROUNDS, iterations=1)
        times = sorted(r["seconds"] for r in rounds)
        median = times[len(times) // 2]
        RESULTS[gib] = median
        phases = {}
        for r in rounds:
            for name, value in (r["phases"] or {}).items():
                phases.setdefault(name, []).append(value)
        disk_end = disk_bytes(data_dir)
        benchmark.extra_info.update(
            volume_gib=gib, pages=pages, pgs=(pages + cluster.pages_per_pg - 1) // cluster.pages_per_pg,
            build_seconds=build_seconds, build_mib_per_s=gib * 1024 / build_seconds,
            build_progress=progress[-1:] if progress else [],
            data_bytes_on_disk=disk_end[0], data_bytes_apparent=disk_end[1],
            data_bytes_on_disk_settled=disk_settled[0],
            recovery_seconds_median=median, recovery_seconds_max=times[-1],
            phase_seconds_median={name: sorted(v)[len(v) // 2] for name, v in phases.items()},
            phase_seconds_max={name: max(v) for name, v in phases.items()},
            load_average=list(os.getloadavg()),
            records_listed_max=max(r["records_listed"] for r in rounds),
            child_open_seconds=[r["child_open_seconds"] for r in rounds if r["child_open_seconds"] is not None],
            rounds_detail=json.loads(json.dumps(rounds)), **settled, **background_slices(cluster))
        if 1 in RESULTS and gib != 1:
            benchmark.extra_info["median_ratio_to_1gib"] = median / RESULTS[1]
    finally:
        cluster.close()
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)
