/*
 * aurora on-disk and on-wire format: the single source of every constant.
 *
 * Everything is little-endian with fixed widths.  docs/format.md gives the same layout as a
 * grammar with golden byte vectors; tests check both against each other, so a change here
 * without a change there fails the suite.
 *
 * A *record* is the redo for one page (or a control event).  A *batch* is a run of records of
 * one protection group (PG) sent from the writer to the PG's members in one frame.
 */
#ifndef AURORA_FORMAT_H
#define AURORA_FORMAT_H

#include <assert.h>
#include <stdint.h>

#define AUR_FORMAT_VERSION 1u

/* ---- pages --------------------------------------------------------------------------- */
#define AUR_PAGE_SIZE_DEFAULT 4096u   /* SQLite's default page size */
#define AUR_PAGE_SIZE_MIN 512u        /* SQLite's smallest */
#define AUR_PAGE_SIZE_MAX 65536u      /* SQLite's largest */
/* Pages per protection group by default: 10 GiB of 4 KiB pages, as in the Aurora paper. */
#define AUR_SEGMENT_SIZE_BYTES_DEFAULT (10ull * 1024u * 1024u * 1024u)
#define AUR_PAGE_NO_MAX 0xFFFFFFFEu   /* 0xFFFFFFFF is AUR_PAGE_NO_NONE */
#define AUR_PAGE_NO_NONE 0xFFFFFFFFu  /* control records touch no page */

/* ---- LSNs ------------------------------------------------------------------------------ */
/* LSN 0 is "nothing": the backlink of the first record of a chain. */
#define AUR_LSN_NONE 0ull
#define AUR_LSN_MAX 0xFFFFFFFFFFFFFFFEull

/* ---- record ------------------------------------------------------------------------------
 *
 *  offset size field
 *   0      4   crc            masked CRC32C of bytes [4, 40 + payload_length)
 *   4      1   type           AUR_REC_*
 *   5      1   flags          AUR_REC_FLAG_*; unknown bits are an error
 *   6      2   reserved       must be zero
 *   8      4   payload_length bytes of payload after the header
 *  12      4   page_no        page the record changes, AUR_PAGE_NO_NONE for control records
 *  16      8   lsn            this record's LSN, > 0
 *  24      8   prev_lsn_pg    previous LSN of the same PG (segment chain), < lsn
 *  32      8   prev_lsn_page  previous LSN of the same page (page chain), < lsn
 *  40          payload
 */
#define AUR_RECORD_HEADER_SIZE 40u
#define AUR_RECORD_OFF_CRC 0u
#define AUR_RECORD_OFF_TYPE 4u
#define AUR_RECORD_OFF_FLAGS 5u
#define AUR_RECORD_OFF_RESERVED 6u
#define AUR_RECORD_OFF_PAYLOAD_LENGTH 8u
#define AUR_RECORD_OFF_PAGE_NO 12u
#define AUR_RECORD_OFF_LSN 16u
#define AUR_RECORD_OFF_PREV_LSN_PG 24u
#define AUR_RECORD_OFF_PREV_LSN_PAGE 32u
#define AUR_RECORD_CRC_START 4u
/* A payload is at most one page image plus nothing: a delta larger than an image is sent
 * as an image instead. */
#define AUR_RECORD_PAYLOAD_MAX AUR_PAGE_SIZE_MAX

/* Record types. Page types change one page; control types touch no page. */
#define AUR_REC_DELTA 1u  /* payload: byte runs, see below */
#define AUR_REC_IMAGE 2u  /* payload: the whole page (payload_length == page size) */
#define AUR_REC_ZERO 3u   /* payload empty: the page becomes all zeroes */
#define AUR_REC_NOOP 16u  /* control: holds an LSN in a PG chain (e.g. a CPL for an MTR
                             that touched no page of this PG); payload empty */
#define AUR_REC_SIZE 17u  /* control: the volume's size in pages changes; payload u32 */
#define AUR_REC_TYPE_IS_PAGE(t) ((t) >= AUR_REC_DELTA && (t) <= AUR_REC_ZERO)
#define AUR_REC_TYPE_IS_KNOWN(t) (AUR_REC_TYPE_IS_PAGE(t) || (t) == AUR_REC_NOOP || (t) == AUR_REC_SIZE)
#define AUR_REC_SIZE_PAYLOAD_LENGTH 4u

