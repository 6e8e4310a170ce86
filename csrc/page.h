/*
 * Page changes: compute the delta between two images of a page, apply DELTA / IMAGE / ZERO
 * records to a page (one, or a whole page chain with its LSN backlinks checked), and coalesce
 * a page's chain of records into one equivalent record.
 *
 * Payloads follow csrc/format.h: a DELTA payload is runs of `offset:u16 length:u16
 * bytes[length]` (little-endian), in increasing offset order, non-overlapping, length >= 1,
 * offset + length <= page size; an IMAGE payload is exactly one page; a ZERO payload is empty.
 * Payload bytes come from disks and wires and are attacker-controlled: every function here
 * validates every run against the page size and the payload length before using it.
 *
 * Canonical DELTA (what aur_page_delta writes, byte for byte what aurora/reference/page.py
 * writes): the maximal ranges of differing bytes, in order; two ranges whose gap of equal bytes
 * is shorter than AUR_DELTA_RUN_HEADER_SIZE are merged into one run (the gap's bytes copied from
 * the new page); a run longer than AUR_DELTA_RUN_LENGTH_MAX is split into chunks of that length
 * from its start.  Identical pages give an empty payload.  Decoders accept any valid payload,
 * including adjacent runs (gap 0), not only canonical ones.
 *
 * The byte comparison runs on one of several kernels (AVX2, SSE2, portable 8-bytes-at-a-time),
 * chosen once, on the first call, from the CPU's features through a function pointer.
 * AURORA_SIMD=portable|sse2|avx2 in the environment forces a kernel (an unavailable one falls
 * back to the best available); aur_page_set_kernel() switches at run time, for tests only.
 *
 * Every function returns AUR_OK (0) or a negative enum aur_status (csrc/status.h) and writes its
 * results through out-parameters.  None allocates memory unless it says so.
 */
#ifndef AURORA_PAGE_H
#define AURORA_PAGE_H

#include <stddef.h>
#include <stdint.h>

#include "format.h"

/* Largest canonical delta of a page of `page_size` bytes: runs are separated by at least
 * AUR_DELTA_RUN_HEADER_SIZE equal bytes except at split points, so the headers cost at most the
 * page's bytes plus one header, plus one header per split (at most one split for 64 KiB). */
#define AUR_PAGE_DELTA_MAX(page_size) ((size_t)(page_size) + 2u * AUR_DELTA_RUN_HEADER_SIZE)

/* Longest chain a single call accepts (bounds every loop over records). */
#define AUR_PAGE_CHAIN_MAX 0x7FFFFFFFu

/* Bytes of workspace aur_page_coalesce needs for a page of `page_size` bytes: a coverage bitmap
 * of one bit per page byte in 64-bit words, then a scratch page. */
#define AUR_PAGE_COALESCE_BITMAP_SIZE(page_size) ((((size_t)(page_size) + 63u) / 64u) * 8u)
#define AUR_PAGE_COALESCE_WORKSPACE_SIZE(page_size) \
    (AUR_PAGE_COALESCE_BITMAP_SIZE(page_size) + (size_t)(page_size))

static_assert(AUR_PAGE_SIZE_MAX <= (size_t)AUR_DELTA_RUN_LENGTH_MAX + 1u,
              "one split at most per page: AUR_PAGE_DELTA_MAX counts one");
static_assert(AUR_PAGE_DELTA_MAX(AUR_PAGE_SIZE_MAX) <= 0xFFFFFFFFu, "delta sizes fit u32");

/* ---- kernels ------------------------------------------------------------------------------ */

/* Choose the comparison kernel (idempotent; reads AURORA_SIMD once).  Returns its name. */
const char *aur_page_kernel_init(void);

/* Name of the kernel in use: "avx2", "sse2" or "portable". */
const char *aur_page_kernel(void);

/* Kernels this CPU can run, best first: writes up to `cap` names (static storage) to `names`
 * and returns how many there are. */
uint32_t aur_page_kernels_available(const char **names, uint32_t cap);

/* Force the kernel named `name`.  AUR_E_ARGUMENT if unknown or not supported by this CPU.
 * For tests and benchmarks: not safe while another thread is computing a delta. */
int aur_page_set_kernel(const char *name);

/* ---- delta ------------------------------------------------------------------------------- */

/* Canonical delta turning `old_page` into `new_page` (both `page_size` bytes) into `out`
 * (`cap` bytes); *written = payload length.  AUR_E_BUFFER if the delta needs more than `cap`
 * bytes (the scan stops as soon as it knows; aur_page_encode_change uses this to give up on a
 * delta larger than an image).  AUR_PAGE_DELTA_MAX(page_size) bytes always suffice.
 * AUR_E_ARGUMENT if page_size is outside [AUR_PAGE_SIZE_MIN, AUR_PAGE_SIZE_MAX]. */
int aur_page_delta(const uint8_t *old_page, const uint8_t *new_page, uint32_t page_size,
                   uint8_t *out, size_t cap, size_t *written);

/* The record that turns `old_page` into `new_page`, smallest first:
 *   - new page all zero                      -> AUR_REC_ZERO, empty payload;
 *   - canonical delta shorter than the page  -> AUR_REC_DELTA (empty payload when the pages are
 *                                               identical: still AUR_OK, a no-op record);
 *   - otherwise                              -> AUR_REC_IMAGE, payload = new page.
 * `cap` must be >= page_size (AUR_E_BUFFER otherwise). */
