# The writer's quorum tracker (csrc/quorum.h): SCL per member, PGCL per PG, VCL and VDL, and
# the waits of committers (VDL >= commit LSN) and of the LSN allocator (LAL).  Waits release
# the GIL; the short calls (sent, ack, getters) do not, since a lock round trip costs less than
# releasing it.  Semantics: docs/quorum.md.

from libc.stdint cimport int64_t

cdef extern from "quorum.h" nogil:
    ctypedef struct aur_quorum:
        pass
    enum: AUR_QUORUM_MEMBERS_MAX
    unsigned int AUR_QUORUM_PGS_MAX
    unsigned int AUR_QUORUM_OUTSTANDING_MAX
    unsigned int AUR_QUORUM_SENT_MAX
    long long AUR_QUORUM_TIMEOUT_NS_MAX
    aur_quorum *aur_quorum_new(uint32_t members, uint32_t write_quorum, uint64_t start_lsn)
    void aur_quorum_free(aur_quorum *q)
    int aur_quorum_sent(aur_quorum *q, uint32_t pg, uint32_t count, const uint64_t *lsns,
                        const uint8_t *is_cpl)
    int aur_quorum_ack(aur_quorum *q, uint32_t pg, uint32_t member, uint64_t scl,
                       uint64_t *vdl_out)
    int aur_quorum_wait(aur_quorum *q, uint64_t lsn, int64_t timeout_ns)
    int aur_quorum_wait_lal(aur_quorum *q, uint64_t next_lsn, uint64_t lal, int64_t timeout_ns)
    void aur_quorum_fail(aur_quorum *q, int code)
    int aur_quorum_failed(aur_quorum *q)
    uint64_t aur_quorum_vdl(aur_quorum *q)
    uint64_t aur_quorum_vcl(aur_quorum *q)
    uint64_t aur_quorum_highest_lsn(aur_quorum *q)
    uint64_t aur_quorum_outstanding(aur_quorum *q)
    uint32_t aur_quorum_pg_count(aur_quorum *q)
    uint32_t aur_quorum_members(aur_quorum *q)
    uint32_t aur_quorum_write_quorum(aur_quorum *q)
    uint64_t aur_quorum_start_lsn(aur_quorum *q)
    int aur_quorum_pgcl(aur_quorum *q, uint32_t pg, uint64_t *pgcl_out)
    int aur_quorum_scl(aur_quorum *q, uint32_t pg, uint32_t member, uint64_t *scl_out)
    int aur_quorum_scls(aur_quorum *q, uint32_t pg, uint64_t *scls_out)

QUORUM_MEMBERS_MAX = AUR_QUORUM_MEMBERS_MAX
QUORUM_PGS_MAX = AUR_QUORUM_PGS_MAX
QUORUM_OUTSTANDING_MAX = AUR_QUORUM_OUTSTANDING_MAX


cdef int64_t _quorum_timeout_ns(object timeout, str function) except? -2:
    """Seconds (None: forever) to the C convention (-1: forever)."""
    if timeout is None:
        return -1
    seconds = float(timeout)
    if not seconds >= 0.0:  # also catches NaN
        raise ValueError("%s: timeout is %r seconds; it must be >= 0, or None to wait forever"
                         % (function, timeout))
    if seconds * 1e9 >= <double>AUR_QUORUM_TIMEOUT_NS_MAX:
        return -1
    return <int64_t>(seconds * 1e9)


