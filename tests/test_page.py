"""Page delta, apply, apply_chain and coalesce: native (every kernel) against the reference."""
import os
import random
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, strategies as st

from aurora import _native as native, errors
from aurora.reference import page as reference

DELTA, IMAGE, ZERO = native.REC_DELTA, native.REC_IMAGE, native.REC_ZERO
KERNELS = native.page_kernels()
PAGE_SIZES = [512, 513, 1000, 1024, 4096, 4099, 8192, 65535, 65536]


def run(offset, data):
    return offset.to_bytes(2, "little") + len(data).to_bytes(2, "little") + bytes(data)


def each_kernel():
    """Yield every kernel this CPU runs, forced in turn; restores the default afterwards."""
    try:
        for kernel in KERNELS:
            native._page_set_kernel(kernel)
            yield kernel
    finally:
        native._page_set_kernel(native.page_kernel_default)


@st.composite
def page_pairs(draw, sizes=PAGE_SIZES):
    """(old, new) pages: random or zero base, then a few edits of varied shapes."""
    n = draw(st.sampled_from(sizes))
    rnd = random.Random(draw(st.integers(0, 2**32)))
    old = rnd.randbytes(n) if draw(st.booleans()) else bytes(n)
    new = bytearray(old)
    for _ in range(draw(st.integers(0, 6))):
        start = draw(st.integers(0, n - 1))
        length = min(n - start, draw(st.sampled_from([1, 2, 3, 5, 64, 100, 3000, n])))
        mode = draw(st.sampled_from(["random", "zero", "sparse", "flip"]))
        if mode == "random":
            new[start:start + length] = rnd.randbytes(length)
        elif mode == "zero":
            new[start:start + length] = bytes(length)
        elif mode == "flip":
            new[start:start + length] = bytes(b ^ 0xFF for b in new[start:start + length])
        else:  # every k-th byte: exercises the merge of gaps around the run header size
            step = draw(st.integers(1, 7))
            for i in range(start, start + length, step):
                new[i] ^= 0x5A
    return old, bytes(new)


@st.composite
def delta_payloads(draw, n):
    """A valid, not necessarily canonical, delta: sorted, non-overlapping, maybe adjacent."""
    rnd = random.Random(draw(st.integers(0, 2**32)))
    out = bytearray()
    pos = draw(st.integers(0, n - 1))
    for _ in range(draw(st.integers(0, 6))):
        if pos >= n:
            break
        length = draw(st.integers(1, min(n - pos, draw(st.sampled_from([1, 4, 64, n])))))
        out += run(pos, rnd.randbytes(length) if draw(st.booleans()) else bytes(length))
        pos += length + draw(st.sampled_from([0, 1, 3, 4, 100]))
    return bytes(out)


@st.composite
def chains(draw, sizes=(512, 1000, 4096, 65536), kinds=("delta", "delta", "delta", "image",
                                                           "zero")):
    n = draw(st.sampled_from(sizes))
    rnd = random.Random(draw(st.integers(0, 2**32)))
    types, payloads = [], []
    for _ in range(draw(st.integers(0, 12))):
        kind = draw(st.sampled_from(kinds))
        if kind == "delta":
            types.append(DELTA)
            payloads.append(draw(delta_payloads(n)))
        elif kind == "image":
            types.append(IMAGE)
            payloads.append(rnd.randbytes(n) if draw(st.booleans()) else bytes(n))
        else:
            types.append(ZERO)
            payloads.append(b"")
    return n, types, payloads


# ---- delta ---------------------------------------------------------------------------------

@given(page_pairs())
def test_delta_then_apply_gives_the_new_page_and_native_equals_reference(pair):
    old, new = pair
    expected = reference.page_delta(old, new)
    page = bytearray(old)
    reference.apply(page, DELTA, expected)
    assert page == new
    for kernel in each_kernel():
        assert native.page_delta(old, new) == expected, kernel
        assert native.encode_change(old, new) == reference.encode_change(old, new), kernel
    page = bytearray(old)
    native.apply(page, DELTA, expected)
    assert page == new
    assert len(expected) <= len(new) + 2 * native.DELTA_RUN_HEADER_SIZE


