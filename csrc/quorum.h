/*
 * The writer's quorum tracker: from the records it has sent and its members' acks, it keeps
 * every member's SCL, each PG's PGCL, the volume's VCL and VDL, and wakes the threads that wait
 * for VDL to reach an LSN (committers) or for LAL head-room (the LSN allocator).
 *
 * Definitions (docs/quorum.md):
 *   - SCL(pg, member): the highest LSN up to which that member's copy of the PG's chain has no
 *     holes, as carried by its last ack.  Starts at start_lsn.
 *   - PGCL(pg): the write_quorum-th highest SCL of the PG's members (4th of 6).
 *   - a record is outstanding while its LSN > PGCL of its PG.
 *   - VCL: (lowest outstanding LSN of any PG) - 1, or the highest registered LSN when nothing
 *     is outstanding; never below start_lsn.
 *   - VDL: the highest registered CPL <= VCL, or start_lsn before the first one.
 * All four only move forward (DESIGN.md, invariant 2): an ack carrying a lower SCL than the
 * member already reported is ignored.
 *
 * Cost: aur_quorum_sent is O(records); aur_quorum_ack is O(members * write_quorum + records
 * retired + CPLs retired + log(PGs)) amortised.  Outstanding LSNs sit in one FIFO per PG
 * (registered in increasing order, retired from the front); an indexed min-heap over the PGs
 * whose FIFO is not empty, keyed by the FIFO's head, gives VCL; a global FIFO of CPLs gives VDL.
 *
 * Threading: every function may be called from any thread; one mutex guards the state.  The
 * waiting threads sit in a list sorted by the LSN they wait for: when VDL advances only the
 * waiters it covers are woken (on Linux through a futex each, after the mutex is released;
 * elsewhere a condition variable each, CLOCK_MONOTONIC); a failure wakes all.
 * aur_quorum_free must not race with any other call.
 *
 * Every function returning int returns AUR_OK (0) or a negative enum aur_status
 * (csrc/status.h).  Memory grows with the number of PGs and of outstanding records, within the
 * limits below (AUR_E_LENGTH beyond them).
 */
#ifndef AURORA_QUORUM_H
#define AURORA_QUORUM_H

#include <assert.h>
#include <stdint.h>

/* Members of one PG: 6 in steady state; up to 2 x 6 during a membership change whose dual
 * quorum set the caller tracks as one wider group. */
#define AUR_QUORUM_MEMBERS_MAX 16u

/* Distinct PGs one tracker follows (each costs a few dozen bytes plus 8 per member). */
#define AUR_QUORUM_PGS_MAX (1u << 24)

/* Records outstanding at once, over all PGs.  LAL keeps a writer far below this (Aurora's LAL
 * is 10 million); the limit bounds memory and every loop over a FIFO. */
#define AUR_QUORUM_OUTSTANDING_MAX (1u << 28)

/* CPLs registered and not yet at or below VCL. */
#define AUR_QUORUM_CPLS_MAX AUR_QUORUM_OUTSTANDING_MAX

/* Timeouts longer than this (about 31 years) mean "forever"; it keeps deadlines in range. */
#define AUR_QUORUM_TIMEOUT_NS_MAX INT64_C(1000000000000000000)

/* Records one aur_quorum_sent call registers. */
#define AUR_QUORUM_SENT_MAX (1u << 24)

static_assert(AUR_QUORUM_SENT_MAX <= AUR_QUORUM_OUTSTANDING_MAX,
              "one call's records must fit in the outstanding FIFOs");
static_assert(AUR_QUORUM_OUTSTANDING_MAX <= (1u << 31), "FIFO sizes and indices fit uint32");
static_assert(AUR_QUORUM_PGS_MAX <= (1u << 30), "PG map doubles to at most 2^31 slots");

typedef struct aur_quorum aur_quorum;

/* A tracker for PGs of `members` members of which `write_quorum` make a write durable, starting
 * at `start_lsn` (the VDL the writer recovered to: VCL = VDL = start_lsn, and every SCL starts
 * there).  NULL if 1 <= write_quorum <= members <= AUR_QUORUM_MEMBERS_MAX does not hold or
 * memory runs out. */
aur_quorum *aur_quorum_new(uint32_t members, uint32_t write_quorum, uint64_t start_lsn);

/* Free the tracker.  No thread may be inside, or enter, any other call on it.  NULL is a no-op. */
void aur_quorum_free(aur_quorum *q);

