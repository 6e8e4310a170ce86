/* Page delta, apply and coalesce.  See page.h for the contracts. */
#include "page.h"

#include <stdlib.h>
#include <string.h>

#include "status.h"

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define AUR_PAGE_X86 1
#include <immintrin.h>
#else
#define AUR_PAGE_X86 0
#endif

/* Never written: compared against to find out whether a page is all zero with the kernels. */
static uint8_t zero_page[AUR_PAGE_SIZE_MAX];

static int page_size_valid(uint32_t page_size) {
    return page_size >= AUR_PAGE_SIZE_MIN && page_size <= AUR_PAGE_SIZE_MAX;
}

static uint16_t load_le16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

static void store_le16(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v & 0xFFu);
    p[1] = (uint8_t)((v >> 8) & 0xFFu);
}

static uint64_t load_native64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

/* Index of the first byte (in memory order) of a non-zero word `x` loaded with
 * load_native64 that has any bit set. */
static size_t first_set_byte(uint64_t x) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    return (size_t)__builtin_clzll(x) >> 3;
#else
    return (size_t)__builtin_ctzll(x) >> 3;
#endif
}

/* ---- portable kernel: 8 bytes at a time ---------------------------------------------------- */

/* Each kernel has two scans over two buffers of n bytes: the index of the first position where
 * they differ, and of the first where they are equal; n when there is none. */
static size_t portable_first_diff(const uint8_t *a, const uint8_t *b, size_t n) {
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        uint64_t x = (load_native64(a + i) ^ load_native64(b + i)) |
                     (load_native64(a + i + 8) ^ load_native64(b + i + 8)) |
                     (load_native64(a + i + 16) ^ load_native64(b + i + 16)) |
                     (load_native64(a + i + 24) ^ load_native64(b + i + 24));
        if (x) break;
    }
    for (; i + 8 <= n; i += 8) {
        uint64_t x = load_native64(a + i) ^ load_native64(b + i);
        if (x) return i + first_set_byte(x);
    }
    for (; i < n; i++)
        if (a[i] != b[i]) return i;
    return n;
}

static size_t portable_first_equal(const uint8_t *a, const uint8_t *b, size_t n) {
    const uint64_t low7 = 0x7F7F7F7F7F7F7F7Full;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t x = load_native64(a + i) ^ load_native64(b + i);
        /* Exact per-byte zero test (no borrow between bytes): the top bit of each byte of
         * `zero` is set iff that byte of x is zero. */
        uint64_t zero = ~(((x & low7) + low7) | x | low7);
        if (zero) return i + first_set_byte(zero);
    }
    for (; i < n; i++)
        if (a[i] == b[i]) return i;
    return n;
}

static int portable_supported(void) { return 1; }

/* ---- SSE2 and AVX2 kernels (x86 only, per-function target attributes) ---------------------- */

#if AUR_PAGE_X86
__attribute__((target("sse2"))) static size_t sse2_first_diff(const uint8_t *a, const uint8_t *b,
                                                                size_t n) {
    size_t i = 0;
    for (; i + 64 <= n; i += 64) {
        __m128i e0 = _mm_cmpeq_epi8(_mm_loadu_si128((const __m128i *)(const void *)(a + i)),
                                    _mm_loadu_si128((const __m128i *)(const void *)(b + i)));
        __m128i e1 = _mm_cmpeq_epi8(_mm_loadu_si128((const __m128i *)(const void *)(a + i + 16)),
                                    _mm_loadu_si128((const __m128i *)(const void *)(b + i + 16)));
        __m128i e2 = _mm_cmpeq_epi8(_mm_loadu_si128((const __m128i *)(const void *)(a + i + 32)),
                                    _mm_loadu_si128((const __m128i *)(const void *)(b + i + 32)));
        __m128i e3 = _mm_cmpeq_epi8(_mm_loadu_si128((const __m128i *)(const void *)(a + i + 48)),
                                    _mm_loadu_si128((const __m128i *)(const void *)(b + i + 48)));
        __m128i all = _mm_and_si128(_mm_and_si128(e0, e1), _mm_and_si128(e2, e3));
        if ((unsigned)_mm_movemask_epi8(all) != 0xFFFFu) break;
    }
    for (; i + 16 <= n; i += 16) {
        __m128i eq = _mm_cmpeq_epi8(_mm_loadu_si128((const __m128i *)(const void *)(a + i)),
                                    _mm_loadu_si128((const __m128i *)(const void *)(b + i)));
        unsigned diff = ~(unsigned)_mm_movemask_epi8(eq) & 0xFFFFu;
        if (diff) return i + (size_t)__builtin_ctz(diff);
    }
    return i + portable_first_diff(a + i, b + i, n - i);
}

