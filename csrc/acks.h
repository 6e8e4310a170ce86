/*
 * The writer's ACK receive path without the GIL: read the member connections' replies, parse
 * ACK frames and feed each member's SCL straight to the quorum tracker (csrc/quorum.h), which
 * wakes the committers the new VDL covers.  Python runs only for what is rare (any frame that
 * is not an ACK, a malformed frame, a closed connection, a wake-up request) and, once per
 * return, for the bookkeeping of the ACKs handled meanwhile (requests in flight, shared-ring
 * slots, retained redo), which never decides durability.
 *
 * Why: with many committing threads the writer's receiver ran Python for every ACK (recv,
 * frame objects, dict look-ups, the tracker call), each time waiting for the GIL behind the
 * committers; six ACKs per boxcar made it the writer's busiest thread.
 *
 * Frames (docs/protocol.md; aurora/protocol.py holds the same constants and tests check that
 * both agree): a 40-byte header (length u32, type u16, flags u16, masked CRC32C u32 of bytes
 * [12, length), request_id u32, volume_id u64, volume_epoch u64, membership_epoch u64), then
 * the body.  An ACK's body is pg u32, reserved u32, scl u64, last_lsn u64.
 *
 * Threading: one thread drives an aur_acks (aur_acks_run and every setter) except
 * aur_acks_set_held, which any thread may call.  Every function returning int returns AUR_OK
 * or a negative enum aur_status (csrc/status.h).
 */
#ifndef AURORA_ACKS_H
#define AURORA_ACKS_H

#include <assert.h>
#include <stddef.h>
#include <stdint.h>

#include "frame.h"
#include "quorum.h"

/* Member connections one aur_acks serves (a volume's nodes: 6, more during a move). */
#define AUR_ACKS_LINKS_MAX 64u
/* Receive buffer per connection.  ACKs are 64 bytes; a bigger frame goes to Python. */
#define AUR_ACKS_BUFFER_BYTES (64u * 1024u)
/* ACKs handled between two returns to Python (their bookkeeping waits for that return). */
#define AUR_ACKS_COMPLETED_MAX 4096u
/* (connection, PG) -> member index entries. */
#define AUR_ACKS_MEMBERS_MAX (1u << 24)
/* poll() rounds one aur_acks_run makes before it returns AUR_ACKS_EVENT_TIMEOUT anyway: when
 * no boxcar is held (a few committers) nothing else brings the receiver back to Python, and
 * the ACKs' bookkeeping (ring slots, retained redo) should not wait for thousands of them.
 * One return per 64 wake-ups costs the GIL once per ~10 commits. */
#define AUR_ACKS_POLLS_MAX 64u

static_assert(AUR_FRAME_ACK_BYTES <= AUR_ACKS_BUFFER_BYTES, "an ACK fits a receive buffer");
static_assert(AUR_ACKS_BUFFER_BYTES < AUR_FRAME_LENGTH_MAX, "bigger frames exist");

/* One ACK frame, parsed. */
typedef struct {
    uint32_t link;       /* connection it came on (aur_acks_run), 0 for aur_acks_parse */
    uint32_t request_id;
    uint32_t pg;
    uint32_t member;     /* member index the tracker was given, UINT32_MAX if none */
    uint64_t scl;        /* as the member sent it */
    uint64_t last_lsn;
} aur_ack;

enum aur_acks_stop {
    AUR_ACKS_STOP_MORE = 0,  /* every whole frame was consumed; the rest is a partial frame */
    AUR_ACKS_STOP_OTHER = 1, /* a frame that is not an ACK starts at *consumed */
    AUR_ACKS_STOP_FULL = 2,  /* acks_max ACKs were parsed; more may follow at *consumed */
};

/*
 * Sans-IO: parse the consecutive frames at data[0, len) while they are whole ACK frames, into
 * acks[0, *ack_count) (at most acks_max).  *consumed is the offset where parsing stopped and
 * *stop says why.  A malformed frame (length outside [40, AUR_FRAME_LENGTH_MAX]: AUR_E_LENGTH;
 * non-zero flags: AUR_E_FLAGS; CRC mismatch: AUR_E_CRC; an ACK whose length is not 64:
 * AUR_E_LENGTH) returns that code with *consumed at the frame's start; the ACKs before it are
 * valid.  The type of a frame is judged as soon as its first 6 bytes are there, so a large
 * frame of another type stops the scan before it is whole.
 */
