/*
 * Quorum tracker (csrc/quorum.h).  State, all under one mutex:
 *
 *   pgs[]      one entry per PG seen: its PGCL, its FIFO of outstanding LSNs (registered in
 *              increasing order, so retiring is popping from the front) and its place in the
 *              heap.  Indices into pgs[] are stable; the array itself may move when it grows.
 *   scls[]     members SCLs per PG, pgs[] order (scls[index * members + member]).
 *   map[]      open-addressing hash map (linear probing, load <= 1/2) from PG number to index.
 *   heap[]     indexed min-heap of the PGs whose FIFO is not empty, keyed by the FIFO's head.
 *              Its root holds the lowest outstanding LSN of the volume: VCL = root - 1.
 *   cpls       FIFO of registered CPLs above VCL; popped while <= VCL, the last popped is VDL.
 *   waiters    the threads blocked in aur_quorum_wait, sorted by the LSN they wait for.  When
 *              VDL advances only the waiters it covers are woken: with one shared condition
 *              variable every VDL step woke every committer (16 threads at the 16-thread
 *              benchmark), and those still uncovered each paid a wake-up, a trip through the
 *              mutex and a sleep for nothing.
 *
 * Waking (Linux).  The covered waiters are unlinked under the mutex and woken after it is
 * released, each through a futex on a word of its own that it sleeps on without the mutex.
 * Signalling a condition variable under the mutex (the portable path below) makes every woken
 * thread run straight into the mutex the waker still holds, sleep on it and be woken a second
 * time: with 8 committers released per VDL step at 16 threads, that re-lock was ~7% of the
 * writer's CPU (perf, 2026-12-03), most of it context switches.
 *
 * A PG's key only grows (its head is retired, never replaced by a lower LSN: every new LSN is
 * above every registered one), so an ack only ever sifts down or removes.
 */
#define _POSIX_C_SOURCE 200809L
#if defined(__linux__)
#define _DEFAULT_SOURCE /* syscall() */
#endif

#include "quorum.h"

#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#if defined(__linux__)
#include <linux/futex.h>
#include <stdatomic.h>
#include <sys/syscall.h>
#include <unistd.h>
#define AUR_QUORUM_FUTEX 1
#else
#define AUR_QUORUM_FUTEX 0
#endif

#include "status.h"

#define AUR_QUORUM_NONE UINT32_MAX
#define AUR_QUORUM_FIFO_CAPACITY_MIN 16u
#define AUR_QUORUM_PGS_CAPACITY_MIN 8u
#define AUR_QUORUM_MAP_CAPACITY_MIN 16u
/* Doublings that take any capacity to the largest one allowed (2^31 slots). */
#define AUR_QUORUM_GROW_STEPS_MAX 32u
#define AUR_QUORUM_NS_PER_S INT64_C(1000000000)

static_assert(AUR_QUORUM_PGS_MAX * 2u <= (1u << 31), "map capacity fits uint32");
static_assert(AUR_QUORUM_PGS_MAX < AUR_QUORUM_NONE, "AUR_QUORUM_NONE is never an index");

/* ---- FIFO of LSNs (ring buffer, power-of-two capacity) ------------------------------------ */

typedef struct {
    uint64_t *items;
    uint32_t head;     /* index of the oldest item */
    uint32_t count;
    uint32_t capacity; /* 0 or a power of two */
} aur_fifo;

/* Make room for `extra` more items without exceeding `limit` in total. */
static int fifo_reserve(aur_fifo *f, uint32_t extra, uint32_t limit) {
    uint64_t need = (uint64_t)f->count + extra;
    if (need > limit) return AUR_E_LENGTH;
    if (need <= f->capacity) return AUR_OK;
    uint64_t capacity = f->capacity ? f->capacity : AUR_QUORUM_FIFO_CAPACITY_MIN;
    for (uint32_t step = 0; step < AUR_QUORUM_GROW_STEPS_MAX && capacity < need; step++)
        capacity *= 2;
    assert(capacity >= need && capacity <= (UINT64_C(1) << 31));
    uint64_t *items = malloc((size_t)capacity * sizeof(uint64_t));
    if (items == NULL) return AUR_E_NOMEM;
    /* Unwrap into the new buffer, oldest first. */
    uint32_t first = f->capacity - f->head;
    if (first > f->count) first = f->count;
    if (f->count) {
        memcpy(items, f->items + f->head, (size_t)first * sizeof(uint64_t));
        memcpy(items + first, f->items, (size_t)(f->count - first) * sizeof(uint64_t));
    }
    free(f->items);
    f->items = items;
    f->head = 0;
    f->capacity = (uint32_t)capacity;
    return AUR_OK;
}