__attribute__((target("sse2"))) static size_t sse2_first_equal(const uint8_t *a, const uint8_t *b,
                                                                 size_t n) {
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m128i eq = _mm_cmpeq_epi8(_mm_loadu_si128((const __m128i *)(const void *)(a + i)),
                                    _mm_loadu_si128((const __m128i *)(const void *)(b + i)));
        unsigned same = (unsigned)_mm_movemask_epi8(eq);
        if (same) return i + (size_t)__builtin_ctz(same);
    }
    return i + portable_first_equal(a + i, b + i, n - i);
}

__attribute__((target("avx2"))) static size_t avx2_first_diff(const uint8_t *a, const uint8_t *b,
                                                                size_t n) {
    size_t i = 0;
    for (; i + 128 <= n; i += 128) {
        __m256i e0 = _mm256_cmpeq_epi8(_mm256_loadu_si256((const __m256i *)(const void *)(a + i)),
                                       _mm256_loadu_si256((const __m256i *)(const void *)(b + i)));
        __m256i e1 =
            _mm256_cmpeq_epi8(_mm256_loadu_si256((const __m256i *)(const void *)(a + i + 32)),
                              _mm256_loadu_si256((const __m256i *)(const void *)(b + i + 32)));
        __m256i e2 =
            _mm256_cmpeq_epi8(_mm256_loadu_si256((const __m256i *)(const void *)(a + i + 64)),
                              _mm256_loadu_si256((const __m256i *)(const void *)(b + i + 64)));
        __m256i e3 =
            _mm256_cmpeq_epi8(_mm256_loadu_si256((const __m256i *)(const void *)(a + i + 96)),
                              _mm256_loadu_si256((const __m256i *)(const void *)(b + i + 96)));
        __m256i all = _mm256_and_si256(_mm256_and_si256(e0, e1), _mm256_and_si256(e2, e3));
        if ((uint32_t)_mm256_movemask_epi8(all) != 0xFFFFFFFFu) break;
    }
    for (; i + 32 <= n; i += 32) {
        __m256i eq = _mm256_cmpeq_epi8(_mm256_loadu_si256((const __m256i *)(const void *)(a + i)),
                                       _mm256_loadu_si256((const __m256i *)(const void *)(b + i)));
        uint32_t diff = ~(uint32_t)_mm256_movemask_epi8(eq);
        if (diff) return i + (size_t)__builtin_ctz(diff);
    }
    return i + sse2_first_diff(a + i, b + i, n - i);
}

__attribute__((target("avx2"))) static size_t avx2_first_equal(const uint8_t *a, const uint8_t *b,
                                                                 size_t n) {
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        __m256i eq = _mm256_cmpeq_epi8(_mm256_loadu_si256((const __m256i *)(const void *)(a + i)),
                                       _mm256_loadu_si256((const __m256i *)(const void *)(b + i)));
        uint32_t same = (uint32_t)_mm256_movemask_epi8(eq);
        if (same) return i + (size_t)__builtin_ctz(same);
    }
    return i + sse2_first_equal(a + i, b + i, n - i);
}

static int sse2_supported(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("sse2") != 0;
}

static int avx2_supported(void) {
    /* __builtin_cpu_supports also checks that the OS saves the YMM registers (XCR0). */
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") != 0;
}
#endif

/* ---- kernel choice ---------------------------------------------------------------------- */

