"""Fuzz target for the wire: decode_frame, FrameReader (fed in arbitrary pieces), decode_peers,
and the node's sans-IO core serving whatever frame decodes.

    python tests/fuzz/fuzz_frame.py tests/fuzz/corpus-frame tests/fuzz/seeds/frame -atheris_runs=1000000

The first input byte picks a mode: with bit 0 set, the rest is a frame *body* and the target
wraps it in a valid header (type from the second byte) with a correct length and CRC, so the
fuzzer reaches the core's per-type parsing instead of stopping at the CRC.  Invariant 9: bad
input gets a clear error (FormatError from the decoder, an ERROR reply from the core), never
any other exception.
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
        from aurora import errors, protocol as p
        from aurora.node.core import NodeCore
else:
    from aurora import errors, protocol as p
    from aurora.node.core import NodeCore

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _fuzzutil import scratch_dir  # noqa: E402

LOG_FILE_BYTES = 64 * 1024
_core = []


def core():
    """One node core for the whole fuzzing session, in a scratch directory."""
    if not _core:
        _core.append(NodeCore(scratch_dir("aur-fuzz-frame-"), "fuzz", "az1", log_file_bytes=LOG_FILE_BYTES,
                              self_address="unix:/nonexistent/fuzz.sock"))
    return _core[0]


def frames_from(data):
    if data[:1] and data[0] & 1 and len(data) >= 2:
        types = sorted(p.FRAME_NAMES)
        frame_type = types[data[1] % len(types)]
        fields = data[2:26].ljust(24, b"\0")
        request_id, volume_id, epoch = struct.unpack("<IQQ", fields[:20])
        return p.encode_frame(frame_type, data[26:], request_id, volume_id % 4, epoch % 4, 0)
    return data[1:]


def test_one_input(data: bytes) -> None:
    data = bytes(data)
    wire = frames_from(data)
    try:
        frame = p.decode_frame(wire)
    except errors.FormatError as exc:
        assert exc.offset is not None
        frame = None
    # The same bytes through the reassembler, in pieces cut where the input says.
    reader = p.FrameReader()
    cut = (data[0] if data else 0) % 7 + 1
    got = []
    try:
        for i in range(0, len(wire), cut):
            reader.feed(wire[i:i + cut])
            got.extend(reader.frames())
    except errors.FormatError:
        pass
    else:
        if frame is not None:
            assert len(got) == 1 and got[0].type == frame.type and bytes(got[0].body) == bytes(frame.body)
        assert reader.buffered_bytes <= p.FRAME_LENGTH_MAX
    try:
        p.decode_peers(wire, 0)
    except (errors.FormatError, p.BadRequestError):
        pass
    if frame is not None:
        replies = core().handle(frame)       # must never raise: every failure is an ERROR reply
        assert replies and all(isinstance(r.data, (bytes, bytearray)) for r in replies)
        for reply in replies:
            p.decode_frame(reply.data)       # and every reply is itself a well-formed frame


def main(argv):
    if atheris is None:
        sys.exit("atheris is not installed: pip install aurora-storage[fuzz]")
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
