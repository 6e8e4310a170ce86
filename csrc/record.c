/* Redo records and batches.  See record.h for the contracts, docs/format.md for the rules. */
#include "record.h"

#include <string.h>

#include "crc32c.h"

static_assert(AUR_RECORD_HEADER_SIZE + AUR_RECORD_PAYLOAD_MAX <= 0xFFFFFFFFu,
              "a record's size fits u32");
static_assert(AUR_BATCH_BODY_MAX <= 0xFFFFFFFFu, "body_length is u32");

/* ---- little-endian access (input may be unaligned) ------------------------------------ */

static inline uint16_t get_u16(const uint8_t *p) {
    return (uint16_t)((unsigned)p[0] | ((unsigned)p[1] << 8));
}
static inline uint32_t get_u32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap32(v);
#endif
    return v;
}
static inline uint64_t get_u64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}
static inline void put_u16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}
static inline void put_u32(uint8_t *p, uint32_t v) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap32(v);
#endif
    memcpy(p, &v, 4);
}
static inline void put_u64(uint8_t *p, uint64_t v) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    memcpy(p, &v, 8);
}

static inline int fail(int status, size_t at, size_t *error_offset) {
    *error_offset = at;
    return status;
}

/* ---- record validation, shared by encoder and decoders ---------------------------------- */

/* Fields checked before the CRC: cheap, and they bound what the CRC will read. */
static int check_header_fields(unsigned type, unsigned flags, unsigned reserved,
                               uint32_t payload_length, size_t *error_offset) {
    if (!AUR_REC_TYPE_IS_KNOWN(type)) return fail(AUR_E_TYPE, AUR_RECORD_OFF_TYPE, error_offset);
    if (flags & ~AUR_REC_FLAGS_KNOWN) return fail(AUR_E_FLAGS, AUR_RECORD_OFF_FLAGS, error_offset);
    if (reserved != 0) return fail(AUR_E_FLAGS, AUR_RECORD_OFF_RESERVED, error_offset);
    if (payload_length > AUR_RECORD_PAYLOAD_MAX)
        return fail(AUR_E_LENGTH, AUR_RECORD_OFF_PAYLOAD_LENGTH, error_offset);
    return AUR_OK;
}

/* A delta payload: one or more runs, increasing, non-overlapping, inside the largest page.
 * Offsets reported are relative to the record header.  Each run consumes at least 5 bytes,
 * so the loop is bounded by payload_length / 5 iterations. */
static int check_delta_runs(const uint8_t *payload, uint32_t payload_length,
                            size_t *error_offset) {
    uint32_t pos = 0;
    uint32_t prev_end = 0;
    if (payload_length < AUR_DELTA_RUN_HEADER_SIZE)
        return fail(AUR_E_LENGTH, AUR_RECORD_OFF_PAYLOAD_LENGTH, error_offset);
    while (pos < payload_length) {
        size_t at = AUR_RECORD_HEADER_SIZE + (size_t)pos;
        if (payload_length - pos < AUR_DELTA_RUN_HEADER_SIZE) return fail(AUR_E_LENGTH, at, error_offset);
        uint32_t run_offset = get_u16(payload + pos);
        uint32_t run_length = get_u16(payload + pos + 2);
        if (run_length == 0) return fail(AUR_E_LENGTH, at + 2, error_offset);
        if (run_offset + run_length > AUR_PAGE_SIZE_MAX) return fail(AUR_E_RANGE, at, error_offset);
        if (run_offset < prev_end) return fail(AUR_E_RANGE, at, error_offset);
        if (run_length > payload_length - pos - AUR_DELTA_RUN_HEADER_SIZE)
            return fail(AUR_E_LENGTH, at + 2, error_offset);
        prev_end = run_offset + run_length;
        pos += AUR_DELTA_RUN_HEADER_SIZE + run_length;
    }
    return AUR_OK;
}