typedef size_t (*scan_fn)(const uint8_t *a, const uint8_t *b, size_t n);

struct page_kernel {
    const char *name;
    scan_fn first_diff;
    scan_fn first_equal;
    int (*supported)(void);
};

/* Best first. */
static const struct page_kernel kernels[] = {
#if AUR_PAGE_X86
    {"avx2", avx2_first_diff, avx2_first_equal, avx2_supported},
    {"sse2", sse2_first_diff, sse2_first_equal, sse2_supported},
#endif
    {"portable", portable_first_diff, portable_first_equal, portable_supported},
};
#define KERNEL_COUNT (sizeof kernels / sizeof kernels[0])

static const struct page_kernel *kernel;

static const struct page_kernel *kernel_find(const char *name) {
    for (size_t k = 0; k < KERNEL_COUNT; k++)
        if (strcmp(kernels[k].name, name) == 0 && kernels[k].supported()) return &kernels[k];
    return NULL;
}

const char *aur_page_kernel_init(void) {
    if (kernel) return kernel->name;
    const char *forced = getenv("AURORA_SIMD");
    const struct page_kernel *chosen = forced && *forced ? kernel_find(forced) : NULL;
    for (size_t k = 0; !chosen && k < KERNEL_COUNT; k++)
        if (kernels[k].supported()) chosen = &kernels[k];
    kernel = chosen;
    return kernel->name;
}

const char *aur_page_kernel(void) { return aur_page_kernel_init(); }

uint32_t aur_page_kernels_available(const char **names, uint32_t cap) {
    uint32_t count = 0;
    for (size_t k = 0; k < KERNEL_COUNT; k++) {
        if (!kernels[k].supported()) continue;
        if (count < cap) names[count] = kernels[k].name;
        count++;
    }
    return count;
}

int aur_page_set_kernel(const char *name) {
    const struct page_kernel *chosen = name ? kernel_find(name) : NULL;
    if (!chosen) return AUR_E_ARGUMENT;
    kernel = chosen;
    return AUR_OK;
}

static const struct page_kernel *kernel_get(void) {
    if (!kernel) aur_page_kernel_init();
    return kernel;
}

static int page_is_zero(const struct page_kernel *k, const uint8_t *page, size_t page_size) {
    return k->first_diff(page, zero_page, page_size) == page_size;
}

/* ---- delta ------------------------------------------------------------------------------- */

/* Append run [start, end) of `page` to out, split into chunks of AUR_DELTA_RUN_LENGTH_MAX. */
static int delta_emit(const uint8_t *page, size_t start, size_t end, uint8_t *out, size_t cap,
                      size_t *w) {
    while (start < end) {
        size_t length = end - start;
        if (length > AUR_DELTA_RUN_LENGTH_MAX) length = AUR_DELTA_RUN_LENGTH_MAX;
        if (cap - *w < AUR_DELTA_RUN_HEADER_SIZE + length) return AUR_E_BUFFER;
        store_le16(out + *w, (uint32_t)start);
        store_le16(out + *w + 2, (uint32_t)length);
        memcpy(out + *w + AUR_DELTA_RUN_HEADER_SIZE, page + start, length);
        *w += AUR_DELTA_RUN_HEADER_SIZE + length;
        start += length;
    }
    return AUR_OK;
}

int aur_page_delta(const uint8_t *old_page, const uint8_t *new_page, uint32_t page_size,
                   uint8_t *out, size_t cap, size_t *written) {
    if (!page_size_valid(page_size) || !old_page || !new_page || !written || (!out && cap))
        return AUR_E_ARGUMENT;
    const struct page_kernel *k = kernel_get();
    const size_t n = page_size;
    size_t w = 0;
    *written = 0;
    /* Every scan starts past the previous one's result, so the loops together visit each byte
     * a bounded number of times: they are bounded by the page size. */
    size_t pos = k->first_diff(old_page, new_page, n);
    while (pos < n) {
        const size_t start = pos;
        size_t end = start + 1 + k->first_equal(old_page + start + 1, new_page + start + 1,
                                                n - start - 1);
        for (;;) {
            if (end >= n) {
                pos = n;
                break;
            }
            size_t next = end + k->first_diff(old_page + end, new_page + end, n - end);
            if (next < n && next - end < AUR_DELTA_RUN_HEADER_SIZE) {
                /* The gap costs less than a run header: keep it inside this run. */
                end = next + 1 + k->first_equal(old_page + next + 1, new_page + next + 1,
                                                n - next - 1);
                continue;
            }
            pos = next;
            break;
        }
        int rc = delta_emit(new_page, start, end, out, cap, &w);
        if (rc != AUR_OK) return rc;
    }
    *written = w;
    return AUR_OK;
}

