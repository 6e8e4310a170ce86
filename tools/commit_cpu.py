"""CPU per commit, writer and each node separately, under a sustained commit load.

    PYTHONPATH=. python tools/commit_cpu.py [THREADS=16] [SECONDS=8]

Starts a local fleet of 6 node processes in a temporary directory, commits from THREADS
threads for SECONDS (one 100-byte change to a 4 KiB page per commit, as
bench/test_bench_writer.py does), and prints commits/s, the CPU each process spent per
commit (user + system, from /proc, so it counts the nodes' background work and gossip too),
how many commits one APPEND to a node carried (a node's per-round costs divide by it), and
how busy the whole host was (kernel threads such as the file system's journal included).
Throughput on a shared host moves with everyone else's load; CPU per commit much less, which
makes it the figure to compare before and after a change (bench/README.md, "Commit path").
Linux only (/proc).  Everything it starts is stopped and its directory removed.
"""
import os
import random
import shutil
import sys
import tempfile
import time

from aurora.cluster import Cluster
from aurora.testing import run_in_threads

WARMUP_COMMITS = 50


def cpu_seconds(pid):
    """(user, system) CPU seconds of process ``pid``, all threads."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def host_ticks():
    """(busy, idle) clock ticks of the whole host so far, from /proc/stat (iowait is idle)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, idle


def main(threads=16, seconds=8.0):
    directory = tempfile.mkdtemp(prefix="aur-commit-cpu-")
    try:
        with Cluster.local(directory, log_file_bytes=64 << 20) as cluster:
            volume = cluster.open_volume("commit-cpu")
            row = random.Random(1).randbytes(100)
            for i in range(WARMUP_COMMITS):
                volume.write(i % 8, row)
                volume.commit()
            pids = [os.getpid()] + [node.process.proc.pid for node in cluster.nodes]
            counts = [0] * threads
            stop = time.monotonic() + seconds

            def worker(t):
                i = 0
                while time.monotonic() < stop:
                    # A new value every time, so every commit changes its page.
                    volume.write(t * 8 + i % 8, i.to_bytes(8, "little") + row[8:], offset=(i * 100) % 3900)
                    volume.commit()
                    i += 1
                counts[t] = i

            frames_before = volume.stats["ring_frames"] + volume.stats["inline_frames"]
            before, host_before = [cpu_seconds(pid) for pid in pids], host_ticks()
            elapsed = run_in_threads(threads, worker)
            after, host_after = [cpu_seconds(pid) for pid in pids], host_ticks()
            frames = volume.stats["ring_frames"] + volume.stats["inline_frames"] - frames_before
            commits = sum(counts)
            total = [((a[0] - b[0]) + (a[1] - b[1])) / commits * 1e3 for a, b in zip(after, before)]
            system = [(a[1] - b[1]) / commits * 1e3 for a, b in zip(after, before)]
            print("%d threads: %d commits in %.1f s, %.0f commits/s; load average %.2f"
                  % (threads, commits, elapsed, commits / elapsed, os.getloadavg()[0]))
            print("CPU ms per commit: writer %.3f (system %.3f); nodes %s (system %s); all %.3f"
                  % (total[0], system[0], " ".join("%.3f" % x for x in total[1:]),
                     " ".join("%.3f" % x for x in system[1:]), sum(total)))
            busy, idle = (a - b for a, b in zip(host_after, host_before))
            print("commits per APPEND a node received %.2f; host CPU busy %.0f%% (every process and "
                  "kernel thread, iowait counted idle)"
                  % (commits * len(cluster.nodes) / max(frames, 1), 100.0 * busy / max(busy + idle, 1)))
            volume.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 16, float(sys.argv[2]) if len(sys.argv) > 2 else 8.0)
