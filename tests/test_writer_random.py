"""Randomized writer test: the real Volume on real node processes, checked against a model of
every page.

Several threads commit random MTRs: 1 to 6 pages each, spread over many small PGs (each PG is
created by the first MTR to touch it, sometimes several in one MTR), one or more writes per
page, overlapping or not.  Between phases a node or a whole AZ is killed and brought back,
so PGs are created, written and read while members are missing.  Each thread owns its own
pages, so its model is exact: every read of a page gives what the thread last committed.
At the end a new writer recovers the volume and every page must read back as the model says.

The simulator (aurora/sim) explores the protocol's decisions under faults; this test runs the
writer's own code paths (PG creation inside the log lock, boxcars, resends after a member
comes back), which the simulator does not.  An MTR creating two PGs broke the log once and
no test had made one (tests/test_writer_paths.py).
"""
import random
import threading

import pytest

from aurora.cluster import Cluster

THREADS = 4
PAGES_PER_PG = 4
PGS = 24
PAGE_SIZE = 4096
MTRS_PER_PHASE = 25
PHASES = 4
WRITE_BYTES_MAX = 300


def run(directory, seed):
    faults = random.Random(seed)
    pages = PAGES_PER_PG * PGS
    model = {}                     # page_no -> bytes committed (every page starts as zeros)
    failures = []
    with Cluster.local(directory, log_file_bytes=1 << 20, pages_per_pg=PAGES_PER_PG) as cluster:
        volume = cluster.open_volume("random", PAGE_SIZE)

        def committer(t, phase):
            rng = random.Random(seed * 7919 + phase * 101 + t)
            own = list(range(t, pages, THREADS))
            try:
                for _ in range(MTRS_PER_PHASE):
                    staged = {}
                    for page_no in rng.sample(own, rng.randint(1, 6)):
                        image = bytearray(staged.get(page_no, model.get(page_no, bytes(PAGE_SIZE))))
                        for _ in range(rng.randint(1, 3)):
                            length = rng.randint(1, WRITE_BYTES_MAX)
                            offset = rng.randrange(PAGE_SIZE - length + 1)
                            data = rng.randbytes(length)
                            volume.write(page_no, data, offset)
                            image[offset:offset + length] = data
                        staged[page_no] = bytes(image)
                    volume.commit()
                    model.update(staged)
                    page_no = rng.choice(own)
                    got = volume.read(page_no)
                    if got != model.get(page_no, bytes(PAGE_SIZE)):
                        failures.append("seed %d: thread %d read page %d unlike its last commit" % (seed, t, page_no))
                        return
            except Exception as exc:       # noqa: BLE001  (reported by the main thread)
                failures.append("seed %d thread %d: %r" % (seed, t, exc))

        for phase in range(PHASES):
            fault = faults.choice(["none", "node", "az"])
            killed = []
            if fault == "node":
                killed = [faults.choice(cluster.nodes)]
                killed[0].kill()
            elif fault == "az":
                killed = cluster.kill_az(faults.choice(cluster.azs()))
            threads = [threading.Thread(target=committer, args=(t, phase)) for t in range(THREADS)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert failures == []
            for node in killed:
                node.restart()
        for page_no in range(pages):
            assert volume.read(page_no) == model.get(page_no, bytes(PAGE_SIZE)), (seed, page_no)
        volume.close()
        recovered = cluster.open_volume("random", PAGE_SIZE)
        for page_no in range(pages):
            assert recovered.read(page_no) == model.get(page_no, bytes(PAGE_SIZE)), (seed, page_no)
        assert len(recovered.members) == len({page_no // PAGES_PER_PG for page_no in model})
        recovered.close()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_mtrs_under_node_and_az_loss_read_back_and_recover(short_dir, seed):
    run(short_dir, seed)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(100, 130))
def test_random_mtrs_soak(short_dir, seed):
    run(short_dir, seed)
