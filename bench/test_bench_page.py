"""Page delta, apply and coalesce: native (per kernel) against the pure-Python reference.

Run: pytest bench/test_bench_page.py --benchmark-json=bench/results/page.json
Each benchmark reports its rate (pages/s or records/s) in extra_info.  Timings are of the
Python-level call, argument conversion included.
"""
import random

import numpy as np
import pytest

from aurora import _native as native
from aurora.reference import page as reference

PAGE_SIZE = 4096
DELTA = native.REC_DELTA


def rate(benchmark, unit, per_call):
    # The median: the machine is shared, and the mean carries other processes' noise.
    benchmark.extra_info[unit] = round(per_call / benchmark.stats.stats.median)
    benchmark.extra_info[unit + "_by_mean"] = round(per_call / benchmark.stats.stats.mean)


def one_row_change(seed=7):
    rnd = random.Random(seed)
    old = rnd.randbytes(PAGE_SIZE)
    new = bytearray(old)
    new[2000:2100] = rnd.randbytes(100)
    return old, bytes(new)


def delta_chain(count, seed=3):
    """count DELTA records of one 64-byte run each, at random offsets, with their LSN chain."""
    rnd = random.Random(seed)
    payloads = []
    for _ in range(count):
        offset = rnd.randrange(0, PAGE_SIZE - 64)
        payloads.append(offset.to_bytes(2, "little") + (64).to_bytes(2, "little")
                        + rnd.randbytes(64))
    lsns = np.arange(1, count + 1, dtype=np.uint64) * 10
    prevs = lsns - 10
    types = np.full(count, DELTA, np.uint8)
    buf = b"".join(payloads)
    lengths = np.array([len(p) for p in payloads], np.uint32)
    offsets = np.concatenate([[0], np.cumsum(lengths[:-1], dtype=np.uint64)]).astype(np.uint64)
    return types, lsns, prevs, payloads, buf, offsets, lengths


@pytest.mark.parametrize("kernel", native.page_kernels())
def test_delta_4k_one_row_native(benchmark, kernel):
    benchmark.group = "page-delta-4k-one-100-byte-row"
    old, new = one_row_change()
    native._page_set_kernel(kernel)
    try:
        delta = benchmark(native.page_delta, old, new)
    finally:
        native._page_set_kernel(native.page_kernel_default)
    assert delta == reference.page_delta(old, new)
    rate(benchmark, "pages_per_s", 1)


@pytest.mark.parametrize("kernel", native.page_kernels())
def test_delta_4k_one_row_c_loop_x1000(benchmark, kernel):
    """The kernel alone: 1000 deltas in one C loop, no Python call per page."""
    benchmark.group = "page-delta-4k-one-100-byte-row-c-loop-x1000"
    old, new = one_row_change()
    native._page_set_kernel(kernel)
    try:
        delta = benchmark(native._page_bench_delta, old, new, 1000)
    finally:
        native._page_set_kernel(native.page_kernel_default)
    assert delta == reference.page_delta(old, new)
    rate(benchmark, "pages_per_s", 1000)


def test_delta_4k_one_row_encode_change_native(benchmark):
    benchmark.group = "page-delta-4k-one-100-byte-row"
    old, new = one_row_change()
    benchmark(native.encode_change, old, new)
    rate(benchmark, "pages_per_s", 1)


def test_delta_4k_one_row_reference(benchmark):
    benchmark.group = "page-delta-4k-one-100-byte-row"
    old, new = one_row_change()
    benchmark(reference.page_delta, old, new)
    rate(benchmark, "pages_per_s", 1)


def test_apply_1000_records_chain_buf_native(benchmark):
    benchmark.group = "page-apply-1000-64-byte-deltas"
    types, lsns, prevs, _, buf, offsets, lengths = delta_chain(1000)
    page = bytearray(PAGE_SIZE)
    benchmark(native.apply_chain_buf, page, 0, buf, types, lsns, prevs, offsets, lengths)
    rate(benchmark, "records_per_s", 1000)


def test_apply_1000_records_chain_native(benchmark):
    benchmark.group = "page-apply-1000-64-byte-deltas"
    types, lsns, prevs, payloads, *_ = delta_chain(1000)
    page = bytearray(PAGE_SIZE)
    benchmark(native.apply_chain, page, 0, types, lsns, prevs, payloads)
    rate(benchmark, "records_per_s", 1000)


def test_apply_1000_records_one_call_each_native(benchmark):
    benchmark.group = "page-apply-1000-64-byte-deltas"
    _, _, _, payloads, *_ = delta_chain(1000)
    page = bytearray(PAGE_SIZE)
    apply = native.apply

    def loop():
        for payload in payloads:
            apply(page, DELTA, payload)

    benchmark(loop)
    rate(benchmark, "records_per_s", 1000)


def test_apply_1000_records_chain_reference(benchmark):
    benchmark.group = "page-apply-1000-64-byte-deltas"
    types, lsns, prevs, payloads, *_ = delta_chain(1000)
    page = bytearray(PAGE_SIZE)
    types, lsns, prevs = types.tolist(), lsns.tolist(), prevs.tolist()
    benchmark.pedantic(reference.apply_chain, (page, 0, types, lsns, prevs, payloads),
                       rounds=5)
    rate(benchmark, "records_per_s", 1000)


@pytest.mark.parametrize("count", [10, 100])
def test_coalesce_native(benchmark, count):
    benchmark.group = "page-coalesce-%d-64-byte-deltas" % count
    types, _, _, payloads, *_ = delta_chain(count)
    types = bytes(types)
    result = benchmark(native.coalesce, PAGE_SIZE, types, payloads)
    assert result == reference.coalesce(PAGE_SIZE, types, payloads)
    rate(benchmark, "records_per_s", count)


@pytest.mark.parametrize("count", [10, 100])
def test_coalesce_buf_native(benchmark, count):
    benchmark.group = "page-coalesce-%d-64-byte-deltas" % count
    types, _, _, _, buf, offsets, lengths = delta_chain(count)
    benchmark(native.coalesce_buf, PAGE_SIZE, buf, types, offsets, lengths)
    rate(benchmark, "records_per_s", count)


@pytest.mark.parametrize("count", [10, 100])
def test_coalesce_reference(benchmark, count):
    benchmark.group = "page-coalesce-%d-64-byte-deltas" % count
    types, _, _, payloads, *_ = delta_chain(count)
    benchmark(reference.coalesce, PAGE_SIZE, types.tolist(), payloads)
    rate(benchmark, "records_per_s", count)