@given(page_pairs())
def test_encode_change_applies_and_is_never_larger_than_an_image(pair):
    old, new = pair
    record_type, payload = native.encode_change(old, new)
    page = bytearray(old)
    native.apply(page, record_type, payload)
    assert page == new
    assert len(payload) <= len(new)
    if not any(new):
        assert record_type == ZERO
    elif old == new:
        assert (record_type, payload) == (DELTA, b"")


def test_identical_pages_give_an_empty_delta():
    page = bytes(range(256)) * 16
    assert native.page_delta(page, page) == b""
    assert native.encode_change(page, page) == (DELTA, b"")


def test_gap_shorter_than_a_run_header_is_merged():
    old = bytes(4096)
    for gap in range(0, 8):
        new = bytearray(old)
        new[10] = 1
        new[11 + gap] = 2
        expected = (run(10, new[10:12 + gap]) if gap < native.DELTA_RUN_HEADER_SIZE
                    else run(10, b"\x01") + run(11 + gap, b"\x02"))
        assert native.page_delta(old, new) == expected == reference.page_delta(old, new)


def test_a_whole_64k_page_change_splits_at_the_run_maximum():
    old, new = bytes(65536), b"\xff" * 65536
    delta = native.page_delta(old, new)
    assert delta == run(0, new[:65535]) + run(65535, b"\xff") == reference.page_delta(old, new)
    assert native.encode_change(old, new) == (IMAGE, new)


@pytest.mark.parametrize("kernel", KERNELS)
def test_kernel_finds_every_single_byte_and_run_end_position(kernel):
    """Every position relative to the vector widths and the page's tail, for each kernel."""
    n = 4099
    old = bytes(n)
    native._page_set_kernel(kernel)
    try:
        for pos in list(range(0, 300)) + list(range(n - 300, n)):
            new = bytearray(old)
            new[pos] = 7
            assert native.page_delta(old, new) == run(pos, b"\x07")
            new[pos:] = b"\x09" * (n - pos)  # a run from pos to the end: first_equal finds none
            assert native.page_delta(old, new) == reference.page_delta(old, new)
        for end in range(1, 300):  # a run [0, end): the run's end at every alignment
            new = b"\x01" * end + bytes(n - end)
            assert native.page_delta(old, new) == run(0, new[:end])
    finally:
        native._page_set_kernel(native.page_kernel_default)


def test_set_kernel_rejects_unknown_names():
    with pytest.raises(ValueError, match="available"):
        native._page_set_kernel("avx9000")


@pytest.mark.parametrize("value, expected", [("portable", "portable"), ("bogus", None)])
def test_aurora_simd_environment_variable_forces_a_kernel(value, expected, tmp_path):
    # cwd outside the source tree, aurora imported from where this process found it.
    from aurora.node.process import _package_root
    env = dict(os.environ, AURORA_SIMD=value, PYTHONPATH=_package_root())
    out = subprocess.run([sys.executable, "-c", "from aurora import _native; "
                          "print(_native.page_kernel())"], env=env, check=True,
                         capture_output=True, text=True, cwd=tmp_path).stdout.strip()
    assert out == (expected or KERNELS[0])


def test_page_size_and_shape_errors():
    with pytest.raises(ValueError, match="page sizes are 512 to 65536"):
        native.page_delta(bytes(100), bytes(100))
    with pytest.raises(ValueError, match="same size"):
        native.page_delta(bytes(512), bytes(1024))
    with pytest.raises(ValueError, match="page sizes"):
        native.apply(bytearray(65537), ZERO, b"")
    for implementation in (native, reference):
        with pytest.raises((TypeError, BufferError)):
            implementation.apply(bytes(512), ZERO, b"")  # read-only page


