/* The writer's ACK receive path (csrc/acks.h). */
#define _POSIX_C_SOURCE 200809L

#include "acks.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>

#include "crc32c.h"
#include "format.h"
#include "status.h"

#define AUR_ACKS_NONE UINT32_MAX
#define AUR_ACKS_MAP_CAPACITY_MIN 64u

static_assert(AUR_ACKS_MEMBERS_MAX * 2u <= (1u << 31), "member map capacity fits uint32");

static inline uint16_t load_u16(const uint8_t *p) {
    return (uint16_t)(p[0] | (p[1] << 8));
}

static inline uint32_t load_u32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
           ((uint32_t)p[3] << 24);
}

static inline uint64_t load_u64(const uint8_t *p) {
    return (uint64_t)load_u32(p) | ((uint64_t)load_u32(p + 4) << 32);
}

enum { FRAME_MORE = 0, FRAME_ACK = 1, FRAME_OTHER = 2 };

/* Look at the frame starting at data[0, len): FRAME_MORE (not all of it is there yet),
 * FRAME_OTHER (its type is not ACK; known from 6 bytes on), or FRAME_ACK with *ack filled and
 * *frame_bytes its length; a negative status for a malformed frame. */
static int frame_next(const uint8_t *data, size_t len, aur_ack *ack, size_t *frame_bytes) {
    if (len < 4) return FRAME_MORE;
    uint32_t length = load_u32(data);
    if (length < AUR_FRAME_HEADER_BYTES || length > AUR_FRAME_LENGTH_MAX) return AUR_E_LENGTH;
    if (len < 6) return FRAME_MORE;
    if (load_u16(data + 4) != AUR_FRAME_TYPE_ACK) return FRAME_OTHER;
    if (length != AUR_FRAME_ACK_BYTES) return AUR_E_LENGTH;
    if (len < length) return FRAME_MORE;
    if (load_u16(data + 6) != 0) return AUR_E_FLAGS;
    uint32_t crc = aur_crc32c(0, data + AUR_FRAME_CRC_START, length - AUR_FRAME_CRC_START);
    if (aur_crc_mask(crc) != load_u32(data + 8)) return AUR_E_CRC;
    const uint8_t *body = data + AUR_FRAME_HEADER_BYTES;
    ack->request_id = load_u32(data + 12);
    ack->pg = load_u32(body);
    ack->member = AUR_ACKS_NONE;
    ack->scl = load_u64(body + 8);
    ack->last_lsn = load_u64(body + 16);
    *frame_bytes = length;
    return FRAME_ACK;
}

int aur_acks_parse(const uint8_t *data, size_t len, aur_ack *acks, uint32_t acks_max,
                   uint32_t *ack_count, size_t *consumed, int *stop) {
    size_t at = 0;
    uint32_t count = 0;
    int rc = AUR_OK;
    *stop = AUR_ACKS_STOP_MORE;
    /* Each pass consumes one whole frame (at least 40 bytes) or ends: bounded by len / 40. */
    for (;;) {
        if (count == acks_max) {
            *stop = AUR_ACKS_STOP_FULL;
            break;
        }
        size_t frame_bytes = 0;
        aur_ack ack;
        int kind = frame_next(data + at, len - at, &ack, &frame_bytes);
        if (kind < 0) {
            rc = kind;
            break;
        }
        if (kind == FRAME_MORE) break;
        if (kind == FRAME_OTHER) {
            *stop = AUR_ACKS_STOP_OTHER;
            break;
        }
        ack.link = 0;
        acks[count++] = ack;
        at += frame_bytes;
    }
    *ack_count = count;
    *consumed = at;
    return rc;
}

/* ---- the receiver ------------------------------------------------------------------------- */

typedef struct {
    int fd;        /* -1: not set */
    int python;    /* the caller reads this connection for now */
    size_t used;   /* bytes in buffer */
    uint64_t received; /* bytes read from this connection (offsets in errors) */
    uint8_t *buffer;
} aur_acks_link;

typedef struct {
    uint64_t key;    /* link << 32 | pg */
    uint32_t member; /* AUR_ACKS_NONE: free slot */
} aur_acks_member;