int aur_page_encode_change(const uint8_t *old_page, const uint8_t *new_page, uint32_t page_size,
                           uint8_t *out, size_t cap, uint8_t *type, size_t *written) {
    if (!page_size_valid(page_size) || !old_page || !new_page || !out || !type || !written)
        return AUR_E_ARGUMENT;
    if (cap < page_size) return AUR_E_BUFFER;
    const struct page_kernel *k = kernel_get();
    if (page_is_zero(k, new_page, page_size)) {
        *type = AUR_REC_ZERO;
        *written = 0;
        return AUR_OK;
    }
    /* A delta of page_size bytes or more loses to the image: stop the scan there. */
    int rc = aur_page_delta(old_page, new_page, page_size, out, (size_t)page_size - 1u, written);
    if (rc == AUR_OK) {
        *type = AUR_REC_DELTA;
        return AUR_OK;
    }
    if (rc != AUR_E_BUFFER) return rc;
    memcpy(out, new_page, page_size);
    *type = AUR_REC_IMAGE;
    *written = page_size;
    return AUR_OK;
}

/* ---- validation and apply ----------------------------------------------------------------- */

static int delta_check(uint32_t page_size, const uint8_t *payload, uint32_t payload_length,
                       uint32_t *error_offset) {
    uint32_t i = 0;
    uint32_t previous_end = 0;
    /* Bounded by payload_length: each run advances i by at least one header. */
    while (i < payload_length) {
        if (payload_length - i < AUR_DELTA_RUN_HEADER_SIZE) {
            *error_offset = i;
            return AUR_E_TRUNCATED;
        }
        uint32_t offset = load_le16(payload + i);
        uint32_t length = load_le16(payload + i + 2);
        if (length == 0) {
            *error_offset = i + 2;
            return AUR_E_LENGTH;
        }
        if (offset < previous_end || offset + length > page_size) {
            *error_offset = i;
            return AUR_E_RANGE;
        }
        if (payload_length - i - AUR_DELTA_RUN_HEADER_SIZE < length) {
            *error_offset = i + AUR_DELTA_RUN_HEADER_SIZE;
            return AUR_E_TRUNCATED;
        }
        previous_end = offset + length;
        i += AUR_DELTA_RUN_HEADER_SIZE + length;
    }
    return AUR_OK;
}

int aur_page_check(uint32_t page_size, uint8_t type, const uint8_t *payload,
                   uint32_t payload_length, uint32_t *error_offset) {
    uint32_t ignored;
    if (!error_offset) error_offset = &ignored;
    *error_offset = 0;
    if (!page_size_valid(page_size) || (!payload && payload_length)) return AUR_E_ARGUMENT;
    switch (type) {
    case AUR_REC_DELTA:
        return delta_check(page_size, payload, payload_length, error_offset);
    case AUR_REC_IMAGE:
        return payload_length == page_size ? AUR_OK : AUR_E_LENGTH;
    case AUR_REC_ZERO:
        return payload_length == 0 ? AUR_OK : AUR_E_LENGTH;
    default:
        return AUR_E_TYPE;
    }
}

/* Copy the runs of a payload that passed delta_check into `page`. */
static void delta_copy(uint8_t *page, const uint8_t *payload, uint32_t payload_length) {
    uint32_t i = 0;
    while (i < payload_length) {
        uint32_t offset = load_le16(payload + i);
        uint32_t length = load_le16(payload + i + 2);
        memcpy(page + offset, payload + i + AUR_DELTA_RUN_HEADER_SIZE, length);
        i += AUR_DELTA_RUN_HEADER_SIZE + length;
    }
}

