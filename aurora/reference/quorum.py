"""Reference quorum tracker: the definitions of docs/quorum.md, computed the obvious way.

Same API, results and exception classes as ``aurora._native.QuorumTracker``, but every ack
recomputes PGCL by sorting, VCL by scanning every outstanding record and VDL by scanning every
CPL: O(records) per call.  For cross-checks and for the deterministic simulator (single
threaded there; ``wait`` still works across threads through a ``threading.Condition``).
"""
import math
import threading

from aurora import errors

# Mirrors csrc/quorum.h and csrc/status.h.
MEMBERS_MAX = 16
STATUS_ORDER = -10
STATUS_ARGUMENT = -15
STATUS_TIMEOUT = -16
TIMEOUT_S_MAX = 1e9  # longer timeouts mean "forever", as AUR_QUORUM_TIMEOUT_NS_MAX


def _error_for(code):
    from aurora._native import status_codes  # the one table of code -> class
    return status_codes().get(code, errors.AuroraError)


class QuorumTracker:
    """See ``aurora._native.QuorumTracker``."""

    def __init__(self, members=6, write_quorum=4, start_lsn=0):
        if not 1 <= write_quorum <= members <= MEMBERS_MAX:
            raise ValueError("QuorumTracker: %d members with a write quorum of %d; need "
                             "1 <= write_quorum <= members <= %d"
                             % (members, write_quorum, MEMBERS_MAX))
        if start_lsn < 0:
            raise OverflowError("start_lsn is negative")
        self.members = members
        self.write_quorum = write_quorum
        self.start_lsn = start_lsn
        self._highest_lsn = start_lsn
        self._vcl = start_lsn
        self._vdl = start_lsn
        self._failed = 0
        self._scls = {}      # pg -> [SCL per member]
        self._pgcls = {}     # pg -> PGCL
        self._records = []   # (lsn, pg) of every record above VCL, increasing
        self._cpls = []      # CPLs above VDL, increasing
        self._condition = threading.Condition()

    # ---- updates ---------------------------------------------------------------------------

    def sent(self, pg, lsns, is_cpl=None):
        lsns = [int(x) for x in lsns]
        flags = [bool(x) for x in is_cpl] if is_cpl is not None else [False] * len(lsns)
        if len(flags) != len(lsns):
            raise ValueError("QuorumTracker.sent: %d LSNs and %d is_cpl flags; one flag per "
                             "LSN" % (len(lsns), len(flags)))
        if not lsns:
            return
        if any(b <= a for a, b in zip(lsns, lsns[1:])):
            raise errors.OrderError("QuorumTracker.sent: PG %d: LSNs out of order" % pg)
        with self._condition:
            self._raise_if_failed("QuorumTracker.sent")
            if lsns[0] <= self._highest_lsn:
                raise errors.OrderError("QuorumTracker.sent: PG %d, LSN %d is not above the "
                                        "highest registered (%d)"
                                        % (pg, lsns[0], self._highest_lsn))
            self._member_scls(pg)
            for lsn, cpl in zip(lsns, flags):
                self._records.append((lsn, pg))
                if cpl:
                    self._cpls.append(lsn)
            self._highest_lsn = lsns[-1]
            self._advance()

    def ack(self, pg, member, scl):
        with self._condition:
            self._raise_if_failed("QuorumTracker.ack")
            if not 0 <= member < self.members:
                raise ValueError("QuorumTracker.ack: member %d of PG %d; PGs have %d members"
                                 % (member, pg, self.members))
            if scl > self._highest_lsn:
                raise ValueError("QuorumTracker.ack: member %d of PG %d reports SCL %d, above "
                                 "the highest LSN sent (%d)"
                                 % (member, pg, scl, self._highest_lsn))
            scls = self._member_scls(pg)
            if scl > scls[member]:
                scls[member] = scl
                pgcl = sorted(scls, reverse=True)[self.write_quorum - 1]
                self._pgcls[pg] = max(self._pgcls[pg], pgcl)
                self._advance()
            return self._vdl

    def fail(self, code):
        if code >= 0:
            raise ValueError("QuorumTracker.fail: code %d is not a failure; pass a negative "
                             "status code" % code)
        with self._condition:
            if not self._failed:
                self._failed = code
                self._condition.notify_all()

    # ---- waits -----------------------------------------------------------------------------

    def wait(self, lsn, timeout=None):
        self._wait(lsn, timeout, "QuorumTracker.wait")

    def wait_lal(self, next_lsn, lal, timeout=None):
        self._wait(max(next_lsn - lal, 0), timeout, "QuorumTracker.wait_lal")

    def _wait(self, lsn, timeout, function):
        if timeout is not None:
            timeout = float(timeout)
            if not timeout >= 0.0:
                raise ValueError("%s: timeout is %r seconds; it must be >= 0, or None to wait "
                                 "forever" % (function, timeout))
            if timeout >= TIMEOUT_S_MAX or math.isinf(timeout):
                timeout = None
        with self._condition:
            done = self._condition.wait_for(lambda: self._vdl >= lsn or self._failed, timeout)
            if self._vdl >= lsn:
                return
            if self._failed:
                raise _error_for(self._failed)("%s: VDL is %d, waiting for LSN %d: tracker "
                                               "failed" % (function, self._vdl, lsn))
            assert not done
            raise errors.QuorumTimeoutError("%s: VDL is %d, waiting for LSN %d (timeout %r s): "
                                            "timed out" % (function, self._vdl, lsn, timeout))

    # ---- getters ---------------------------------------------------------------------------

    @property
    def failed(self):
        return self._failed

    @property
    def vdl(self):
        return self._vdl

    @property
    def vcl(self):
        return self._vcl

    @property
    def highest_lsn(self):
        return self._highest_lsn

    @property
    def outstanding(self):
        return sum(1 for lsn, pg in self._records if lsn > self._pgcls[pg])

    @property
    def pg_count(self):
        return len(self._scls)

    def pgcl(self, pg):
        return self._pgcls.get(pg, self.start_lsn)

    def scl(self, pg, member):
        if not 0 <= member < self.members:
            raise ValueError("QuorumTracker.scl: member %d of PG %d; PGs have %d members"
                             % (member, pg, self.members))
        return self._scls.get(pg, [self.start_lsn] * self.members)[member]

    def member_scls(self, pg):
        return list(self._scls.get(pg, [self.start_lsn] * self.members))

    # ---- internals -------------------------------------------------------------------------

    def _member_scls(self, pg):
        if pg not in self._scls:
            self._scls[pg] = [self.start_lsn] * self.members
            self._pgcls[pg] = self.start_lsn
        return self._scls[pg]

    def _raise_if_failed(self, function):
        if self._failed:
            raise _error_for(self._failed)("%s: tracker failed" % function)

    def _advance(self):
        outstanding = [lsn for lsn, pg in self._records if lsn > self._pgcls[pg]]
        vcl = min(outstanding) - 1 if outstanding else self._highest_lsn
        assert vcl >= self._vcl, "VCL only moves forward"
        self._vcl = vcl
        self._records = [(lsn, pg) for lsn, pg in self._records if lsn > vcl]
        durable = [lsn for lsn in self._cpls if lsn <= vcl]
        if durable:
            self._vdl = durable[-1]
            self._cpls = [lsn for lsn in self._cpls if lsn > vcl]
            self._condition.notify_all()
