"""A committer that finds a send round running leaves word instead of waking the sender
thread, and the thread that ran the round sends its boxcar before it lets go."""
import sys

import pytest

from aurora.cluster import Cluster

pytestmark = pytest.mark.process


def wakes_from_kicks(pump, woken):
    """A wake_sender that notes the calls kicks make (_rounds_asked) in ``woken`` instead of
    waking the sender; other callers (SET_LWM, hints, whenever they come) still wake it."""
    real_wake = pump.wake_sender

    def wake():
        if sys._getframe(1).f_code.co_name == "_rounds_asked":
            woken.append(1)
        else:
            real_wake()

    return wake


def test_a_kick_during_a_round_is_run_by_the_thread_holding_the_round(tmp_path):
    with Cluster.local(str(tmp_path / "fleet"), log_file_bytes=1 << 20) as cluster:
        volume = cluster.open_volume("kick", pages_per_pg=64)
        volume.write(1, b"first")
        volume.commit()
        pump = volume.pump
        woken = []
        real_wake = pump.wake_sender
        pump.wake_sender = wakes_from_kicks(pump, woken)
        try:
            with pump.round_lock:          # a round is running on "another thread"
                volume.write(2, b"second")
                lsn = volume.commit_nowait()
                assert pump.round_asked
                assert sum(len(q) for q in volume.outbox.values()) == 1   # not sent yet
            pump._rounds_asked()           # what the round's thread does once it lets go
            assert not pump.round_asked
            # Sent by this thread, or by the sender if another frame woke it meanwhile.
            volume.wait_durable(lsn, timeout=10)
            assert woken == []             # the kick made no thread switch to the sender
        finally:
            pump.wake_sender = real_wake
        assert volume.read(2)[:6] == b"second"
        volume.close()


def test_kicks_beyond_the_bound_go_to_the_sender(tmp_path):
    with Cluster.local(str(tmp_path / "fleet"), log_file_bytes=1 << 20) as cluster:
        volume = cluster.open_volume("kick", pages_per_pg=64)
        pump = volume.pump
        rounds = []
        real_round = pump._round

        def round_that_is_asked_again(connect):
            rounds.append(connect)
            pump.round_asked = True        # another committer kicks during every round
            real_round(connect)

        woken = []
        real_wake = pump.wake_sender
        pump._round = round_that_is_asked_again
        pump.wake_sender = wakes_from_kicks(pump, woken)
        try:
            volume.write(3, b"third")
            lsn = volume.commit_nowait()
        finally:
            pump._round = real_round
            pump.wake_sender = real_wake
        from aurora.writer import KICK_ROUNDS_MAX
        assert woken == [1]
        # Other frames may have woken the sender, whose rounds are connect=True ones.
        assert rounds.count(False) == KICK_ROUNDS_MAX
        pump.wake_sender()
        volume.wait_durable(lsn, timeout=10)
        volume.close()
