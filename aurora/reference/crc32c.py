"""CRC32C (Castagnoli, reflected polynomial 0x82F63B78), one table, one byte at a time."""

POLYNOMIAL = 0x82F63B78


def _make_table():
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ POLYNOMIAL if c & 1 else c >> 1
        table.append(c)
    return tuple(table)


TABLE = _make_table()


def crc32c(data, value=0):
    """CRC32C of ``data`` (any bytes-like object), continuing from ``value``."""
    table = TABLE
    c = value ^ 0xFFFFFFFF
    for byte in bytes(data):
        c = table[(c ^ byte) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF
