"""Real-process chaos: a lost-write checker, a seeded nemesis and a writer that reports acks.

The workload (``writer_main``, run as ``python -m aurora.chaos writer ...`` in its own process so
the nemesis can SIGKILL it) has many threads commit uniquely identified writes: write ``id``
goes to its own 32-byte slot, in two copies on pages of two different PGs, in one MTR.  On
stdout it reports ``start id`` before the write, ``ok id lsn`` once commit() returned
(acknowledged) and ``fail id error`` if commit raised.  The nemesis (``Nemesis``) SIGKILLs
random nodes, a whole AZ, an AZ plus one node and the writer, and restarts them; its schedule is
a pure function of the seed.  After healing, ``read_back`` opens the volume (writer recovery) and
reads every slot, and ``check`` classifies every write in the style of Jepsen's set-full
checker:

    acknowledged  present -> ok          absent -> LOST       (must be 0)
    unacknowledged present -> recovered   absent -> absent     (both allowed)

plus three more violations: a slot holding bytes no write could have put there (``corrupt``), a
write present in one copy but not the other (``torn_mtr``: MTRs are atomic), and a present id
no one ever started (``unexpected``).  ``run_chaos`` ties it together for tests and tools.
"""
import argparse
import collections
import json
import os
import random
import signal
import struct
import subprocess
import sys
import threading
import time

SLOT_BYTES = 32
SLOT = struct.Struct("<QQQQ")       # id, id ^ SLOT_MAGIC, id * SLOT_MULTIPLIER, 0
SLOT_MAGIC = 0xA5A5_C0FF_EE00_5A5A
SLOT_MULTIPLIER = 0x9E37_79B9_7F4A_7C15
MIRROR_PAGE_OFFSET = 1 << 20        # the second copy of every slot: far away, in another PG
WRITER_THREADS_DEFAULT = 8
VOLUME_NAME = "chaos"
READ_PAGES_MAX = 1 << 16             # bound on the read-back
PAGE_SIZE = 4096


# ---- slots --------------------------------------------------------------------------------

def slot_bytes(write_id):
    return SLOT.pack(write_id, write_id ^ SLOT_MAGIC, (write_id * SLOT_MULTIPLIER) & (2**64 - 1), 0)


def slot_location(write_id, page_size):
    """(page_no, offset) of the primary copy of write ``write_id`` (ids start at 1)."""
    per_page = page_size // SLOT_BYTES
    index = write_id - 1
    return index // per_page, (index % per_page) * SLOT_BYTES


def decode_page(page_no, data, page_size):
    """{id: ok?} for every non-empty slot of a page read back; ok is False for bytes no write
    could have produced (wrong id for the slot, or a broken check field)."""
    per_page = page_size // SLOT_BYTES
    found = {}
    base = (page_no % MIRROR_PAGE_OFFSET) * per_page
    for i in range(per_page):
        chunk = data[i * SLOT_BYTES:(i + 1) * SLOT_BYTES]
        if not any(chunk):
            continue
        expected_id = base + i + 1
        found[expected_id] = chunk == slot_bytes(expected_id)
    return found


# ---- the checker --------------------------------------------------------------------------

class History:
    """What the workload reported: every write started, acknowledged or failed."""

    def __init__(self):
        self.started = set()
        self.acked = {}          # id -> commit LSN
        self.failed = {}         # id -> error text
        self.lock = threading.Lock()

    def record_line(self, line):
        parts = line.split(None, 2)
        if len(parts) < 2 or not parts[1].isdigit():
            return
        kind, write_id = parts[0], int(parts[1])
        with self.lock:
            if kind == "start":
                self.started.add(write_id)
            elif kind == "ok":
                self.acked[write_id] = int(parts[2]) if len(parts) > 2 else 0
            elif kind == "fail":
                self.failed[write_id] = parts[2] if len(parts) > 2 else ""

    def max_started(self):
        with self.lock:
            return max(self.started, default=0)