int aur_acks_parse(const uint8_t *data, size_t len, aur_ack *acks, uint32_t acks_max,
                   uint32_t *ack_count, size_t *consumed, int *stop);

enum aur_acks_event_kind {
    AUR_ACKS_EVENT_TIMEOUT = 0, /* nothing happened within the timeout */
    AUR_ACKS_EVENT_WAKE = 1,    /* wake_fd became readable (the caller drains it) */
    AUR_ACKS_EVENT_WINDOW = 2,  /* while held, an ACK advanced a PG's PGCL */
    AUR_ACKS_EVENT_FULL = 3,    /* AUR_ACKS_COMPLETED_MAX ACKs await their bookkeeping */
    AUR_ACKS_EVENT_PYTHON = 4,  /* link's buffered bytes start with a frame for the caller,
                                   or a Python-mode link is readable */
    AUR_ACKS_EVENT_BAD = 5,     /* link sent a malformed frame: code, and offset of the frame
                                   in the connection's byte stream */
    AUR_ACKS_EVENT_CLOSED = 6,  /* link's connection ended: code is the errno, 0 at EOF */
};

typedef struct {
    int kind;          /* enum aur_acks_event_kind */
    uint32_t link;
    int code;
    uint64_t offset;
} aur_acks_event;

typedef struct aur_acks aur_acks;

/* A receiver for `links` connections (1 .. AUR_ACKS_LINKS_MAX), all unset; NULL otherwise or
 * if memory runs out. */
aur_acks *aur_acks_new(uint32_t links);
void aur_acks_free(aur_acks *rx);

/* Connection `link` reads from `fd` (-1: none) from now on; its buffered bytes are dropped.
 * `python` != 0: this connection's bytes belong to the caller for now (aur_acks_run reports it
 * readable and reads nothing).  The caller keeps fd open while it is set here. */
int aur_acks_set_link(aur_acks *rx, uint32_t link, int fd, int python);

/* Forget every (link, PG) -> member entry. */
void aur_acks_clear_members(aur_acks *rx);

/* ACKs of PG `pg` on connection `link` are member `member` of that PG for the tracker.  An
 * ACK for a (link, PG) without an entry goes to the caller (AUR_ACKS_EVENT_PYTHON). */
int aur_acks_set_member(aur_acks *rx, uint32_t link, uint32_t pg, uint32_t member);

/* Some PG has batches waiting for its window: an ACK that advances a PGCL ends the next
 * aur_acks_run with AUR_ACKS_EVENT_WINDOW.  Any thread; sequentially consistent, so a caller
 * that sets it and then reads the PGCL cannot miss an ACK in between. */
void aur_acks_set_held(aur_acks *rx, int held);

/* The bytes buffered for `link` (valid until the next call on rx); aur_acks_drop_buffer empties
 * it (the caller took them). */
const uint8_t *aur_acks_buffer(aur_acks *rx, uint32_t link, size_t *len);
void aur_acks_drop_buffer(aur_acks *rx, uint32_t link);

/* ACKs handled since the last aur_acks_clear_completed, in arrival order. */
const aur_ack *aur_acks_completed(aur_acks *rx, uint32_t *count);
void aur_acks_clear_completed(aur_acks *rx);

/*
 * Handle buffered ACKs, then wait (poll, up to timeout_ms; < 0 forever) on every set link and
 * wake_fd (-1: none), reading and handling ACK frames: each feeds min(scl, highest registered
 * LSN) to tracker q as member (aur_acks_set_member) of its PG and is added to the completed
 * list.  Returns AUR_OK with *event set at the first event (see enum aur_acks_event_kind), or
 * AUR_E_ARGUMENT / AUR_E_IO (poll failed; errno) without one.  A tracker refusing an ACK (it
 * failed: the writer was fenced) changes nothing, as in aur_quorum_ack.
 */
int aur_acks_run(aur_acks *rx, aur_quorum *q, int wake_fd, int timeout_ms, aur_acks_event *event);

#endif /* AURORA_ACKS_H */
