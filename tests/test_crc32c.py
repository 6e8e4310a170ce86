"""CRC32C: known vectors, every path against the portable one and against a peer package.

The backend chosen for this process is checked in-process; every other backend this CPU has
is checked in a subprocess with AURORA_CRC32C=<name>, which forces it.  The whole suite also
runs once with AURORA_CRC32C=sw (see [tool.cibuildwheel] and the tests workflow).
"""
import mmap
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import aurora
from aurora._native import crc32c_sw

peer = pytest.importorskip("crc32c")

ROOT = Path(__file__).resolve().parent.parent
MAX_LENGTH = 4096
MAX_ALIGNMENT = 64
# Every backend name the library can report; which ones exist depends on the CPU.
BACKENDS = ["vpclmulqdq-avx2", "sse4.2+pclmul", "sse4.2", "armv8-crc", "sw"]
# Sizes that cross every internal boundary: the short and long three-stream blocks (768 and
# 24576 bytes), the fold's minimum and step (512, 256) and the hybrid block (49152).
BOUNDARY_LENGTHS = sorted({n + d for n in (256, 512, 768, 1536, 24576, 49152, 98304, 3 * 49152)
                           for d in (-17, -16, -1, 0, 1, 15, 16, 33)})


def pattern(length, seed=0):
    return np.random.default_rng(seed).integers(0, 256, length, dtype=np.uint8).tobytes()


# RFC 3720 (iSCSI) appendix B.4, and the customary check value.
VECTORS = [
    (bytes(32), 0x8A9136AA),
    (b"\xff" * 32, 0x62A8AB43),
    (bytes(range(32)), 0x46DD794E),
    (bytes(range(31, -1, -1)), 0x113FDB5C),
    (b"123456789", 0xE3069283),
    (b"", 0),
]


def test_backend_is_named():
    assert aurora.crc32c_backend in BACKENDS


@pytest.mark.parametrize("data, expected", VECTORS)
def test_known_vectors(data, expected):
    assert aurora.crc32c(data) == expected
    assert crc32c_sw(data) == expected


def check_every_length_and_alignment(crc, reference, peer_crc=None):
    """crc over data[a:a+n] for every n <= MAX_LENGTH and alignment a < MAX_ALIGNMENT."""
    data = memoryview(pattern(MAX_LENGTH + MAX_ALIGNMENT, seed=1))
    for alignment in range(MAX_ALIGNMENT):
        for length in range(MAX_LENGTH + 1):
            piece = data[alignment:alignment + length]
            expected = reference(piece)
            got = crc(piece)
            assert got == expected, (length, alignment)
            if peer_crc is not None:
                assert peer_crc(piece) == expected, (length, alignment)


def test_every_length_and_alignment_against_sw_and_peer():
    check_every_length_and_alignment(aurora.crc32c, crc32c_sw, peer.crc32c)


@pytest.mark.parametrize("length", BOUNDARY_LENGTHS)
def test_block_boundaries(length):
    data = memoryview(pattern(length + 8, seed=length))
    for alignment in (0, 1, 7, 8):
        piece = data[alignment:alignment + length]
        assert aurora.crc32c(piece) == crc32c_sw(piece) == peer.crc32c(piece)


def test_large_buffer_against_peer():
    data = pattern(3 * 1024 * 1024 + 12345, seed=2)
    assert aurora.crc32c(data) == crc32c_sw(data) == peer.crc32c(data)


