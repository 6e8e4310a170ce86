/* CRC32C: portable slice-by-8 and the one-time choice of implementation.  See crc32c.h. */
#include "crc32c.h"

#include <stdlib.h>
#include <string.h>

#define AUR_CRC32C_POLY 0x82F63B78u

static uint32_t crc_table[8][256];

static void table_init(void) {
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++) c = (c & 1u) ? (c >> 1) ^ AUR_CRC32C_POLY : c >> 1;
        crc_table[0][n] = c;
    }
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = crc_table[0][n];
        for (int t = 1; t < 8; t++) {
            c = crc_table[0][c & 0xFFu] ^ (c >> 8);
            crc_table[t][n] = c;
        }
    }
}

static uint64_t load_le64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}

uint32_t aur_crc32c_sw(uint32_t crc, const void *data, size_t len) {
    const uint8_t *p = data;
    uint32_t c = ~crc;
    while (len && ((uintptr_t)p & 7u)) {
        c = crc_table[0][(c ^ *p++) & 0xFFu] ^ (c >> 8);
        len--;
    }
    while (len >= 8) {
        uint64_t w = load_le64(p) ^ c;
        c = crc_table[7][w & 0xFFu] ^ crc_table[6][(w >> 8) & 0xFFu] ^
            crc_table[5][(w >> 16) & 0xFFu] ^ crc_table[4][(w >> 24) & 0xFFu] ^
            crc_table[3][(w >> 32) & 0xFFu] ^ crc_table[2][(w >> 40) & 0xFFu] ^
            crc_table[1][(w >> 48) & 0xFFu] ^ crc_table[0][w >> 56];
        p += 8;
        len -= 8;
    }
    while (len--) c = crc_table[0][(c ^ *p++) & 0xFFu] ^ (c >> 8);
    return ~c;
}

typedef uint32_t (*crc_fn)(uint32_t, const void *, size_t);
static crc_fn crc_impl;
static const char *crc_name = "uninitialised";

const char *aur_crc32c_init(void) {
    if (crc_impl) return crc_name;
    table_init();
    crc_name = "sw";
    crc_impl = aur_crc32c_sw;
    return crc_name;
}

const char *aur_crc32c_backend(void) { return aur_crc32c_init(); }

uint32_t aur_crc32c(uint32_t crc, const void *data, size_t len) {
    if (!crc_impl) aur_crc32c_init();
    return crc_impl(crc, data, len);
}