# ---- apply: malformed payloads -------------------------------------------------------------

MALFORMED = [
    pytest.param(DELTA, run(500, b"abcdefghijklm"), errors.RangeError, id="run-past-page-end"),
    pytest.param(DELTA, run(65535, b"a"), errors.RangeError, id="offset-past-page-end"),
    pytest.param(DELTA, run(10, b"abcd") + run(12, b"x"), errors.RangeError, id="overlapping"),
    pytest.param(DELTA, run(100, b"a") + run(50, b"b"), errors.RangeError, id="unsorted"),
    pytest.param(DELTA, run(10, b"a") + (20).to_bytes(2, "little") + b"\0\0", errors.LengthError,
                 id="zero-length-run"),
    pytest.param(DELTA, run(10, b"a") + b"\x05\x00\x01", errors.TruncatedError,
                 id="truncated-run-header"),
    pytest.param(DELTA, run(10, b"abcdef")[:-2], errors.TruncatedError, id="truncated-run-bytes"),
    pytest.param(IMAGE, bytes(511), errors.LengthError, id="image-too-short"),
    pytest.param(IMAGE, bytes(513), errors.LengthError, id="image-too-long"),
    pytest.param(ZERO, b"\0", errors.LengthError, id="zero-with-payload"),
    pytest.param(16, b"", errors.UnknownTypeError, id="control-type"),
    pytest.param(99, b"", errors.UnknownTypeError, id="unknown-type"),
]


@pytest.mark.parametrize("record_type, payload, error", MALFORMED)
def test_malformed_payload_raises_and_leaves_the_page_untouched(record_type, payload, error):
    assert issubclass(error, errors.FormatError)
    original = bytes(range(256)) * 2
    for implementation in (native, reference):
        page = bytearray(original)
        with pytest.raises(error) as info:
            implementation.apply(page, record_type, payload)
        assert page == original, implementation
        assert info.value.offset is not None


@given(st.sampled_from([512, 600, 4096]), st.integers(0, 255), st.binary(max_size=64))
def test_arbitrary_payload_bytes_native_and_reference_agree(n, record_type, payload):
    """Fuzz: whatever the bytes, both accept with the same result or reject with the same
    class and offset, and a rejected payload leaves the page as it was."""
    original = bytes(i * 7 % 251 for i in range(n))
    results = []
    for implementation in (native, reference):
        page = bytearray(original)
        try:
            implementation.apply(page, record_type, payload)
            results.append(("ok", bytes(page)))
        except errors.FormatError as error:
            assert page == original
            results.append((type(error), error.offset))
    assert results[0] == results[1]


# ---- chains --------------------------------------------------------------------------------

def make_chain(n, count, seed=1, first_lsn=10):
    rnd = random.Random(seed)
    types, payloads = [], []
    for _ in range(count):
        offset = rnd.randrange(0, n - 64)
        types.append(DELTA)
        payloads.append(run(offset, rnd.randbytes(64)))
    lsns = [first_lsn + 10 * i for i in range(count)]
    prevs = [first_lsn - 10 + 10 * i for i in range(count)]
    return types, lsns, prevs, payloads


def as_buffer(payloads, lead=b"LOG!"):
    buf, offsets, lengths = bytearray(lead), [], []
    for payload in payloads:
        offsets.append(len(buf))
        lengths.append(len(payload))
        buf += payload
    return bytes(buf), np.array(offsets, np.uint64), np.array(lengths, np.uint32)


