/*
 * The writer's send path in C: merging the batches queued for one PG into one batch (the
 * boxcar) and framing it, with no Python objects per header field.
 *
 * Why: a send round did this in Python (struct unpacks of every header, a join, the CRC of a
 * new header, then a frame header packed and checksummed again); at 16 committing threads the
 * rounds were a large share of the writer's CPU under the GIL.
 *
 * The bytes are exactly those of the Python definition they replace (tests/test_boxcar_native.py
 * holds it as the tests' oracle): a merged batch keeps every record with its own CRC and gets
 * a new 64-byte header (format.h) whose magic, version, volume, epochs, first LSN and PG are
 * the first batch's, last LSN the last batch's, record count and body length the sums; a
 * frame is the 40-byte header of aurora/protocol.py (frame.h) followed by the body.
 *
 * Every function returning int returns AUR_OK or a negative enum aur_status (csrc/status.h).
 */
#ifndef AURORA_BOXCAR_H
#define AURORA_BOXCAR_H

#include <assert.h>
#include <stddef.h>
#include <stdint.h>

#include "format.h"
#include "frame.h"

/* Frame types and the APPEND_RING body's size come from frame.h. */
/* Largest batch the sender makes by merging (a single bigger batch still leaves alone). */
#define AUR_BOXCAR_BYTES_MAX (8u * 1024u * 1024u)

static_assert(AUR_BOXCAR_BYTES_MAX <= AUR_BATCH_BODY_MAX, "a boxcar is a valid batch body");
static_assert(AUR_BOXCAR_BYTES_MAX + AUR_FRAME_HEADER_BYTES <= AUR_FRAME_LENGTH_MAX,
              "a merged boxcar fits one frame");

/* What merging needs from one batch's header. */
typedef struct {
    uint32_t record_count;
    uint32_t pg;
    uint64_t first_lsn;
    uint64_t last_lsn;
} aur_boxcar_batch;

/*
 * Read the merge fields of the batch header at batch[0, len).  AUR_E_TRUNCATED if len is
 * below the header, AUR_E_MAGIC for a wrong magic, AUR_E_LENGTH if the header's body length
 * is not len - AUR_BATCH_HEADER_SIZE.  The records and the header CRC are not checked: the
 * batches come from this writer's own encoder, and a node checks everything it receives.
 */
int aur_boxcar_peek(const uint8_t *batch, size_t len, aur_boxcar_batch *info);

/*
 * Whether a batch (`next`, `next_len` bytes) joins a run of batches holding `run_records`
 * records in `run_bytes` bytes (headers included) that ends at LSN `run_last_lsn`: only if
 * its first LSN is above that (a resend after a reconnect can queue batches in front of one
 * an ERROR put back, and a merged batch must keep LSN order) and the run stays within
 * AUR_BATCH_RECORDS_MAX records and `bytes_max` bytes.
 */
int aur_boxcar_joins(uint64_t run_records, uint64_t run_bytes, uint64_t run_last_lsn,
                     const aur_boxcar_batch *next, size_t next_len, uint64_t bytes_max);

/*
 * Write into out[0, cap) the one batch holding the records of batches[0, count) (count >= 2,
 * each peeked valid, one run as aur_boxcar_joins allows): AUR_BATCH_HEADER_SIZE plus the sum
 * of their bodies, which *out_len receives.  AUR_E_BUFFER if cap is short, AUR_E_LENGTH if
 * the sums overflow the batch format.
 */
int aur_boxcar_merge(const uint8_t *const *batches, const size_t *lens, uint32_t count,
                     uint8_t *out, size_t cap, size_t *out_len);

/*
 * Fill in the 40-byte frame header at frame[0, AUR_FRAME_HEADER_BYTES) for the body already
 * at frame[AUR_FRAME_HEADER_BYTES, frame_len), CRC included.  AUR_E_LENGTH if frame_len is
 * outside [AUR_FRAME_HEADER_BYTES, AUR_FRAME_LENGTH_MAX].
 */
int aur_frame_seal(uint8_t *frame, size_t frame_len, uint16_t type, uint32_t request_id,
                   uint64_t volume_id, uint64_t volume_epoch, uint64_t membership_epoch);

/* The APPEND_RING body for a slot, at out[0, AUR_FRAME_APPEND_RING_BODY_BYTES). */
void aur_append_ring_body(uint8_t *out, uint64_t ring_id, uint64_t offset, uint32_t length,
                          uint32_t crc);

#endif /* AURORA_BOXCAR_H */
