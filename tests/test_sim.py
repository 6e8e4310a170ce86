"""The deterministic simulator (aurora/sim, docs/simulation.md): the real node and writer
decisions under faults must hold every invariant, the same seed must replay the same run, the
simulated disk must behave like a disk, and every planted bug must be found."""
import os
import random

import pytest

from aurora.node.disk import SimDisk
from aurora.sim import BUGS, Violation, run_seed
from aurora.sim.__main__ import main, run_seeds

CI_SEEDS = int(os.environ.get("AURORA_SIM_CI_SEEDS", "40"))
# Seeds within which each planted bug must be found by the CI-sized check; the slow one runs
# the full 1,000 the design asks for.  First failing seed measured after the fence-first
# recovery (docs/simulation.md): ack-before-persist 0, vdl-ignores-cpl 0, gossip-stale-epoch 5,
# recovery-read-2-of-6 79, recovery-reads-before-fence 27; shares of seeds 0..999 failing,
# measured before it: 100 %, 99.6 %, 23 %, 2 %.  Since gossip leaves the newest records to the
# writer (it fetches only what a peer held a round before), gossip fetches less and
# gossip-stale-epoch is found less often: first failing seed 54, 5 % of seeds 0..999 (50).
# The windows leave room for changes that reshuffle the seeds' random streams; a run stops at
# the first failure, so the usual cost is a few seconds.
BUG_SEEDS_CI = {"ack-before-persist": 3, "vdl-ignores-cpl": 3, "gossip-stale-epoch": 150,
                "recovery-read-2-of-6": 300, "recovery-reads-before-fence": 150}
BUG_SEEDS_MAX = 1000


def test_seeds_pass():
    ran, failures = run_seeds(0, CI_SEEDS)
    assert ran == CI_SEEDS
    assert not failures, "\n".join("seed %d: %s (replay: python -m aurora.sim --seed %d)" % (s, m, s)
                                   for s, m in failures)