@given(chains())
def test_apply_chain_equals_one_by_one_and_buf_variant(chain):
    n, types, payloads = chain
    base = bytes(i % 253 for i in range(n))
    lsns = [5 + 3 * i for i in range(len(types))]
    prevs = ([4] + lsns)[:len(lsns)]
    expected = bytearray(base)
    for record_type, payload in zip(types, payloads):
        native.apply(expected, record_type, payload)
    for implementation in (native, reference):
        page = bytearray(base)
        new_lsn = implementation.apply_chain(page, 4, types, lsns, prevs, payloads)
        assert page == expected and new_lsn == (lsns[-1] if lsns else 4)
    buf, offsets, lengths = as_buffer(payloads)
    page = bytearray(base)
    assert native.apply_chain_buf(page, 4, buf, np.array(types, np.uint8), lsns, prevs, offsets,
                                  lengths) == (lsns[-1] if lsns else 4)
    assert page == expected


@pytest.mark.parametrize("mutate, error, failing", [
    pytest.param(lambda lsns, prevs: prevs.__setitem__(3, 999), errors.ChainGapError, 3,
                 id="missing-record"),
    pytest.param(lambda lsns, prevs: prevs.__setitem__(0, 7), errors.ChainGapError, 0,
                 id="first-backlink-wrong"),
    pytest.param(lambda lsns, prevs: (lsns.__setitem__(2, lsns[1]),
                                      prevs.__setitem__(2, lsns[1])), errors.OrderError, 2,
                 id="lsn-repeated"),
    pytest.param(lambda lsns, prevs: (lsns.__setitem__(4, 5), prevs.__setitem__(4, lsns[3])),
                 errors.OrderError, 4, id="lsn-decreasing"),
])
def test_chain_errors_say_where_and_leave_the_earlier_records_applied(mutate, error, failing):
    n = 4096
    types, lsns, prevs, payloads = make_chain(n, 8)
    mutate(lsns, prevs)
    expected = bytearray(n)
    for payload in payloads[:failing]:
        native.apply(expected, DELTA, payload)
    page_lsn_after = lsns[failing - 1] if failing else 0
    buf, offsets, lengths = as_buffer(payloads)
    calls = [
        lambda page: native.apply_chain(page, 0, types, lsns, prevs, payloads),
        lambda page: native.apply_chain(page, 0, bytes(types), np.array(lsns, np.uint64),
                                        np.array(prevs, np.uint64), tuple(payloads)),
        lambda page: native.apply_chain_buf(page, 0, buf, types, lsns, prevs, offsets, lengths),
        lambda page: reference.apply_chain(page, 0, types, lsns, prevs, payloads),
    ]
    for call in calls:
        page = bytearray(n)
        with pytest.raises(error) as info:
            call(page)
        assert page == expected
        assert (info.value.index, info.value.applied, info.value.page_lsn) == \
            (failing, failing, page_lsn_after)
        assert info.value.lsn == lsns[failing]
        assert "record %d" % failing in str(info.value)


def test_chain_gap_message_names_the_record_and_lsns():
    types, lsns, prevs, payloads = make_chain(4096, 4)
    prevs[2] = 12345
    with pytest.raises(errors.ChainGapError,
                       match=r"record 2 \(DELTA, LSN 30, prev_lsn_page 12345\) on the page at "
                             r"LSN 20"):
        native.apply_chain(bytearray(4096), 0, types, lsns, prevs, payloads)


def test_malformed_record_in_a_chain_stops_there_with_its_offset():
    types, lsns, prevs, payloads = make_chain(4096, 5)
    payloads[3] = run(4090, b"0123456789")  # past the page end
    buf, offsets, lengths = as_buffer(payloads)
    page = bytearray(4096)
    with pytest.raises(errors.RangeError) as info:
        native.apply_chain_buf(page, 0, buf, types, lsns, prevs, offsets, lengths)
    assert info.value.applied == 3 and info.value.offset == offsets[3]
    with pytest.raises(errors.RangeError):
        reference.apply_chain(bytearray(4096), 0, types, lsns, prevs, payloads)


