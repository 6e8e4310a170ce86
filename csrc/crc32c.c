/* CRC32C: portable slice-by-8 and the one-time choice of implementation.  See crc32c.h. */
#include "crc32c.h"

#include <stdlib.h>
#include <string.h>

#include "crc32c_internal.h"

static uint32_t crc_table[8][256];

aur_crc32c_shift_table aur_crc32c_shift_long, aur_crc32c_shift_2long;
aur_crc32c_shift_table aur_crc32c_shift_short, aur_crc32c_shift_2short;

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

/*
 * GF(2) arithmetic modulo P on reflected words (bit i holds the coefficient of x^(31-i)),
 * used only to build the shift tables.  Multiplying by x moves every coefficient one bit
 * right; the x^31 coefficient (bit 0) falls off as x^32, which is P's low terms.
 */
static uint32_t gf2_mul_mod(uint32_t a, uint32_t b) {
    uint32_t product = 0;
    for (int i = 0; i < 32; i++) { /* Horner, from a's x^31 coefficient (bit 0) down */
        product = (product & 1u) ? (product >> 1) ^ AUR_CRC32C_POLY : product >> 1;
        if ((a >> i) & 1u) product ^= b;
    }
    return product;
}

static uint32_t gf2_x_pow_mod(uint64_t n) {
    uint32_t result = 0x80000000u, square = 0x40000000u; /* x^0, x^1 */
    for (; n; n >>= 1) {
        if (n & 1u) result = gf2_mul_mod(result, square);
        square = gf2_mul_mod(square, square);
    }
    return result;
}

static void shift_table_init(aur_crc32c_shift_table *table, uint64_t shift_bytes) {
    uint32_t factor = gf2_x_pow_mod(8u * shift_bytes);
    for (unsigned b = 0; b < 4; b++) {
        for (uint32_t v = 0; v < 256; v++) table->byte[b][v] = gf2_mul_mod(v << (8u * b), factor);
    }
}

static void shift_tables_init(void) {
    shift_table_init(&aur_crc32c_shift_long, AUR_CRC32C_STREAM_LONG_BYTES);
    shift_table_init(&aur_crc32c_shift_2long, 2u * AUR_CRC32C_STREAM_LONG_BYTES);
    shift_table_init(&aur_crc32c_shift_short, AUR_CRC32C_STREAM_SHORT_BYTES);
    shift_table_init(&aur_crc32c_shift_2short, 2u * AUR_CRC32C_STREAM_SHORT_BYTES);
}

typedef uint32_t (*crc_fn)(uint32_t, const void *, size_t);

typedef struct backend {
    const char *name;
    crc_fn fn;
    int available;
    int needs_shift_tables;
} backend;

/* Most preferred first; "sw" last and always available. */
#define BACKENDS_MAX 5
static int backends_list(backend out[BACKENDS_MAX]) {
    int n = 0;
#if defined(__x86_64__)
    unsigned x86 = aur_crc32c_x86_features();
    int sse42 = (x86 & AUR_CRC32C_X86_SSE42) != 0;
    int pclmul = sse42 && (x86 & AUR_CRC32C_X86_PCLMUL) != 0;
    out[n++] = (backend){"vpclmulqdq-avx2", aur_crc32c_x86_vpclmul_avx2,
                         pclmul && (x86 & AUR_CRC32C_X86_VPCLMUL_AVX2) != 0, 0};
    out[n++] = (backend){"sse4.2+pclmul", aur_crc32c_x86_sse42_pclmul, pclmul, 0};
    out[n++] = (backend){"sse4.2", aur_crc32c_x86_sse42, sse42, 1};
#elif defined(__aarch64__)
    out[n++] = (backend){"armv8-crc", aur_crc32c_armv8, aur_crc32c_arm_supported(), 1};
#endif
    out[n++] = (backend){"sw", aur_crc32c_sw, 1, 0};
    return n;
}

/* Published once by aur_crc32c_init(): the name first, then (release) the function. */
static crc_fn crc_impl;
static const char *crc_name = "uninitialised";

/*
 * The best available backend, unless AURORA_CRC32C names an available one: "sw" forces the
 * portable path; a hardware name ("sse4.2", ...) forces that path where the CPU has it, which
 * is how the tests reach the paths the machine would not pick by itself.  A name that is
 * unknown or unavailable here is ignored.
 */
const char *aur_crc32c_init(void) {
    if (__atomic_load_n(&crc_impl, __ATOMIC_ACQUIRE)) return crc_name;
    table_init();
    backend backends[BACKENDS_MAX];
    int count = backends_list(backends);
    int chosen = -1;
    const char *forced = getenv("AURORA_CRC32C");
    for (int i = 0; forced && *forced && i < count; i++) {
        if (backends[i].available && strcmp(backends[i].name, forced) == 0) chosen = i;
    }
    for (int i = 0; chosen < 0 && i < count; i++) {
        if (backends[i].available) chosen = i;
    }
    if (backends[chosen].needs_shift_tables) shift_tables_init();
    crc_name = backends[chosen].name;
    __atomic_store_n(&crc_impl, backends[chosen].fn, __ATOMIC_RELEASE);
    return crc_name;
}

const char *aur_crc32c_backend(void) { return aur_crc32c_init(); }

uint32_t aur_crc32c(uint32_t crc, const void *data, size_t len) {
    crc_fn impl = __atomic_load_n(&crc_impl, __ATOMIC_ACQUIRE);
    if (!impl) {
        aur_crc32c_init();
        impl = __atomic_load_n(&crc_impl, __ATOMIC_ACQUIRE);
    }
    return impl(crc, data, len);
}