static inline void fifo_push(aur_fifo *f, uint64_t lsn) {
    assert(f->count < f->capacity);
    f->items[(f->head + f->count) & (f->capacity - 1u)] = lsn;
    f->count++;
}

static inline uint64_t fifo_front(const aur_fifo *f) {
    assert(f->count > 0);
    return f->items[f->head];
}

static inline void fifo_pop(aur_fifo *f) {
    assert(f->count > 0);
    f->head = (f->head + 1u) & (f->capacity - 1u);
    f->count--;
}

/* ---- the tracker -------------------------------------------------------------------------- */

typedef struct {
    uint32_t pg;
    uint32_t heap_index; /* position in heap[], AUR_QUORUM_NONE while the FIFO is empty */
    uint64_t pgcl;
    aur_fifo outstanding;
} aur_quorum_pg;

/* Why a waiter was released (under the mutex). */
#define AUR_QUORUM_RELEASED_NO 0
#define AUR_QUORUM_RELEASED_VDL 1  /* VDL >= its LSN */
#define AUR_QUORUM_RELEASED_FAIL 2 /* aur_quorum_fail */

/* One thread blocked in aur_quorum_wait; lives on that thread's stack until it returns. */
typedef struct aur_quorum_waiter {
    uint64_t lsn;                   /* released once VDL >= lsn */
    int released;                   /* AUR_QUORUM_RELEASED_*, set under the mutex on unlink */
    /* While linked: the waiter with the next higher (or equal) LSN.  Once released (Linux):
     * the next waiter of the same release, to wake after the mutex is unlocked. */
    struct aur_quorum_waiter *next;
#if AUR_QUORUM_FUTEX
    /* 0 until the releasing thread is done with this struct: set last (release order), then
     * the futex is woken.  The waiter may return, and its stack be reused, as soon as it reads
     * 1, so that wake can hit an unrelated futex at the same address later: a spurious
     * wake-up, which every futex user (glibc's included) already retries. */
    _Atomic uint32_t woken;
#else
    pthread_cond_t wake;            /* signalled under the mutex when released */
#endif
} aur_quorum_waiter;

struct aur_quorum {
    pthread_mutex_t mutex;
    pthread_condattr_t wake_attributes; /* CLOCK_MONOTONIC, for every waiter's condition */
    aur_quorum_waiter *waiters;         /* sorted by lsn, lowest first */
    uint32_t members;
    uint32_t write_quorum;
    uint64_t start_lsn;
    uint64_t highest_lsn;
    uint64_t vcl;
    uint64_t vdl;
    uint64_t outstanding; /* sum of the PG FIFOs' counts */
    int failed;           /* AUR_OK, or the code given to aur_quorum_fail */

    aur_quorum_pg *pgs;
    uint64_t *scls;
    uint32_t pg_count;
    uint32_t pg_capacity; /* of pgs[], scls[] (times members) and heap[] */

    uint32_t *map; /* slot -> index into pgs[], AUR_QUORUM_NONE when free */
    uint32_t map_capacity;

    uint32_t *heap;
    uint32_t heap_count;

    aur_fifo cpls;
};

static inline uint32_t map_hash(uint32_t pg) {
    /* Fibonacci hashing: PG numbers are often small and consecutive. */
    return (uint32_t)(((uint64_t)pg * UINT64_C(0x9E3779B97F4A7C15)) >> 32);
}

/* Index of `pg` in pgs[], or AUR_QUORUM_NONE. */
static uint32_t pg_find(const aur_quorum *q, uint32_t pg) {
    uint32_t mask = q->map_capacity - 1u;
    uint32_t slot = map_hash(pg) & mask;
    /* The map is at most half full, so a free slot ends every probe sequence. */
    for (uint32_t probe = 0; probe < q->map_capacity; probe++) {
        uint32_t index = q->map[slot];
        if (index == AUR_QUORUM_NONE) return AUR_QUORUM_NONE;
        if (q->pgs[index].pg == pg) return index;
        slot = (slot + 1u) & mask;
    }
    return AUR_QUORUM_NONE;
}