int aur_page_encode_change(const uint8_t *old_page, const uint8_t *new_page, uint32_t page_size,
                           uint8_t *out, size_t cap, uint8_t *type, size_t *written);

/* ---- apply ------------------------------------------------------------------------------- */

/* Validate a payload of record type `type` for a page of `page_size` bytes without applying
 * it.  On failure *error_offset (if not NULL) is the payload offset where the problem was found.
 *   AUR_E_TYPE      type is not DELTA, IMAGE or ZERO
 *   AUR_E_LENGTH    IMAGE payload not exactly one page, ZERO payload not empty, run length 0
 *   AUR_E_TRUNCATED a run header or a run's bytes extend past the payload's end
 *   AUR_E_RANGE     a run extends past the page's end, or starts before the previous run ends
 *                   (overlapping or unsorted runs) */
int aur_page_check(uint32_t page_size, uint8_t type, const uint8_t *payload,
                   uint32_t payload_length, uint32_t *error_offset);

/* Apply one record to `page`.  Validates the whole payload first (aur_page_check): on any
 * error the page is untouched. */
int aur_page_apply(uint8_t *page, uint32_t page_size, uint8_t type, const uint8_t *payload,
                   uint32_t payload_length);

/* Apply `count` records of one page's chain, in order, to `page` whose LSN is *page_lsn.
 * Record i must have prev_lsn_page[i] == the page's current LSN (else AUR_E_CHAIN_GAP: a record
 * of the chain is missing) and lsns[i] > the page's current LSN (else AUR_E_ORDER; with the
 * first check this makes LSNs strictly increase), lsns[i] <= AUR_LSN_MAX (else AUR_E_RANGE).
 * Each record is atomic (validated before it is applied); the chain is not: on any return,
 * *applied records have been applied and *page_lsn is the LSN of the last of them, so the
 * caller knows exactly which state the page is in and that record *applied failed. */
int aur_page_apply_chain(uint8_t *page, uint32_t page_size, uint64_t *page_lsn, uint32_t count,
                         const uint8_t *types, const uint64_t *lsns,
                         const uint64_t *prev_lsn_page, const uint8_t *const *payloads,
                         const uint32_t *payload_lengths, uint32_t *applied);

/* aur_page_apply_chain with payloads given as offsets into one buffer (e.g. an mmap'd log):
 * record i's payload is buf[payload_offsets[i], payload_offsets[i] + payload_lengths[i]),
 * which must lie inside [0, buf_len) (else AUR_E_RANGE, nothing of record i applied). */
int aur_page_apply_chain_buf(uint8_t *page, uint32_t page_size, uint64_t *page_lsn,
                             uint32_t count, const uint8_t *types, const uint64_t *lsns,
                             const uint64_t *prev_lsn_page, const uint8_t *buf, size_t buf_len,
                             const uint64_t *payload_offsets, const uint32_t *payload_lengths,
                             uint32_t *applied);

/* ---- coalesce ------------------------------------------------------------------------------ */

/* One record equivalent to applying records 0..count-1 in order, on any base page:
 *   - if the chain holds an IMAGE or ZERO, the records before the last one are irrelevant and
 *     the page after the chain is fully known: the result is AUR_REC_ZERO if it is all zero,
 *     else AUR_REC_IMAGE;
 *   - a chain of DELTAs only (or an empty chain) gives AUR_REC_DELTA whose runs are the maximal
 *     contiguous ranges of bytes written by any record (split at AUR_DELTA_RUN_LENGTH_MAX), each
 *     byte from the last record that wrote it; gaps are never filled, since the base's bytes
 *     there are unknown.  If the DELTAs cover the whole page the result is an IMAGE (or ZERO):
 *     always smaller than the equivalent delta.
 * `out` needs max(page_size, sum of the DELTA payload lengths) bytes (else AUR_E_BUFFER).
 * `workspace` is AUR_PAGE_COALESCE_WORKSPACE_SIZE(page_size) bytes of the caller's memory
 * (8-byte aligned, else AUR_E_ARGUMENT; contents ignored), or NULL to have this function malloc and free it
 * (AUR_E_NOMEM on failure).  Records are validated as by aur_page_check; on error
 * *error_index (if not NULL) is the failing record's index. */
int aur_page_coalesce(uint32_t page_size, uint32_t count, const uint8_t *types,
                      const uint8_t *const *payloads, const uint32_t *payload_lengths,
                      void *workspace, size_t workspace_size, uint8_t *out, size_t cap,
                      uint8_t *type, size_t *written, uint32_t *error_index);

/* aur_page_coalesce with payloads as offsets into one buffer (see aur_page_apply_chain_buf). */
int aur_page_coalesce_buf(uint32_t page_size, uint32_t count, const uint8_t *types,
                          const uint8_t *buf, size_t buf_len, const uint64_t *payload_offsets,
                          const uint32_t *payload_lengths, void *workspace,
                          size_t workspace_size, uint8_t *out, size_t cap, uint8_t *type,
                          size_t *written, uint32_t *error_index);

#endif /* AURORA_PAGE_H */