static inline int is_page_size(uint32_t n) {
    return n >= AUR_PAGE_SIZE_MIN && n <= AUR_PAGE_SIZE_MAX && (n & (n - 1u)) == 0;
}

/* Fields checked after the CRC: the record is intact, is it meaningful? */
static int check_semantics(const aur_record_view *v, const uint8_t *payload,
                           size_t *error_offset) {
    int is_page = AUR_REC_TYPE_IS_PAGE(v->type);
    if (is_page == (v->page_no == AUR_PAGE_NO_NONE))
        return fail(AUR_E_RANGE, AUR_RECORD_OFF_PAGE_NO, error_offset);
    int length_ok;
    switch (v->type) {
    case AUR_REC_DELTA: length_ok = v->payload_length >= AUR_DELTA_RUN_HEADER_SIZE; break;
    case AUR_REC_IMAGE: length_ok = is_page_size(v->payload_length); break;
    case AUR_REC_SIZE: length_ok = v->payload_length == AUR_REC_SIZE_PAYLOAD_LENGTH; break;
    default: length_ok = v->payload_length == 0; break; /* ZERO, NOOP */
    }
    if (!length_ok) return fail(AUR_E_LENGTH, AUR_RECORD_OFF_PAYLOAD_LENGTH, error_offset);
    if (v->lsn == AUR_LSN_NONE || v->lsn > AUR_LSN_MAX)
        return fail(AUR_E_ORDER, AUR_RECORD_OFF_LSN, error_offset);
    if (v->prev_lsn_pg >= v->lsn) return fail(AUR_E_ORDER, AUR_RECORD_OFF_PREV_LSN_PG, error_offset);
    if (v->prev_lsn_page >= v->lsn)
        return fail(AUR_E_ORDER, AUR_RECORD_OFF_PREV_LSN_PAGE, error_offset);
    if (v->type == AUR_REC_DELTA) return check_delta_runs(payload, v->payload_length, error_offset);
    return AUR_OK;
}

static inline uint32_t record_crc(const uint8_t *record, uint32_t payload_length) {
    return aur_crc_mask(aur_crc32c(0, record + AUR_RECORD_CRC_START,
                                   AUR_RECORD_HEADER_SIZE - AUR_RECORD_CRC_START + (size_t)payload_length));
}

int aur_record_check(const uint8_t *buf, size_t avail, uint64_t base, aur_record_view *view,
                     size_t *error_offset) {
    if (avail < AUR_RECORD_HEADER_SIZE) return fail(AUR_E_TRUNCATED, avail, error_offset);
    aur_record_view v;
    memset(&v, 0, sizeof v);
    v.type = buf[AUR_RECORD_OFF_TYPE];
    v.flags = buf[AUR_RECORD_OFF_FLAGS];
    v.payload_length = get_u32(buf + AUR_RECORD_OFF_PAYLOAD_LENGTH);
    int rc = check_header_fields(v.type, v.flags, get_u16(buf + AUR_RECORD_OFF_RESERVED),
                                 v.payload_length, error_offset);
    if (rc != AUR_OK) return rc;
    if (avail - AUR_RECORD_HEADER_SIZE < v.payload_length)
        return fail(AUR_E_TRUNCATED, avail, error_offset);
    if (record_crc(buf, v.payload_length) != get_u32(buf + AUR_RECORD_OFF_CRC))
        return fail(AUR_E_CRC, AUR_RECORD_OFF_CRC, error_offset);
    v.page_no = get_u32(buf + AUR_RECORD_OFF_PAGE_NO);
    v.lsn = get_u64(buf + AUR_RECORD_OFF_LSN);
    v.prev_lsn_pg = get_u64(buf + AUR_RECORD_OFF_PREV_LSN_PG);
    v.prev_lsn_page = get_u64(buf + AUR_RECORD_OFF_PREV_LSN_PAGE);
    v.offset = base;
    rc = check_semantics(&v, buf + AUR_RECORD_HEADER_SIZE, error_offset);
    if (rc != AUR_OK) return rc;
    *view = v;
    return AUR_OK;
}