static void map_insert(uint32_t *map, uint32_t capacity, uint32_t pg, uint32_t index) {
    uint32_t mask = capacity - 1u;
    uint32_t slot = map_hash(pg) & mask;
    for (uint32_t probe = 0; probe < capacity; probe++) {
        if (map[slot] == AUR_QUORUM_NONE) {
            map[slot] = index;
            return;
        }
        slot = (slot + 1u) & mask;
    }
    assert(0 && "map_insert: no free slot in a map kept at most half full");
}

static int map_grow(aur_quorum *q) {
    uint32_t capacity = q->map_capacity * 2u;
    uint32_t *map = malloc((size_t)capacity * sizeof(uint32_t));
    if (map == NULL) return AUR_E_NOMEM;
    memset(map, 0xFF, (size_t)capacity * sizeof(uint32_t));
    for (uint32_t i = 0; i < q->pg_count; i++) map_insert(map, capacity, q->pgs[i].pg, i);
    free(q->map);
    q->map = map;
    q->map_capacity = capacity;
    return AUR_OK;
}

static int pgs_grow(aur_quorum *q) {
    uint32_t capacity = q->pg_capacity * 2u;
    if (capacity > AUR_QUORUM_PGS_MAX) capacity = AUR_QUORUM_PGS_MAX;
    if (capacity <= q->pg_capacity) return AUR_E_LENGTH;
    aur_quorum_pg *pgs = realloc(q->pgs, (size_t)capacity * sizeof(*pgs));
    if (pgs == NULL) return AUR_E_NOMEM;
    q->pgs = pgs;
    uint64_t *scls = realloc(q->scls, (size_t)capacity * q->members * sizeof(uint64_t));
    if (scls == NULL) return AUR_E_NOMEM;
    q->scls = scls;
    uint32_t *heap = realloc(q->heap, (size_t)capacity * sizeof(uint32_t));
    if (heap == NULL) return AUR_E_NOMEM;
    q->heap = heap;
    q->pg_capacity = capacity;
    return AUR_OK;
}

/* Index of `pg` in pgs[], creating the PG on first use. */
static int pg_get(aur_quorum *q, uint32_t pg, uint32_t *index_out) {
    uint32_t index = pg_find(q, pg);
    if (index != AUR_QUORUM_NONE) {
        *index_out = index;
        return AUR_OK;
    }
    if (q->pg_count >= AUR_QUORUM_PGS_MAX) return AUR_E_LENGTH;
    int rc;
    if ((q->pg_count + 1u) * 2u > q->map_capacity && (rc = map_grow(q)) != AUR_OK) return rc;
    if (q->pg_count == q->pg_capacity && (rc = pgs_grow(q)) != AUR_OK) return rc;
    index = q->pg_count++;
    aur_quorum_pg *p = &q->pgs[index];
    memset(p, 0, sizeof(*p));
    p->pg = pg;
    p->heap_index = AUR_QUORUM_NONE;
    p->pgcl = q->start_lsn;
    for (uint32_t m = 0; m < q->members; m++) q->scls[(size_t)index * q->members + m] = q->start_lsn;
    map_insert(q->map, q->map_capacity, pg, index);
    *index_out = index;
    return AUR_OK;
}

/* ---- heap of PGs keyed by their lowest outstanding LSN ------------------------------------ */

static inline uint64_t heap_key(const aur_quorum *q, uint32_t position) {
    return fifo_front(&q->pgs[q->heap[position]].outstanding);
}

static inline void heap_place(aur_quorum *q, uint32_t position, uint32_t index) {
    q->heap[position] = index;
    q->pgs[index].heap_index = position;
}

static void heap_sift_up(aur_quorum *q, uint32_t position) {
    uint32_t index = q->heap[position];
    uint64_t key = fifo_front(&q->pgs[index].outstanding);
    /* Each step halves the position: at most 32 steps. */
    for (uint32_t step = 0; step < AUR_QUORUM_GROW_STEPS_MAX && position > 0; step++) {
        uint32_t parent = (position - 1u) / 2u;
        if (heap_key(q, parent) <= key) break;
        heap_place(q, position, q->heap[parent]);
        position = parent;
    }
    heap_place(q, position, index);
}