int aur_page_apply(uint8_t *page, uint32_t page_size, uint8_t type, const uint8_t *payload,
                   uint32_t payload_length) {
    if (!page) return AUR_E_ARGUMENT;
    int rc = aur_page_check(page_size, type, payload, payload_length, NULL);
    if (rc != AUR_OK) return rc;
    if (type == AUR_REC_DELTA)
        delta_copy(page, payload, payload_length);
    else if (type == AUR_REC_IMAGE)
        memcpy(page, payload, page_size);
    else
        memset(page, 0, page_size);
    return AUR_OK;
}

/* ---- chains -------------------------------------------------------------------------------- */

/* Where the payloads of a chain are: an array of pointers, or offsets into one buffer. */
struct payload_source {
    const uint8_t *const *pointers;
    const uint8_t *buf;
    size_t buf_len;
    const uint64_t *offsets;
    const uint32_t *lengths;
};

static int payload_get(const struct payload_source *source, uint32_t i, const uint8_t **payload,
                       uint32_t *length) {
    *length = source->lengths[i];
    if (source->pointers) {
        *payload = source->pointers[i];
        return AUR_OK;
    }
    uint64_t offset = source->offsets[i];
    if (offset > source->buf_len || source->buf_len - offset < *length) return AUR_E_RANGE;
    *payload = source->buf + offset;
    return AUR_OK;
}

static int chain_apply(uint8_t *page, uint32_t page_size, uint64_t *page_lsn, uint32_t count,
                       const uint8_t *types, const uint64_t *lsns, const uint64_t *prev_lsn_page,
                       const struct payload_source *source, uint32_t *applied) {
    if (!applied || !page_lsn) return AUR_E_ARGUMENT;
    *applied = 0;
    if (!page || !page_size_valid(page_size) || count > AUR_PAGE_CHAIN_MAX) return AUR_E_ARGUMENT;
    if (count && (!types || !lsns || !prev_lsn_page || !source->lengths)) return AUR_E_ARGUMENT;
    uint64_t lsn = *page_lsn;
    for (uint32_t i = 0; i < count; i++) {
        /* Order first: a record at or below the page's LSN is a replay or a reordering, which
         * is what its LSN says, whatever its backlink. */
        if (lsns[i] <= lsn) return AUR_E_ORDER;
        if (prev_lsn_page[i] != lsn) return AUR_E_CHAIN_GAP;
        if (lsns[i] > AUR_LSN_MAX) return AUR_E_RANGE;
        const uint8_t *payload = NULL;
        uint32_t length = 0;
        int rc = payload_get(source, i, &payload, &length);
        if (rc != AUR_OK) return rc;
        rc = aur_page_apply(page, page_size, types[i], payload, length);
        if (rc != AUR_OK) return rc;
        lsn = lsns[i];
        *page_lsn = lsn;
        *applied = i + 1;
    }
    return AUR_OK;
}

int aur_page_apply_chain(uint8_t *page, uint32_t page_size, uint64_t *page_lsn, uint32_t count,
                         const uint8_t *types, const uint64_t *lsns,
                         const uint64_t *prev_lsn_page, const uint8_t *const *payloads,
                         const uint32_t *payload_lengths, uint32_t *applied) {
    struct payload_source source = {payloads, NULL, 0, NULL, payload_lengths};
    if (count && !payloads) {
        if (applied) *applied = 0;
        return AUR_E_ARGUMENT;
    }
    return chain_apply(page, page_size, page_lsn, count, types, lsns, prev_lsn_page, &source,
                       applied);
}