int aur_record_encode(uint8_t *out, size_t cap, const aur_record_view *meta,
                      const uint8_t *payload, size_t *written) {
    size_t error_offset;
    *written = 0;
    int rc = check_header_fields(meta->type, meta->flags, 0, meta->payload_length, &error_offset);
    if (rc != AUR_OK) return rc;
    if (payload == NULL && meta->payload_length != 0) return AUR_E_ARGUMENT;
    rc = check_semantics(meta, payload, &error_offset);
    if (rc != AUR_OK) return rc;
    size_t size = AUR_RECORD_HEADER_SIZE + (size_t)meta->payload_length;
    if (cap < size) return AUR_E_BUFFER;
    out[AUR_RECORD_OFF_TYPE] = meta->type;
    out[AUR_RECORD_OFF_FLAGS] = meta->flags;
    put_u16(out + AUR_RECORD_OFF_RESERVED, 0);
    put_u32(out + AUR_RECORD_OFF_PAYLOAD_LENGTH, meta->payload_length);
    put_u32(out + AUR_RECORD_OFF_PAGE_NO, meta->page_no);
    put_u64(out + AUR_RECORD_OFF_LSN, meta->lsn);
    put_u64(out + AUR_RECORD_OFF_PREV_LSN_PG, meta->prev_lsn_pg);
    put_u64(out + AUR_RECORD_OFF_PREV_LSN_PAGE, meta->prev_lsn_page);
    if (meta->payload_length) memcpy(out + AUR_RECORD_HEADER_SIZE, payload, meta->payload_length);
    put_u32(out + AUR_RECORD_OFF_CRC, record_crc(out, meta->payload_length));
    *written = size;
    return AUR_OK;
}

/* ---- batch ------------------------------------------------------------------------------ */

static inline uint32_t batch_header_crc(const uint8_t *header) {
    return aur_crc_mask(aur_crc32c(0, header + AUR_BATCH_CRC_START,
                                   AUR_BATCH_HEADER_SIZE - AUR_BATCH_CRC_START));
}

/* Bounds shared by the header encoder and decoder; offsets are of the offending field. */
static int check_batch_fields(const aur_batch_header *h, size_t *error_offset) {
    if (h->record_count == 0 || h->record_count > AUR_BATCH_RECORDS_MAX)
        return fail(AUR_E_LENGTH, AUR_BATCH_OFF_RECORD_COUNT, error_offset);
    if (h->body_length > AUR_BATCH_BODY_MAX)
        return fail(AUR_E_LENGTH, AUR_BATCH_OFF_BODY_LENGTH, error_offset);
    if ((uint64_t)h->record_count * AUR_RECORD_HEADER_SIZE > h->body_length)
        return fail(AUR_E_LENGTH, AUR_BATCH_OFF_RECORD_COUNT, error_offset);
    if (h->first_lsn == AUR_LSN_NONE) return fail(AUR_E_ORDER, AUR_BATCH_OFF_FIRST_LSN, error_offset);
    if (h->last_lsn < h->first_lsn || h->last_lsn > AUR_LSN_MAX)
        return fail(AUR_E_ORDER, AUR_BATCH_OFF_LAST_LSN, error_offset);
    return AUR_OK;
}