struct aur_acks {
    uint32_t link_count;
    aur_acks_link links[AUR_ACKS_LINKS_MAX];
    aur_acks_member *map;  /* open addressing, linear probing, at most half full */
    uint32_t map_capacity; /* a power of two */
    uint32_t map_count;
    int held;              /* written by any thread: __atomic builtins */
    int window;            /* an ACK advanced a PGCL since the last WINDOW event */
    uint32_t completed_count;
    aur_ack completed[AUR_ACKS_COMPLETED_MAX];
};

static inline uint32_t key_hash(uint64_t key) {
    return (uint32_t)((key * UINT64_C(0x9E3779B97F4A7C15)) >> 32);
}

static void map_reset(aur_acks_member *map, uint32_t capacity) {
    for (uint32_t i = 0; i < capacity; i++) map[i].member = AUR_ACKS_NONE;
}

static aur_acks_member *map_slot(aur_acks_member *map, uint32_t capacity, uint64_t key) {
    uint32_t mask = capacity - 1u;
    uint32_t slot = key_hash(key) & mask;
    /* At most half full: a free slot ends every probe sequence. */
    for (uint32_t probe = 0; probe < capacity; probe++) {
        if (map[slot].member == AUR_ACKS_NONE || map[slot].key == key) return &map[slot];
        slot = (slot + 1u) & mask;
    }
    return NULL;
}

aur_acks *aur_acks_new(uint32_t links) {
    if (links == 0 || links > AUR_ACKS_LINKS_MAX) return NULL;
    aur_acks *rx = calloc(1, sizeof(*rx));
    if (rx == NULL) return NULL;
    rx->link_count = links;
    for (uint32_t i = 0; i < AUR_ACKS_LINKS_MAX; i++) rx->links[i].fd = -1;
    rx->map = malloc(AUR_ACKS_MAP_CAPACITY_MIN * sizeof(aur_acks_member));
    if (rx->map == NULL) {
        free(rx);
        return NULL;
    }
    rx->map_capacity = AUR_ACKS_MAP_CAPACITY_MIN;
    map_reset(rx->map, rx->map_capacity);
    return rx;
}

void aur_acks_free(aur_acks *rx) {
    if (rx == NULL) return;
    for (uint32_t i = 0; i < AUR_ACKS_LINKS_MAX; i++) free(rx->links[i].buffer);
    free(rx->map);
    free(rx);
}

int aur_acks_set_link(aur_acks *rx, uint32_t link, int fd, int python) {
    if (link >= rx->link_count || fd < -1) return AUR_E_ARGUMENT;
    aur_acks_link *l = &rx->links[link];
    if (fd >= 0 && l->buffer == NULL) {
        l->buffer = malloc(AUR_ACKS_BUFFER_BYTES);
        if (l->buffer == NULL) return AUR_E_NOMEM;
    }
    /* A new connection counts its bytes from 0; the same one (a return from Python mode)
     * keeps counting, so error offsets stay offsets in the connection's stream. */
    if (l->fd != fd) l->received = 0;
    l->fd = fd;
    l->python = python != 0;
    l->used = 0;
    return AUR_OK;
}

void aur_acks_clear_members(aur_acks *rx) {
    map_reset(rx->map, rx->map_capacity);
    rx->map_count = 0;
}

