"""Derive the constants of aurora's hardware CRC32C paths (csrc/crc32c_x86.c, csrc/crc32c.c).

Run `python tools/crc32c_constants.py` to print them as C; `--check` re-derives them and
compares with what is pasted in csrc/ (exit status 1 on any difference).

Arithmetic is over GF(2)[x] modulo the Castagnoli polynomial
P(x) = x^32 + x^28 + x^27 + x^26 + x^25 + x^23 + x^22 + x^20 + x^19 + x^18 + x^14 + x^13
       + x^11 + x^10 + x^9 + x^8 + x^6 + 1
(0x1EDC6F41 with the x^32 term implicit; 0x82F63B78 bit-reflected).  Everything the CPU sees
is bit-reflected: in a 32-bit word, bit i holds the coefficient of x^(31-i); in a 64-bit word,
bit i holds x^(63-i).

Two facts fix every exponent below:
  * crc32q(0, v) for a 64-bit reflected v is v(x) * x^32 mod P.
  * a carry-less multiply of two reflected values yields their product times x (the
    reflected product is one bit short: bit i+j of the result holds x^(62-i-j) of a 64-bit
    reflected result, i.e. x^(63-(i+j)) / x).

Shift of a CRC by n bytes (the three interleaved crc32q streams):
    c * x^(8n) mod P = crc32q(0, clmul(c, K)) with K = x^(8n-33) mod P,
because clmul gives c*K*x and crc32q multiplies by x^32.

The hybrid path shifts its folded part over three long streams as well: x^(24n-33) mod P.

Fold of a 128-bit block forward by D bits (VPCLMULQDQ path): the block is A*x^64 + B, with
A its first (lower-address) qword and B its second; moved D bits on it is
A*x^(D+64) + B*x^D.  A reflected 32-bit constant k stored in the low half of a 64-bit lane
stands for k*x^32, and the clmul adds one more x, so
    A is multiplied by k_lo = x^(D+64-33) = x^(D+31) mod P
    B is multiplied by k_hi = x^(D-33) mod P.
The 128-bit sum of the two products has degree < 128 and is congruent to the moved block.
"""
import re
import sys
from pathlib import Path

POLY = 0x11EDC6F41  # P(x) with x^32, normal (non-reflected) bit order: bit d holds x^d


def xpow_mod(n):
    """x^n mod P as a normal-order integer (bit d = coefficient of x^d)."""
    result, base = 1, 2  # x^0, x^1
    while n:
        if n & 1:
            result = mulmod(result, base)
        base = mulmod(base, base)
        n >>= 1
    return result


def mulmod(a, b):
    product = 0
    while b:
        if b & 1:
            product ^= a
        a <<= 1
        b >>= 1
    for d in range(product.bit_length() - 1, 31, -1):
        if product >> d & 1:
            product ^= POLY << (d - 32)
    return product


def reflect32(r):
    """Normal-order polynomial of degree <= 31 -> reflected 32-bit word (x^d at bit 31-d)."""
    return int(f"{r:032b}"[::-1], 2)


def k(n):
    return reflect32(xpow_mod(n))


# Three-stream crc32q: bytes per stream for the long and short blocks (crc32c_x86.c).
STREAM_LONG_BYTES = 8192
STREAM_SHORT_BYTES = 256
# VPCLMULQDQ fold: number of 256-bit accumulators in the main loop (crc32c_x86.c).
FOLD_ACCUMULATORS = 8
# Hybrid path: 256-bit accumulators folded while three crc32q streams run (crc32c_x86.c).
HYBRID_ACCUMULATORS = 6


def constants():
    """(C name, value) pairs, in the order they appear in csrc/."""
    out = []
    for name, n in (("LONG", STREAM_LONG_BYTES), ("SHORT", STREAM_SHORT_BYTES)):
        out.append((f"AUR_CRC32C_K_SHIFT_{name}", k(8 * n - 33)))
        out.append((f"AUR_CRC32C_K_SHIFT_2{name}", k(16 * n - 33)))
    out.append(("AUR_CRC32C_K_SHIFT_3LONG", k(24 * STREAM_LONG_BYTES - 33)))
    for bits in sorted({128, 256, 512, 768, 1024, 256 * FOLD_ACCUMULATORS,
                        256 * HYBRID_ACCUMULATORS}):
        out.append((f"AUR_CRC32C_K_FOLD_{bits}_LO", k(bits + 31)))
        out.append((f"AUR_CRC32C_K_FOLD_{bits}_HI", k(bits - 33)))
    return out


def as_c():
    return "\n".join(f"#define {name} 0x{value:08X}u" for name, value in constants())


def check(root):
    text = "".join(p.read_text() for p in sorted((root / "csrc").glob("crc32c*.[ch]")))
    bad = 0
    for name, value in constants():
        m = re.search(rf"#define {name} 0x([0-9A-Fa-f]{{8}})u", text)
        if not m or int(m.group(1), 16) != value:
            print(f"{name}: csrc has {m.group(1) if m else 'nothing'}, expected 0x{value:08X}")
            bad += 1
    print("all constants match" if not bad else f"{bad} constant(s) differ")
    return 1 if bad else 0


def self_test():
    """The derivations above, checked on a bitwise CRC model (no hardware involved)."""
    import random

    def crc_bits(data, c=0):  # internal state, no pre/post inversion, reflected
        for byte in data:
            c ^= byte
            for _ in range(8):
                c = (c >> 1) ^ (0x82F63B78 if c & 1 else 0)
        return c

    def crc32q(c, v):
        return crc_bits(v.to_bytes(8, "little"), c)

    def clmul(a, b):
        r = 0
        while b:
            if b & 1:
                r ^= a
            a <<= 1
            b >>= 1
        return r

    rng = random.Random(1)
    for n in (STREAM_SHORT_BYTES, STREAM_LONG_BYTES):
        c = rng.getrandbits(32)
        assert crc32q(0, clmul(c, k(8 * n - 33))) == crc_bits(bytes(n), c)
    for bits in (128, 256, 512, 768, 1024, 1536, 2048):
        block = rng.randbytes(16)
        a, b = int.from_bytes(block[:8], "little"), int.from_bytes(block[8:], "little")
        moved = clmul(a, k(bits + 31)) ^ clmul(b, k(bits - 33))
        assert moved < 1 << 128
        # The block followed by `bits` zero bits is congruent to the 16-byte moved block, so
        # both have the same CRC: xoring `moved` into the block `bits` later is a valid fold.
        assert crc_bits(block + bytes(bits // 8)) == crc_bits(moved.to_bytes(16, "little"))


if __name__ == "__main__":
    self_test()
    if "--check" in sys.argv:
        sys.exit(check(Path(__file__).resolve().parent.parent))
    print(as_c())