int aur_page_apply_chain_buf(uint8_t *page, uint32_t page_size, uint64_t *page_lsn,
                             uint32_t count, const uint8_t *types, const uint64_t *lsns,
                             const uint64_t *prev_lsn_page, const uint8_t *buf, size_t buf_len,
                             const uint64_t *payload_offsets, const uint32_t *payload_lengths,
                             uint32_t *applied) {
    struct payload_source source = {NULL, buf, buf_len, payload_offsets, payload_lengths};
    if (count && (!payload_offsets || (!buf && buf_len))) {
        if (applied) *applied = 0;
        return AUR_E_ARGUMENT;
    }
    return chain_apply(page, page_size, page_lsn, count, types, lsns, prev_lsn_page, &source,
                       applied);
}

/* ---- coalesce ------------------------------------------------------------------------------
 *
 * A chain of DELTAs is merged in a scratch page plus a coverage bitmap (one bit per page byte):
 * each run's bytes are copied into the scratch page and its bits set, later records simply
 * overwriting earlier ones.  The result's runs are then read off the bitmap, a 64-bit word at a
 * time.  The cost is the bytes the records carry plus page_size / 64 words for the bitmap
 * (64 words for a 4 KiB page), independent of how the runs overlap: no sorted interval list to
 * splice (quadratic in the runs of a long chain), no full-page apply, no zeroing of the
 * scratch page (only covered bytes are ever read).
 */

static void bitmap_set(uint64_t *bitmap, size_t start, size_t end) {
    while (start < end) {
        size_t bit = start & 63u;
        size_t span = 64u - bit;
        if (span > end - start) span = end - start;
        uint64_t mask = span == 64u ? ~0ull : ((1ull << span) - 1u) << bit;
        bitmap[start >> 6] |= mask;
        start += span;
    }
}

/* First bit at or after `pos` equal to `want` (0 or 1), or `bits` if none. */
static size_t bitmap_next(const uint64_t *bitmap, size_t bits, size_t pos, int want) {
    if (pos >= bits) return bits;
    const uint64_t invert = want ? 0u : ~0ull;
    const size_t words = (bits + 63u) / 64u;
    size_t w = pos >> 6;
    uint64_t word = (bitmap[w] ^ invert) & (~0ull << (pos & 63u));
    while (!word) {
        if (++w >= words) return bits;
        word = bitmap[w] ^ invert;
    }
    size_t found = w * 64u + (size_t)__builtin_ctzll(word);
    return found < bits ? found : bits;
}

static void delta_merge(uint8_t *scratch, uint64_t *bitmap, const uint8_t *payload,
                        uint32_t payload_length) {
    uint32_t i = 0;
    while (i < payload_length) {
        uint32_t offset = load_le16(payload + i);
        uint32_t length = load_le16(payload + i + 2);
        memcpy(scratch + offset, payload + i + AUR_DELTA_RUN_HEADER_SIZE, length);
        bitmap_set(bitmap, offset, (size_t)offset + length);
        i += AUR_DELTA_RUN_HEADER_SIZE + length;
    }
}

static int full_page_result(const struct page_kernel *k, uint8_t *out, uint32_t page_size,
                            uint8_t *type, size_t *written) {
    if (page_is_zero(k, out, page_size)) {
        *type = AUR_REC_ZERO;
        *written = 0;
    } else {
        *type = AUR_REC_IMAGE;
        *written = page_size;
    }
    return AUR_OK;
}