/* Register `count` records sent to PG `pg`: `lsns` strictly increasing and above every LSN
 * registered before (and above start_lsn), else AUR_E_ORDER and nothing is registered.
 * is_cpl[i] != 0 marks lsns[i] as a CPL (end of a mini-transaction); `is_cpl` may be NULL (no
 * CPL).  A PG is created on its first use.  AUR_E_LENGTH if count > AUR_QUORUM_SENT_MAX or a
 * limit above would be exceeded, AUR_E_NOMEM if memory runs out (nothing registered either
 * way); the tracker's failure code if aur_quorum_fail was called. */
int aur_quorum_sent(aur_quorum *q, uint32_t pg, uint32_t count, const uint64_t *lsns,
                    const uint8_t *is_cpl);

/* Member `member` of PG `pg` acknowledges with SCL `scl`.  An SCL at or below the member's
 * previous one changes nothing.  Otherwise PGCL, VCL and VDL are recomputed and waiters are
 * woken if VDL advanced.  *vdl_out (if not NULL) receives VDL after the ack.
 * AUR_E_ARGUMENT if member >= members, or scl is above the highest registered LSN (a member
 * cannot have a record nobody sent; accepting it could make later records look durable);
 * nothing changes then.  The tracker's failure code if aur_quorum_fail was called. */
int aur_quorum_ack(aur_quorum *q, uint32_t pg, uint32_t member, uint64_t scl,
                   uint64_t *vdl_out);

/* aur_quorum_ack with `scl` first lowered to the highest registered LSN (an SCL above it says
 * nothing more: it can only come from a member that has not truncated yet), all under one
 * lock.  *pgcl_moved is set to 1 if the PG's PGCL rose (the ACK may open a held boxcar's
 * window), else 0.  Same results as aur_quorum_ack.  The ACK receiver's one call per ACK (it
 * took the mutex four times: highest LSN, PGCL before, ack, PGCL after). */
int aur_quorum_ack_clamped(aur_quorum *q, uint32_t pg, uint32_t member, uint64_t scl,
                           int *pgcl_moved);

/* Block until VDL >= lsn: AUR_OK.  AUR_E_TIMEOUT after `timeout_ns` nanoseconds (measured on
 * CLOCK_MONOTONIC; < 0, or more than AUR_QUORUM_TIMEOUT_NS_MAX, waits forever; 0 only
 * checks).  Once aur_quorum_fail has been called, the failure code unless VDL already covers
 * `lsn`: a record at or below VDL is durable whatever happens to this writer afterwards, so a
 * satisfied condition wins over a failure. */
int aur_quorum_wait(aur_quorum *q, uint64_t lsn, int64_t timeout_ns);

/* LAL back-pressure: block until next_lsn <= VDL + lal (without overflow), with the same
 * results as aur_quorum_wait. */
int aur_quorum_wait_lal(aur_quorum *q, uint64_t next_lsn, uint64_t lal, int64_t timeout_ns);

/* Fail the tracker with `code` (a negative aur_status; anything else becomes AUR_E_ARGUMENT):
 * every present and future wait, sent and ack returns it.  Used when a newer volume epoch
 * fences the writer.  The first failure wins; getters keep working. */
void aur_quorum_fail(aur_quorum *q, int code);

/* The failure code, or AUR_OK while the tracker has not failed. */
int aur_quorum_failed(aur_quorum *q);

uint64_t aur_quorum_vdl(aur_quorum *q);
uint64_t aur_quorum_vcl(aur_quorum *q);
/* Highest LSN registered by aur_quorum_sent (start_lsn before the first). */
uint64_t aur_quorum_highest_lsn(aur_quorum *q);
/* Records registered and not yet at or below their PG's PGCL. */
uint64_t aur_quorum_outstanding(aur_quorum *q);
/* PGs created so far. */
uint32_t aur_quorum_pg_count(aur_quorum *q);
uint32_t aur_quorum_members(aur_quorum *q);
uint32_t aur_quorum_write_quorum(aur_quorum *q);
uint64_t aur_quorum_start_lsn(aur_quorum *q);

/* PGCL of `pg` (start_lsn for a PG never used). */
int aur_quorum_pgcl(aur_quorum *q, uint32_t pg, uint64_t *pgcl_out);

/* SCL of `member` of `pg` (start_lsn for a PG never used); AUR_E_ARGUMENT if member >=
 * members. */
int aur_quorum_scl(aur_quorum *q, uint32_t pg, uint32_t member, uint64_t *scl_out);

/* The SCLs of all members of `pg`, taken at one instant, into scls_out[0 .. members - 1]. */
int aur_quorum_scls(aur_quorum *q, uint32_t pg, uint64_t *scls_out);

#endif /* AURORA_QUORUM_H */