cdef class QuorumTracker:
    """The writer's view of durability: every member's SCL per PG, each PG's PGCL (the
    ``write_quorum``-th highest SCL), VCL and VDL, all monotonic (docs/quorum.md).

    ``sent`` registers records (strictly increasing LSNs across calls), ``ack`` feeds one
    member's SCL, ``wait`` blocks a committer until VDL covers its LSN, ``wait_lal`` blocks the
    LSN allocator for LAL back-pressure, ``fail`` releases every waiter with an error (the
    writer was fenced).  Thread-safe; waits release the GIL."""

    cdef aur_quorum *_q

    def __init__(self, uint32_t members=6, uint32_t write_quorum=4, uint64_t start_lsn=0):
        if members == 0 or members > AUR_QUORUM_MEMBERS_MAX or write_quorum == 0 \
                or write_quorum > members:
            raise ValueError("QuorumTracker: %d members with a write quorum of %d; need "
                             "1 <= write_quorum <= members <= %d"
                             % (members, write_quorum, AUR_QUORUM_MEMBERS_MAX))
        cdef aur_quorum *q = aur_quorum_new(members, write_quorum, start_lsn)
        if q == NULL:
            raise MemoryError("QuorumTracker: out of memory")
        if self._q != NULL:
            aur_quorum_free(self._q)
        self._q = q

    def __dealloc__(self):
        if self._q != NULL:
            aur_quorum_free(self._q)
            self._q = NULL

    cdef inline int _check(self) except -1:
        if self._q == NULL:
            raise RuntimeError("QuorumTracker.__init__ was not called")
        return 0

    def sent(self, uint32_t pg, lsns, is_cpl=None):
        """Register records sent to PG ``pg``: ``lsns`` (uint64 array or sequence) strictly
        increasing and above every LSN registered before, else OrderError and nothing is
        registered; ``is_cpl`` (uint8/bool array or sequence, one per LSN; None: no CPL)
        marks the ends of mini-transactions."""
        self._check()
        cdef const uint64_t[::1] lsns_view = _as_u64(lsns)
        cdef const uint8_t[::1] cpl_view
        cdef const uint8_t *cpl_pointer = NULL
        cdef Py_ssize_t n = lsns_view.shape[0]
        if n > AUR_QUORUM_SENT_MAX:
            raise ValueError("QuorumTracker.sent: %d records in one call; at most %d"
                             % (n, AUR_QUORUM_SENT_MAX))
        if is_cpl is not None:
            cpl_view = _as_u8(is_cpl)
            if cpl_view.shape[0] != n:
                raise ValueError("QuorumTracker.sent: %d LSNs and %d is_cpl flags; one flag "
                                 "per LSN" % (n, cpl_view.shape[0]))
            if n > 0:
                cpl_pointer = &cpl_view[0]
        if n == 0:
            return
        cdef int rc = aur_quorum_sent(self._q, pg, <uint32_t>n, &lsns_view[0], cpl_pointer)
        if rc != AUR_OK:
            if rc == AUR_E_ORDER:
                raise_status(rc, "QuorumTracker.sent: PG %d, LSNs %d..%d; every LSN must be "
                             "above the previous one and above the highest registered (%d)"
                             % (pg, lsns_view[0], lsns_view[n - 1],
                                aur_quorum_highest_lsn(self._q)))
            raise_status(rc, "QuorumTracker.sent: PG %d, %d records" % (pg, n))

    def ack(self, uint32_t pg, uint32_t member, uint64_t scl):
        """Member ``member`` of PG ``pg`` reports SCL ``scl``; returns VDL.  A lower or equal
        SCL than the member's last one is ignored.  ValueError for a member out of range or
        an SCL above the highest registered LSN."""
        cdef uint64_t vdl = 0
        if self._q == NULL:
            self._check()
        cdef int rc = aur_quorum_ack(self._q, pg, member, scl, &vdl)
        if rc != AUR_OK:
            if rc == AUR_E_ARGUMENT:
                if member >= aur_quorum_members(self._q):
                    raise_status(rc, "QuorumTracker.ack: member %d of PG %d; PGs have %d "
                                 "members" % (member, pg, aur_quorum_members(self._q)))
                raise_status(rc, "QuorumTracker.ack: member %d of PG %d reports SCL %d, above "
                             "the highest LSN sent (%d)"
                             % (member, pg, scl, aur_quorum_highest_lsn(self._q)))
            raise_status(rc, "QuorumTracker.ack: member %d of PG %d" % (member, pg))
        return vdl

    def wait(self, uint64_t lsn, timeout=None):
        """Block (GIL released) until VDL >= ``lsn``.  QuorumTimeoutError after ``timeout``
        seconds (None: forever; 0: only check); after ``fail(code)``, the error mapped to
        ``code`` unless VDL already covers ``lsn``."""
        self._check()
        cdef int64_t timeout_ns = _quorum_timeout_ns(timeout, "QuorumTracker.wait")
        cdef int rc
        if aur_quorum_vdl(self._q) >= lsn:
            # Satisfied already (VDL never moves back, and a satisfied wait wins over a
            # failure): return without giving up the GIL, which under many threads costs a
            # switch to another thread and a wait to get it back.
            return
        with nogil:
            rc = aur_quorum_wait(self._q, lsn, timeout_ns)
        if rc != AUR_OK:
            raise_status(rc, "QuorumTracker.wait: VDL is %d, waiting for LSN %d (timeout %r s)"
                         % (aur_quorum_vdl(self._q), lsn, timeout))

    def wait_lal(self, uint64_t next_lsn, uint64_t lal, timeout=None):
        """LAL back-pressure: block (GIL released) until ``next_lsn <= VDL + lal``; errors as
        for ``wait``."""
        self._check()
        cdef int64_t timeout_ns = _quorum_timeout_ns(timeout, "QuorumTracker.wait_lal")
        cdef int rc
        if next_lsn <= lal or aur_quorum_vdl(self._q) >= next_lsn - lal:
            # Head-room already (the usual case: LAL is 10 million LSNs): keep the GIL.  The
            # writer calls this under its log lock for every MTR; dropping the GIL there let
            # other committers run into the held lock and sleep on it.
            return
        with nogil:
            rc = aur_quorum_wait_lal(self._q, next_lsn, lal, timeout_ns)
        if rc != AUR_OK:
            raise_status(rc, "QuorumTracker.wait_lal: LSN %d is beyond VDL %d + LAL %d "
                         "(timeout %r s)" % (next_lsn, aur_quorum_vdl(self._q), lal, timeout))

    def fail(self, int code):
        """Fail the tracker with status ``code`` (negative; see ``status_codes()``): every
        waiter wakes, and every later wait, sent and ack raises the exception mapped to it.
        The first failure wins."""
        self._check()
        if code >= 0:
            raise ValueError("QuorumTracker.fail: code %d is not a failure; pass a negative "
                             "status code" % code)
        aur_quorum_fail(self._q, code)

    @property
    def failed(self):
        """The failure code given to ``fail``, or 0."""
        self._check()
        return aur_quorum_failed(self._q)

    @property
    def vdl(self):
        self._check()
        return aur_quorum_vdl(self._q)

    @property
    def vcl(self):
        self._check()
        return aur_quorum_vcl(self._q)

    @property
    def highest_lsn(self):
        """Highest LSN registered (start_lsn before the first ``sent``)."""
        self._check()
        return aur_quorum_highest_lsn(self._q)

    @property
    def outstanding(self):
        """Records registered and not yet at or below their PG's PGCL."""
        self._check()
        return aur_quorum_outstanding(self._q)

    @property
    def members(self):
        self._check()
        return aur_quorum_members(self._q)

    @property
    def write_quorum(self):
        self._check()
        return aur_quorum_write_quorum(self._q)

    @property
    def start_lsn(self):
        self._check()
        return aur_quorum_start_lsn(self._q)

    @property
    def pg_count(self):
        """PGs seen so far (by ``sent`` or ``ack``)."""
        self._check()
        return aur_quorum_pg_count(self._q)

    def pgcl(self, uint32_t pg):
        """PGCL of ``pg`` (start_lsn for a PG never seen)."""
        cdef uint64_t value = 0
        self._check()
        aur_quorum_pgcl(self._q, pg, &value)
        return value

    def scl(self, uint32_t pg, uint32_t member):
        """Last SCL ``member`` of ``pg`` reported (start_lsn before its first ack)."""
        cdef uint64_t value = 0
        self._check()
        cdef int rc = aur_quorum_scl(self._q, pg, member, &value)
        if rc != AUR_OK:
            raise_status(rc, "QuorumTracker.scl: member %d of PG %d; PGs have %d members"
                         % (member, pg, aur_quorum_members(self._q)))
        return value

    def member_scls(self, uint32_t pg):
        """Every member's SCL for ``pg``, taken at one instant, as a list."""
        cdef uint64_t values[AUR_QUORUM_MEMBERS_MAX]
        self._check()
        aur_quorum_scls(self._q, pg, values)
        return [values[m] for m in range(aur_quorum_members(self._q))]

    def __repr__(self):
        if self._q == NULL:
            return "<QuorumTracker (uninitialised)>"
        return ("<QuorumTracker %d/%d VCL=%d VDL=%d highest=%d outstanding=%d PGs=%d>"
                % (aur_quorum_write_quorum(self._q), aur_quorum_members(self._q),
                   aur_quorum_vcl(self._q), aur_quorum_vdl(self._q),
                   aur_quorum_highest_lsn(self._q), aur_quorum_outstanding(self._q),
                   aur_quorum_pg_count(self._q)))