def test_apply_chain_buf_rejects_payloads_outside_the_buffer():
    types, lsns, prevs, payloads = make_chain(4096, 3)
    buf, offsets, lengths = as_buffer(payloads)
    for bad_offset in (len(buf) - 10, len(buf) + 1, 2**64 - 1):
        offsets_bad = offsets.copy()
        offsets_bad[1] = bad_offset
        page = bytearray(4096)
        with pytest.raises(errors.RangeError) as info:
            native.apply_chain_buf(page, 0, buf, types, lsns, prevs, offsets_bad, lengths)
        assert info.value.applied == 1


def test_chain_array_lengths_must_agree():
    types, lsns, prevs, payloads = make_chain(4096, 3)
    with pytest.raises(ValueError, match="one entry per record"):
        native.apply_chain(bytearray(4096), 0, types, lsns[:2], prevs, payloads)


# ---- coalesce --------------------------------------------------------------------------------

@given(chains(), st.integers(0, 2**32))
def test_coalesce_equals_applying_the_chain_on_any_base(chain, seed):
    n, types, payloads = chain
    coalesced = native.coalesce(n, types, payloads)
    assert coalesced == reference.coalesce(n, types, payloads)
    buf, offsets, lengths = as_buffer(payloads)
    assert native.coalesce_buf(n, buf, types, offsets, lengths) == coalesced
    record_type, payload = coalesced
    rnd = random.Random(seed)
    for base in (bytes(n), rnd.randbytes(n)):
        one_by_one = bytearray(base)
        for t, p in zip(types, payloads):
            native.apply(one_by_one, t, p)
        page = bytearray(base)
        native.apply(page, record_type, payload)
        assert page == one_by_one
    if all(t == DELTA for t in types) and record_type == DELTA:
        assert len(payload) <= sum(map(len, payloads))
    if record_type == IMAGE:
        assert any(payload)


def test_coalesce_of_deltas_covering_the_page_is_an_image_or_zero():
    n = 512
    assert native.coalesce(n, [DELTA, DELTA], [run(0, b"a" * 300), run(300, b"b" * 212)]) == \
        (IMAGE, b"a" * 300 + b"b" * 212)
    assert native.coalesce(n, [DELTA, DELTA], [run(0, bytes(512)), run(5, bytes(5))]) == \
        (ZERO, b"")


def test_coalesce_merges_adjacent_runs_but_never_fills_gaps():
    n = 4096
    types = [DELTA] * 3
    payloads = [run(10, b"aaaa"), run(14, b"bb") + run(17, b"c"), run(11, b"X")]
    assert native.coalesce(n, types, payloads) == \
        (DELTA, run(10, b"aXaabb") + run(17, b"c")) == reference.coalesce(n, types, payloads)
    assert native.coalesce(n, [], []) == (DELTA, b"")


def test_coalesce_reports_the_failing_record():
    payloads = [run(0, b"a"), run(5, b"b") + b"\x01", run(0, b"c")]
    for implementation in (native, reference):
        with pytest.raises(errors.TruncatedError) as info:
            implementation.coalesce(4096, [DELTA] * 3, payloads)
        assert info.value.index == 1
    with pytest.raises(errors.UnknownTypeError):
        native.coalesce(4096, [DELTA, 17], [b"", b"\0\0\0\0"])


def test_long_chains_and_every_array_form():
    """More records than fit the inline pointer arrays; types as list, bytes and numpy."""
    n = 4096
    types, lsns, prevs, payloads = make_chain(n, 100, first_lsn=10)
    payloads = [bytearray(p) if i % 3 == 0 else p for i, p in enumerate(payloads)]
    expected = reference.coalesce(n, types, payloads)
    for form in (list, bytes, lambda t: np.array(t, np.uint8)):
        assert native.coalesce(n, form(types), payloads) == expected
    page, page_reference = bytearray(n), bytearray(n)
    assert native.apply_chain(page, 0, np.array(types, np.uint8), np.array(lsns, np.int64),
                              prevs, payloads) == lsns[-1]
    reference.apply_chain(page_reference, 0, types, lsns, prevs, payloads)
    assert page == page_reference