def check(history, primary, mirror):
    """Classify every write (set-full style).  ``primary`` and ``mirror`` map id -> ok? as read
    back from the two copies.  Returns a dict of counts and the offending ids; ``valid`` is
    True when nothing acknowledged is lost and no slot is corrupt, torn or unexpected."""
    acked = set(history.acked)
    unacked = history.started - acked
    good_primary = {i for i, ok in primary.items() if ok}
    good_mirror = {i for i, ok in mirror.items() if ok}
    present = good_primary & good_mirror
    result = {
        "attempted": len(history.started),
        "acknowledged": len(acked),
        "unacknowledged": len(unacked),
        "failed": len(history.failed),
        "in_flight": len(unacked - set(history.failed)),
        "ok": len(acked & present),
        "lost": sorted(acked - present),
        "recovered": len(unacked & present),
        "absent": len(unacked - present),
        "corrupt": sorted(i for i, ok in list(primary.items()) + list(mirror.items()) if not ok),
        "torn_mtr": sorted(good_primary ^ good_mirror),
        "unexpected": sorted(present - history.started - acked),
    }
    result["valid"] = not (result["lost"] or result["corrupt"] or result["torn_mtr"] or result["unexpected"])
    return result


def summary(result):
    return ("attempted %(attempted)d: acknowledged %(acknowledged)d (ok %(ok)d, lost %(n_lost)d), "
            "unacknowledged %(unacknowledged)d (recovered %(recovered)d, absent %(absent)d; "
            "%(failed)d raised, %(in_flight)d in flight); corrupt %(n_corrupt)d, torn MTRs %(n_torn)d, "
            "unexpected %(n_unexpected)d" % dict(result, n_lost=len(result["lost"]),
                                                 n_corrupt=len(result["corrupt"]),
                                                 n_torn=len(result["torn_mtr"]),
                                                 n_unexpected=len(result["unexpected"])))


def read_back(volume, max_id):
    """Read every page that may hold a slot of ids 1..max_id, both copies."""
    page_size = volume.page_size
    last_page = slot_location(max_id, page_size)[0] if max_id else -1
    if last_page + 1 > READ_PAGES_MAX:
        raise ValueError("read-back of %d pages exceeds %d" % (last_page + 1, READ_PAGES_MAX))
    primary, mirror = {}, {}
    for page_no in range(last_page + 1):
        primary.update(decode_page(page_no, volume.read(page_no), page_size))
        mirror.update(decode_page(page_no + MIRROR_PAGE_OFFSET,
                                  volume.read(page_no + MIRROR_PAGE_OFFSET), page_size))
    return primary, mirror


# ---- the workload, in its own process -------------------------------------------------------

def _cluster_from_book(data_dir):
    """Attach to the fleet of ``data_dir``'s cluster.json without starting anything: the
    nemesis owns the node processes, a down node stays down until it restarts it."""
    from aurora.cluster import CLUSTER_FILE, Cluster, Node
    with open(os.path.join(data_dir, CLUSTER_FILE)) as f:
        book = json.load(f)
    nodes = [Node(e["node_id"], e["az"], e["address"]) for e in book["nodes"]]
    return Cluster(nodes, data_dir, book.get("pages_per_pg"))


def writer_main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m aurora.chaos writer")
    parser.add_argument("--data", required=True)
    parser.add_argument("--first-id", type=int, default=1)
    parser.add_argument("--threads", type=int, default=WRITER_THREADS_DEFAULT)
    parser.add_argument("--commit-timeout", type=float, default=3.0)
    parser.add_argument("--name", default=VOLUME_NAME)
    args = parser.parse_args(argv)
    from aurora import errors
    cluster = _cluster_from_book(args.data)
    try:
        volume = cluster.open_volume(args.name, commit_timeout=args.commit_timeout)
    except (OSError, errors.AuroraError) as exc:
        print("open-failed %s" % str(exc).replace("\n", " "), flush=True)
        return 2
    out_lock = threading.Lock()
    next_id = [args.first_id]
    stop = threading.Event()

    def say(text):
        with out_lock:
            sys.stdout.write(text + "\n")
            sys.stdout.flush()

    def worker():
        while not stop.is_set():
            with out_lock:
                write_id = next_id[0]
                next_id[0] += 1
                # Reported before anything is written: a kill after this line leaves the
                # write in flight (it may or may not be present), never unaccounted for.
                sys.stdout.write("start %d\n" % write_id)
                sys.stdout.flush()
            page_no, offset = slot_location(write_id, volume.page_size)
            data = slot_bytes(write_id)
            try:
                volume.write(page_no, data, offset)
                volume.write(page_no + MIRROR_PAGE_OFFSET, data, offset)
                lsn = volume.commit()
            except (errors.WriterFenced, errors.VolumeClosed) as exc:
                say("fail %d %s" % (write_id, type(exc).__name__))
                stop.set()
                return
            except Exception as exc:       # QuorumLost and friends: indeterminate
                volume.rollback()
                say("fail %d %s" % (write_id, type(exc).__name__))
                time.sleep(0.05)
                continue
            say("ok %d %d" % (write_id, lsn))

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(args.threads)]
    for t in threads:
        t.start()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    while not stop.is_set():
        stop.wait(0.2)
    for t in threads:
        t.join(timeout=args.commit_timeout + 2)
    return 3


