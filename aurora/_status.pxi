# Status codes of csrc/status.h and the single table that maps them to aurora.errors.

cdef extern from "status.h" nogil:
    enum aur_status:
        AUR_OK
        AUR_E_TRUNCATED
        AUR_E_CRC
        AUR_E_LENGTH
        AUR_E_TYPE
        AUR_E_VERSION
        AUR_E_MAGIC
        AUR_E_FLAGS
        AUR_E_RANGE
        AUR_E_CHAIN_GAP
        AUR_E_ORDER
        AUR_E_NOMEM
        AUR_E_BUFFER
        AUR_E_IO
        AUR_E_CORRUPT
        AUR_E_ARGUMENT
        AUR_E_TIMEOUT

from aurora import errors as _errors

# code -> (exception class, what it means); the message given to raise_status is prefixed.
STATUS_TABLE = {
    AUR_E_TRUNCATED: (_errors.TruncatedError, "truncated"),
    AUR_E_CRC: (_errors.ChecksumError, "CRC32C mismatch"),
    AUR_E_LENGTH: (_errors.LengthError, "length out of bounds"),
    AUR_E_TYPE: (_errors.UnknownTypeError, "unknown record type"),
    AUR_E_VERSION: (_errors.VersionError, "unsupported format version"),
    AUR_E_MAGIC: (_errors.MagicError, "bad magic number"),
    AUR_E_FLAGS: (_errors.FlagsError, "unknown flags or non-zero reserved field"),
    AUR_E_RANGE: (_errors.RangeError, "offset or page number out of range"),
    AUR_E_CHAIN_GAP: (_errors.ChainGapError, "page chain gap"),
    AUR_E_ORDER: (_errors.OrderError, "LSNs out of order"),
    AUR_E_NOMEM: (_errors.NativeMemoryError, "out of memory"),
    AUR_E_BUFFER: (_errors.BufferTooSmallError, "output buffer too small"),
    AUR_E_IO: (_errors.NativeIOError, "I/O error"),
    AUR_E_CORRUPT: (_errors.CorruptionError, "corrupt data"),
    AUR_E_ARGUMENT: (ValueError, "invalid argument"),
    AUR_E_TIMEOUT: (_errors.QuorumTimeoutError, "timed out"),
}


cdef int raise_status(int code, str context, object offset=None) except -1:
    """Raise the exception mapped to ``code``; ``context`` says what was being done."""
    cls, meaning = STATUS_TABLE.get(code, (_errors.AuroraError, "unknown status %d" % code))
    message = "%s: %s" % (context, meaning)
    if offset is not None:
        message += " at offset %d" % offset
    if issubclass(cls, _errors.FormatError):
        raise cls(message, offset)
    if cls is _errors.NativeIOError:
        import os
        raise cls(message)
    raise cls(message)


def status_codes():
    """Every status code and the exception class it maps to (for tests and docs)."""
    return {code: cls for code, (cls, _) in STATUS_TABLE.items()}


cdef extern from "format.h" nogil:
    unsigned int AUR_FORMAT_VERSION
    unsigned int AUR_PAGE_SIZE_DEFAULT
    unsigned int AUR_PAGE_SIZE_MIN
    unsigned int AUR_PAGE_SIZE_MAX
    unsigned long long AUR_SEGMENT_SIZE_BYTES_DEFAULT
    unsigned int AUR_RECORD_HEADER_SIZE
    unsigned int AUR_BATCH_HEADER_SIZE

cdef extern from *:
    """
    #if defined(AUR_DEBUG)
    #define AUR_BUILD_DEBUG 1
    #else
    #define AUR_BUILD_DEBUG 0
    #endif
    #if defined(__SANITIZE_ADDRESS__)
    #define AUR_BUILD_ASAN 1
    #else
    #define AUR_BUILD_ASAN 0
    #endif
    """
    int AUR_BUILD_DEBUG
    int AUR_BUILD_ASAN

FORMAT_VERSION = AUR_FORMAT_VERSION
PAGE_SIZE_DEFAULT = AUR_PAGE_SIZE_DEFAULT
PAGE_SIZE_MIN = AUR_PAGE_SIZE_MIN
PAGE_SIZE_MAX = AUR_PAGE_SIZE_MAX
SEGMENT_SIZE_BYTES_DEFAULT = AUR_SEGMENT_SIZE_BYTES_DEFAULT
RECORD_HEADER_SIZE = AUR_RECORD_HEADER_SIZE
BATCH_HEADER_SIZE = AUR_BATCH_HEADER_SIZE


def build_info():
    """How this extension was built: optimisation and sanitizer knobs."""
    parts = ["debug" if AUR_BUILD_DEBUG else "release"]
    if AUR_BUILD_ASAN:
        parts.append("asan+ubsan")
    return ", ".join(parts)