static void heap_sift_down(aur_quorum *q, uint32_t position) {
    uint32_t index = q->heap[position];
    uint64_t key = fifo_front(&q->pgs[index].outstanding);
    /* Each step at least doubles the position: at most 32 steps. */
    for (uint32_t step = 0; step < AUR_QUORUM_GROW_STEPS_MAX; step++) {
        uint32_t child = 2u * position + 1u;
        if (child >= q->heap_count) break;
        if (child + 1u < q->heap_count && heap_key(q, child + 1u) < heap_key(q, child)) child++;
        if (key <= heap_key(q, child)) break;
        heap_place(q, position, q->heap[child]);
        position = child;
    }
    heap_place(q, position, index);
}

static void heap_push(aur_quorum *q, uint32_t index) {
    assert(q->pgs[index].heap_index == AUR_QUORUM_NONE);
    assert(q->heap_count < q->pg_capacity);
    heap_place(q, q->heap_count++, index);
    heap_sift_up(q, q->heap_count - 1u);
}

static void heap_remove(aur_quorum *q, uint32_t index) {
    uint32_t position = q->pgs[index].heap_index;
    assert(position < q->heap_count && q->heap[position] == index);
    q->pgs[index].heap_index = AUR_QUORUM_NONE;
    uint32_t last = q->heap[--q->heap_count];
    if (position == q->heap_count) return;
    heap_place(q, position, last);
    heap_sift_down(q, position);
    heap_sift_up(q, q->pgs[last].heap_index);
}

/* ---- waiters ----------------------------------------------------------------------------- */

#if AUR_QUORUM_FUTEX
/* Sleep while *word is 0, until the absolute CLOCK_MONOTONIC `deadline` (NULL: no limit).
 * Returns ETIMEDOUT once the deadline passed, else 0 (woken, or spuriously: callers check). */
static int futex_wait_until(_Atomic uint32_t *word, const struct timespec *deadline) {
    long rc = syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT_BITSET_PRIVATE, 0u, deadline,
                      NULL, FUTEX_BITSET_MATCH_ANY);
    return rc == -1 && errno == ETIMEDOUT ? ETIMEDOUT : 0;
}
#endif

/* Unlink every waiter whose LSN is <= `upto` (all of them for UINT64_MAX), marked with
 * `reason`.  The list is sorted, so this stops at the first waiter still uncovered; bounded by
 * the number of waiting threads.  Linux: the released waiters are chained on *wake (pass it to
 * wake_waiters once the mutex is unlocked); elsewhere each is signalled here. */
static void release_waiters(aur_quorum *q, uint64_t upto, int reason,
                            aur_quorum_waiter **wake) {
    while (q->waiters != NULL && q->waiters->lsn <= upto) {
        aur_quorum_waiter *w = q->waiters;
        q->waiters = w->next;
        w->released = reason;
#if AUR_QUORUM_FUTEX
        w->next = *wake;
        *wake = w;
#else
        w->next = NULL;
        (void)wake;
        pthread_cond_signal(&w->wake);
#endif
    }
}

/* Wake the waiters release_waiters chained, with the mutex NOT held (so none of them meets it
 * locked on its way out).  Bounded by the number of waiting threads. */
static void wake_waiters(aur_quorum_waiter *w) {
#if AUR_QUORUM_FUTEX
    while (w != NULL) {
        aur_quorum_waiter *next = w->next; /* read first: w may be gone once woken is set */
        _Atomic uint32_t *word = &w->woken;
        atomic_store_explicit(word, 1u, memory_order_release);
        syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
        w = next;
    }
#else
    assert(w == NULL);
#endif
}

/* Link `w` in LSN order (after waiters of the same LSN).  Bounded by the number of waiting
 * threads. */
static void link_waiter(aur_quorum *q, aur_quorum_waiter *w) {
    aur_quorum_waiter **at = &q->waiters;
    while (*at != NULL && (*at)->lsn <= w->lsn) at = &(*at)->next;
    w->next = *at;
    *at = w;
}

/* Unlink `w` if it is still linked (a timeout); bounded by the number of waiting threads. */
static void unlink_waiter(aur_quorum *q, aur_quorum_waiter *w) {
    for (aur_quorum_waiter **at = &q->waiters; *at != NULL; at = &(*at)->next) {
        if (*at == w) {
            *at = w->next;
            w->next = NULL;
            return;
        }
    }
}