int aur_batch_encode_header(uint8_t *out, size_t cap, const aur_batch_header *hdr) {
    size_t error_offset;
    int rc = check_batch_fields(hdr, &error_offset);
    if (rc != AUR_OK) return rc;
    if (cap < AUR_BATCH_HEADER_SIZE) return AUR_E_BUFFER;
    put_u32(out + AUR_BATCH_OFF_MAGIC, AUR_BATCH_MAGIC);
    put_u16(out + AUR_BATCH_OFF_VERSION, (uint16_t)AUR_FORMAT_VERSION);
    put_u16(out + AUR_BATCH_OFF_FLAGS, 0);
    put_u32(out + AUR_BATCH_OFF_RECORD_COUNT, hdr->record_count);
    put_u64(out + AUR_BATCH_OFF_VOLUME_ID, hdr->volume_id);
    put_u64(out + AUR_BATCH_OFF_VOLUME_EPOCH, hdr->volume_epoch);
    put_u64(out + AUR_BATCH_OFF_MEMBERSHIP_EPOCH, hdr->membership_epoch);
    put_u64(out + AUR_BATCH_OFF_FIRST_LSN, hdr->first_lsn);
    put_u64(out + AUR_BATCH_OFF_LAST_LSN, hdr->last_lsn);
    put_u32(out + AUR_BATCH_OFF_PG, hdr->pg);
    put_u32(out + AUR_BATCH_OFF_BODY_LENGTH, hdr->body_length);
    put_u32(out + AUR_BATCH_OFF_CRC, batch_header_crc(out));
    return AUR_OK;
}

int aur_batch_decode_header(const uint8_t *buf, size_t len, aur_batch_header *hdr,
                            size_t *error_offset) {
    if (len >= 4 && get_u32(buf + AUR_BATCH_OFF_MAGIC) != AUR_BATCH_MAGIC)
        return fail(AUR_E_MAGIC, AUR_BATCH_OFF_MAGIC, error_offset);
    if (len < AUR_BATCH_HEADER_SIZE) return fail(AUR_E_TRUNCATED, len, error_offset);
    aur_batch_header h;
    h.magic = AUR_BATCH_MAGIC;
    h.version = get_u16(buf + AUR_BATCH_OFF_VERSION);
    h.flags = get_u16(buf + AUR_BATCH_OFF_FLAGS);
    h.crc = get_u32(buf + AUR_BATCH_OFF_CRC);
    if (h.version != AUR_FORMAT_VERSION) return fail(AUR_E_VERSION, AUR_BATCH_OFF_VERSION, error_offset);
    if (h.flags != 0) return fail(AUR_E_FLAGS, AUR_BATCH_OFF_FLAGS, error_offset);
    if (batch_header_crc(buf) != h.crc) return fail(AUR_E_CRC, AUR_BATCH_OFF_CRC, error_offset);
    h.record_count = get_u32(buf + AUR_BATCH_OFF_RECORD_COUNT);
    h.volume_id = get_u64(buf + AUR_BATCH_OFF_VOLUME_ID);
    h.volume_epoch = get_u64(buf + AUR_BATCH_OFF_VOLUME_EPOCH);
    h.membership_epoch = get_u64(buf + AUR_BATCH_OFF_MEMBERSHIP_EPOCH);
    h.first_lsn = get_u64(buf + AUR_BATCH_OFF_FIRST_LSN);
    h.last_lsn = get_u64(buf + AUR_BATCH_OFF_LAST_LSN);
    h.pg = get_u32(buf + AUR_BATCH_OFF_PG);
    h.body_length = get_u32(buf + AUR_BATCH_OFF_BODY_LENGTH);
    int rc = check_batch_fields(&h, error_offset);
    if (rc != AUR_OK) return rc;
    size_t body_available = len - AUR_BATCH_HEADER_SIZE;
    if (h.body_length > body_available) return fail(AUR_E_TRUNCATED, len, error_offset);
    if (h.body_length < body_available)
        return fail(AUR_E_LENGTH, AUR_BATCH_OFF_BODY_LENGTH, error_offset);
    *hdr = h;
    return AUR_OK;
}

