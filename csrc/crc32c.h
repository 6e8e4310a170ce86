/*
 * CRC32C (Castagnoli, reflected polynomial 0x82F63B78), as used by iSCSI, ext4 and LevelDB.
 *
 * The implementation is chosen once, on the first call to aur_crc32c_init() (called by
 * aur_crc32c() if needed), from the CPU's features: hardware paths on x86-64
 * ("vpclmulqdq-avx2", "sse4.2+pclmul", "sse4.2") and AArch64 ("armv8-crc"), a portable
 * slice-by-8 ("sw") elsewhere.  AURORA_CRC32C=sw in the environment forces the portable path;
 * AURORA_CRC32C=<backend name> forces that backend if the CPU has it (unknown or unavailable
 * names are ignored).  See docs/crc32c.md.
 * Thread-safe after aur_crc32c_init() has returned once.
 */
#ifndef AURORA_CRC32C_H
#define AURORA_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/* Choose the implementation; idempotent.  Returns the backend's name (static storage). */
const char *aur_crc32c_init(void);

/* Name of the backend in use, e.g. "vpclmulqdq-avx2", "sse4.2+pclmul", "armv8-crc", "sw". */
const char *aur_crc32c_backend(void);

/* Extend `crc` (0 to start) over `len` bytes at `data`; `data` may be NULL when len == 0. */
uint32_t aur_crc32c(uint32_t crc, const void *data, size_t len);

/* The portable implementation, always available (tests compare the paths against it). */
uint32_t aur_crc32c_sw(uint32_t crc, const void *data, size_t len);

#endif /* AURORA_CRC32C_H */