int aur_acks_set_member(aur_acks *rx, uint32_t link, uint32_t pg, uint32_t member) {
    if (link >= rx->link_count || member >= AUR_QUORUM_MEMBERS_MAX) return AUR_E_ARGUMENT;
    uint64_t key = ((uint64_t)link << 32) | pg;
    aur_acks_member *slot = map_slot(rx->map, rx->map_capacity, key);
    assert(slot != NULL);
    if (slot->member != AUR_ACKS_NONE) {
        slot->member = member;
        return AUR_OK;
    }
    if (rx->map_count >= AUR_ACKS_MEMBERS_MAX) return AUR_E_LENGTH;
    if ((rx->map_count + 1u) * 2u > rx->map_capacity) {
        uint32_t capacity = rx->map_capacity * 2u;
        aur_acks_member *map = malloc((size_t)capacity * sizeof(aur_acks_member));
        if (map == NULL) return AUR_E_NOMEM;
        map_reset(map, capacity);
        for (uint32_t i = 0; i < rx->map_capacity; i++) {
            if (rx->map[i].member == AUR_ACKS_NONE) continue;
            *map_slot(map, capacity, rx->map[i].key) = rx->map[i];
        }
        free(rx->map);
        rx->map = map;
        rx->map_capacity = capacity;
        slot = map_slot(rx->map, rx->map_capacity, key);
        assert(slot != NULL && slot->member == AUR_ACKS_NONE);
    }
    slot->key = key;
    slot->member = member;
    rx->map_count++;
    return AUR_OK;
}

static uint32_t member_of(const aur_acks *rx, uint32_t link, uint32_t pg) {
    aur_acks_member *slot = map_slot(rx->map, rx->map_capacity, ((uint64_t)link << 32) | pg);
    return slot == NULL ? AUR_ACKS_NONE : slot->member;
}

void aur_acks_set_held(aur_acks *rx, int held) {
    __atomic_store_n(&rx->held, held != 0, __ATOMIC_SEQ_CST);
}

const uint8_t *aur_acks_buffer(aur_acks *rx, uint32_t link, size_t *len) {
    if (link >= rx->link_count || rx->links[link].buffer == NULL) {
        *len = 0;
        return NULL;
    }
    *len = rx->links[link].used;
    return rx->links[link].buffer;
}

void aur_acks_drop_buffer(aur_acks *rx, uint32_t link) {
    if (link < rx->link_count) rx->links[link].used = 0;
}

const aur_ack *aur_acks_completed(aur_acks *rx, uint32_t *count) {
    *count = rx->completed_count;
    return rx->completed;
}

void aur_acks_clear_completed(aur_acks *rx) {
    rx->completed_count = 0;
}

/* Feed one ACK to the tracker; notes a PGCL step for the WINDOW event. */
static void ack_apply(aur_acks *rx, aur_quorum *q, aur_ack *ack) {
    /* An SCL above everything registered says nothing more (it can only come from a member
     * that has not truncated yet); the tracker refuses it, so it clamps (as the writer always
     * has), in the same trip through its mutex. */
    int pgcl_moved = 0;
    if (aur_quorum_ack_clamped(q, ack->pg, ack->member, ack->scl, &pgcl_moved) != AUR_OK) return;
    if (pgcl_moved) rx->window = 1;
}

/* Handle the whole ACK frames at the front of link's buffer; compacts what is left.  Returns 1
 * with *event set when the caller must see something, else 0. */
static int link_process(aur_acks *rx, aur_quorum *q, uint32_t link, aur_acks_event *event) {
    aur_acks_link *l = &rx->links[link];
    size_t at = 0;
    int result = 0;
    /* Each pass consumes one 64-byte frame or ends: bounded by used / 64. */
    while (!result) {
        if (rx->completed_count == AUR_ACKS_COMPLETED_MAX) {
            event->kind = AUR_ACKS_EVENT_FULL;
            result = 1;
            break;
        }
        aur_ack ack;
        size_t frame_bytes = 0;
        int kind = frame_next(l->buffer + at, l->used - at, &ack, &frame_bytes);
        if (kind == FRAME_MORE) break;
        if (kind < 0) {
            event->kind = AUR_ACKS_EVENT_BAD;
            event->code = kind;
            result = 1;
            break;
        }
        if (kind == FRAME_ACK) {
            ack.member = member_of(rx, link, ack.pg);
            if (ack.member == AUR_ACKS_NONE) kind = FRAME_OTHER;  /* the caller decides */
        }
        if (kind == FRAME_OTHER) {
            event->kind = AUR_ACKS_EVENT_PYTHON;
            result = 1;
            break;
        }
        ack.link = link;
        ack_apply(rx, q, &ack);
        rx->completed[rx->completed_count++] = ack;
        at += frame_bytes;
    }
    if (at) {
        memmove(l->buffer, l->buffer + at, l->used - at);
        l->used -= at;
    }
    /* A frame the buffer cannot hold whole (only a non-ACK can be that big) is the caller's. */
    if (!result && l->used == AUR_ACKS_BUFFER_BYTES) {
        event->kind = AUR_ACKS_EVENT_PYTHON;
        result = 1;
    }
    if (result) {
        event->link = link;
        event->offset = l->received - l->used;   /* where the frame starts in the stream */
    }
    return result;
}