class WriterProcess:
    """The workload's process; its report lines feed ``history``."""

    def __init__(self, data_dir, history, threads=WRITER_THREADS_DEFAULT, commit_timeout=3.0, log=None):
        self.data_dir = data_dir
        self.history = history
        self.threads = threads
        self.commit_timeout = commit_timeout
        self.log = log
        self.proc = None
        self.reader = None
        self.incarnations = 0
        self.open_failures = 0
        self.last_open_failure = None

    def start(self):
        from aurora.node.process import _package_root
        env = dict(os.environ)
        env["PYTHONPATH"] = _package_root() + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        # Ids never repeat: a new incarnation starts past every id the last one started.
        first = self.history.max_started() + 1
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "aurora.chaos", "writer", "--data", self.data_dir, "--first-id", str(first),
             "--threads", str(self.threads), "--commit-timeout", str(self.commit_timeout)],
            stdout=subprocess.PIPE, stderr=self.log or subprocess.DEVNULL, stdin=subprocess.DEVNULL,
            env=env, cwd=self.data_dir, text=True, start_new_session=True)
        self.incarnations += 1
        self.reader = threading.Thread(target=self._read, args=(self.proc,), daemon=True)
        self.reader.start()

    def _read(self, proc):
        for line in proc.stdout:
            if line.startswith("open-failed"):
                self.open_failures += 1
                self.last_open_failure = line[len("open-failed "):].strip()
            self.history.record_line(line)
        proc.stdout.close()

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def kill(self):
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait()
            # Every line written before the kill landed is in the pipe: read it all, those
            # commits were acknowledged too.
            self.reader.join(10)


# ---- the nemesis ------------------------------------------------------------------------------

FAULTS = (("node", 4), ("az", 3), ("az_plus_one", 2), ("writer", 3))


def schedule(seed, faults, node_ids, azs, gap_s=(0.5, 1.5), down_s=(0.5, 2.5)):
    """The nemesis's plan, a pure function of its arguments: ``faults`` steps of
    (pause before, kind, targets, how long they stay down)."""
    rng = random.Random(seed)
    kinds = [k for k, weight in FAULTS for _ in range(weight)]
    # Every kind of fault comes once, in a seeded order, before the random draws: even a short
    # run kills a node, an AZ, an AZ plus one and the writer.
    first = [k for k, _ in FAULTS]
    rng.shuffle(first)
    plan = []
    for step in range(faults):
        kind = first[step] if step < len(first) else rng.choice(kinds)
        if kind == "node":
            targets = [rng.choice(node_ids)]
        elif kind == "az":
            targets = [rng.choice(azs)]
        elif kind == "az_plus_one":
            az = rng.choice(azs)
            targets = [az, rng.choice([n for n in node_ids if n not in azs_nodes(az, node_ids, azs)])]
        else:
            targets = []
        plan.append((round(rng.uniform(*gap_s), 3), kind, targets, round(rng.uniform(*down_s), 3)))
    return plan


def azs_nodes(az, node_ids, azs):
    """Nodes of ``az`` in Cluster.local's placement (node i in AZ i mod #AZs)."""
    return [n for i, n in enumerate(node_ids) if azs[i % len(azs)] == az]