/* Record flags. */
#define AUR_REC_FLAG_CPL 0x01u    /* last record of a mini-transaction (consistency point) */
#define AUR_REC_FLAGS_KNOWN AUR_REC_FLAG_CPL

/* ---- delta payload ------------------------------------------------------------------------
 *
 *  run := offset:u16 length:u16 bytes[length]   (length >= 1; offset + length <= page size)
 *  runs are in increasing offset order and do not overlap.
 *
 *  A 65536-byte page has offsets up to 65535, so u16 suffices; a run is at most
 *  AUR_DELTA_RUN_LENGTH_MAX bytes, longer changes are split (and usually become an IMAGE).
 *  Two runs closer than AUR_DELTA_RUN_HEADER_SIZE bytes are merged: the header would cost more
 *  than the unchanged bytes between them.
 */
#define AUR_DELTA_RUN_HEADER_SIZE 4u
#define AUR_DELTA_RUN_LENGTH_MAX 0xFFFFu

/* ---- batch --------------------------------------------------------------------------------
 *
 *  offset size field
 *   0      4   magic             AUR_BATCH_MAGIC ("AURB")
 *   4      2   version           AUR_FORMAT_VERSION
 *   6      2   flags             must be zero
 *   8      4   crc               masked CRC32C of header bytes [12, 64)
 *  12      4   record_count      1 .. AUR_BATCH_RECORDS_MAX
 *  16      8   volume_id
 *  24      8   volume_epoch
 *  32      8   membership_epoch
 *  40      8   first_lsn         LSN of the first record
 *  48      8   last_lsn          LSN of the last record (>= first_lsn)
 *  56      4   pg                protection group index
 *  60      4   body_length       bytes of records after the header
 *  64          records
 *
 *  The header CRC covers the header; each record carries its own CRC, so the body is not
 *  checksummed twice.  Records in a batch are in strictly increasing LSN order.
 */
#define AUR_BATCH_MAGIC 0x42525541u /* "AURB" read as little-endian u32 */
#define AUR_BATCH_HEADER_SIZE 64u
#define AUR_BATCH_OFF_MAGIC 0u
#define AUR_BATCH_OFF_VERSION 4u
#define AUR_BATCH_OFF_FLAGS 6u
#define AUR_BATCH_OFF_CRC 8u
#define AUR_BATCH_OFF_RECORD_COUNT 12u
#define AUR_BATCH_OFF_VOLUME_ID 16u
#define AUR_BATCH_OFF_VOLUME_EPOCH 24u
#define AUR_BATCH_OFF_MEMBERSHIP_EPOCH 32u
#define AUR_BATCH_OFF_FIRST_LSN 40u
#define AUR_BATCH_OFF_LAST_LSN 48u
#define AUR_BATCH_OFF_PG 56u
#define AUR_BATCH_OFF_BODY_LENGTH 60u
#define AUR_BATCH_CRC_START 12u
#define AUR_BATCH_RECORDS_MAX 65536u
#define AUR_BATCH_BODY_MAX (64u * 1024u * 1024u)

/* ---- CRC masking ----------------------------------------------------------------------------
 * A CRC stored next to the data it covers is masked (LevelDB's scheme) so that a CRC of bytes
 * that themselves contain CRCs does not degenerate.
 */
#define AUR_CRC_MASK_DELTA 0xa282ead8u

static inline uint32_t aur_crc_mask(uint32_t crc) {
    return ((crc >> 15) | (crc << 17)) + AUR_CRC_MASK_DELTA;
}
static inline uint32_t aur_crc_unmask(uint32_t masked) {
    uint32_t rot = masked - AUR_CRC_MASK_DELTA;
    return (rot >> 17) | (rot << 15);
}

static_assert(AUR_RECORD_OFF_PREV_LSN_PAGE + 8u == AUR_RECORD_HEADER_SIZE, "record header layout");
static_assert(AUR_BATCH_OFF_BODY_LENGTH + 4u == AUR_BATCH_HEADER_SIZE, "batch header layout");
static_assert(AUR_PAGE_SIZE_MAX - 1u <= 0xFFFFu, "delta offsets are u16");
static_assert(AUR_RECORD_PAYLOAD_MAX >= AUR_PAGE_SIZE_MAX, "an image must fit a record");
static_assert((AUR_REC_FLAGS_KNOWN & ~0xFFu) == 0, "flags are one byte");

#endif /* AURORA_FORMAT_H */
