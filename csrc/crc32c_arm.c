/*
 * CRC32C on AArch64 ("armv8-crc"): the CRC32CX instruction over three interleaved streams,
 * combined with the shift tables of crc32c.c, compiled for the CRC extension through a
 * per-function target attribute and used only when the CPU reports it.
 */
#include "crc32c_internal.h"

#if defined(__aarch64__)

#include <string.h>

#if defined(__linux__)
#include <sys/auxv.h>
#ifndef HWCAP_CRC32
#define HWCAP_CRC32 (1ul << 7)
#endif
#elif defined(__APPLE__)
#include <sys/sysctl.h>
#endif

/* Where the compiler's baseline already has CRC (Apple silicon), no attribute is needed.
 * Otherwise GCC spells the extension "+crc" and clang "crc". */
#if defined(__ARM_FEATURE_CRC32)
#define TARGET_CRC
#elif defined(__clang__)
#define TARGET_CRC __attribute__((target("crc")))
#else
#define TARGET_CRC __attribute__((target("+crc")))
#endif

/* The clang builtins need only the target attribute; GCC's arm_acle.h enables the extension
 * for its intrinsics itself. */
#if defined(__clang__)
#define CRC32CX(c, v) __builtin_arm_crc32cd((c), (v))
#define CRC32CW(c, v) __builtin_arm_crc32cw((c), (v))
#define CRC32CH(c, v) __builtin_arm_crc32ch((c), (v))
#define CRC32CB(c, v) __builtin_arm_crc32cb((c), (v))
#else
#include <arm_acle.h>
#define CRC32CX(c, v) __crc32cd((c), (v))
#define CRC32CW(c, v) __crc32cw((c), (v))
#define CRC32CH(c, v) __crc32ch((c), (v))
#define CRC32CB(c, v) __crc32cb((c), (v))
#endif

int aur_crc32c_arm_supported(void) {
#if defined(__ARM_FEATURE_CRC32)
    return 1;
#elif defined(__linux__)
    return (getauxval(AT_HWCAP) & HWCAP_CRC32) != 0;
#elif defined(__APPLE__)
    int value = 0;
    size_t size = sizeof value;
    return sysctlbyname("hw.optional.armv8_crc32", &value, &size, NULL, 0) == 0 && value;
#else
    return 0;
#endif
}

/* Little-endian AArch64 only (the CRC is defined on little-endian words). */
_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "armv8-crc expects little-endian");

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

TARGET_CRC static inline uint32_t crc_serial(uint32_t c, const uint8_t *p, size_t len) {
    for (; len >= 8; p += 8, len -= 8) c = CRC32CX(c, load64(p));
    if (len & 4u) {
        c = CRC32CW(c, load32(p));
        p += 4;
    }
    if (len & 2u) {
        c = CRC32CH(c, load16(p));
        p += 2;
    }
    if (len & 1u) c = CRC32CB(c, *p);
    return c;
}

/* Three CRCs over p[0, n), p[n, 2n), p[2n, 3n), the first from c, then combined: the first
 * shifted over two streams, the second over one (tables from crc32c.c). */
TARGET_CRC static inline uint32_t crc_three_streams(uint32_t c, const uint8_t *p, size_t n,
                                                    const aur_crc32c_shift_table *by_2n,
                                                    const aur_crc32c_shift_table *by_n) {
    uint32_t a = c, b = 0, d = 0;
    for (const uint8_t *end = p + n; p < end; p += 8) {
        a = CRC32CX(a, load64(p));
        b = CRC32CX(b, load64(p + n));
        d = CRC32CX(d, load64(p + 2 * n));
    }
    return aur_crc32c_shift(by_2n, a) ^ aur_crc32c_shift(by_n, b) ^ d;
}

TARGET_CRC uint32_t aur_crc32c_armv8(uint32_t crc, const void *data, size_t len) {
    const uint8_t *p = data;
    uint32_t c = ~crc;
    for (; len >= 3 * AUR_CRC32C_STREAM_LONG_BYTES; p += 3 * AUR_CRC32C_STREAM_LONG_BYTES,
                                                     len -= 3 * AUR_CRC32C_STREAM_LONG_BYTES) {
        c = crc_three_streams(c, p, AUR_CRC32C_STREAM_LONG_BYTES, &aur_crc32c_shift_2long,
                              &aur_crc32c_shift_long);
    }
    for (; len >= 3 * AUR_CRC32C_STREAM_SHORT_BYTES; p += 3 * AUR_CRC32C_STREAM_SHORT_BYTES,
                                                      len -= 3 * AUR_CRC32C_STREAM_SHORT_BYTES) {
        c = crc_three_streams(c, p, AUR_CRC32C_STREAM_SHORT_BYTES, &aur_crc32c_shift_2short,
                              &aur_crc32c_shift_short);
    }
    return ~crc_serial(c, p, len);
}

#else
/* Not AArch64: crc32c.c never refers to this file's functions. */
typedef int aur_crc32c_arm_unused;
#endif
