/*
 * CRC32C on x86-64: three backends, each compiled for its own instruction set through
 * per-function target attributes (the rest of the library assumes only baseline x86-64), and
 * chosen at run time by crc32c.c from aur_crc32c_x86_features().
 *
 *   "sse4.2"          crc32q over three interleaved streams, combined with table shifts
 *   "sse4.2+pclmul"   the same, combined with one carry-less multiply per stream
 *   "vpclmulqdq-avx2" buffers of AUR_CRC32C_FOLD_MIN_BYTES or more are folded 256 bits at
 *                     a time with VPCLMULQDQ, and from AUR_CRC32C_HYBRID_BLOCK_BYTES on
 *                     the fold and three crc32q streams run side by side on separate
 *                     execution units; short inputs go through "sse4.2+pclmul"
 *
 * The constants below were printed by tools/crc32c_constants.py, which explains their
 * derivation (x^n mod P, bit-reflected) and checks them on a bitwise model of the CRC;
 * `python tools/crc32c_constants.py --check` verifies that this file still matches it.
 */
#include "crc32c_internal.h"

#if defined(__x86_64__)

#include <cpuid.h>
#include <immintrin.h>
#include <string.h>

/* Shift of an internal CRC over one / two streams: x^(8n-33) mod P, n = stream bytes. */
#define AUR_CRC32C_K_SHIFT_LONG 0x54A86326u
#define AUR_CRC32C_K_SHIFT_2LONG 0x1DC403CCu
#define AUR_CRC32C_K_SHIFT_SHORT 0xB9E02B86u
#define AUR_CRC32C_K_SHIFT_2SHORT 0xDD7E3B0Cu
#define AUR_CRC32C_K_SHIFT_3LONG 0x6A173FA1u
/* Fold of a 128-bit lane forward by D bits: LO = x^(D+31) mod P multiplies its first qword,
 * HI = x^(D-33) mod P its second. */
#define AUR_CRC32C_K_FOLD_128_LO 0xF20C0DFEu
#define AUR_CRC32C_K_FOLD_128_HI 0x493C7D27u
#define AUR_CRC32C_K_FOLD_256_LO 0x3DA6D0CBu
#define AUR_CRC32C_K_FOLD_256_HI 0xBA4FC28Eu
#define AUR_CRC32C_K_FOLD_512_LO 0x740EEF02u
#define AUR_CRC32C_K_FOLD_512_HI 0x9E4ADDF8u
#define AUR_CRC32C_K_FOLD_768_LO 0xC49F4F67u
#define AUR_CRC32C_K_FOLD_768_HI 0x0715CE53u
#define AUR_CRC32C_K_FOLD_1024_LO 0x6992CEA2u
#define AUR_CRC32C_K_FOLD_1024_HI 0x0D3B6092u
#define AUR_CRC32C_K_FOLD_1536_LO 0xA87AB8A8u
#define AUR_CRC32C_K_FOLD_1536_HI 0xAB7AFF2Au
#define AUR_CRC32C_K_FOLD_2048_LO 0xDCB17AA4u
#define AUR_CRC32C_K_FOLD_2048_HI 0xB9E02B86u

/* The fold loop keeps 8 independent 256-bit accumulators (256 bytes a step), enough to cover
 * VPCLMULQDQ's latency at one multiply a cycle. */
#define AUR_CRC32C_FOLD_STEP_BYTES 256u
/* Below this the fold's set-up and final reduction cost more than three crc32q streams. */
#define AUR_CRC32C_FOLD_MIN_BYTES 256u
_Static_assert(AUR_CRC32C_FOLD_MIN_BYTES >= AUR_CRC32C_FOLD_STEP_BYTES, "one full step");

/*
 * Hybrid blocks: the fold alone and the crc32q streams alone each manage about 8 bytes a
 * cycle on current cores (VPCLMULQDQ ymm issues every other cycle on Zen 3), but they use
 * different execution units, so a block is split into a folded part and three crc32q streams
 * processed in the same loop, in a 1:1 ratio of bytes: each step folds 6 x 32 bytes and
 * advances each stream by 64 bytes.  The streams are long streams, so the same shift
 * constants combine them.
 */