static int window_due(aur_acks *rx, aur_acks_event *event) {
    if (!rx->window) return 0;
    if (!__atomic_load_n(&rx->held, __ATOMIC_SEQ_CST)) {
        rx->window = 0;     /* nothing waits for a window: nobody needs to hear of it */
        return 0;
    }
    rx->window = 0;
    event->kind = AUR_ACKS_EVENT_WINDOW;
    return 1;
}

int aur_acks_run(aur_acks *rx, aur_quorum *q, int wake_fd, int timeout_ms, aur_acks_event *event) {
    struct pollfd fds[AUR_ACKS_LINKS_MAX + 1];
    uint32_t owner[AUR_ACKS_LINKS_MAX + 1];
    memset(event, 0, sizeof(*event));
    if (wake_fd < -1) return AUR_E_ARGUMENT;
    /* Bytes left by an earlier return (FULL, WINDOW) first. */
    for (uint32_t i = 0; i < rx->link_count; i++) {
        aur_acks_link *l = &rx->links[i];
        if (l->fd < 0 || l->python || l->used == 0) continue;
        if (link_process(rx, q, i, event)) return AUR_OK;
    }
    if (window_due(rx, event)) return AUR_OK;
    for (uint32_t round = 0; round < AUR_ACKS_POLLS_MAX; round++) {
        nfds_t count = 0;
        if (wake_fd >= 0) {
            fds[count].fd = wake_fd;
            fds[count].events = POLLIN;
            owner[count++] = AUR_ACKS_NONE;
        }
        for (uint32_t i = 0; i < rx->link_count; i++) {
            if (rx->links[i].fd < 0) continue;
            fds[count].fd = rx->links[i].fd;
            fds[count].events = POLLIN;
            owner[count++] = i;
        }
        int ready = poll(fds, count, timeout_ms);
        if (ready < 0) {
            if (errno == EINTR) continue;
            return AUR_E_IO;
        }
        if (ready == 0) {
            event->kind = AUR_ACKS_EVENT_TIMEOUT;
            return AUR_OK;
        }
        for (nfds_t k = 0; k < count; k++) {
            if (fds[k].revents == 0) continue;
            uint32_t i = owner[k];
            if (i == AUR_ACKS_NONE) {
                event->kind = AUR_ACKS_EVENT_WAKE;
                return AUR_OK;
            }
            aur_acks_link *l = &rx->links[i];
            if (fds[k].revents & POLLNVAL) {
                event->kind = AUR_ACKS_EVENT_CLOSED;
                event->link = i;
                event->code = EBADF;
                return AUR_OK;
            }
            if (l->python) {
                event->kind = AUR_ACKS_EVENT_PYTHON;
                event->link = i;
                return AUR_OK;
            }
            ssize_t n;
            do {
                n = recv(l->fd, l->buffer + l->used, AUR_ACKS_BUFFER_BYTES - l->used,
                         MSG_DONTWAIT);
            } while (n < 0 && errno == EINTR);
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) continue;
            if (n <= 0) {
                event->kind = AUR_ACKS_EVENT_CLOSED;
                event->link = i;
                event->code = n < 0 ? errno : 0;
                return AUR_OK;
            }
            l->used += (size_t)n;
            l->received += (uint64_t)n;
            if (link_process(rx, q, i, event)) return AUR_OK;
        }
        /* After every ready connection: six ACKs of one wake-up make one WINDOW event. */
        if (window_due(rx, event)) return AUR_OK;
    }
    event->kind = AUR_ACKS_EVENT_TIMEOUT;
    return AUR_OK;
}
