# Sending one round of frames to many sockets with one GIL release (csrc/sendv.h).

cdef extern from "sendv.h" nogil:
    unsigned int AUR_SEND_SOCKETS_MAX
    uint32_t aur_send_all(uint32_t count, const int *fds, const uint8_t *const *bufs,
                          const size_t *lens, int *errors)

SEND_SOCKETS_MAX = AUR_SEND_SOCKETS_MAX
if AUR_SEND_SOCKETS_MAX > 256:   # the arrays in send_all below
    raise ImportError("AUR_SEND_SOCKETS_MAX is %d; send_all holds 256" % AUR_SEND_SOCKETS_MAX)


def send_all(list fds, list payloads):
    """Write every byte of ``payloads[i]`` (bytes-like) to the blocking socket ``fds[i]``,
    releasing the GIL once for the whole list; returns a list of errno values, 0 where the
    socket took everything.  Every socket is tried whatever happened to the others.  The
    caller keeps the sockets open until this returns."""
    cdef Py_ssize_t count = len(fds)
    if count != len(payloads):
        raise ValueError("send_all: %d sockets and %d payloads" % (count, len(payloads)))
    if count > AUR_SEND_SOCKETS_MAX:
        raise ValueError("send_all: %d sockets; at most %d" % (count, AUR_SEND_SOCKETS_MAX))
    cdef int c_fds[256]
    cdef const uint8_t *c_bufs[256]
    cdef size_t c_lens[256]
    cdef int c_errors[256]
    cdef Py_buffer views[256]
    cdef Py_ssize_t held = 0
    cdef Py_ssize_t i
    try:
        for i in range(count):
            c_fds[i] = fds[i]
            if c_fds[i] < 0:
                raise ValueError("send_all: socket %d is closed" % i)
            PyObject_GetBuffer(payloads[i], &views[i], PyBUF_SIMPLE | PyBUF_ANY_CONTIGUOUS)
            held += 1
            c_bufs[i] = <const uint8_t *>views[i].buf
            c_lens[i] = <size_t>views[i].len
        with nogil:
            aur_send_all(<uint32_t>count, c_fds, c_bufs, c_lens, c_errors)
        return [c_errors[i] for i in range(count)]
    finally:
        for i in range(held):
            PyBuffer_Release(&views[i])
