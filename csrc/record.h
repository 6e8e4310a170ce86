/*
 * Redo records and batches: encode, validate, decode, and scan a segment log.
 *
 * The byte layouts live in format.h; docs/format.md gives the grammar, the validation order
 * and golden vectors.  Every length and offset read from the input is treated as
 * attacker-controlled: nothing is read outside [buf, buf + len).
 *
 * No function allocates.  Decoders fill caller-owned arrays of aur_record_view, which point
 * into the caller's buffer by offset (the payload of a record is at
 * buf + offset + AUR_RECORD_HEADER_SIZE, payload_length bytes); the buffer must stay live and
 * unchanged for as long as the views are used.
 */
#ifndef AURORA_RECORD_H
#define AURORA_RECORD_H

#include <stddef.h>
#include <stdint.h>

#include "format.h"
#include "status.h"

/*
 * One decoded record.  Field order packs without holes apart from the tail; aurora/_record.pxi
 * mirrors it as the numpy dtype RECORD_DTYPE and checks sizeof at import.
 *
 * `offset` is 64-bit, not 32: a segment log file of a 10 GiB segment can outgrow 4 GiB.
 */
typedef struct aur_record_view {
    uint64_t lsn;
    uint64_t prev_lsn_pg;
    uint64_t prev_lsn_page;
    uint64_t offset;          /* of the record header within the buffer */
    uint32_t page_no;
    uint32_t payload_length;
    uint8_t type;
    uint8_t flags;
    uint8_t pad[6];           /* zero; keeps the struct 48 bytes on every ABI */
} aur_record_view;

static_assert(sizeof(aur_record_view) == 48, "aur_record_view is mirrored by a numpy dtype");

/* Every field of the batch header, in wire order. */
typedef struct aur_batch_header {
    uint32_t magic;
    uint16_t version;
    uint16_t flags;
    uint32_t crc;             /* as stored (masked) */
    uint32_t record_count;
    uint64_t volume_id;
    uint64_t volume_epoch;
    uint64_t membership_epoch;
    uint64_t first_lsn;
    uint64_t last_lsn;
    uint32_t pg;
    uint32_t body_length;
} aur_batch_header;

/* Why aur_log_scan stopped, when it did not stop at a bad record.  A bad record stops the scan
 * with stop_reason set to its (negative) aur_status instead, e.g. AUR_E_CRC. */
enum aur_scan_stop {
    AUR_SCAN_END = 1,   /* consumed the buffer exactly */
    AUR_SCAN_ZERO = 2,  /* an all-zero header (or all-zero tail shorter than a header) */
    AUR_SCAN_CAP = 3,   /* the records array is full */
};

/*
 * Validate the record at buf[0, avail) and fill *view (offset set to `base`).  On failure
 * returns the status and sets *error_offset relative to buf.  AUR_E_TRUNCATED means the record
 * runs past avail.  Checks, in this order: header present; type, flags, reserved, payload
 * length bound; payload present; CRC; page_no vs type; payload length vs type; LSN > 0;
 * backlinks < LSN; delta runs.
 */
int aur_record_check(const uint8_t *buf, size_t avail, uint64_t base, aur_record_view *view,
                     size_t *error_offset);

/*
 * Encode one record (header + payload) at out[0, cap).  meta->offset and meta->pad are ignored;
 * meta->payload_length must equal the payload's length.  The record is validated exactly as a
 * decoder would (same status codes; *written is left 0 on failure); AUR_E_BUFFER if it does not
 * fit.  `payload` may be NULL when payload_length is 0.
 */
int aur_record_encode(uint8_t *out, size_t cap, const aur_record_view *meta,
                      const uint8_t *payload, size_t *written);

/*
 * Write the 64-byte batch header at out[0, cap) from hdr's record_count, volume_id,
 * volume_epoch, membership_epoch, first_lsn, last_lsn, pg and body_length; magic, version,
 * flags and crc are set here (hdr->magic/version/flags/crc are ignored).  Checks the count and
 * body bounds (AUR_E_LENGTH), first_lsn in [1, last_lsn] (AUR_E_ORDER), cap (AUR_E_BUFFER).
 */
int aur_batch_encode_header(uint8_t *out, size_t cap, const aur_batch_header *hdr);

/*
 * Validate the batch header of buf[0, len) and that the body length matches len exactly
 * (AUR_E_TRUNCATED if the body is shorter than body_length says, AUR_E_LENGTH if longer).
 * Records are not looked at.  Fills *hdr on success.
 */
int aur_batch_decode_header(const uint8_t *buf, size_t len, aur_batch_header *hdr,
                            size_t *error_offset);

/*
 * Validate a whole batch and decode its records into records[0, record_count).  Returns
 * AUR_E_BUFFER (error offset 12) if records_cap < hdr->record_count; any other failure sets
 * *error_offset to the byte of buf where it was found.  *hdr is filled once the header is valid.
 */
int aur_batch_decode(const uint8_t *buf, size_t len, aur_batch_header *hdr,
                     aur_record_view *records, uint32_t records_cap, size_t *error_offset);

/*
 * Scan back-to-back records (a segment log: no batch header, any LSN order) of buf from
 * `start`.  Decodes up to `cap` records into records[], sets *count, *end (offset just after
 * the last good record) and *stop_reason: an aur_scan_stop, or the negative aur_status of the
 * record at *end that failed validation (AUR_E_TRUNCATED: it runs past len).  Returns AUR_OK,
 * or AUR_E_ARGUMENT if start > len.
 */
int aur_log_scan(const uint8_t *buf, size_t len, size_t start, aur_record_view *records,
                 uint32_t cap, uint32_t *count, size_t *end, int *stop_reason);

/*
 * Find the first offset >= from at which a fully valid record lies entirely inside buf.
 * Sets *found to it, or to len if there is none.  Returns AUR_OK, or AUR_E_ARGUMENT if
 * from > len.  Used after a failed scan: a valid record after the damage means mid-log
 * corruption (keep scanning from there), none means a torn tail.
 */
int aur_log_resync(const uint8_t *buf, size_t len, size_t from, size_t *found);

#endif /* AURORA_RECORD_H */
