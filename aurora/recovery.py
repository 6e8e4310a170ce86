"""The writer's protocol decisions, sans-IO: writer recovery and MTR batch building.

Both the real writer (aurora/writer.py, over sockets) and the deterministic simulator
(aurora/sim/, over a simulated network) feed these functions what the storage nodes answered
and act on what they return, so the simulator tests the decisions the fleet makes.

Recovery (DESIGN.md invariant 6) with dense LSNs needs no redo replay:

1. every member's VDL hint (LIST_RECORDS with max_count 0): everything at or below the
   highest hint is durable, so it is the *base*;
2. every record above the base, listed by at least a read quorum (3 of 6) of every PG: a
   record durable at 4 of 6 is held by at least one of any 3;
3. VCL is the end of the run of LSNs above the base that all exist (or lie in a range an
   earlier recovery voided); VDL the highest CPL at or below it;
4. everything in (VDL, VDL + LAL] is truncated under a new volume epoch: no LSN above it was
   ever handed out (LAL back-pressure), so the new writer starts at VDL + LAL + 1 (or, if an
   earlier truncation range ends above VDL, at that end + LAL + 1: the writer that started
   after it counted LAL from its end).
"""
import collections

from aurora import _native

READ_QUORUM = 3

Recovery = collections.namedtuple("Recovery", "base vcl vdl prev_lsn_pg truncate_after truncate_through "
                                              "records_listed")
Recovery.__doc__ = """What a writer recovery decided: VCL, VDL, each PG's last LSN at or below VDL
(the next record's PG backlink) and the range (truncate_after, truncate_through] to drop."""

MtrBatch = collections.namedtuple("MtrBatch", "pg lsns prev_lsn_pg prev_lsn_page page_nos types flags payloads")
MtrBatch.__doc__ = """The columns of one PG's share of an MTR, ready for _native.encode_batch."""


def recovery_base(vdl_hints):
    """The highest VDL hint any member reported (0 if none): every LSN at or below it is durable."""
    return max(list(vdl_hints) + [0])


class MemberListing:
    """One member's LIST_RECORDS answers above the base: the highest LSN it holds at or below
    the base, and (lsn, prev_lsn_pg, flags) of every record above it, in any order."""

    __slots__ = ("last_at_or_below", "entries")

    def __init__(self, last_at_or_below=0, entries=None):
        self.last_at_or_below = last_at_or_below
        self.entries = entries if entries is not None else []


def compute_recovery(members, listings, base, truncations, lal, read_quorum=READ_QUORUM):
    """Recover VCL, VDL and the truncation range from the members' listings.

    ``members``: {pg: [member ids]}; ``listings``: {pg: {member id: MemberListing}} of the
    members that answered completely (partial answers of members that failed midway may be
    included too: every record listed exists); ``truncations``: the [after, through] ranges
    of earlier recoveries (void LSNs); ``lal``: the LSN allocation limit.  A PG with fewer
    than ``read_quorum`` listings is a ValueError: the caller must check (and name the
    unreachable members) before calling."""
    present = {}          # lsn -> (pg, prev_lsn_pg, flags)
    last_below = {}       # pg -> highest LSN <= base held by a responder
    for pg in members:
        answered = listings.get(pg, {})
        if len(answered) < read_quorum:
            raise ValueError("recovery: PG %d has %d listings, needs a read quorum of %d"
                             % (pg, len(answered), read_quorum))
        for listing in answered.values():
            last_below[pg] = max(last_below.get(pg, 0), listing.last_at_or_below)
            for lsn, prev, flags in listing.entries:
                present[lsn] = (pg, prev, flags)
    void = [(after, through) for after, through in truncations]
    vcl = base
    vdl = base
    rounds = 0
    while rounds < len(present) + len(void) + 1:
        rounds += 1
        nxt = vcl + 1
        skipped = False
        for after, through in void:
            if after < nxt <= through:
                vcl = through
                skipped = True
        if skipped:
            continue
        entry = present.get(nxt)
        if entry is None:
            break
        vcl = nxt
        if entry[2] & _native.FLAG_CPL:
            vdl = nxt
    prev_lsn_pg = {}
    for pg in members:
        below = [lsn for lsn, (g, _, _) in present.items() if g == pg and lsn <= vdl]
        prev_lsn_pg[pg] = max(below) if below else last_below.get(pg, 0)
    # Nodes drop every LSN of every recorded truncation range for good, so the new writer
    # must start above all of them: an earlier recovery may have found a higher VDL from
    # records a later read quorum no longer sees (they were on too few members to be
    # durable), and its range can reach past this one's VDL + LAL (found by the simulator).
    # The writer that started after such a range counted its VDL from the range's end, so it
    # may have handed out LSNs up to that end + LAL without making any of them durable (else
    # this VDL would be above the range): truncate those too, or a record it left on a few
    # members keeps its LSN and shadows the new writer's record of the same LSN (simulator
    # seed 486: a deposed writer's LSN 160 survived the truncation (95, 159] on n4).
    through = max([vdl + lal] + [t + lal for _, t in void if t > vdl])
    return Recovery(base, vcl, vdl, prev_lsn_pg, vdl, through, len(present))


def build_mtr_batches(records, next_lsn, prev_lsn_pg):
    """Allocate dense LSNs to one MTR's records and split them into one batch per PG.

    ``records``: (pg, page_no, type, payload, page LSN before) sorted by (pg, page_no), so each
    PG's batch is one increasing run; ``prev_lsn_pg`` ({pg: last LSN}) is updated in place.
    The MTR's last record, the CPL, closes the whole MTR.  Returns (cpl, [MtrBatch])."""
    cpl = next_lsn + len(records) - 1
    batches = []
    lsn = next_lsn
    current = None
    for pg, page_no, rtype, payload, old_lsn in records:
        if current is None or current.pg != pg:
            current = MtrBatch(pg, [], [], [], [], [], [], [])
            batches.append(current)
        current.lsns.append(lsn)
        current.prev_lsn_pg.append(prev_lsn_pg.get(pg, 0))
        current.prev_lsn_page.append(old_lsn)
        current.page_nos.append(page_no)
        current.types.append(rtype)
        current.flags.append(_native.FLAG_CPL if lsn == cpl else 0)
        current.payloads.append(payload)
        prev_lsn_pg[pg] = lsn
        lsn += 1
    return cpl, batches


def encode_mtr_batch(volume_id, volume_epoch, membership_epoch, batch):
    return _native.encode_batch(volume_id, batch.pg, volume_epoch, membership_epoch, batch.lsns,
                                batch.prev_lsn_pg, batch.prev_lsn_page, batch.page_nos, batch.types,
                                batch.flags, batch.payloads)


def pgs_below_write_quorum(prev_lsn_pg, member_scls, write_quorum=4):
    """PGs whose recovered chain is not yet on a write quorum: fewer than ``write_quorum``
    members report an SCL at or above the PG's last LSN <= VDL (``prev_lsn_pg``).

    Recovery's VCL counts a record seen on any one member of the read quorum, so right after
    recovery a record at or below VDL may live on a single node.  Until gossip has copied it
    to a write quorum it is not durable: a writer must not hint VDL or commit on top of it
    before this returns nothing (found by the simulator; see docs/simulation.md)."""
    behind = []
    for pg, last in sorted(prev_lsn_pg.items()):
        scls = member_scls.get(pg, ())
        if sum(1 for scl in scls if scl >= last) < write_quorum:
            behind.append(pg)
    return behind
