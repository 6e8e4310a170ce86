"""Regenerate the small seed corpora of the fuzz targets (each seed < 4 KiB):

    python tests/fuzz/make_seeds.py
"""
import os
import struct
import sys
import tempfile
from pathlib import Path

from aurora import _native, protocol as p
from aurora.node import pagestore as ps
from aurora.testing import RedoWorkload

SEEDS = Path(__file__).resolve().parent / "seeds"
SEED_BYTES_MAX = 4096


def write(target, name, data):
    assert len(data) < SEED_BYTES_MAX, (target, name, len(data))
    (SEEDS / target).mkdir(parents=True, exist_ok=True)
    (SEEDS / target / name).write_bytes(data)


def records(count, seed):
    workload = RedoWorkload(page_size=512, pages_per_pg=64, pages=4, seed=seed)
    batch = workload.batch(workload.records(count))
    return batch, batch[_native.BATCH_HEADER_SIZE:]


def frame_seeds():
    batch, _ = records(3, 1)
    raw = b"\x00"
    write("frame", "status.bin", raw + p.encode_frame(p.FRAME_STATUS, b"", 1, 1, 1))
    write("frame", "get-page.bin", raw + p.encode_frame(p.FRAME_GET_PAGE, p.GET_PAGE_BODY.pack(0, 3, 9), 2, 1, 1))
    write("frame", "append.bin", raw + p.encode_frame(p.FRAME_APPEND, batch, 3, 1, 1))
    write("frame", "two-frames.bin", raw + p.encode_frame(p.FRAME_STATUS) + p.encode_frame(p.FRAME_STATUS))
    types = sorted(p.FRAME_NAMES)
    header = bytes(24)

    def body_mode(frame_type, body):
        return b"\x01" + bytes([types.index(frame_type)]) + struct.pack("<IQQ", 1, 1, 1) + header[20:] + body

    write("frame", "body-create-segment.bin", body_mode(
        p.FRAME_CREATE_SEGMENT, p.CREATE_SEGMENT_BODY.pack(0, 4096, 64) + p.encode_peers(["unix:/x.sock"])))
    write("frame", "body-append.bin", body_mode(p.FRAME_APPEND, batch))
    write("frame", "body-set-epoch.bin", body_mode(p.FRAME_SET_EPOCH, p.SET_EPOCH_BODY.pack(2, 0)))
    write("frame", "body-meta-put.bin", body_mode(p.FRAME_META_PUT, p.META_PUT_BODY.pack(1, 3) + b"keyvalue"))
    write("frame", "body-list-records.bin", body_mode(p.FRAME_LIST_RECORDS, struct.pack("<IIQ", 0, 16, 0)))


def segment_seeds():
    for n, count in ((1, 1), (2, 4), (3, 8)):
        _, body = records(count, n)
        write("segment", "records-%d.bin" % count, b"\x00" + body)
    _, body = records(6, 4)
    write("segment", "torn-tail.bin", b"\x00" + body[:-17])
    damaged = bytearray(body)
    damaged[len(body) // 2] ^= 0x40
    write("segment", "damage-in-middle.bin", b"\x00" + bytes(damaged))
    write("segment", "zero-gap.bin", b"\x00" + body[:100] + bytes(200) + body[100:])


def pagestore_seeds():
    directory = tempfile.mkdtemp(prefix="aur-seeds-")
    path = os.path.join(directory, "pages.aur")
    store = ps.PageStore(path, 1, 0, 512)
    store.write(3, 10, bytes(range(256)) * 2)
    store.write(3, 12, bytes(512))
    store.write(9, 11, b"\xAB" * 512)
    store.sync()
    image = bytes(store.mm[:ps.FILE_HEADER_SIZE + 4 * store.slot_size])
    store.close()
    write("pagestore", "three-versions.bin", b"\x00" + image[ps.FILE_HEADER_SIZE:])
    write("pagestore", "whole-file.bin", b"\x01" + image)
    torn = bytearray(image[ps.FILE_HEADER_SIZE:])
    torn[40] ^= 1
    write("pagestore", "bad-slot-crc.bin", b"\x00" + bytes(torn))
    write("pagestore", "short-slot.bin", b"\x00" + image[ps.FILE_HEADER_SIZE:ps.FILE_HEADER_SIZE + 100])
    # The same version in two slots, as a materialization redone after a crash leaves it.
    slots = bytearray(image[ps.FILE_HEADER_SIZE:])
    size = store.slot_size
    slot = next(s for s, (page_no, lsn) in enumerate(
        ps.SLOT_HEADER.unpack_from(slots, s * size)[2:5:2] for s in range(4)) if (page_no, lsn) == (9, 11))
    free = next(s for s in range(4) if ps.SLOT_HEADER.unpack_from(slots, s * size)[1] == 0)
    slots[free * size:(free + 1) * size] = slots[slot * size:(slot + 1) * size]
    write("pagestore", "same-lsn-twice.bin", b"\x00" + bytes(slots))


if __name__ == "__main__":
    frame_seeds()
    segment_seeds()
    pagestore_seeds()
    sys.exit(0)