/* ---- VCL and VDL ------------------------------------------------------------------------- */

/* Recompute VCL from the heap and VDL from the CPL FIFO; release waiters (onto *wake) if VDL
 * advanced. */
static void advance(aur_quorum *q, aur_quorum_waiter **wake) {
    uint64_t vcl = q->heap_count ? heap_key(q, 0) - 1u : q->highest_lsn;
    assert(vcl >= q->vcl && "VCL only moves forward");
    q->vcl = vcl;
    uint64_t vdl = q->vdl;
    /* Bounded by the FIFO's count (at most AUR_QUORUM_CPLS_MAX). */
    while (q->cpls.count > 0 && fifo_front(&q->cpls) <= vcl) {
        vdl = fifo_front(&q->cpls);
        fifo_pop(&q->cpls);
    }
    assert(vdl >= q->vdl && vdl <= q->vcl);
    if (vdl != q->vdl) {
        q->vdl = vdl;
        release_waiters(q, vdl, AUR_QUORUM_RELEASED_VDL, wake);
    }
}

/* The write_quorum-th highest SCL of the PG at `index`. */
static uint64_t pgcl_compute(const aur_quorum *q, uint32_t index) {
    uint64_t sorted[AUR_QUORUM_MEMBERS_MAX];
    const uint64_t *scls = q->scls + (size_t)index * q->members;
    /* Insertion sort, descending, of at most AUR_QUORUM_MEMBERS_MAX values; only the first
     * write_quorum places are kept. */
    uint32_t kept = 0;
    for (uint32_t m = 0; m < q->members; m++) {
        uint64_t value = scls[m];
        uint32_t i = kept < q->write_quorum ? kept++ : q->write_quorum;
        if (i == q->write_quorum) {
            if (value <= sorted[i - 1u]) continue;
            i--;
        }
        while (i > 0 && sorted[i - 1u] < value) {
            sorted[i] = sorted[i - 1u];
            i--;
        }
        sorted[i] = value;
    }
    assert(kept == q->write_quorum);
    return sorted[q->write_quorum - 1u];
}

/* ---- public API --------------------------------------------------------------------------- */

aur_quorum *aur_quorum_new(uint32_t members, uint32_t write_quorum, uint64_t start_lsn) {
    if (members == 0 || members > AUR_QUORUM_MEMBERS_MAX || write_quorum == 0 ||
        write_quorum > members)
        return NULL;
    aur_quorum *q = calloc(1, sizeof(*q));
    if (q == NULL) return NULL;
    q->members = members;
    q->write_quorum = write_quorum;
    q->start_lsn = q->highest_lsn = q->vcl = q->vdl = start_lsn;
    q->pg_capacity = AUR_QUORUM_PGS_CAPACITY_MIN;
    q->map_capacity = AUR_QUORUM_MAP_CAPACITY_MIN;
    q->pgs = malloc((size_t)q->pg_capacity * sizeof(*q->pgs));
    q->scls = malloc((size_t)q->pg_capacity * members * sizeof(uint64_t));
    q->heap = malloc((size_t)q->pg_capacity * sizeof(uint32_t));
    q->map = malloc((size_t)q->map_capacity * sizeof(uint32_t));
    if (q->pgs == NULL || q->scls == NULL || q->heap == NULL || q->map == NULL) goto fail;
    memset(q->map, 0xFF, (size_t)q->map_capacity * sizeof(uint32_t));
    if (pthread_mutex_init(&q->mutex, NULL) != 0) goto fail;
    if (pthread_condattr_init(&q->wake_attributes) != 0) goto fail_mutex;
    if (pthread_condattr_setclock(&q->wake_attributes, CLOCK_MONOTONIC) != 0) {
        pthread_condattr_destroy(&q->wake_attributes);
        goto fail_mutex;
    }
    return q;
fail_mutex:
    pthread_mutex_destroy(&q->mutex);
fail:
    free(q->pgs);
    free(q->scls);
    free(q->heap);
    free(q->map);
    free(q);
    return NULL;
}

void aur_quorum_free(aur_quorum *q) {
    if (q == NULL) return;
    for (uint32_t i = 0; i < q->pg_count; i++) free(q->pgs[i].outstanding.items);
    free(q->cpls.items);
    free(q->pgs);
    free(q->scls);
    free(q->heap);
    free(q->map);
    assert(q->waiters == NULL && "no thread may wait on a tracker being freed");
    pthread_condattr_destroy(&q->wake_attributes);
    pthread_mutex_destroy(&q->mutex);
    free(q);
}

