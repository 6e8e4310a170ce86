/* The storage-node protocol's frame layout, for the C that reads or writes frames: the
 * writer's native ACK receiver (acks.c), the node's ACK encoder (aurora/_node.pxi) and its
 * native APPEND lane (aurora/_append_lane.pxi).
 *
 * aurora/protocol.py is the definition (FRAME_MAGIC_HEADER "<IHHIIQQQ": length, type,
 * flags, masked CRC32C of bytes 12.. and the body, request id, volume id, volume epoch,
 * membership epoch; ACK_BODY "<IIQQ": pg, reserved, SCL, last LSN of the batch); this header
 * repeats only the numbers C needs, in one place, and tests/test_acks.py checks each against
 * protocol.py.  docs/protocol.md describes the frames.
 */
#ifndef AURORA_FRAME_H
#define AURORA_FRAME_H

#define AUR_FRAME_HEADER_BYTES 40u
#define AUR_FRAME_CRC_START 12u /* the CRC covers the header from here on, then the body */
#define AUR_FRAME_LENGTH_MAX (64u * 1024u * 1024u + 4096u)
#define AUR_FRAME_TYPE_ACK 2u
#define AUR_FRAME_ACK_BODY_BYTES 24u
#define AUR_FRAME_ACK_BYTES (AUR_FRAME_HEADER_BYTES + AUR_FRAME_ACK_BODY_BYTES)

/* The node's native APPEND lane (aurora/_append_lane.pxi) reads the two APPEND requests:
 * APPEND carries a batch as its body; APPEND_RING ("<QQII": ring id, slot offset, slot
 * length, CRC32C of the slot) names a slot of a shared-memory ring (aurora/ring.py), whose
 * file begins with a RING_HEADER of this many bytes and has at least RING_BYTES_MIN. */
#define AUR_FRAME_TYPE_APPEND 1u
#define AUR_FRAME_TYPE_APPEND_RING 24u
#define AUR_FRAME_APPEND_RING_BODY_BYTES 24u
#define AUR_RING_HEADER_BYTES 64u

#endif
