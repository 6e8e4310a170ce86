/*
 * CRC32C internals shared by crc32c.c (portable code and the one-time choice) and the
 * hardware paths in crc32c_x86.c and crc32c_arm.c.  Not part of the public API.
 *
 * Every hardware backend works on the *internal* CRC state (the complement of the public
 * value), exactly like the portable code, and takes/returns public values at its entry point.
 */
#ifndef AURORA_CRC32C_INTERNAL_H
#define AURORA_CRC32C_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#define AUR_CRC32C_POLY 0x82F63B78u /* reflected Castagnoli polynomial, x^32 implicit */

/*
 * The interleaved paths (x86 crc32q, ARMv8 crc32cx) cut the input into blocks of three
 * equal streams, run the three CRCs side by side to hide the instruction's latency, then
 * shift the first two CRCs over the bytes that follow them and xor the three together.
 * Long blocks amortise the combination; short blocks catch inputs too small for a long one.
 * tools/crc32c_constants.py derives the shift constants from these two sizes.
 */
#define AUR_CRC32C_STREAM_LONG_BYTES 8192u
#define AUR_CRC32C_STREAM_SHORT_BYTES 256u
_Static_assert(AUR_CRC32C_STREAM_LONG_BYTES % 8u == 0, "streams advance 8 bytes a step");
_Static_assert(AUR_CRC32C_STREAM_SHORT_BYTES % 8u == 0, "streams advance 8 bytes a step");
_Static_assert(AUR_CRC32C_STREAM_SHORT_BYTES < AUR_CRC32C_STREAM_LONG_BYTES, "short < long");

/*
 * Multiplication of an internal CRC state by x^(8n) mod P for one fixed n (the CRC "shifted
 * over n zero bytes"), as four byte-indexed tables: the fallback for CPUs that have a CRC
 * instruction but no carry-less multiply.
 */
typedef struct aur_crc32c_shift_table {
    uint32_t byte[4][256];
} aur_crc32c_shift_table;

/* Shift tables by one and two long / short streams; filled by aur_crc32c_init() before a
 * backend that reads them is published. */
extern aur_crc32c_shift_table aur_crc32c_shift_long, aur_crc32c_shift_2long;
extern aur_crc32c_shift_table aur_crc32c_shift_short, aur_crc32c_shift_2short;

static inline uint32_t aur_crc32c_shift(const aur_crc32c_shift_table *table, uint32_t crc) {
    return table->byte[0][crc & 0xFFu] ^ table->byte[1][(crc >> 8) & 0xFFu] ^
           table->byte[2][(crc >> 16) & 0xFFu] ^ table->byte[3][crc >> 24];
}

/* x86-64 (crc32c_x86.c).  Feature bits as reported by aur_crc32c_x86_features(). */
#define AUR_CRC32C_X86_SSE42 1u
#define AUR_CRC32C_X86_PCLMUL 2u
#define AUR_CRC32C_X86_VPCLMUL_AVX2 4u /* AVX2 + VPCLMULQDQ, and the OS saves YMM state */
unsigned aur_crc32c_x86_features(void);
uint32_t aur_crc32c_x86_sse42(uint32_t crc, const void *data, size_t len);
uint32_t aur_crc32c_x86_sse42_pclmul(uint32_t crc, const void *data, size_t len);
uint32_t aur_crc32c_x86_vpclmul_avx2(uint32_t crc, const void *data, size_t len);

/* AArch64 (crc32c_arm.c). */
int aur_crc32c_arm_supported(void);
uint32_t aur_crc32c_armv8(uint32_t crc, const void *data, size_t len);

#endif /* AURORA_CRC32C_INTERNAL_H */