def test_swarm_seeds_pass():
    ran, failures = run_seeds(10_000, CI_SEEDS // 2, swarm=True)
    assert not failures, "\n".join("seed %d: %s (replay: python -m aurora.sim --seed %d --swarm)" % (s, m, s)
                                   for s, m in failures)


def test_long_seeds_pass_and_collect_log_files():
    """Long runs (600 MTRs, frequent background slices) are where GC deletes whole log files
    under faults; a default run never gets that far."""
    deleted = 0
    for seed in range(3):
        deleted += run_seed(seed, long=True).stats["log_files_deleted"]
    assert deleted > 0


def test_same_seed_same_run():
    a = run_seed(7, swarm=True)
    b = run_seed(7, swarm=True)
    assert a.stats == b.stats
    assert a.now == b.now
    assert a.model.acked == b.model.acked


def test_cli_replays_a_seed(capsys):
    assert main(["--seed", "3"]) == 0
    assert "1 seeds" in capsys.readouterr().out


def test_every_planted_bug_has_a_ci_window():
    assert set(BUG_SEEDS_CI) == set(BUGS)


@pytest.mark.parametrize("bug", sorted(BUG_SEEDS_CI))
def test_planted_bug_found_quickly(bug):
    ran, failures = run_seeds(0, BUG_SEEDS_CI[bug], bug=bug)
    assert failures, "planted bug %s not found in %d seeds" % (bug, ran)


@pytest.mark.slow
@pytest.mark.parametrize("bug", sorted(BUGS))
def test_planted_bug_found_within_1000_seeds(bug):
    ran, failures = run_seeds(0, BUG_SEEDS_MAX, bug=bug, workers=2)
    assert failures, "planted bug %s not found in %d seeds" % (bug, ran)
    seed, message = failures[0]
    with pytest.raises(Violation):       # the printed seed replays the failure
        run_seed(seed, bug=bug)


def test_unknown_bug_is_refused():
    with pytest.raises(ValueError, match="unknown planted bug"):
        from aurora.sim import active_bug
        active_bug("no-such-bug")


# ---- the simulated disk ---------------------------------------------------------------

def test_sim_disk_crash_keeps_only_synced_bytes_and_names():
    disk = SimDisk()
    disk.makedirs("/d")
    fd = disk.open("/d/a", os.O_RDWR | os.O_CREAT)
    disk.pwrite(fd, b"durable", 0)
    disk.fsync(fd)
    disk.fsync_directory("/d")
    disk.pwrite(fd, b"LOST!!!", 0)
    fd2 = disk.open("/d/b", os.O_RDWR | os.O_CREAT)
    disk.pwrite(fd2, b"never named durably", 0)
    disk.fsync(fd2)
    disk.crash(random.Random(1))
    assert disk.read_file("/d/a") == b"durable"
    assert not disk.exists("/d/b")
    assert disk.listdir("/d") == ["a"]


def test_sim_disk_mapping_is_the_file_and_flush_syncs():
    disk = SimDisk()
    disk.makedirs("/d")
    fd = disk.open("/d/log", os.O_RDWR | os.O_CREAT | os.O_EXCL)
    disk.preallocate(fd, 1024)
    disk.fsync_directory("/d")
    mm = disk.mmap(fd, 1024)
    mm[10:13] = b"abc"
    assert disk.read_file("/d/log")[10:13] == b"abc"
    mm.flush()
    disk.crash(random.Random(2))
    assert disk.read_file("/d/log")[10:13] == b"abc"
    with pytest.raises(FileExistsError):
        disk.open("/d/log", os.O_RDWR | os.O_CREAT | os.O_EXCL)


def test_sim_disk_torn_sector_never_damages_durable_bytes():
    disk = SimDisk()
    disk.makedirs("/d")
    fd = disk.open("/d/log", os.O_RDWR | os.O_CREAT)
    disk.pwrite(fd, b"x" * 100, 0)
    disk.fsync(fd)
    disk.fsync_directory("/d")
    disk.pwrite(fd, b"y" * 100, 100)       # same sector, never synced
    disk.crash(random.Random(3), keep_probability=0.0, scramble_probability=1.0)
    assert disk.read_file("/d/log")[:100] == b"x" * 100


def test_segment_appends_after_a_damaged_log_header():
    """Found by the simulator (swarm seed 30059): a bit flip in a log file header made the
    restart scan skip the file and every later append fail to create it again."""
    from aurora.node.segment import Segment
    from aurora.testing import RedoWorkload
    disk = SimDisk()
    disk.makedirs("/n/pg-0")
    segment = Segment("/n/pg-0", 1, 0, 4096, 64, 64 * 1024, disk)
    workload = RedoWorkload()
    batch = workload.batch(workload.records(3))
    from aurora import _native
    segment.append(batch, _native.decode_batch(batch)[1])
    segment.sync()
    f = disk.names["/n/pg-0/log-00000001.aur"]
    f.data[20] ^= 1
    f.sync()
    segment = Segment("/n/pg-0", 1, 0, 4096, 64, 64 * 1024, disk)
    assert segment.state["needs_repair"]
    batch = workload.batch(workload.records(2))
    assert segment.append(batch, _native.decode_batch(batch)[1]) == 2
    assert "log-00000002.aur" in disk.listdir("/n/pg-0")


# ---- found by the simulator ------------------------------------------------------------

def test_seed_2441_replays_clean():
    """Default seed 2441 (found by a 10,000-seed run): a page version at LSN 104 outlived the
    truncation (103, 169], and GET_PAGE on it raised ChainGapError."""
    run_seed(2441)


def test_truncation_drops_versions_above_materialized_lsn():
    """A SET_EPOCH with two new ranges: the first moved materialized_lsn below the page
    versions above it, and the second then left its versions in place."""
    from aurora import _native
    from aurora.node.segment import Segment
    from aurora.testing import RedoWorkload
    disk = SimDisk()
    disk.makedirs("/n/pg-0")
    segment = Segment("/n/pg-0", 1, 0, 4096, 64, 64 * 1024, disk)
    workload = RedoWorkload()
    for _ in range(4):
        batch = workload.batch(workload.records(3))
        segment.append(batch, _native.decode_batch(batch)[1])
    segment.sync()
    while segment.materialize_step(64):
        pass
    top = max(lsn for versions in segment.pages.versions.values() for lsn, _ in versions)
    assert top > 4
    segment.truncate(1, 2)
    segment.truncate(top - 1, top + 100)
    assert all(not top - 1 < lsn <= top + 100
               for versions in segment.pages.versions.values() for lsn, _ in versions)
    segment.truncate(top - 1, top + 100)          # a recorded range again: nothing changes
    assert segment.state["truncations"] == [[1, 2], [top - 1, top + 100]]
    segment = Segment("/n/pg-0", 1, 0, 4096, 64, 64 * 1024, disk)   # and durably so
    assert all(not top - 1 < lsn <= top + 100
               for versions in segment.pages.versions.values() for lsn, _ in versions)


def test_seed_486_replays_clean():
    """Default seed 486: recovery found the same VDL (95) as the one before it and truncated
    (95, 159] again, but the deposed writer that had started at 160 after the first range had
    left its LSN 160 on n4; the new writer's LSN 160 (another page) was refused as a
    duplicate and GET_PAGE raised ChainGapError."""
    run_seed(486)


def test_swarm_seed_10035_replays_clean():
    """Swarm seed 10035: the same stale range, where the surviving old record of a reused LSN
    made a node serve wrong page content after losing an AZ (invariant 4)."""
    run_seed(10035, swarm=True)


def test_recovery_truncates_what_the_writer_after_an_earlier_range_could_allocate():
    """A writer started after the truncation (95, 159] counts its VDL from 159, so it may hand
    out LSNs up to 159 + LAL without any becoming durable.  A recovery that finds VDL 95 again
    must truncate all of them, not only (95, 95 + LAL]."""
    from aurora import recovery
    lal = 64
    members = {0: ["a", "b", "c", "d", "e", "f"]}
    # The deposed writer's LSN 160 (not a CPL: its MTR goes on to 161) reached one member of
    # the read quorum only.
    listings = {0: {"a": recovery.MemberListing(95, [(160, 95, 0)]),
                    "b": recovery.MemberListing(95, []),
                    "c": recovery.MemberListing(95, [])}}
    result = recovery.compute_recovery(members, listings, 95, [[95, 159]], lal)
    assert (result.vcl, result.vdl, result.truncate_after) == (160, 95, 95)
    assert result.truncate_through >= 159 + lal      # every LSN the deposed writer could use
    # With no earlier range above VDL, the range stays (VDL, VDL + LAL].
    plain = recovery.compute_recovery(members, {0: {m: recovery.MemberListing(95, []) for m in "abc"}},
                                      95, [[10, 20]], lal)
    assert (plain.truncate_after, plain.truncate_through) == (95, 95 + lal)
