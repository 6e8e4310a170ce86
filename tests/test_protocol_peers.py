"""Peer lists and the fixed bodies of the gossip, recovery and metadata frames."""
import pytest

from aurora import errors, protocol as p


def test_peer_list_round_trip_and_limits():
    peers = ["unix:/tmp/a.sock", "tcp:10.0.0.1:7000", "tcp:[::1]:7001", "unix:/tmp/é.sock"]
    body = b"\x01\x02" + p.encode_peers(peers) + b"tail"
    assert p.decode_peers(body, 2) == (peers, len(body) - 4)
    assert p.decode_peers(p.encode_peers([]), 0) == ([], 4)
    with pytest.raises(ValueError):
        p.encode_peers(["unix:/x"] * (p.PEERS_MAX + 1))
    with pytest.raises(ValueError):
        p.encode_peers([""])


@pytest.mark.parametrize("body, error", [
    (b"", errors.LengthError),
    (p.PEER_COUNT.pack(1), errors.LengthError),
    (p.PEER_COUNT.pack(1) + p.PEER_LENGTH.pack(10) + b"unix:", errors.LengthError),
    (p.PEER_COUNT.pack(p.PEERS_MAX + 1), p.BadRequestError),
    (p.PEER_COUNT.pack(1) + p.PEER_LENGTH.pack(0), p.BadRequestError),
    (p.PEER_COUNT.pack(1) + p.PEER_LENGTH.pack(p.PEER_ADDRESS_BYTES_MAX + 1), p.BadRequestError),
    (p.PEER_COUNT.pack(1) + p.PEER_LENGTH.pack(6) + b"unix:\xff", p.BadRequestError),
    (p.PEER_COUNT.pack(1) + p.PEER_LENGTH.pack(8) + b"ftp:host", p.BadRequestError),
])
def test_bad_peer_lists_raise_clean_errors(body, error):
    with pytest.raises(error):
        p.decode_peers(body, 0)


def test_frame_numbers_and_body_sizes_are_fixed():
    assert (p.FRAME_LIST_RECORDS, p.FRAME_RECORD_LIST, p.FRAME_VOLUME_HINT, p.FRAME_META_GET,
            p.FRAME_META, p.FRAME_META_PUT, p.FRAME_SET_MEMBERS) == (16, 17, 18, 19, 20, 21, 22)
    assert p.LIST_RECORDS_BODY.size == 16
    assert p.RECORD_LIST_BODY.size == 32
    assert p.RECORD_LIST_ENTRY.pack(1, 2, 3) == (b"\x01" + bytes(7) + b"\x02" + bytes(7) + b"\x03" + bytes(7))
    assert p.META_PUT_BODY.size == 10
    for type in range(16, 23):
        frame = p.decode_frame(p.encode_frame(type, b"x", 5, 1, 2, 3))
        assert (frame.type, frame.request_id, frame.volume_epoch) == (type, 5, 2)
