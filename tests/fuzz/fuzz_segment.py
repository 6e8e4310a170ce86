"""Fuzz target for a segment's restart scan: any bytes as a log file, opened by Segment.

    python tests/fuzz/fuzz_segment.py tests/fuzz/corpus-segment tests/fuzz/seeds/segment -atheris_runs=100000

The input is the log file after a valid 64-byte file header (first byte bit 0 clear), or the
whole file including its header (bit 0 set).  Opening must either refuse the file with a clear
error or come up with a consistent index: SCL no higher than the highest LSN held, every
indexed record CRC-valid, and every read at SCL either the right size or a clean refusal.
"""
import os
import shutil
import struct
import sys

try:
    import atheris
except ImportError:  # pytest runs the target without atheris
    atheris = None

if atheris is not None:
    with atheris.instrument_imports():
        from aurora import _native, errors
        from aurora.node import segment as seg
else:
    from aurora import _native, errors
    from aurora.node import segment as seg

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _fuzzutil import scratch_dir  # noqa: E402

VOLUME_ID = 1
PG = 0
PAGE_SIZE = 512
PAGES_PER_PG = 64
_root = []


def log_header(seq=1):
    header = bytearray(seg.LOG_HEADER_SIZE)
    seg.LOG_HEADER.pack_into(header, 0, seg.LOG_MAGIC, seg.LOG_VERSION, 0, 0, 0, VOLUME_ID, PG, 0, seq)
    struct.pack_into("<I", header, 8, _native.crc_mask(_native.crc32c(memoryview(header)[12:])))
    return bytes(header)


def test_one_input(data: bytes) -> None:
    data = bytes(data)
    if not _root:
        _root.append(scratch_dir("aur-fuzz-segment-"))
    directory = os.path.join(_root[0], "pg-0")
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(directory)
    image = data[1:] if data[:1] and data[0] & 1 else log_header() + data[1:]
    with open(os.path.join(directory, "log-00000001.aur"), "wb") as f:
        f.write(image)
    try:
        segment = seg.Segment(directory, VOLUME_ID, PG, PAGE_SIZE, PAGES_PER_PG,
                              log_file_bytes=seg.LOG_FILE_BYTES_MIN)
    except errors.AuroraError:
        return
    try:
        assert segment.scl <= max(segment.max_lsn, segment.state["gc_lsn"])
        assert segment.sorted_lsns == sorted(segment.records)
        for lsn in segment.sorted_lsns:
            entry = segment._entry(lsn)
            segment._verified_record(entry).release()
        for page_no in list(segment.page_chains)[:8]:
            try:
                page, _ = segment.get_page(page_no, segment.scl)
                assert len(page) == PAGE_SIZE
            except (errors.AuroraError, ValueError):
                pass
        segment.list_records(0, 1000)
        segment.status()
    finally:
        segment.close()


def main(argv):
    if atheris is None:
        sys.exit("atheris is not installed: pip install aurora-storage[fuzz]")
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