int aur_quorum_sent(aur_quorum *q, uint32_t pg, uint32_t count, const uint64_t *lsns,
                    const uint8_t *is_cpl) {
    if (count > AUR_QUORUM_SENT_MAX) return AUR_E_LENGTH;
    if (count > 0 && lsns == NULL) return AUR_E_ARGUMENT;
    /* The batch's own order needs no lock. */
    uint32_t cpl_count = 0;
    for (uint32_t i = 0; i < count; i++) {
        if (i > 0 && lsns[i] <= lsns[i - 1u]) return AUR_E_ORDER;
        if (is_cpl != NULL && is_cpl[i]) cpl_count++;
    }
    aur_quorum_waiter *wake = NULL;
    pthread_mutex_lock(&q->mutex);
    int rc = q->failed;
    if (rc != AUR_OK || count == 0) goto done;
    if (lsns[0] <= q->highest_lsn) {
        rc = AUR_E_ORDER;
        goto done;
    }
    if (q->outstanding + count > AUR_QUORUM_OUTSTANDING_MAX) {
        rc = AUR_E_LENGTH;
        goto done;
    }
    uint32_t index;
    if ((rc = pg_get(q, pg, &index)) != AUR_OK) goto done;
    aur_quorum_pg *p = &q->pgs[index];
    if ((rc = fifo_reserve(&p->outstanding, count, AUR_QUORUM_OUTSTANDING_MAX)) != AUR_OK)
        goto done;
    if ((rc = fifo_reserve(&q->cpls, cpl_count, AUR_QUORUM_CPLS_MAX)) != AUR_OK) goto done;
    /* From here on nothing can fail. */
    int was_empty = p->outstanding.count == 0;
    for (uint32_t i = 0; i < count; i++) {
        /* An ack never carries an SCL above the highest registered LSN, so PGCL is below
         * every new record: all of them are outstanding. */
        assert(lsns[i] > p->pgcl);
        fifo_push(&p->outstanding, lsns[i]);
        if (is_cpl != NULL && is_cpl[i]) fifo_push(&q->cpls, lsns[i]);
    }
    q->outstanding += count;
    q->highest_lsn = lsns[count - 1u];
    if (was_empty) heap_push(q, index);
    advance(q, &wake);
done:
    pthread_mutex_unlock(&q->mutex);
    wake_waiters(wake);
    return rc;
}

/* The body of aur_quorum_ack, under the mutex; *pgcl_moved is set to 1 if the PG's PGCL rose. */
static int ack_locked(aur_quorum *q, uint32_t pg, uint32_t member, uint64_t scl,
                      int *pgcl_moved, aur_quorum_waiter **wake) {
    int rc = q->failed;
    if (rc != AUR_OK) return rc;
    if (member >= q->members || scl > q->highest_lsn) return AUR_E_ARGUMENT;
    uint32_t index;
    if ((rc = pg_get(q, pg, &index)) != AUR_OK) return rc;
    uint64_t *slot = &q->scls[(size_t)index * q->members + member];
    if (scl <= *slot) return AUR_OK; /* stale or repeated: SCLs only move forward */
    *slot = scl;
    aur_quorum_pg *p = &q->pgs[index];
    if (scl <= p->pgcl) return AUR_OK; /* a member catching up below PGCL cannot move it */
    uint64_t pgcl = pgcl_compute(q, index);
    assert(pgcl >= p->pgcl);
    if (pgcl == p->pgcl) return AUR_OK;
    p->pgcl = pgcl;
    *pgcl_moved = 1;
    aur_fifo *f = &p->outstanding;
    uint32_t retired = 0;
    /* Bounded by the FIFO's count. */
    while (f->count > 0 && fifo_front(f) <= pgcl) {
        fifo_pop(f);
        retired++;
    }
    if (retired == 0) return AUR_OK;
    q->outstanding -= retired;
    if (f->count == 0)
        heap_remove(q, index);
    else
        heap_sift_down(q, p->heap_index);
    advance(q, wake);
    return AUR_OK;
}

