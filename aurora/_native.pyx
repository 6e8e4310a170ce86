# aurora._native: the one extension module.  Each csrc/ header has one included unit here,
# which declares the header (``cdef extern from "x.h" nogil``) and wraps it with typed,
# GIL-releasing functions.  Errors go through raise_status (the single status table).

include "_status.pxi"
include "_crc32c.pxi"
include "_record.pxi"
include "_page.pxi"
include "_node.pxi"
include "_append_lane.pxi"
include "_quorum.pxi"
include "_acks.pxi"
include "_mtr.pxi"
include "_vfs.pxi"
include "_sendv.pxi"
include "_boxcar.pxi"
