"""CRC32C throughput: aurora against its peers, one pytest-benchmark group per size.

    python -m pytest bench/test_bench_crc32c.py --benchmark-json=bench/results/crc32c.json -q

Each result carries its throughput in GB/s (10^9 bytes per second of the median) and the
backend in use, in extra_info.  "physical-limit" runs aurora alone on a 192 KiB buffer that
stays in L2, which shows what the hardware path does when memory is not the bottleneck.
"""
import os
import zlib

import pytest

import aurora

crc32c = pytest.importorskip("crc32c")
google_crc32c = pytest.importorskip("google_crc32c")

SIZES = {"64B": 64, "4KiB": 4096, "1MiB": 1 << 20}
CONTENDERS = {
    "aurora": aurora.crc32c,
    "crc32c": crc32c.crc32c,
    "google_crc32c": google_crc32c.value,
    "zlib.crc32": zlib.crc32,  # a different polynomial: a yardstick, not a substitute
}


def record(benchmark, size_bytes):
    benchmark.extra_info["bytes"] = size_bytes
    benchmark.extra_info["backend"] = aurora.crc32c_backend
    benchmark.extra_info["gb_per_s"] = round(size_bytes / benchmark.stats.stats.median / 1e9, 3)


@pytest.mark.parametrize("contender", CONTENDERS)
@pytest.mark.parametrize("size", SIZES)
def test_crc32c(benchmark, size, contender):
    benchmark.group = f"crc32c-{size}"
    data = os.urandom(SIZES[size])
    benchmark(CONTENDERS[contender], data)
    record(benchmark, SIZES[size])


def test_crc32c_physical_limit(benchmark):
    benchmark.group = "crc32c-physical-limit"
    data = os.urandom(4 * 49152)  # four hybrid blocks
    benchmark(aurora.crc32c, data)
    record(benchmark, len(data))
