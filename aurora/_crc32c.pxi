# CRC32C (csrc/crc32c.h): aurora.crc32c over any buffer, GIL released above a threshold.

from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE, PyBUF_ANY_CONTIGUOUS
from libc.stdint cimport uint8_t, uint32_t, uint64_t

cdef extern from "crc32c.h" nogil:
    const char *aur_crc32c_init()
    const char *aur_crc32c_backend()
    uint32_t aur_crc32c(uint32_t crc, const void *data, size_t len)
    uint32_t aur_crc32c_sw(uint32_t crc, const void *data, size_t len)

# Below this many bytes releasing and retaking the GIL costs more than the CRC itself.
cdef enum:
    CRC32C_RELEASE_GIL_BYTES = 32768

crc32c_backend = aur_crc32c_init().decode()


cdef uint32_t _crc32c_unlocked(uint32_t value, const void *data, size_t length) noexcept:
    """aur_crc32c, with the GIL released for inputs long enough to pay for it (other threads,
    such as a node's gossip, run meanwhile).  Called with the GIL held."""
    cdef uint32_t result
    if length >= CRC32C_RELEASE_GIL_BYTES:
        with nogil:
            result = aur_crc32c(value, data, length)
        return result
    return aur_crc32c(value, data, length)


def crc32c(data, unsigned int value=0):
    """CRC32C of ``data`` (any contiguous buffer), continuing from ``value``."""
    cdef Py_buffer view
    cdef uint32_t result
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE | PyBUF_ANY_CONTIGUOUS)
    try:
        result = _crc32c_unlocked(value, view.buf, <size_t>view.len)
    finally:
        PyBuffer_Release(&view)
    return result


def crc32c_sw(data, unsigned int value=0):
    """CRC32C on the portable path, whatever the backend (for cross-checks)."""
    cdef Py_buffer view
    cdef uint32_t result
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE | PyBUF_ANY_CONTIGUOUS)
    try:
        with nogil:
            result = aur_crc32c_sw(value, view.buf, <size_t>view.len)
    finally:
        PyBuffer_Release(&view)
    return result
