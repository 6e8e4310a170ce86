"""Planted bugs: known-wrong variants of the protocol the simulator must catch.

Each is switched on by ``--bug NAME`` or ``AURORA_SIM_BUG=NAME`` and read only by the
simulator's own code paths (aurora/sim/): the fleet's code never looks at it.  A bug here is a
small, plausible mistake in a real decision point; tests/test_sim.py asserts the simulator
finds a violation for every one within a bounded number of seeds.
"""
import os

BUGS = {
    "ack-before-persist":
        "storage node: ACK and RECORD_LIST replies leave before the log sync that makes their "
        "records durable (DESIGN.md invariant 3)",
    "vdl-ignores-cpl":
        "quorum tracker: every record counts as a CPL, so VDL = VCL and may stop inside an MTR "
        "(invariant 5)",
    "recovery-read-2-of-6":
        "writer recovery lists 2 members of each PG instead of a read quorum of 3 (invariant 6)",
    "recovery-reads-before-fence":
        "writer recovery lists the read quorum before it bumps the epoch, so an old writer still "
        "alive can be acknowledged a commit the new VDL then truncates (invariants 1 and 6)",
    "gossip-stale-epoch":
        "gossip: accept_gossip_records takes records from a peer whose reply carries an older "
        "volume epoch (fencing)",
}


def active_bug(name=None):
    """The planted bug for this run: ``name`` if given, else AURORA_SIM_BUG, else None."""
    name = name if name is not None else os.environ.get("AURORA_SIM_BUG") or None
    if name is not None and name not in BUGS:
        raise ValueError("unknown planted bug %r; known: %s" % (name, ", ".join(sorted(BUGS))))
    return name