int aur_batch_decode(const uint8_t *buf, size_t len, aur_batch_header *hdr,
                     aur_record_view *records, uint32_t records_cap, size_t *error_offset) {
    int rc = aur_batch_decode_header(buf, len, hdr, error_offset);
    if (rc != AUR_OK) return rc;
    if (records_cap < hdr->record_count)
        return fail(AUR_E_BUFFER, AUR_BATCH_OFF_RECORD_COUNT, error_offset);
    size_t off = AUR_BATCH_HEADER_SIZE;
    uint64_t prev_lsn = 0;
    for (uint32_t i = 0; i < hdr->record_count; i++) {
        if (off == len) return fail(AUR_E_LENGTH, AUR_BATCH_OFF_RECORD_COUNT, error_offset);
        size_t at;
        rc = aur_record_check(buf + off, len - off, off, &records[i], &at);
        /* The header says where the body ends, so a record running past it is a length
         * error of the batch, not a truncation of the input. */
        if (rc == AUR_E_TRUNCATED) return fail(AUR_E_LENGTH, off, error_offset);
        if (rc != AUR_OK) return fail(rc, off + at, error_offset);
        if (i == 0 && records[i].lsn != hdr->first_lsn)
            return fail(AUR_E_ORDER, AUR_BATCH_OFF_FIRST_LSN, error_offset);
        if (i > 0 && records[i].lsn <= prev_lsn)
            return fail(AUR_E_ORDER, off + AUR_RECORD_OFF_LSN, error_offset);
        prev_lsn = records[i].lsn;
        off += AUR_RECORD_HEADER_SIZE + (size_t)records[i].payload_length;
    }
    if (off != len) return fail(AUR_E_LENGTH, off, error_offset);
    if (prev_lsn != hdr->last_lsn) return fail(AUR_E_ORDER, AUR_BATCH_OFF_LAST_LSN, error_offset);
    return AUR_OK;
}

/* ---- segment log -------------------------------------------------------------------------- */

static int all_zero(const uint8_t *p, size_t n) {
    uint8_t acc = 0;
    for (size_t i = 0; i < n; i++) acc |= p[i];
    return acc == 0;
}

int aur_log_scan(const uint8_t *buf, size_t len, size_t start, aur_record_view *records,
                 uint32_t cap, uint32_t *count, size_t *end, int *stop_reason) {
    *count = 0;
    *end = start;
    if (start > len) return AUR_E_ARGUMENT;
    size_t off = start;
    uint32_t n = 0;
    int reason;
    /* Bounded: every iteration either stops or consumes at least one header. */
    for (;;) {
        size_t remaining = len - off;
        if (remaining == 0) { reason = AUR_SCAN_END; break; }
        size_t probe = remaining < AUR_RECORD_HEADER_SIZE ? remaining : AUR_RECORD_HEADER_SIZE;
        if (all_zero(buf + off, probe)) { reason = AUR_SCAN_ZERO; break; }
        if (n == cap) { reason = AUR_SCAN_CAP; break; }
        size_t at;
        int rc = aur_record_check(buf + off, remaining, off, &records[n], &at);
        if (rc != AUR_OK) { reason = rc; break; }
        off += AUR_RECORD_HEADER_SIZE + (size_t)records[n].payload_length;
        n++;
    }
    *count = n;
    *end = off;
    *stop_reason = reason;
    return AUR_OK;
}

int aur_log_resync(const uint8_t *buf, size_t len, size_t from, size_t *found) {
    *found = len;
    if (from > len) return AUR_E_ARGUMENT;
    if (len - from < AUR_RECORD_HEADER_SIZE) return AUR_OK;
    /* aur_record_check rejects most offsets on the type byte alone, before any CRC work. */
    for (size_t off = from; off <= len - AUR_RECORD_HEADER_SIZE; off++) {
        if (!AUR_REC_TYPE_IS_KNOWN(buf[off + AUR_RECORD_OFF_TYPE])) continue;
        aur_record_view v;
        size_t at;
        if (aur_record_check(buf + off, len - off, off, &v, &at) == AUR_OK) {
            *found = off;
            return AUR_OK;
        }
    }
    return AUR_OK;
}
