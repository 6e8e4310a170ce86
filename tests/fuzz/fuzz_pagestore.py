"""Fuzz target for the page store: any bytes as pages.aur (file header and slots), opened by
PageStore.

    python tests/fuzz/fuzz_pagestore.py tests/fuzz/corpus-pagestore tests/fuzz/seeds/pagestore -atheris_runs=100000

The input is the slots after a valid 64-byte file header (first byte bit 0 clear), or the whole
file (bit 0 set); pages are 512 bytes so small inputs cover several slots.  Opening must refuse
a bad header with a clear error; otherwise every listed version reads back CRC-checked at its
page size, damaged slots are set aside and never listed, and a new version written reads back.
"""
import os
import struct
import sys

try:
    import atheris
except ImportError:  # pytest runs the target without atheris
    atheris = None

if atheris is not None:
    with atheris.instrument_imports():
        from aurora import _native, errors
        from aurora.node import pagestore as ps
else:
    from aurora import _native, errors
    from aurora.node import pagestore as ps

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _fuzzutil import scratch_dir  # noqa: E402

PAGE_SIZE = 512
_root = []


def file_header():
    header = bytearray(ps.FILE_HEADER_SIZE)
    ps.FILE_HEADER.pack_into(header, 0, ps.FILE_MAGIC, ps.FILE_VERSION, 0, 0, PAGE_SIZE, 1, 0, 0, 0)
    struct.pack_into("<I", header, 8, _native.crc_mask(_native.crc32c(memoryview(header)[12:])))
    return bytes(header)


def test_one_input(data: bytes) -> None:
    data = bytes(data)
    if not _root:
        _root.append(scratch_dir("aur-fuzz-pages-"))
    path = os.path.join(_root[0], "pages.aur")
    image = data[1:] if data[:1] and data[0] & 1 else file_header() + data[1:]
    with open(path, "wb") as f:
        f.write(image)
    try:
        store = ps.PageStore(path, 1, 0, PAGE_SIZE)
    except (errors.AuroraError, ValueError):
        return
    try:
        corrupt = {slot for slot, _ in store.corrupt_slots}
        for page_no, versions in store.versions.items():
            # newest() and newest_lsn() rely on LSN order.  One LSN may sit in two slots (a
            # materialization redone after a crash writes the same version again; found by
            # atheris), and their slot order is free.
            lsns = [lsn for lsn, _ in versions]
            assert lsns == sorted(lsns)
            assert store.newest(page_no, lsns[-1])[0] == lsns[-1]
            for lsn, slot in versions:
                assert slot not in corrupt
                assert len(store.read(slot, page_no)) == PAGE_SIZE
        assert not corrupt & set(store.free_slots)
        slot = store.write(7, 1 << 40, bytes(range(256)) * 2)
        assert store.read(slot, 7) == bytes(range(256)) * 2
        store.scrub_step(8)
    finally:
        store.close()


def main(argv):
    if atheris is None:
        sys.exit("atheris is not installed: pip install aurora-storage[fuzz]")
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
