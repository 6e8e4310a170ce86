"""An in-memory stand-in for aurora.writer.Volume with exactly the API the SQLite VFS uses.

FakeStore plays the storage fleet (pages survive a "reopen"); FakeVolume plays one writer:
per-thread MTRs, commit_nowait/wait_durable with an optional durability gate, fencing by a
newer writer of the same store, and stats["batch_bytes"] counted the way the writer ships
(delta payload + record headers + one batch header per MTR).
"""
import itertools
import threading

from aurora import _native, errors

_volume_ids = itertools.count(1000)


class FakeStore:
    def __init__(self):
        self.pages = {}          # page_no -> bytes, latest committed
        self.epoch = 0
        self.volume_id = next(_volume_ids)
        self.lock = threading.Lock()

    def open_volume(self, name="main", page_size=4096):
        return FakeVolume(self, name, page_size)


class FakeVolume:
    def __init__(self, store=None, name="main", page_size=4096):
        self.store = store if store is not None else FakeStore()
        with self.store.lock:
            self.store.epoch += 1          # writer recovery: fences every earlier writer
            self.epoch = self.store.epoch
        self.name = name
        self.page_size = page_size
        self.volume_id = self.store.volume_id
        self.stats = {"mtrs": 0, "records": 0, "batch_bytes": 0}
        self._mtrs = threading.local()
        self._cond = threading.Condition()
        self._next_lsn = 1
        self._durable_lsn = 0
        self._closed = False
        self._fenced = None
        self.hold_durability = False       # test hook: commits stay non-durable while set
        self.durability_error = None       # test hook: wait_durable raises this

    # ---- state checks ---------------------------------------------------------------------

    def _check_open(self):
        if self._closed:
            raise errors.VolumeClosed("volume %r is closed" % self.name)
        if self._fenced is None and self.store.epoch != self.epoch:
            self._fenced = ("writer of volume %r (epoch %d) was fenced by a newer writer: "
                            "volume epoch is now %d" % (self.name, self.epoch, self.store.epoch))
        if self._fenced:
            raise errors.WriterFenced(self._fenced)

    # ---- the Volume API -------------------------------------------------------------------

    def read(self, page_no):
        self._check_open()
        with self.store.lock:
            data = self.store.pages.get(page_no)
        if data is None:
            data = bytes(self.page_size)
        staged = getattr(self._mtrs, "changes", None)
        if staged and page_no in staged:
            page = bytearray(data)
            for offset, chunk in staged[page_no]:
                page[offset:offset + len(chunk)] = chunk
            data = bytes(page)
        return data

    def write(self, page_no, data, offset=0):
        self._check_open()
        data = bytes(data)
        if page_no < 0 or offset < 0 or offset + len(data) > self.page_size:
            raise ValueError("write of %d bytes at offset %d of page %d does not fit"
                             % (len(data), offset, page_no))
        changes = getattr(self._mtrs, "changes", None)
        if changes is None:
            changes = self._mtrs.changes = {}
        changes.setdefault(page_no, []).append((offset, data))

    def rollback(self):
        self._mtrs.changes = {}

    def commit_nowait(self):
        changes = getattr(self._mtrs, "changes", None) or {}
        self._mtrs.changes = {}
        self._check_open()
        with self.store.lock:
            records = []
            for page_no in sorted(changes):
                old = self.store.pages.get(page_no, bytes(self.page_size))
                new = bytearray(old)
                for offset, chunk in changes[page_no]:
                    new[offset:offset + len(chunk)] = chunk
                new = bytes(new)
                if new != old:
                    records.append((page_no, new, _native.encode_change(old, new)[1]))
            with self._cond:
                if not records:
                    return self._next_lsn - 1
                for page_no, new, _ in records:
                    self.store.pages[page_no] = new
                lsn = self._next_lsn + len(records) - 1
                self._next_lsn = lsn + 1
                if not self.hold_durability:
                    self._durable_lsn = lsn
                self.stats["mtrs"] += 1
                self.stats["records"] += len(records)
                self.stats["batch_bytes"] += _native.BATCH_HEADER_SIZE + sum(
                    _native.RECORD_HEADER_SIZE + len(payload) for _, _, payload in records)
                self._cond.notify_all()
            return lsn

    def wait_durable(self, lsn, timeout=None):
        with self._cond:
            while self._durable_lsn < lsn:
                if self.durability_error is not None:
                    raise self.durability_error
                self._check_open()
                if not self._cond.wait(timeout if timeout is not None else 30.0):
                    raise errors.QuorumLost("commit at LSN %d not durable in time" % lsn)

    def release_durability(self):
        """Test hook: everything handed to the log so far becomes durable."""
        with self._cond:
            self.hold_durability = False
            self._durable_lsn = self._next_lsn - 1
            self._cond.notify_all()

    @property
    def vdl(self):
        return self._durable_lsn

    def close(self):
        self._closed = True
        with self._cond:
            self._cond.notify_all()
