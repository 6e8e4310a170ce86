"""DESIGN.md invariant 7: the writer never drops a cached page whose latest change is above VDL."""
from aurora.writer import BufferPool


def test_pages_above_vdl_are_never_evicted_even_past_capacity():
    pool = BufferPool(capacity_pages=4)
    vdl = 100
    for page_no in range(10):               # every change is above VDL: nothing may go
        pool.put(page_no, b"p%d" % page_no, 200 + page_no, vdl)
    assert sorted(pool.pages) == list(range(10))


def test_eviction_takes_only_durable_pages_least_recently_used_first():
    pool = BufferPool(capacity_pages=3)
    pool.put(1, b"a", 10, vdl=50)            # durable
    pool.put(2, b"b", 60, vdl=50)            # above VDL
    pool.put(3, b"c", 20, vdl=50)            # durable
    pool.get(1)                              # 1 is now more recent than 3
    pool.put(4, b"d", 70, vdl=50)            # over capacity: 3 goes, never 2
    assert sorted(pool.pages) == [1, 2, 4]
    pool.put(5, b"e", 80, vdl=75)            # now 2 (LSN 60) and 4 (70) are durable too
    assert sorted(pool.pages) == [1, 4, 5]   # 2 was the least recently used durable page


def test_a_page_read_without_the_log_lock_never_replaces_a_newer_image():
    pool = BufferPool(capacity_pages=2)
    evictions = pool.evictions
    pool.put(7, b"new", 90, vdl=50)           # a committer wrote page 7 while the read flew
    pool.put_fetched(7, b"old", 40, 50, evictions)
    assert pool.pages[7] == [b"new", 90]
    pool.put_fetched(8, b"fetched", 30, 50, evictions)
    assert pool.pages[8] == [b"fetched", 30]


def test_a_read_in_flight_across_an_eviction_is_thrown_away():
    pool = BufferPool(capacity_pages=1)
    evictions = pool.evictions
    pool.put(7, b"v2", 60, vdl=50)            # written above VDL ...
    pool.put(8, b"x", 10, vdl=70)             # ... then durable and evicted for page 8
    assert 7 not in pool.pages and pool.evictions == evictions + 1
    pool.put_fetched(7, b"v1", 40, 70, evictions)   # the read started before: it may be stale
    assert 7 not in pool.pages