def _quorum_bench_acks(uint32_t pgs, uint32_t rounds, uint32_t batch_records=16,
                       uint32_t members=6, uint32_t write_quorum=4):
    """Benchmark helper, all in C without the GIL: a fresh tracker; each round sends one batch
    of ``batch_records`` dense LSNs (the last one a CPL) to each of ``pgs`` PGs, then every
    member of every PG acks its batch.  Returns (acks, final VDL)."""
    cdef aur_quorum *q
    cdef uint64_t lsns[256]
    cdef uint8_t cpl[256]
    cdef uint64_t last[1024]
    cdef uint64_t lsn = 0, vdl = 0, acks = 0
    cdef uint32_t r, p, i, m
    cdef int rc = AUR_OK
    if batch_records == 0 or batch_records > 256 or pgs == 0 or pgs > 1024:
        raise ValueError("_quorum_bench_acks: 1..256 records per batch, 1..1024 PGs")
    q = aur_quorum_new(members, write_quorum, 0)
    if q == NULL:
        raise ValueError("_quorum_bench_acks: bad geometry or out of memory")
    try:
        with nogil:
            for i in range(batch_records):
                cpl[i] = 1 if i == batch_records - 1 else 0
            for r in range(rounds):
                for p in range(pgs):
                    for i in range(batch_records):
                        lsn += 1
                        lsns[i] = lsn
                    last[p] = lsn
                    rc = aur_quorum_sent(q, p, batch_records, lsns, cpl)
                    if rc != AUR_OK:
                        break
                if rc != AUR_OK:
                    break
                for p in range(pgs):
                    for m in range(members):
                        rc = aur_quorum_ack(q, p, m, last[p], &vdl)
                        if rc != AUR_OK:
                            break
                        acks += 1
                    if rc != AUR_OK:
                        break
                if rc != AUR_OK:
                    break
        if rc != AUR_OK:
            raise_status(rc, "_quorum_bench_acks")
        return acks, vdl
    finally:
        aur_quorum_free(q)
