/* The writer's boxcar: merging and framing batches (csrc/boxcar.h). */
#include "boxcar.h"

#include <string.h>

#include "crc32c.h"
#include "status.h"

static inline uint32_t get_u32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline uint64_t get_u64(const uint8_t *p) {
    return (uint64_t)get_u32(p) | (uint64_t)get_u32(p + 4) << 32;
}

static inline void put_u16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static inline void put_u32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static inline void put_u64(uint8_t *p, uint64_t v) {
    put_u32(p, (uint32_t)v);
    put_u32(p + 4, (uint32_t)(v >> 32));
}

int aur_boxcar_peek(const uint8_t *batch, size_t len, aur_boxcar_batch *info) {
    if (len < AUR_BATCH_HEADER_SIZE) return AUR_E_TRUNCATED;
    if (get_u32(batch + AUR_BATCH_OFF_MAGIC) != AUR_BATCH_MAGIC) return AUR_E_MAGIC;
    if ((uint64_t)get_u32(batch + AUR_BATCH_OFF_BODY_LENGTH) != (uint64_t)(len - AUR_BATCH_HEADER_SIZE))
        return AUR_E_LENGTH;
    info->record_count = get_u32(batch + AUR_BATCH_OFF_RECORD_COUNT);
    info->pg = get_u32(batch + AUR_BATCH_OFF_PG);
    info->first_lsn = get_u64(batch + AUR_BATCH_OFF_FIRST_LSN);
    info->last_lsn = get_u64(batch + AUR_BATCH_OFF_LAST_LSN);
    return AUR_OK;
}

int aur_boxcar_joins(uint64_t run_records, uint64_t run_bytes, uint64_t run_last_lsn,
                     const aur_boxcar_batch *next, size_t next_len, uint64_t bytes_max) {
    return next->first_lsn > run_last_lsn &&
           run_records + next->record_count <= AUR_BATCH_RECORDS_MAX &&
           run_bytes + next_len <= bytes_max;
}

int aur_boxcar_merge(const uint8_t *const *batches, const size_t *lens, uint32_t count,
                     uint8_t *out, size_t cap, size_t *out_len) {
    assert(count >= 2);
    uint64_t records = 0, body = 0;
    for (uint32_t i = 0; i < count; i++) {
        assert(lens[i] >= AUR_BATCH_HEADER_SIZE);
        records += get_u32(batches[i] + AUR_BATCH_OFF_RECORD_COUNT);
        body += lens[i] - AUR_BATCH_HEADER_SIZE;
    }
    if (records > UINT32_MAX || body > UINT32_MAX) return AUR_E_LENGTH;
    if (cap < AUR_BATCH_HEADER_SIZE || cap - AUR_BATCH_HEADER_SIZE < body) return AUR_E_BUFFER;
    const uint8_t *first = batches[0];
    const uint8_t *last = batches[count - 1];
    /* Bytes 0..8 (magic, version) and 16..48 (volume, epochs, first LSN) are the first
     * batch's; flags and CRC start at zero as the CRC covers bytes 12.. only. */
    memcpy(out, first, AUR_BATCH_HEADER_SIZE);
    put_u16(out + AUR_BATCH_OFF_FLAGS, 0);
    put_u32(out + AUR_BATCH_OFF_CRC, 0);
    put_u32(out + AUR_BATCH_OFF_RECORD_COUNT, (uint32_t)records);
    put_u64(out + AUR_BATCH_OFF_LAST_LSN, get_u64(last + AUR_BATCH_OFF_LAST_LSN));
    put_u32(out + AUR_BATCH_OFF_BODY_LENGTH, (uint32_t)body);
    size_t at = AUR_BATCH_HEADER_SIZE;
    for (uint32_t i = 0; i < count; i++) {
        size_t n = lens[i] - AUR_BATCH_HEADER_SIZE;
        memcpy(out + at, batches[i] + AUR_BATCH_HEADER_SIZE, n);
        at += n;
    }
    uint32_t crc = aur_crc32c(0, out + AUR_BATCH_CRC_START, AUR_BATCH_HEADER_SIZE - AUR_BATCH_CRC_START);
    put_u32(out + AUR_BATCH_OFF_CRC, aur_crc_mask(crc));
    *out_len = at;
    return AUR_OK;
}

int aur_frame_seal(uint8_t *frame, size_t frame_len, uint16_t type, uint32_t request_id,
                   uint64_t volume_id, uint64_t volume_epoch, uint64_t membership_epoch) {
    if (frame_len < AUR_FRAME_HEADER_BYTES || frame_len > AUR_FRAME_LENGTH_MAX) return AUR_E_LENGTH;
    put_u32(frame, (uint32_t)frame_len);
    put_u16(frame + 4, type);
    put_u16(frame + 6, 0);
    put_u32(frame + 12, request_id);
    put_u64(frame + 16, volume_id);
    put_u64(frame + 24, volume_epoch);
    put_u64(frame + 32, membership_epoch);
    uint32_t crc = aur_crc32c(0, frame + AUR_FRAME_CRC_START, frame_len - AUR_FRAME_CRC_START);
    put_u32(frame + 8, aur_crc_mask(crc));
    return AUR_OK;
}

void aur_append_ring_body(uint8_t *out, uint64_t ring_id, uint64_t offset, uint32_t length,
                          uint32_t crc) {
    put_u64(out, ring_id);
    put_u64(out + 8, offset);
    put_u32(out + 16, length);
    put_u32(out + 20, crc);
}