@pytest.mark.parametrize("length", [0, 1, 7, 63, 64, 4096, 40000, 100003])
def test_continuation(length):
    data = pattern(length, seed=3)
    for split in sorted({0, 1, length // 3, length // 2, length - 1, length} - {-1}):
        first, second = data[:split], data[split:]
        assert aurora.crc32c(second, aurora.crc32c(first)) == aurora.crc32c(data)
        assert crc32c_sw(second, crc32c_sw(first)) == aurora.crc32c(data)


@given(st.binary(max_size=20000), st.integers(0, 2**32 - 1), st.data())
def test_random_buffers(data, value, draw):
    expected = peer.crc32c(data, value)
    assert aurora.crc32c(data, value) == expected
    assert crc32c_sw(data, value) == expected
    split = draw.draw(st.integers(0, len(data)))
    assert aurora.crc32c(data[split:], aurora.crc32c(data[:split], value)) == expected


def test_buffer_types(tmp_path):
    raw = pattern(100000, seed=4)
    expected = crc32c_sw(raw)
    assert aurora.crc32c(raw) == expected
    assert aurora.crc32c(bytearray(raw)) == expected
    assert aurora.crc32c(memoryview(raw)) == expected
    assert aurora.crc32c(np.frombuffer(raw, dtype=np.uint8)) == expected
    assert aurora.crc32c(np.frombuffer(raw, dtype=np.uint32)) == expected
    assert aurora.crc32c(np.frombuffer(raw, dtype=np.uint8).reshape(100, 1000)) == expected
    with mmap.mmap(-1, len(raw)) as anonymous:
        anonymous.write(raw)
        assert aurora.crc32c(anonymous) == expected
    path = tmp_path / "blob"
    path.write_bytes(raw)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        assert aurora.crc32c(mapped) == expected


@pytest.mark.parametrize("make", [
    lambda: memoryview(b"0123456789abcdef")[::2],
    lambda: np.arange(64, dtype=np.uint8)[::3],
    lambda: np.zeros((8, 8), dtype=np.uint8)[:, :4],
])
def test_non_contiguous_buffer_is_refused(make):
    with pytest.raises((BufferError, ValueError)):
        aurora.crc32c(make())


@pytest.mark.parametrize("bad", ["text", 12, None, [1, 2, 3]])
def test_non_buffer_is_refused(bad):
    with pytest.raises(TypeError):
        aurora.crc32c(bad)


@pytest.mark.parametrize("value", [-1, 2**32])
def test_value_out_of_range_is_refused(value):
    with pytest.raises(OverflowError):
        aurora.crc32c(b"x", value)


def test_threads_agree_on_large_buffers():
    # Above 32 KiB the GIL is released; concurrent callers must still get exact results.
    buffers = [pattern(300000 + i, seed=10 + i) for i in range(4)]
    expected = [crc32c_sw(b) for b in buffers]
    failures = []

    def work(index):
        for _ in range(20):
            if aurora.crc32c(buffers[index]) != expected[index]:
                failures.append(index)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures


# Run in a fresh interpreter with AURORA_CRC32C set: prints the backend, then checks every
# length and alignment and the block boundaries against the portable path.
FORCED_CHECK = f"""
import aurora
from aurora._native import crc32c_sw
sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
import test_crc32c as t
print(aurora.crc32c_backend, flush=True)
t.check_every_length_and_alignment(aurora.crc32c, crc32c_sw)
for n in t.BOUNDARY_LENGTHS:
    d = t.pattern(n + 1, seed=n)
    assert aurora.crc32c(d) == crc32c_sw(d) and aurora.crc32c(d[1:]) == crc32c_sw(d[1:]), n
print(hex(aurora.crc32c(t.pattern(1 << 20, seed=5))))
"""


def run_python(code, tmp_path, **env):
    """Runs `code` in a fresh interpreter that imports aurora from where this one does (not
    from a source tree in its working directory), with `env` added to the environment."""
    prelude = f"import sys; sys.path[:0] = {sys.path!r}\n"
    environ = {k: v for k, v in os.environ.items() if k != "AURORA_CRC32C"}
    environ.update(env)
    return subprocess.run([sys.executable, "-c", prelude + code], env=environ,
                          capture_output=True, text=True, cwd=tmp_path)


@pytest.mark.parametrize("backend", BACKENDS)
def test_forced_backend(backend, tmp_path):
    proc = run_python(FORCED_CHECK, tmp_path, AURORA_CRC32C=backend)
    chosen = proc.stdout.split("\n", 1)[0]
    if chosen and chosen != backend:
        assert backend != "sw", "AURORA_CRC32C=sw must always force the portable path"
        pytest.skip(f"{backend} is not available on this CPU (got {chosen})")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [backend, hex(crc32c_sw(pattern(1 << 20, seed=5)))]


def test_unknown_override_falls_back_to_the_automatic_choice(tmp_path):
    code = "import aurora; print(aurora.crc32c_backend, aurora.crc32c(b'123456789'))"
    forced = run_python(code, tmp_path, AURORA_CRC32C="no-such-backend")
    automatic = run_python(code, tmp_path)
    assert forced.returncode == automatic.returncode == 0, forced.stderr + automatic.stderr
    assert forced.stdout.split() == automatic.stdout.split()
    assert forced.stdout.split()[1] == str(0xE3069283)


def test_pasted_constants_match_their_derivation():
    tool = ROOT / "tools" / "crc32c_constants.py"
    if not tool.exists() or not (ROOT / "csrc").is_dir():
        pytest.skip("tools/ or csrc/ is not next to this test suite")
    proc = subprocess.run([sys.executable, str(tool), "--check"], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
