"""The one exception hierarchy of aurora.

Native code returns status codes (``csrc/status.h``); ``aurora._native`` maps each code to
one class here through a single table.  Every message names what failed and, where there is
one, what to do about it.
"""


class AuroraError(Exception):
    """Base class of every error aurora raises on purpose."""


# ---- the quorum and the writer ------------------------------------------------------------

class QuorumLost(AuroraError):
    """A protection group has fewer than a write quorum (4 of 6) members reachable, so a write
    could not become durable in time; or fewer than a read quorum (3) for recovery.  The
    message names the PG and the missing members.  Nothing acknowledged is lost: the write
    goes on once members return."""


class WriterFenced(AuroraError):
    """A newer writer has recovered the volume (a higher volume epoch): this writer may no
    longer write.  Reopen the volume to become the writer again."""


class MetadataConflict(AuroraError):
    """Another writer wrote the volume's metadata at the same version first (two writers
    opening or recovering the volume at the same moment): at most one of them can have a write
    quorum take a version.  Opening retries on its own; a writer that meets it later has been
    fenced."""


class VolumeClosed(AuroraError):
    """The volume was closed."""


# ---- bytes that fail validation (from a wire, a file or a caller) -------------------------

class FormatError(AuroraError, ValueError):
    """Bytes do not follow docs/format.md.  ``offset`` is where the problem was found."""

    def __init__(self, message, offset=None):
        super().__init__(message)
        self.offset = offset


class TruncatedError(FormatError):
    """The input ends before a length field says it should."""


class ChecksumError(FormatError):
    """A CRC32C does not match the bytes it covers."""


class LengthError(FormatError):
    """A length or count field is outside its bounds."""


class UnknownTypeError(FormatError):
    """A record type this version does not know."""


class VersionError(FormatError):
    """A format version this build does not support."""


class MagicError(FormatError):
    """The bytes do not start with the expected magic number."""


class FlagsError(FormatError):
    """Unknown flag bits, or a reserved field that is not zero."""


class RangeError(FormatError):
    """An offset or page number points outside the object it indexes."""


class OrderError(FormatError):
    """LSNs are not strictly increasing where the format requires it."""


# ---- the log and the pages -------------------------------------------------------------

class ChainGapError(AuroraError):
    """A record's page backlink does not match the LSN of the page it is applied to: a record
    of that page's chain is missing."""


class CorruptionError(AuroraError):
    """Stored data failed validation somewhere other than a torn tail.  ``path`` and
    ``offset`` locate it."""

    def __init__(self, message, path=None, offset=None):
        super().__init__(message)
        self.path = path
        self.offset = offset


class BufferTooSmallError(AuroraError):
    """An output buffer given to native code is too small (a bug in the caller)."""


class NativeIOError(AuroraError, OSError):
    """A system call made by native code failed."""


class NativeMemoryError(AuroraError, MemoryError):
    """Native code could not allocate memory."""


# ---- the quorum tracker ------------------------------------------------------------------

class QuorumTimeoutError(AuroraError, TimeoutError):
    """VDL did not reach the awaited LSN (or LAL head-room did not open) before the timeout.
    The write may still become durable later; nothing is lost by waiting again."""
