"""Pure-Python reference of csrc/page.c: page delta, encode_change, apply, apply_chain, coalesce.

Same semantics as the native functions in aurora._native, byte for byte and error class for
error class (tests check one against the other); written for clarity, not speed.  See
docs/page-operations.md.  The constants come from the native module, whose values are those
of csrc/format.h, the single source of every constant.
"""
from aurora import errors
from aurora._native import (
    DELTA_RUN_HEADER_SIZE,
    DELTA_RUN_LENGTH_MAX,
    LSN_MAX,
    PAGE_SIZE_MAX,
    PAGE_SIZE_MIN,
    REC_DELTA,
    REC_IMAGE,
    REC_ZERO,
)

__all__ = ["page_delta", "encode_change", "check", "apply", "apply_chain", "coalesce"]

_SCAN_CHUNK = 64  # bytes compared at once while skipping equal stretches


def _check_page_size(page_size, what):
    if not PAGE_SIZE_MIN <= page_size <= PAGE_SIZE_MAX:
        raise ValueError("%s: a page is %d bytes; page sizes are %d to %d bytes"
                         % (what, page_size, PAGE_SIZE_MIN, PAGE_SIZE_MAX))


def _first_diff(old, new, i, n):
    while i < n:
        j = min(i + _SCAN_CHUNK, n)
        if old[i:j] != new[i:j]:
            while old[i] == new[i]:
                i += 1
            return i
        i = j
    return n


def _first_equal(old, new, i, n):
    while i < n and old[i] != new[i]:
        i += 1
    return i


def _runs_payload(page, ranges):
    """Delta payload of the byte ranges [start, end) of ``page``, split at the run maximum."""
    out = bytearray()
    for start, end in ranges:
        while start < end:
            length = min(end - start, DELTA_RUN_LENGTH_MAX)
            out += start.to_bytes(2, "little") + length.to_bytes(2, "little")
            out += page[start:start + length]
            start += length
    return bytes(out)


def page_delta(old_page, new_page):
    """Canonical delta: maximal differing ranges, merged across gaps shorter than a run header,
    split into runs of at most DELTA_RUN_LENGTH_MAX bytes."""
    old, new = memoryview(old_page).cast("B"), memoryview(new_page).cast("B")
    if len(old) != len(new):
        raise ValueError("page_delta: old page is %d bytes, new page %d; they must be the same "
                         "size" % (len(old), len(new)))
    n = len(old)
    _check_page_size(n, "page_delta")
    differing = []
    i = 0
    while True:
        start = _first_diff(old, new, i, n)
        if start == n:
            break
        i = _first_equal(old, new, start, n)
        differing.append((start, i))
    merged = []
    for start, end in differing:
        if merged and start - merged[-1][1] < DELTA_RUN_HEADER_SIZE:
            merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return _runs_payload(new, merged)


def encode_change(old_page, new_page):
    """(type, payload): ZERO if the new page is all zero, else DELTA if the delta is shorter
    than a page, else IMAGE."""
    new = bytes(new_page)
    delta = page_delta(old_page, new)  # also checks the sizes
    if new.count(0) == len(new):
        return (REC_ZERO, b"")
    if len(delta) < len(new):
        return (REC_DELTA, delta)
    return (REC_IMAGE, new)


def _delta_runs(page_size, payload):
    """Validate a DELTA payload; returns its runs as (offset, payload position, length)."""
    runs = []
    i = 0
    previous_end = 0
    n = len(payload)
    while i < n:
        if n - i < DELTA_RUN_HEADER_SIZE:
            raise errors.TruncatedError("delta: run header truncated at offset %d" % i, i)
        offset = int.from_bytes(payload[i:i + 2], "little")
        length = int.from_bytes(payload[i + 2:i + 4], "little")
        if length == 0:
            raise errors.LengthError("delta: zero-length run at offset %d" % (i + 2), i + 2)
        if offset < previous_end or offset + length > page_size:
            raise errors.RangeError("delta: run [%d, %d) overlaps the previous run or leaves "
                                    "the %d-byte page, at offset %d"
                                    % (offset, offset + length, page_size, i), i)
        if n - i - DELTA_RUN_HEADER_SIZE < length:
            raise errors.TruncatedError("delta: run bytes truncated at offset %d"
                                        % (i + DELTA_RUN_HEADER_SIZE),
                                        i + DELTA_RUN_HEADER_SIZE)
        runs.append((offset, i + DELTA_RUN_HEADER_SIZE, length))
        previous_end = offset + length
        i += DELTA_RUN_HEADER_SIZE + length
    return runs