class Nemesis:
    def __init__(self, cluster, writer, plan, log=print):
        self.cluster = cluster
        self.writer = writer
        self.plan = plan
        self.log = log
        self.node_kills = 0
        self.writer_kills = 0
        self.faults = collections.Counter()
        self.current = None         # the fault in force, if any

    def run(self, stop):
        for pause, kind, targets, down in self.plan:
            if stop.wait(pause):
                break
            self.current = kind
            killed = []
            if kind == "writer":
                self.writer.kill()
                self.writer_kills += 1
            else:
                for target in targets:
                    if target.startswith("az"):
                        killed += self.cluster.kill_az(target)
                    else:
                        node = self.cluster.node(target)
                        node.kill()
                        killed.append(node)
                self.node_kills += len(killed)
            self.faults[kind] += 1
            self.log("nemesis: %s %s, down %.2f s" % (kind, " ".join(targets), down))
            stop.wait(down)
            for node in killed:
                node.restart()
            if kind == "writer":
                self.writer.start()
            self.current = None


def run_chaos(data_dir, seed, faults, threads=WRITER_THREADS_DEFAULT, pages_per_pg=4,
              log_file_bytes=256 * 1024, commit_timeout=1.5, log=print, settle_s=1.0):
    """One chaos run: start a fleet and the writer, let the nemesis play its seeded plan,
    heal, then read everything back through writer recovery and check it.  Returns a report."""
    from aurora.cluster import Cluster
    started = time.monotonic()
    history = History()
    log("chaos seed %d" % seed)
    with Cluster.local(data_dir, log_file_bytes=log_file_bytes, pages_per_pg=pages_per_pg) as cluster:
        node_ids = [n.node_id for n in cluster.nodes]
        plan = schedule(seed, faults, node_ids, cluster.azs())
        with open(os.path.join(data_dir, "writer.log"), "ab") as writer_log:
            writer = WriterProcess(data_dir, history, threads, commit_timeout, log=writer_log)
            writer.start()
            nemesis = Nemesis(cluster, writer, plan, log)
            stop = threading.Event()

            def supervise():
                # A writer that exited on its own (it could not open: recovery needs a read
                # quorum of every PG; or it was fenced) is started again; a killed one is
                # restarted by the nemesis when its fault ends.
                while not stop.wait(0.3):
                    if not writer.alive() and nemesis.current != "writer":
                        writer.reader.join(5)
                        writer.start()

            supervisor = threading.Thread(target=supervise, daemon=True)
            supervisor.start()
            chaos_started = time.monotonic()
            nemesis.run(threading.Event())
            stop.set()
            supervisor.join()
            time.sleep(settle_s)           # let the healed fleet and writer make progress
            chaos_seconds = time.monotonic() - chaos_started
            writer.kill()
        for node in cluster.nodes:
            if not node.alive():
                node.restart()
        checked = time.monotonic()
        volume = cluster.open_volume(VOLUME_NAME)
        try:
            primary, mirror = read_back(volume, history.max_started())
            recovery = volume.recovery
        finally:
            volume.close()
        result = check(history, primary, mirror)
    report = {
        "seed": seed, "faults": dict(nemesis.faults), "node_kills": nemesis.node_kills,
        "writer_kills": nemesis.writer_kills, "writer_incarnations": writer.incarnations,
        "writer_open_failures": writer.open_failures, "last_open_failure": writer.last_open_failure, "chaos_seconds": round(chaos_seconds, 1),
        "check_seconds": round(time.monotonic() - checked, 1),
        "total_seconds": round(time.monotonic() - started, 1),
        "pgs": len({slot_location(i, PAGE_SIZE)[0] // pages_per_pg for i in history.started}) * 2,
        "recovery": recovery, "result": result,
    }
    log("chaos: %d node kills, %d writer kills over %.1f s; %s" % (
        nemesis.node_kills, nemesis.writer_kills, chaos_seconds, summary(result)))
    log("chaos: final recovery of %d PGs, %s" % (report["pgs"], ", ".join(
        "%s %.3f s" % (k, v) for k, v in (recovery.get("phases") or {}).items())))
    return report


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["writer"]:
        return writer_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m aurora.chaos",
                                     description="a chaos run against a local fleet, with the lost-write checker")
    parser.add_argument("--data", required=True, help="a fresh directory for the fleet")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--faults", type=int, default=20)
    parser.add_argument("--threads", type=int, default=WRITER_THREADS_DEFAULT)
    args = parser.parse_args(argv)
    seed = random.randrange(1 << 30) if args.seed is None else args.seed
    report = run_chaos(args.data, seed, args.faults, args.threads)
    print(json.dumps(report, indent=1, default=list))
    return 0 if report["result"]["valid"] else 1


if __name__ == "__main__":
    sys.exit(main())