static int coalesce(uint32_t page_size, uint32_t count, const uint8_t *types,
                    const struct payload_source *source, void *workspace,
                    size_t workspace_size, uint8_t *out, size_t cap, uint8_t *type,
                    size_t *written, uint32_t *error_index) {
    uint32_t ignored_index;
    if (!error_index) error_index = &ignored_index;
    *error_index = 0;
    if (!page_size_valid(page_size) || !type || !written || (!out && cap) ||
        count > AUR_PAGE_CHAIN_MAX || (count && (!types || !source->lengths)))
        return AUR_E_ARGUMENT;
    const struct page_kernel *k = kernel_get();
    *written = 0;

    /* Validate everything, and find the last record that sets the whole page. */
    uint32_t full = count; /* count: none */
    for (uint32_t i = 0; i < count; i++) {
        const uint8_t *payload = NULL;
        uint32_t length = 0;
        int rc = payload_get(source, i, &payload, &length);
        if (rc == AUR_OK) rc = aur_page_check(page_size, types[i], payload, length, NULL);
        if (rc != AUR_OK) {
            *error_index = i;
            return rc;
        }
        if (types[i] != AUR_REC_DELTA) full = i;
    }

    if (full < count) {
        /* The page is known after record `full`: build it in `out`. */
        if (cap < page_size) return AUR_E_BUFFER;
        for (uint32_t i = full; i < count; i++) {
            const uint8_t *payload = NULL;
            uint32_t length = 0;
            (void)payload_get(source, i, &payload, &length);
            (void)aur_page_apply(out, page_size, types[i], payload, length);
        }
        return full_page_result(k, out, page_size, type, written);
    }

    const size_t bitmap_size = AUR_PAGE_COALESCE_BITMAP_SIZE(page_size);
    void *allocated = NULL;
    if (!workspace) {
        allocated = workspace = malloc(AUR_PAGE_COALESCE_WORKSPACE_SIZE(page_size));
        if (!allocated) return AUR_E_NOMEM;
    } else if (workspace_size < AUR_PAGE_COALESCE_WORKSPACE_SIZE(page_size) ||
               ((uintptr_t)workspace & 7u)) {
        return AUR_E_ARGUMENT;
    }
    uint64_t *bitmap = workspace;
    uint8_t *scratch = (uint8_t *)workspace + bitmap_size;
    memset(bitmap, 0, bitmap_size);
    for (uint32_t i = 0; i < count; i++) {
        const uint8_t *payload = NULL;
        uint32_t length = 0;
        (void)payload_get(source, i, &payload, &length);
        delta_merge(scratch, bitmap, payload, length);
    }

    int rc = AUR_OK;
    size_t start = bitmap_next(bitmap, page_size, 0, 1);
    if (start == 0 && bitmap_next(bitmap, page_size, 0, 0) == page_size) {
        /* Every byte written: the page is known, and an image is smaller than the delta. */
        if (cap < page_size) {
            rc = AUR_E_BUFFER;
        } else {
            memcpy(out, scratch, page_size);
            rc = full_page_result(k, out, page_size, type, written);
        }
    } else {
        size_t w = 0;
        /* Each iteration consumes one covered range: bounded by page_size / 2 + 1. */
        while (start < page_size && rc == AUR_OK) {
            size_t end = bitmap_next(bitmap, page_size, start, 0);
            rc = delta_emit(scratch, start, end, out, cap, &w);
            start = bitmap_next(bitmap, page_size, end, 1);
        }
        if (rc == AUR_OK) {
            *type = AUR_REC_DELTA;
            *written = w;
        }
    }
    free(allocated);
    return rc;
}

int aur_page_coalesce(uint32_t page_size, uint32_t count, const uint8_t *types,
                      const uint8_t *const *payloads, const uint32_t *payload_lengths,
                      void *workspace, size_t workspace_size, uint8_t *out, size_t cap,
                      uint8_t *type, size_t *written, uint32_t *error_index) {
    struct payload_source source = {payloads, NULL, 0, NULL, payload_lengths};
    if (count && !payloads) return AUR_E_ARGUMENT;
    return coalesce(page_size, count, types, &source, workspace, workspace_size, out, cap, type,
                    written, error_index);
}

int aur_page_coalesce_buf(uint32_t page_size, uint32_t count, const uint8_t *types,
                          const uint8_t *buf, size_t buf_len, const uint64_t *payload_offsets,
                          const uint32_t *payload_lengths, void *workspace,
                          size_t workspace_size, uint8_t *out, size_t cap, uint8_t *type,
                          size_t *written, uint32_t *error_index) {
    struct payload_source source = {NULL, buf, buf_len, payload_offsets, payload_lengths};
    if (count && (!payload_offsets || (!buf && buf_len))) return AUR_E_ARGUMENT;
    return coalesce(page_size, count, types, &source, workspace, workspace_size, out, cap, type,
                    written, error_index);
}
