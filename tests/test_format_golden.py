"""Golden vectors: read out of docs/format.md and checked byte for byte against the native
encoder and the reference, and decoded back."""
import re
from pathlib import Path

import pytest

from aurora import _native
from aurora.reference import format as reference

FORMAT_MD = Path(__file__).resolve().parent.parent / "docs" / "format.md"
COLUMNS = ("lsn", "prev_lsn_pg", "prev_lsn_page", "page_no", "type", "flags")
BATCH_FIELDS = ("volume_id", "pg", "volume_epoch", "membership_epoch")


def golden_vectors():
    text = FORMAT_MD.read_text()
    vectors = []
    for block in re.findall(r"^```golden\n(.*?)^```", text, re.S | re.M):
        vector = {"payloads": []}
        lines = block.splitlines()
        split = lines.index("bytes:")
        for line in lines[:split]:
            key, _, value = line.partition(": ")
            if key == "payload":
                vector["payloads"].append(b"" if value == "-" else bytes.fromhex(value))
            elif key in ("name", "function"):
                vector[key] = value
            else:
                vector[key] = [int(v) for v in value.split()]
        vector["bytes"] = bytes.fromhex("".join(lines[split + 1:]))
        vectors.append(vector)
    return vectors


VECTORS = golden_vectors()


def test_the_document_has_the_required_vectors():
    names = {v["name"] for v in VECTORS}
    assert len(VECTORS) >= 6
    assert {"delta-record", "image-record-512", "zero-record", "noop-cpl-record",
            "size-record", "two-record-batch"} <= names


def call(module, vector):
    columns = [vector[name] for name in COLUMNS]
    if vector["function"] == "encode_batch":
        ids = [vector[name][0] for name in BATCH_FIELDS]
        return module.encode_batch(*ids, *columns, vector["payloads"])
    return module.encode_records(*columns, vector["payloads"])


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
@pytest.mark.parametrize("module", [_native, reference], ids=["native", "reference"])
def test_golden_bytes(module, vector):
    assert call(module, vector).hex() == vector["bytes"].hex()


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
@pytest.mark.parametrize("module", [_native, reference], ids=["native", "reference"])
def test_golden_bytes_decode_back(module, vector):
    data = vector["bytes"]
    if vector["function"] == "encode_batch":
        header, records = module.decode_batch(data)
        assert [header.volume_id, header.pg, header.volume_epoch, header.membership_epoch] == \
            [vector[name][0] for name in BATCH_FIELDS]
    else:
        records, end, reason = module.scan_log(data)
        assert (end, reason) == (len(data), "end")
    for name in COLUMNS:
        assert records[name].tolist() == vector[name], name
    for record, payload in zip(records, vector["payloads"]):
        start = int(record["offset"]) + reference.RECORD_HEADER_SIZE
        assert data[start:start + int(record["payload_length"])] == payload