#define AUR_CRC32C_HYBRID_STEP_FOLD_BYTES 192u
#define AUR_CRC32C_HYBRID_STEP_STREAM_BYTES 64u
#define AUR_CRC32C_HYBRID_STEPS (AUR_CRC32C_STREAM_LONG_BYTES / AUR_CRC32C_HYBRID_STEP_STREAM_BYTES)
#define AUR_CRC32C_HYBRID_FOLD_BYTES (AUR_CRC32C_HYBRID_STEPS * AUR_CRC32C_HYBRID_STEP_FOLD_BYTES)
#define AUR_CRC32C_HYBRID_BLOCK_BYTES \
    (AUR_CRC32C_HYBRID_FOLD_BYTES + 3u * AUR_CRC32C_STREAM_LONG_BYTES)
_Static_assert(AUR_CRC32C_STREAM_LONG_BYTES % AUR_CRC32C_HYBRID_STEP_STREAM_BYTES == 0,
               "the hybrid streams are long streams");
_Static_assert(AUR_CRC32C_HYBRID_STEP_FOLD_BYTES == 6u * 32u, "six accumulators (1536 bits)");

#define TARGET_SSE42 __attribute__((target("sse4.2")))
#define TARGET_PCLMUL __attribute__((target("sse4.2,pclmul")))
#define TARGET_VPCLMUL __attribute__((target("sse4.2,pclmul,avx2,vpclmulqdq")))

/* x86 is little-endian and tolerates unaligned loads; memcpy compiles to one mov. */
static inline uint64_t load64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static inline uint32_t load32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static inline uint16_t load16(const uint8_t *p) {
    uint16_t v;
    memcpy(&v, p, 2);
    return v;
}

/* cpuid leaf 1 ECX, leaf 7 EBX/ECX bits, and the XCR0 bits for XMM and YMM state. */
#define CPUID1_ECX_PCLMULQDQ (1u << 1)
#define CPUID1_ECX_SSE42 (1u << 20)
#define CPUID1_ECX_OSXSAVE (1u << 27)
#define CPUID1_ECX_AVX (1u << 28)
#define CPUID7_EBX_AVX2 (1u << 5)
#define CPUID7_ECX_VPCLMULQDQ (1u << 10)
#define XCR0_SSE_AVX_STATE 6u

