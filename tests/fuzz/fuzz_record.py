"""Fuzz target for the record codec: decode_batch, scan_log and log_resync on any bytes.

    python tests/fuzz/fuzz_record.py tests/fuzz/corpus-record tests/fuzz/seeds/record

needs atheris (`pip install aurora-storage[fuzz]`); without it the module still imports, so
tests/test_fuzz_smoke.py runs test_one_input over the seeds and random mutations.  Small
inputs are also cross-checked against the pure-Python reference (same result or same error
class and offset).
"""
import sys

try:
    import atheris
except ImportError:  # pytest runs the target without atheris
    atheris = None

if atheris is not None:
    with atheris.instrument_imports():
        from aurora import _native, errors
        from aurora.reference import format as reference
else:
    from aurora import _native, errors
    from aurora.reference import format as reference

# Inputs up to this size are also run through the (slow) reference.
REFERENCE_MAX_BYTES = 256
STOP_REASONS = {"end", "zero", "cap", "truncated", "checksum", "type", "flags", "length",
                "range", "order"}


def _outcome(function, *args):
    try:
        result = function(*args)
    except errors.FormatError as exc:
        return (type(exc), exc.offset)
    if isinstance(result, tuple):
        return tuple(r.tolist() if hasattr(r, "tolist") else r for r in result)
    return result


def _check_records(data, records):
    for record in records.tolist():
        lsn, prev_pg, prev_page, offset, page_no, payload_length, rtype, flags = record
        assert offset + reference.RECORD_HEADER_SIZE + payload_length <= len(data)
        assert 0 < lsn and prev_pg < lsn and prev_page < lsn
        assert rtype in reference.KNOWN_TYPES and flags & ~reference.FLAGS_KNOWN == 0


def test_one_input(data: bytes) -> None:
    data = bytes(data)
    try:
        header, records = _native.decode_batch(data)
    except errors.FormatError as exc:
        assert exc.offset is not None and 0 <= exc.offset <= len(data)
    else:
        assert header.body_length == len(data) - reference.BATCH_HEADER_SIZE
        assert len(records) == header.record_count
        _check_records(data, records)
        assert _native.decode_batch(bytearray(data))[0] == header

    for start in (0, min(len(data), reference.BATCH_HEADER_SIZE)):
        records, end, reason = _native.scan_log(data, start)
        assert reason in STOP_REASONS and start <= end <= len(data)
        _check_records(data, records)
        if reason not in ("end", "zero"):
            found = _native.log_resync(data, end + 1)
            if found is not None:
                assert end < found <= len(data) - reference.RECORD_HEADER_SIZE
                assert len(_native.scan_log(data, found, max_records=1)[0]) == 1

    if len(data) <= REFERENCE_MAX_BYTES:
        assert _outcome(_native.decode_batch, data) == _outcome(reference.decode_batch, data)
        assert _outcome(_native.scan_log, data) == _outcome(reference.scan_log, data)
        assert _native.log_resync(data, 0) == reference.log_resync(data, 0)


def main(argv):
    if atheris is None:
        sys.exit("atheris is not installed: pip install aurora-storage[fuzz]")
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