int aur_quorum_ack(aur_quorum *q, uint32_t pg, uint32_t member, uint64_t scl,
                   uint64_t *vdl_out) {
    aur_quorum_waiter *wake = NULL;
    int pgcl_moved = 0;
    pthread_mutex_lock(&q->mutex);
    int rc = ack_locked(q, pg, member, scl, &pgcl_moved, &wake);
    if (vdl_out != NULL) *vdl_out = q->vdl;
    pthread_mutex_unlock(&q->mutex);
    wake_waiters(wake);
    return rc;
}

int aur_quorum_ack_clamped(aur_quorum *q, uint32_t pg, uint32_t member, uint64_t scl,
                           int *pgcl_moved) {
    aur_quorum_waiter *wake = NULL;
    *pgcl_moved = 0;
    pthread_mutex_lock(&q->mutex);
    int rc = ack_locked(q, pg, member, scl < q->highest_lsn ? scl : q->highest_lsn, pgcl_moved,
                        &wake);
    pthread_mutex_unlock(&q->mutex);
    wake_waiters(wake);
    return rc;
}

/* What a waiter released (or timed out) returns; under the mutex. */
static int wait_result(const aur_quorum *q, uint64_t lsn) {
    return q->vdl >= lsn ? AUR_OK : q->failed != AUR_OK ? q->failed : AUR_E_TIMEOUT;
}

int aur_quorum_wait(aur_quorum *q, uint64_t lsn, int64_t timeout_ns) {
    struct timespec deadline = {0, 0};
    int forever = timeout_ns < 0 || timeout_ns > AUR_QUORUM_TIMEOUT_NS_MAX;
    if (!forever && timeout_ns > 0) {
        clock_gettime(CLOCK_MONOTONIC, &deadline);
        int64_t ns = (int64_t)deadline.tv_nsec + timeout_ns % AUR_QUORUM_NS_PER_S;
        deadline.tv_sec += (time_t)(timeout_ns / AUR_QUORUM_NS_PER_S + ns / AUR_QUORUM_NS_PER_S);
        deadline.tv_nsec = (long)(ns % AUR_QUORUM_NS_PER_S);
    }
    pthread_mutex_lock(&q->mutex);
    int rc;
    if (q->vdl >= lsn) {
        rc = AUR_OK;
    } else if (q->failed != AUR_OK) {
        rc = q->failed;
    } else if (timeout_ns == 0) {
        rc = AUR_E_TIMEOUT;
    } else {
        aur_quorum_waiter w;
        w.lsn = lsn;
        w.released = AUR_QUORUM_RELEASED_NO;
        w.next = NULL;
#if AUR_QUORUM_FUTEX
        atomic_init(&w.woken, 0u);
        link_waiter(q, &w);
        pthread_mutex_unlock(&q->mutex);
        /* Sleep without the mutex until a releasing thread is done with w, or the deadline.
         * Each pass is one futex wait; spurious wake-ups go round again. */
        int timed_out = 0;
        while (atomic_load_explicit(&w.woken, memory_order_acquire) == 0u && !timed_out)
            timed_out = futex_wait_until(&w.woken, forever ? NULL : &deadline) == ETIMEDOUT;
        if (atomic_load_explicit(&w.woken, memory_order_acquire) != 0u) {
            /* Released and woken: w.released was written before woken (release order). */
            if (w.released == AUR_QUORUM_RELEASED_VDL) return AUR_OK;
            pthread_mutex_lock(&q->mutex);
            rc = wait_result(q, lsn);
        } else {
            pthread_mutex_lock(&q->mutex);
            if (w.released == AUR_QUORUM_RELEASED_NO) {
                unlink_waiter(q, &w);
                rc = wait_result(q, lsn);
            } else {
                /* Released just as the deadline passed: the releasing thread is about to set
                 * woken, and w must stay alive until it has.  It holds no lock while it does,
                 * so this wait is short; bounded by that thread making progress. */
                int reason = w.released;
                rc = reason == AUR_QUORUM_RELEASED_VDL ? AUR_OK : wait_result(q, lsn);
                pthread_mutex_unlock(&q->mutex);
                while (atomic_load_explicit(&w.woken, memory_order_acquire) == 0u)
                    futex_wait_until(&w.woken, NULL);
                return rc;
            }
        }
#else
        if (pthread_cond_init(&w.wake, &q->wake_attributes) != 0) {
            pthread_mutex_unlock(&q->mutex);
            return AUR_E_NOMEM;
        }
        link_waiter(q, &w);
        /* Each pass waits for this waiter's own signal (VDL reached its LSN, or the tracker
         * failed) or the deadline; spurious wake-ups go round again. */
        while (w.released == AUR_QUORUM_RELEASED_NO) {
            if (forever) {
                pthread_cond_wait(&w.wake, &q->mutex);
            } else if (pthread_cond_timedwait(&w.wake, &q->mutex, &deadline) == ETIMEDOUT) {
                break;
            }
        }
        if (w.released == AUR_QUORUM_RELEASED_NO) unlink_waiter(q, &w);
        assert(w.next == NULL);
        rc = wait_result(q, lsn);
        pthread_cond_destroy(&w.wake);
#endif
    }
    pthread_mutex_unlock(&q->mutex);
    return rc;
}