static uint64_t xgetbv0(void) {
    uint32_t eax, edx;
    __asm__ __volatile__("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0u));
    return ((uint64_t)edx << 32) | eax;
}

unsigned aur_crc32c_x86_features(void) {
    unsigned eax, ebx, ecx, edx, features = 0;
    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return 0;
    if (ecx & CPUID1_ECX_SSE42) features |= AUR_CRC32C_X86_SSE42;
    if (ecx & CPUID1_ECX_PCLMULQDQ) features |= AUR_CRC32C_X86_PCLMUL;
    /* AVX registers are usable only if the OS saves them on context switch (XSAVE enabled
     * and XCR0 has both the SSE and AVX state bits). */
    int os_avx = (ecx & CPUID1_ECX_OSXSAVE) && (ecx & CPUID1_ECX_AVX) &&
                 (xgetbv0() & XCR0_SSE_AVX_STATE) == XCR0_SSE_AVX_STATE;
    if (os_avx && __get_cpuid_max(0, NULL) >= 7) {
        __cpuid_count(7, 0, eax, ebx, ecx, edx);
        if ((ebx & CPUID7_EBX_AVX2) && (ecx & CPUID7_ECX_VPCLMULQDQ)) {
            features |= AUR_CRC32C_X86_VPCLMUL_AVX2;
        }
    }
    return features;
}

/* One crc32 instruction after another: for tails and short inputs. */
TARGET_SSE42 static inline uint32_t crc_serial(uint32_t crc, const uint8_t *p, size_t len) {
    uint64_t c = crc;
    for (; len >= 8; p += 8, len -= 8) c = _mm_crc32_u64(c, load64(p));
    uint32_t c32 = (uint32_t)c;
    if (len & 4u) {
        c32 = _mm_crc32_u32(c32, load32(p));
        p += 4;
    }
    if (len & 2u) {
        c32 = _mm_crc32_u16(c32, load16(p));
        p += 2;
    }
    if (len & 1u) c32 = _mm_crc32_u8(c32, *p);
    return c32;
}

/*
 * Runs three CRCs over the consecutive streams p[0, n), p[n, 2n), p[2n, 3n): the first from
 * `crc`, the others from 0.  crc32q has a latency of 3 cycles and a throughput of 1, so three
 * independent chains keep the unit busy.
 */
TARGET_SSE42 static inline void crc_three_streams(uint32_t crc, const uint8_t *p, size_t n,
                                                  uint32_t out[3]) {
    uint64_t a = crc, b = 0, c = 0;
    for (const uint8_t *end = p + n; p < end; p += 8) {
        a = _mm_crc32_u64(a, load64(p));
        b = _mm_crc32_u64(b, load64(p + n));
        c = _mm_crc32_u64(c, load64(p + 2 * n));
    }
    out[0] = (uint32_t)a;
    out[1] = (uint32_t)b;
    out[2] = (uint32_t)c;
}

/* a*x^(16n) + b*x^(8n) + c mod P: carry-less multiply by x^(16n-33) and x^(8n-33) (the product
 * carries an extra x), then crc32q(0, .) multiplies by x^32 and reduces. */
TARGET_PCLMUL static inline uint32_t combine_clmul(const uint32_t s[3], uint32_t k_2n,
                                                   uint32_t k_n) {
    __m128i a = _mm_clmulepi64_si128(_mm_cvtsi64_si128((long long)s[0]),
                                     _mm_cvtsi64_si128((long long)k_2n), 0x00);
    __m128i b = _mm_clmulepi64_si128(_mm_cvtsi64_si128((long long)s[1]),
                                     _mm_cvtsi64_si128((long long)k_n), 0x00);
    uint64_t ab = (uint64_t)_mm_cvtsi128_si64(_mm_xor_si128(a, b));
    return (uint32_t)_mm_crc32_u64(0, ab) ^ s[2];
}

static inline uint32_t combine_table(const uint32_t s[3], const aur_crc32c_shift_table *by_2n,
                                     const aur_crc32c_shift_table *by_n) {
    return aur_crc32c_shift(by_2n, s[0]) ^ aur_crc32c_shift(by_n, s[1]) ^ s[2];
}

/* The internal-state core of "sse4.2+pclmul", shared with the fold path for its tails. */
TARGET_PCLMUL static inline uint32_t crc_streams_clmul(uint32_t c, const uint8_t *p, size_t len) {
    uint32_t s[3];
    for (; len >= 3 * AUR_CRC32C_STREAM_LONG_BYTES; p += 3 * AUR_CRC32C_STREAM_LONG_BYTES,
                                                     len -= 3 * AUR_CRC32C_STREAM_LONG_BYTES) {
        crc_three_streams(c, p, AUR_CRC32C_STREAM_LONG_BYTES, s);
        c = combine_clmul(s, AUR_CRC32C_K_SHIFT_2LONG, AUR_CRC32C_K_SHIFT_LONG);
    }
    for (; len >= 3 * AUR_CRC32C_STREAM_SHORT_BYTES; p += 3 * AUR_CRC32C_STREAM_SHORT_BYTES,
                                                      len -= 3 * AUR_CRC32C_STREAM_SHORT_BYTES) {
        crc_three_streams(c, p, AUR_CRC32C_STREAM_SHORT_BYTES, s);
        c = combine_clmul(s, AUR_CRC32C_K_SHIFT_2SHORT, AUR_CRC32C_K_SHIFT_SHORT);
    }
    return crc_serial(c, p, len);
}

TARGET_PCLMUL uint32_t aur_crc32c_x86_sse42_pclmul(uint32_t crc, const void *data, size_t len) {
    return ~crc_streams_clmul(~crc, data, len);
}

TARGET_SSE42 uint32_t aur_crc32c_x86_sse42(uint32_t crc, const void *data, size_t len) {
    const uint8_t *p = data;
    uint32_t c = ~crc, s[3];
    for (; len >= 3 * AUR_CRC32C_STREAM_LONG_BYTES; p += 3 * AUR_CRC32C_STREAM_LONG_BYTES,
                                                     len -= 3 * AUR_CRC32C_STREAM_LONG_BYTES) {
        crc_three_streams(c, p, AUR_CRC32C_STREAM_LONG_BYTES, s);
        c = combine_table(s, &aur_crc32c_shift_2long, &aur_crc32c_shift_long);
    }
    for (; len >= 3 * AUR_CRC32C_STREAM_SHORT_BYTES; p += 3 * AUR_CRC32C_STREAM_SHORT_BYTES,
                                                      len -= 3 * AUR_CRC32C_STREAM_SHORT_BYTES) {
        crc_three_streams(c, p, AUR_CRC32C_STREAM_SHORT_BYTES, s);
        c = combine_table(s, &aur_crc32c_shift_2short, &aur_crc32c_shift_short);
    }
    return ~crc_serial(c, p, len);
}

/* A fold constant for both 128-bit lanes: LO multiplies each lane's first qword, HI its
 * second. */
TARGET_VPCLMUL static inline __m256i fold_constant(uint32_t lo, uint32_t hi) {
    return _mm256_set_epi64x((long long)hi, (long long)lo, (long long)hi, (long long)lo);
}

/* Moves both lanes of `acc` forward by the constant's distance and adds them into `next`. */
TARGET_VPCLMUL static inline __m256i fold(__m256i acc, __m256i k, __m256i next) {
    __m256i first = _mm256_clmulepi64_epi128(acc, k, 0x00);
    __m256i second = _mm256_clmulepi64_epi128(acc, k, 0x11);
    return _mm256_xor_si256(_mm256_xor_si256(first, second), next);
}

TARGET_VPCLMUL static inline __m256i load256(const uint8_t *p) {
    return _mm256_loadu_si256((const __m256i *)(const void *)p);
}

/* First qword times LO plus second qword times HI, for one 128-bit lane. */
TARGET_VPCLMUL static inline __m128i fold128(__m128i acc, __m128i k, __m128i next) {
    return _mm_xor_si128(_mm_xor_si128(_mm_clmulepi64_si128(acc, k, 0x00),
                                       _mm_clmulepi64_si128(acc, k, 0x11)),
                         next);
}

/* The internal CRC of everything folded into the 128-bit `r`: R*x^32 mod P, which is
 * crc32q(crc32q(0, first qword), second qword). */
TARGET_VPCLMUL static inline uint32_t fold_finish(__m128i r) {
    uint64_t first = (uint64_t)_mm_cvtsi128_si64(r);
    uint64_t second = (uint64_t)_mm_extract_epi64(r, 1);
    return (uint32_t)_mm_crc32_u64(_mm_crc32_u64(0, first), second);
}

/* The initial internal state, xored into the first 32 bits of the message. */
TARGET_VPCLMUL static inline __m256i load256_with_crc(const uint8_t *p, uint32_t c) {
    return _mm256_xor_si256(load256(p), _mm256_set_epi32(0, 0, 0, 0, 0, 0, 0, (int)c));
}

/*
 * Folding: the message is a polynomial M, and the CRC is M*x^32 mod P.  Any 128-bit piece of
 * M may be replaced by a congruent one D bits further on (see fold()), so the whole buffer
 * collapses into a 128-bit R at its end with R = M mod P, and the CRC is R*x^32 mod P.  The
 * starting state is xored into the first 32 bits of the message, which adds exactly
 * c*x^(8*len) to M*x^32.  Takes and returns internal states; len >= AUR_CRC32C_FOLD_MIN_BYTES.
 */
TARGET_VPCLMUL static uint32_t crc_fold(uint32_t c, const uint8_t *p, size_t len) {
    __m256i x0 = load256_with_crc(p, c);
    __m256i x1 = load256(p + 32), x2 = load256(p + 64), x3 = load256(p + 96);
    __m256i x4 = load256(p + 128), x5 = load256(p + 160), x6 = load256(p + 192);
    __m256i x7 = load256(p + 224);
    p += AUR_CRC32C_FOLD_STEP_BYTES;
    len -= AUR_CRC32C_FOLD_STEP_BYTES;

    const __m256i k_step = fold_constant(AUR_CRC32C_K_FOLD_2048_LO, AUR_CRC32C_K_FOLD_2048_HI);
    for (; len >= AUR_CRC32C_FOLD_STEP_BYTES;
         p += AUR_CRC32C_FOLD_STEP_BYTES, len -= AUR_CRC32C_FOLD_STEP_BYTES) {
        x0 = fold(x0, k_step, load256(p));
        x1 = fold(x1, k_step, load256(p + 32));
        x2 = fold(x2, k_step, load256(p + 64));
        x3 = fold(x3, k_step, load256(p + 96));
        x4 = fold(x4, k_step, load256(p + 128));
        x5 = fold(x5, k_step, load256(p + 160));
        x6 = fold(x6, k_step, load256(p + 192));
        x7 = fold(x7, k_step, load256(p + 224));
    }

    /* Eight accumulators into one: halve the distance at each level. */
    const __m256i k_1024 = fold_constant(AUR_CRC32C_K_FOLD_1024_LO, AUR_CRC32C_K_FOLD_1024_HI);
    x4 = fold(x0, k_1024, x4);
    x5 = fold(x1, k_1024, x5);
    x6 = fold(x2, k_1024, x6);
    x7 = fold(x3, k_1024, x7);
    const __m256i k_512 = fold_constant(AUR_CRC32C_K_FOLD_512_LO, AUR_CRC32C_K_FOLD_512_HI);
    x6 = fold(x4, k_512, x6);
    x7 = fold(x5, k_512, x7);
    const __m256i k_256 = fold_constant(AUR_CRC32C_K_FOLD_256_LO, AUR_CRC32C_K_FOLD_256_HI);
    x7 = fold(x6, k_256, x7);
    for (; len >= 32; p += 32, len -= 32) x7 = fold(x7, k_256, load256(p));

    /* Two lanes into one, then one more 128-bit block if there is one. */
    const __m128i k_128 = _mm_set_epi64x((long long)AUR_CRC32C_K_FOLD_128_HI,
                                         (long long)AUR_CRC32C_K_FOLD_128_LO);
    __m128i r = fold128(_mm256_castsi256_si128(x7), k_128, _mm256_extracti128_si256(x7, 1));
    if (len >= 16) {
        r = fold128(r, k_128, _mm_loadu_si128((const __m128i *)(const void *)p));
        p += 16;
        len -= 16;
    }
    return crc_serial(fold_finish(r), p, len);
}

/*
 * One hybrid block of AUR_CRC32C_HYBRID_BLOCK_BYTES at p: the first
 * AUR_CRC32C_HYBRID_FOLD_BYTES are folded (starting from state c) while three long crc32q
 * streams cover the rest; the four CRCs are then combined by carry-less multiplication,
 * shifting the folded part over three streams, the first stream over two and the second
 * over one.  Internal states in and out.
 */
TARGET_VPCLMUL static uint32_t crc_hybrid_block(uint32_t c, const uint8_t *p) {
    const uint8_t *s = p + AUR_CRC32C_HYBRID_FOLD_BYTES;
    const size_t n = AUR_CRC32C_STREAM_LONG_BYTES;
    __m256i x0 = load256_with_crc(p, c);
    __m256i x1 = load256(p + 32), x2 = load256(p + 64), x3 = load256(p + 96);
    __m256i x4 = load256(p + 128), x5 = load256(p + 160);
    uint64_t a = 0, b = 0, d = 0;
    const __m256i k_step = fold_constant(AUR_CRC32C_K_FOLD_1536_LO, AUR_CRC32C_K_FOLD_1536_HI);
    for (unsigned step = 0; step < AUR_CRC32C_HYBRID_STEPS; step++) {
        for (unsigned w = 0; w < AUR_CRC32C_HYBRID_STEP_STREAM_BYTES; w += 8) {
            a = _mm_crc32_u64(a, load64(s + w));
            b = _mm_crc32_u64(b, load64(s + n + w));
            d = _mm_crc32_u64(d, load64(s + 2 * n + w));
        }
        s += AUR_CRC32C_HYBRID_STEP_STREAM_BYTES;
        if (step + 1 < AUR_CRC32C_HYBRID_STEPS) {
            p += AUR_CRC32C_HYBRID_STEP_FOLD_BYTES;
            x0 = fold(x0, k_step, load256(p));
            x1 = fold(x1, k_step, load256(p + 32));
            x2 = fold(x2, k_step, load256(p + 64));
            x3 = fold(x3, k_step, load256(p + 96));
            x4 = fold(x4, k_step, load256(p + 128));
            x5 = fold(x5, k_step, load256(p + 160));
        }
    }
    /* Six accumulators into one (x0 -> x3, x1 -> x4, x2 -> x5 by 768 bits, then x3 by 512
     * and x4 by 256 into x5), then its two lanes into one. */
    const __m256i k_768 = fold_constant(AUR_CRC32C_K_FOLD_768_LO, AUR_CRC32C_K_FOLD_768_HI);
    x3 = fold(x0, k_768, x3);
    x4 = fold(x1, k_768, x4);
    x5 = fold(x2, k_768, x5);
    x5 = fold(x4, fold_constant(AUR_CRC32C_K_FOLD_256_LO, AUR_CRC32C_K_FOLD_256_HI), x5);
    x5 = fold(x3, fold_constant(AUR_CRC32C_K_FOLD_512_LO, AUR_CRC32C_K_FOLD_512_HI), x5);
    const __m128i k_128 = _mm_set_epi64x((long long)AUR_CRC32C_K_FOLD_128_HI,
                                         (long long)AUR_CRC32C_K_FOLD_128_LO);
    uint32_t folded = fold_finish(
        fold128(_mm256_castsi256_si128(x5), k_128, _mm256_extracti128_si256(x5, 1)));

    __m128i shifted = _mm_xor_si128(
        _mm_xor_si128(_mm_clmulepi64_si128(_mm_cvtsi64_si128((long long)folded),
                                           _mm_cvtsi64_si128((long long)AUR_CRC32C_K_SHIFT_3LONG),
                                           0x00),
                      _mm_clmulepi64_si128(_mm_cvtsi64_si128((long long)a),
                                           _mm_cvtsi64_si128((long long)AUR_CRC32C_K_SHIFT_2LONG),
                                           0x00)),
        _mm_clmulepi64_si128(_mm_cvtsi64_si128((long long)b),
                             _mm_cvtsi64_si128((long long)AUR_CRC32C_K_SHIFT_LONG), 0x00));
    return (uint32_t)_mm_crc32_u64(0, (uint64_t)_mm_cvtsi128_si64(shifted)) ^ (uint32_t)d;
}

TARGET_VPCLMUL uint32_t aur_crc32c_x86_vpclmul_avx2(uint32_t crc, const void *data,
                                                    size_t len) {
    const uint8_t *p = data;
    uint32_t c = ~crc;
    for (; len >= AUR_CRC32C_HYBRID_BLOCK_BYTES;
         p += AUR_CRC32C_HYBRID_BLOCK_BYTES, len -= AUR_CRC32C_HYBRID_BLOCK_BYTES) {
        c = crc_hybrid_block(c, p);
    }
    if (len >= AUR_CRC32C_FOLD_MIN_BYTES) return ~crc_fold(c, p, len);
    return ~crc_streams_clmul(c, p, len);
}

#else
/* Not x86-64: crc32c.c never refers to this file's functions. */
typedef int aur_crc32c_x86_unused;
#endif
