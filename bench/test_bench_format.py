"""Record codec: native (aurora._native) vs the pure-Python reference, same groups.

    pytest bench/test_bench_format.py --benchmark-json=bench/results/format.json

Batches of 1000 records with 64-byte DELTA payloads: encode (+CRC) and decode (+verify).
extra_info carries records/s (and MB/s for the log scan).
"""
import struct

import numpy as np
import pytest

from aurora import _native
from aurora.reference import format as reference

RECORDS = 1000
PAYLOAD = struct.pack("<HH", 512, 60) + bytes(range(60))   # one 60-byte run: 64 bytes
assert len(PAYLOAD) == 64

IMPLEMENTATIONS = [pytest.param(_native, id="native"), pytest.param(reference, id="reference")]


def batch_args():
    lsn = np.arange(1000, 1000 + RECORDS, dtype=np.uint64)
    return (11, 3, 2, 5, lsn, lsn - 1, np.zeros(RECORDS, np.uint64),
            np.arange(RECORDS, dtype=np.uint32), np.full(RECORDS, reference.REC_DELTA, np.uint8),
            np.zeros(RECORDS, np.uint8), [PAYLOAD] * RECORDS)


def run(benchmark, module, function, *args):
    if module is reference:   # seconds per call: a few rounds are enough
        result = benchmark.pedantic(function, args=args, rounds=3, iterations=1)
    else:
        result = benchmark(function, *args)
    benchmark.extra_info["records_per_second"] = RECORDS / benchmark.stats.stats.mean
    return result


@pytest.mark.benchmark(group="format-encode-1000x64B-delta")
@pytest.mark.parametrize("module", IMPLEMENTATIONS)
def test_encode_batch(benchmark, module):
    data = run(benchmark, module, module.encode_batch, *batch_args())
    assert len(data) == 64 + RECORDS * (40 + 64)


@pytest.mark.benchmark(group="format-decode-1000x64B-delta")
@pytest.mark.parametrize("module", IMPLEMENTATIONS)
def test_decode_batch(benchmark, module):
    data = _native.encode_batch(*batch_args())
    header, records = run(benchmark, module, module.decode_batch, data)
    assert len(records) == RECORDS


@pytest.mark.benchmark(group="format-scan-log-4KiB-images")
def test_scan_log_4k_images(benchmark):
    n = 2048   # 8 MiB of 4 KiB page images
    lsn = np.arange(1, n + 1, dtype=np.uint64)
    log = _native.encode_records(lsn, lsn - 1, 0, np.arange(n, dtype=np.uint32),
                                 reference.REC_IMAGE, 0, [bytes(4096)] * n)
    records, end, reason = benchmark(_native.scan_log, log)
    assert (len(records), end, reason) == (n, len(log), "end")
    mean = benchmark.stats.stats.mean
    benchmark.extra_info["records_per_second"] = n / mean
    benchmark.extra_info["megabytes_per_second"] = len(log) / mean / 1e6