int aur_quorum_wait_lal(aur_quorum *q, uint64_t next_lsn, uint64_t lal, int64_t timeout_ns) {
    /* next_lsn <= VDL + lal  <=>  VDL >= next_lsn - lal (0 when lal covers next_lsn). */
    return aur_quorum_wait(q, next_lsn > lal ? next_lsn - lal : 0, timeout_ns);
}

void aur_quorum_fail(aur_quorum *q, int code) {
    aur_quorum_waiter *wake = NULL;
    pthread_mutex_lock(&q->mutex);
    if (q->failed == AUR_OK) {
        q->failed = code < 0 ? code : AUR_E_ARGUMENT;
        release_waiters(q, UINT64_MAX, AUR_QUORUM_RELEASED_FAIL, &wake);
    }
    pthread_mutex_unlock(&q->mutex);
    wake_waiters(wake);
}

#define AUR_QUORUM_GETTER(type, name, expression) \
    type name(aur_quorum *q) {                    \
        pthread_mutex_lock(&q->mutex);            \
        type value = (expression);                \
        pthread_mutex_unlock(&q->mutex);          \
        return value;                             \
    }

AUR_QUORUM_GETTER(int, aur_quorum_failed, q->failed)
AUR_QUORUM_GETTER(uint64_t, aur_quorum_vdl, q->vdl)
AUR_QUORUM_GETTER(uint64_t, aur_quorum_vcl, q->vcl)
AUR_QUORUM_GETTER(uint64_t, aur_quorum_highest_lsn, q->highest_lsn)
AUR_QUORUM_GETTER(uint64_t, aur_quorum_outstanding, q->outstanding)
AUR_QUORUM_GETTER(uint32_t, aur_quorum_pg_count, q->pg_count)

/* Fixed at creation: no lock needed. */
uint32_t aur_quorum_members(aur_quorum *q) { return q->members; }
uint32_t aur_quorum_write_quorum(aur_quorum *q) { return q->write_quorum; }
uint64_t aur_quorum_start_lsn(aur_quorum *q) { return q->start_lsn; }

int aur_quorum_pgcl(aur_quorum *q, uint32_t pg, uint64_t *pgcl_out) {
    pthread_mutex_lock(&q->mutex);
    uint32_t index = pg_find(q, pg);
    *pgcl_out = index == AUR_QUORUM_NONE ? q->start_lsn : q->pgs[index].pgcl;
    pthread_mutex_unlock(&q->mutex);
    return AUR_OK;
}

int aur_quorum_scl(aur_quorum *q, uint32_t pg, uint32_t member, uint64_t *scl_out) {
    if (member >= q->members) return AUR_E_ARGUMENT;
    pthread_mutex_lock(&q->mutex);
    uint32_t index = pg_find(q, pg);
    *scl_out = index == AUR_QUORUM_NONE ? q->start_lsn
                                        : q->scls[(size_t)index * q->members + member];
    pthread_mutex_unlock(&q->mutex);
    return AUR_OK;
}

int aur_quorum_scls(aur_quorum *q, uint32_t pg, uint64_t *scls_out) {
    pthread_mutex_lock(&q->mutex);
    uint32_t index = pg_find(q, pg);
    for (uint32_t m = 0; m < q->members; m++)
        scls_out[m] = index == AUR_QUORUM_NONE ? q->start_lsn
                                               : q->scls[(size_t)index * q->members + m];
    pthread_mutex_unlock(&q->mutex);
    return AUR_OK;
}
