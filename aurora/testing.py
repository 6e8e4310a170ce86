"""Test and benchmark support: a redo workload generator with a reference model.

It produces records exactly as a writer would for one protection group (LSNs strictly
increasing, PG and page backlinks, CPL flags closing each mini-transaction) and remembers
every page's content at every LSN, so a node's GetPage@LSN can be checked at any read point.
"""
import random
import socket
import threading
import time

from aurora import _native


def wait_for(predicate, what, deadline_s=60.0, poll_s=0.05):
    """``predicate()``'s first true value, polled until ``deadline_s``; AssertionError naming
    ``what`` if it never comes (tests of real processes wait for background work this way)."""
    deadline = time.monotonic() + deadline_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for %s" % what)
        time.sleep(poll_s)


def run_in_threads(count, target):
    """Run ``target(t)`` for t in range(count), each on its own thread, all at once; the wall
    time in seconds until the last one returned (the commit benchmarks drive a volume so)."""
    pool = [threading.Thread(target=target, args=(t,)) for t in range(count)]
    started = time.perf_counter()
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return time.perf_counter() - started


def materialize_all(segment, max_pages=64):
    """Run an in-process Segment's materialization until no pass is under way: a pass's last
    page-store sync runs on a helper thread, and the pass ends at the first step after it."""
    while True:
        if not segment.materialize_step(max_pages):
            if not segment.materialize_pending():
                return
            time.sleep(0.0005)


def feed_segment(segment, workload, rows):
    """Append ``rows`` of ``workload`` to an in-process Segment as one batch, as a node's
    APPEND does, and sync; returns how many records were new."""
    batch = workload.batch(rows)
    _, recs = _native.decode_batch(batch)
    segment.check_batch(recs)
    added = segment.append(batch, recs)
    segment.sync()
    return added


class RedoWorkload:
    def __init__(self, volume_id=1, pg=0, pages_per_pg=64, page_size=4096, pages=8, seed=0,
                 volume_epoch=1, membership_epoch=0, lsn_start=0, prev_lsn_pg=0):
        self.volume_id = volume_id
        self.pg = pg
        self.pages_per_pg = pages_per_pg
        self.page_size = page_size
        self.page_numbers = [pg * pages_per_pg + i for i in range(min(pages, pages_per_pg))]
        self.random = random.Random(seed)
        self.volume_epoch = volume_epoch
        self.membership_epoch = membership_epoch
        self.lsn = lsn_start
        self.prev_lsn_pg = prev_lsn_pg
        self.prev_lsn_page = {}
        self.content = {}            # page_no -> current bytes
        self.history = {}            # page_no -> [(lsn, bytes)] in LSN order

    def _change(self, old):
        r = self.random
        choice = r.random()
        if choice < 0.03:
            return bytes(self.page_size)
        if choice < 0.08:
            return r.randbytes(self.page_size)
        new = bytearray(old)
        for _ in range(r.randint(1, 3)):
            length = r.randint(1, 200)
            offset = r.randrange(0, self.page_size - length)
            new[offset:offset + length] = r.randbytes(length)
        return bytes(new)

    def records(self, count, mtr_size_max=4):
        """``count`` new records (a list of dicts), the last one closing an MTR."""
        rows = []
        mtr_left = self.random.randint(1, mtr_size_max)
        for i in range(count):
            page_no = self.random.choice(self.page_numbers)
            old = self.content.get(page_no, bytes(self.page_size))
            new = self._change(old)
            while new == old:   # an unchanged page has no redo (an empty DELTA is not a record)
                new = self._change(old)
            rtype, payload = _native.encode_change(old, new)
            self.lsn += self.random.randint(1, 3)
            mtr_left -= 1
            last = i == count - 1 or mtr_left == 0
            if mtr_left == 0:
                mtr_left = self.random.randint(1, mtr_size_max)
            rows.append({"lsn": self.lsn, "prev_lsn_pg": self.prev_lsn_pg,
                         "prev_lsn_page": self.prev_lsn_page.get(page_no, 0), "page_no": page_no,
                         "type": rtype, "flags": _native.FLAG_CPL if last else 0,
                         "payload": bytes(payload)})
            self.prev_lsn_pg = self.lsn
            self.prev_lsn_page[page_no] = self.lsn
            self.content[page_no] = new
            self.history.setdefault(page_no, []).append((self.lsn, new))
        return rows

    def batch(self, rows, volume_epoch=None, membership_epoch=None):
        return _native.encode_batch(
            self.volume_id, self.pg,
            self.volume_epoch if volume_epoch is None else volume_epoch,
            self.membership_epoch if membership_epoch is None else membership_epoch,
            [r["lsn"] for r in rows], [r["prev_lsn_pg"] for r in rows],
            [r["prev_lsn_page"] for r in rows], [r["page_no"] for r in rows],
            [r["type"] for r in rows], [r["flags"] for r in rows], [r["payload"] for r in rows])

    def truncate(self, after, through):
        """The model of a writer recovery's truncation (after, through]: records above
        ``after`` never happened, and the next writer's records start above ``through``,
        chained to what is left."""
        self.prev_lsn_pg = 0
        for page_no in list(self.history):
            kept = [(lsn, data) for lsn, data in self.history[page_no] if lsn <= after]
            if kept:
                self.history[page_no] = kept
                self.content[page_no] = kept[-1][1]
                self.prev_lsn_page[page_no] = kept[-1][0]
                self.prev_lsn_pg = max(self.prev_lsn_pg, kept[-1][0])
            else:
                del self.history[page_no]
                self.content.pop(page_no, None)
                self.prev_lsn_page.pop(page_no, None)
        self.lsn = max(self.lsn, through)

    def page_at(self, page_no, lsn):
        """The reference model: the page after every record <= lsn."""
        content = bytes(self.page_size)
        for at, data in self.history.get(page_no, ()):
            if at > lsn:
                break
            content = data
        return content

    def page_lsn_at(self, page_no, lsn):
        page_lsn = 0
        for at, _ in self.history.get(page_no, ()):
            if at > lsn:
                break
            page_lsn = at
        return page_lsn


class HoldingProxy:
    """A TCP relay in front of one node, for tests of a member that stops in the middle of a
    reply.  Bytes pass both ways unchanged until ``hold()``; then the next chunk the node
    sends on any connection reaches the client only in part (its first half) and the rest,
    with everything after it on that connection, waits for ``release()``.  ``split`` is set
    once a chunk has been cut.  ``address`` is the relay's ``tcp:`` address."""

    def __init__(self, target_host, target_port):
        self.target = (target_host, target_port)
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.address = "tcp:127.0.0.1:%d" % self.listener.getsockname()[1]
        self.split = threading.Event()
        self._cond = threading.Condition()
        self._holding = False
        self._sockets = []
        threading.Thread(target=self._accept, name="holding-proxy", daemon=True).start()

    def hold(self):
        with self._cond:
            self._holding = True

    def release(self):
        with self._cond:
            self._holding = False
            self._cond.notify_all()

    def close(self):
        self.release()
        for sock in [self.listener] + self._sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
                upstream = socket.create_connection(self.target)
            except OSError:
                return
            self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, source, sink, from_node):
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                with self._cond:
                    if from_node and self._holding and len(data) > 1:
                        sink.sendall(data[:len(data) // 2])
                        data = data[len(data) // 2:]
                        self.split.set()
                    while from_node and self._holding:
                        self._cond.wait()
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