def check(page_size, type, payload):
    """Validate a record's payload for a page of ``page_size`` bytes; returns the DELTA runs
    (empty list for IMAGE/ZERO)."""
    _check_page_size(page_size, "check")
    payload = memoryview(payload).cast("B")
    if type == REC_DELTA:
        return _delta_runs(page_size, payload)
    if type == REC_IMAGE:
        if len(payload) != page_size:
            raise errors.LengthError("IMAGE payload is %d bytes for a %d-byte page"
                                     % (len(payload), page_size), 0)
        return []
    if type == REC_ZERO:
        if len(payload):
            raise errors.LengthError("ZERO payload is %d bytes; must be empty" % len(payload), 0)
        return []
    raise errors.UnknownTypeError("record type %d is not a page type" % type, 0)


def apply(page, type, payload):
    """Apply one record to ``page`` (writable buffer) in place; untouched on error."""
    target = memoryview(page).cast("B")
    if target.readonly:
        raise BufferError("apply: the page must be a writable buffer")
    n = len(target)
    _check_page_size(n, "apply")
    payload = memoryview(payload).cast("B")
    runs = check(n, type, payload)  # validate everything before writing anything
    if type == REC_DELTA:
        for offset, position, length in runs:
            target[offset:offset + length] = payload[position:position + length]
    elif type == REC_IMAGE:
        target[:] = payload
    else:
        target[:] = bytes(n)


def apply_chain(page, page_lsn, types, lsns, prev_lsn_page, payloads):
    """Apply a page chain in order; returns the new page LSN.  Errors carry ``index``,
    ``lsn``, ``applied`` and ``page_lsn`` like the native function."""
    types, lsns, prevs, payloads = list(types), list(lsns), list(prev_lsn_page), list(payloads)
    if not len(types) == len(lsns) == len(prevs) == len(payloads):
        raise ValueError("apply_chain: one type, LSN, prev_lsn_page and payload per record")
    _check_page_size(len(memoryview(page).cast("B")), "apply_chain")
    lsn_now = page_lsn
    for index, (record_type, lsn, prev, payload) in enumerate(zip(types, lsns, prevs, payloads)):
        try:
            if lsn <= lsn_now:
                raise errors.OrderError("apply_chain: record %d has LSN %d, not above the page "
                                        "LSN %d" % (index, lsn, lsn_now))
            if prev != lsn_now:
                raise errors.ChainGapError("apply_chain: record %d (LSN %d) follows LSN %d but "
                                           "the page is at LSN %d" % (index, lsn, prev, lsn_now))
            if lsn > LSN_MAX:
                raise errors.RangeError("apply_chain: record %d has LSN %d > LSN_MAX"
                                        % (index, lsn))
            apply(page, record_type, payload)
        except errors.AuroraError as error:
            error.index, error.lsn, error.applied, error.page_lsn = index, lsn, index, lsn_now
            raise
        lsn_now = lsn
    return lsn_now


def coalesce(page_size, types, payloads):
    """(type, payload) of one record equivalent to the chain on any base page."""
    _check_page_size(page_size, "coalesce")
    types, payloads = list(types), [memoryview(p).cast("B") for p in payloads]
    if len(types) != len(payloads):
        raise ValueError("coalesce: %d types for %d payloads" % (len(types), len(payloads)))
    checked = []
    for index, (record_type, payload) in enumerate(zip(types, payloads)):
        try:
            checked.append(check(page_size, record_type, payload))
        except errors.AuroraError as error:
            error.index = index
            raise
    full = max((i for i, t in enumerate(types) if t != REC_DELTA), default=None)
    if full is not None:
        page = bytearray(page_size)
        for record_type, payload in zip(types[full:], payloads[full:]):
            apply(page, record_type, payload)
        return _full_page(page)
    scratch = bytearray(page_size)
    covered = bytearray(page_size)
    for runs, payload in zip(checked, payloads):
        for offset, position, length in runs:
            scratch[offset:offset + length] = payload[position:position + length]
            covered[offset:offset + length] = b"\x01" * length
    if covered.count(1) == page_size:
        return _full_page(scratch)
    ranges = []
    i = 0
    while i < page_size:
        start = covered.find(1, i)
        if start < 0:
            break
        end = covered.find(0, start)
        end = page_size if end < 0 else end
        ranges.append((start, end))
        i = end
    return (REC_DELTA, _runs_payload(scratch, ranges))


def _full_page(page):
    if page.count(0) == len(page):
        return (REC_ZERO, b"")
    return (REC_IMAGE, bytes(page))
