/* aurora's SQLite VFS.  Contracts in vfs.h, design in docs/sqlite.md. */
#if defined(__APPLE__)
#define _DARWIN_C_SOURCE 1
#else
#define _POSIX_C_SOURCE 200809L
#endif

#include "vfs.h"

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sqlite3_api.h"
#include "status.h"

_Static_assert(AUR_VFS_SQLITE_HEADER_SIZE == 100, "SQLite's database header is 100 bytes");
_Static_assert(AUR_VFS_STAGED_PAGES_MAX <= (1u << 30), "staging slots are counted in uint32_t");

/* ---- the SQLite library, found at run time ------------------------------------------- */

static struct {
    int loaded;
    aur_sqlite3_vfs_register_fn vfs_register;
    aur_sqlite3_vfs_unregister_fn vfs_unregister;
    aur_sqlite3_vfs_find_fn vfs_find;
    aur_sqlite3_mprintf_fn mprintf;
    aur_sqlite3_free_fn free;
    aur_sqlite3_libversion_fn libversion;
} aur_sqlite;

static void *aur_vfs_symbol(void *handle, const char *name, const char *where, char *error,
                            size_t error_cap, int *missing)
{
    void *symbol;
    dlerror();
    symbol = dlsym(handle, name);
    if (symbol == NULL && !*missing) {
        *missing = 1;
        snprintf(error, error_cap, "symbol %s not found in %s", name, where);
    }
    return symbol;
}

typedef struct aur_vfs_library {
    void *symbols[6];
} aur_vfs_library;

static int aur_vfs_library_resolve(const char *path, aur_vfs_library *library, char *error,
                                   size_t error_cap)
{
    static const char *const names[6] = {
        "sqlite3_vfs_register", "sqlite3_vfs_unregister", "sqlite3_vfs_find",
        "sqlite3_mprintf", "sqlite3_free", "sqlite3_libversion",
    };
    void *handle;
    const char *where = path != NULL ? path : "the process";
    int missing = 0;
    size_t i;

    if (error_cap > 0) {
        error[0] = '\0';
    }
    /* RTLD_NOLOAD: only ever bind to the library the process already has; loading a second
     * copy of SQLite would give it a second, separate list of VFSes and locks.  dlsym on the
     * handle searches its dependencies too, so a libsqlite3 that _sqlite3 links is found. */
    handle = path != NULL ? dlopen(path, RTLD_NOLOAD | RTLD_LAZY) : dlopen(NULL, RTLD_LAZY);
    if (handle == NULL) {
        const char *why = dlerror();
        snprintf(error, error_cap, "cannot reach %s: %s", where,
                 why != NULL ? why : "not loaded in this process");
        return AUR_E_IO;
    }
    for (i = 0; i < 6; i++) {
        library->symbols[i] = aur_vfs_symbol(handle, names[i], where, error, error_cap, &missing);
    }
    /* The handle stays open: with RTLD_NOLOAD it only counted one more reference. */
    return missing ? AUR_E_IO : AUR_OK;
}

int aur_vfs_library_probe(const char *path, char *error, size_t error_cap)
{
    aur_vfs_library library;
    return aur_vfs_library_resolve(path, &library, error, error_cap);
}

int aur_vfs_library_load(const char *path, char *error, size_t error_cap)
{
    aur_vfs_library library;
    int rc;
    if (aur_sqlite.loaded) {
        if (error_cap > 0) {
            error[0] = '\0';
        }
        return AUR_OK;
    }
    rc = aur_vfs_library_resolve(path, &library, error, error_cap);
    if (rc != AUR_OK) {
        return rc;
    }
    /* POSIX guarantees function pointers convert through dlsym's void *. */
    aur_sqlite.vfs_register = (aur_sqlite3_vfs_register_fn)library.symbols[0];
    aur_sqlite.vfs_unregister = (aur_sqlite3_vfs_unregister_fn)library.symbols[1];
    aur_sqlite.vfs_find = (aur_sqlite3_vfs_find_fn)library.symbols[2];
    aur_sqlite.mprintf = (aur_sqlite3_mprintf_fn)library.symbols[3];
    aur_sqlite.free = (aur_sqlite3_free_fn)library.symbols[4];
    aur_sqlite.libversion = (aur_sqlite3_libversion_fn)library.symbols[5];
    aur_sqlite.loaded = 1;
    return AUR_OK;
}

const char *aur_vfs_library_version(void)
{
    return aur_sqlite.loaded ? aur_sqlite.libversion() : NULL;
}

/* ---- the header of page 1 -------------------------------------------------------------- */

static uint32_t aur_vfs_be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

int aur_vfs_header_database_bytes(const uint8_t *page1, size_t length, uint64_t *bytes)
{
    static const char magic[16] = "SQLite format 3";   /* with its NUL: 16 bytes */
    uint32_t page_size, page_count;
    size_t i;
    int zero = 1;

    if (page1 == NULL || length < AUR_VFS_SQLITE_HEADER_SIZE) {
        return AUR_E_LENGTH;
    }
    for (i = 0; i < length; i++) {
        if (page1[i] != 0) {
            zero = 0;
            break;
        }
    }
    if (zero) {
        *bytes = 0;
        return AUR_OK;
    }
    page_size = ((uint32_t)page1[16] << 8) | page1[17];
    if (page_size == 1) {
        page_size = 65536;
    }
    if (memcmp(page1, magic, sizeof(magic)) != 0 || page_size < 512 || page_size > 65536
        || (page_size & (page_size - 1)) != 0) {
        *bytes = length;   /* not SQLite's: let SQLite read the header and say so */
        return AUR_OK;
    }
    page_count = aur_vfs_be32(page1 + 28);
    if (page_count == 0 || aur_vfs_be32(page1 + 92) != aur_vfs_be32(page1 + 24)) {
        *bytes = page_size;   /* a legacy header without a valid count: see vfs.h */
        return AUR_OK;
    }
    *bytes = (uint64_t)page_count * page_size;
    return AUR_OK;
}

/* ---- staged pages: an open-addressing map page number -> page buffer ------------------- */

typedef struct aur_vfs_staged {
    uint64_t key;      /* page number + 1; 0 marks an empty slot */
    uint8_t *data;
} aur_vfs_staged;

typedef struct aur_vfs_staging {
    aur_vfs_staged *slots;
    uint32_t capacity;   /* 0 or a power of two */
    uint32_t count;
} aur_vfs_staging;

static uint64_t aur_vfs_mix(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    return x;
}

static aur_vfs_staged *aur_vfs_staging_slot(const aur_vfs_staging *s, uint64_t page_no)
{
    uint32_t mask, i, probe;
    if (s->capacity == 0) {
        return NULL;
    }
    mask = s->capacity - 1;
    i = (uint32_t)(aur_vfs_mix(page_no) & mask);
    for (probe = 0; probe < s->capacity; probe++) {
        aur_vfs_staged *slot = &s->slots[i];
        if (slot->key == 0 || slot->key == page_no + 1) {
            return slot;
        }
        i = (i + 1) & mask;
    }
    return NULL;   /* unreachable: the map is never more than half full */
}

static uint8_t *aur_vfs_staging_get(const aur_vfs_staging *s, uint64_t page_no)
{
    aur_vfs_staged *slot = aur_vfs_staging_slot(s, page_no);
    return slot != NULL && slot->key != 0 ? slot->data : NULL;
}

static int aur_vfs_staging_resize(aur_vfs_staging *s, uint32_t capacity)
{
    aur_vfs_staging grown;
    uint32_t i;
    grown.slots = calloc(capacity, sizeof(aur_vfs_staged));
    if (grown.slots == NULL) {
        return AUR_E_NOMEM;
    }
    grown.capacity = capacity;
    grown.count = 0;
    for (i = 0; i < s->capacity; i++) {
        if (s->slots[i].key != 0) {
            aur_vfs_staged *slot = aur_vfs_staging_slot(&grown, s->slots[i].key - 1);
            *slot = s->slots[i];
            grown.count++;
        }
    }
    free(s->slots);
    *s = grown;
    return AUR_OK;
}

/* Insert data (owned by the map from now on) for a page that is not staged yet. */
static int aur_vfs_staging_put(aur_vfs_staging *s, uint64_t page_no, uint8_t *data)
{
    aur_vfs_staged *slot;
    if (s->count >= AUR_VFS_STAGED_PAGES_MAX) {
        return AUR_E_RANGE;
    }
    if ((s->count + 1) * 2 > s->capacity) {
        int rc = aur_vfs_staging_resize(s, s->capacity ? s->capacity * 2 : 64);
        if (rc != AUR_OK) {
            return rc;
        }
    }
    slot = aur_vfs_staging_slot(s, page_no);
    slot->key = page_no + 1;
    slot->data = data;
    s->count++;
    return AUR_OK;
}

static void aur_vfs_staging_clear(aur_vfs_staging *s)
{
    uint32_t i;
    for (i = 0; i < s->capacity; i++) {
        free(s->slots[i].data);
    }
    free(s->slots);
    s->slots = NULL;
    s->capacity = 0;
    s->count = 0;
}

/* Drop every staged page at or above first_page. */
static int aur_vfs_staging_drop_from(aur_vfs_staging *s, uint64_t first_page)
{
    uint32_t i;
    int dropped = 0;
    for (i = 0; i < s->capacity; i++) {
        if (s->slots[i].key != 0 && s->slots[i].key - 1 >= first_page) {
            free(s->slots[i].data);
            s->slots[i].key = 0;
            s->slots[i].data = NULL;
            s->count--;
            dropped = 1;
        }
    }
    /* Deleting from linear probing breaks chains: rehash what is left. */
    return dropped && s->capacity ? aur_vfs_staging_resize(s, s->capacity) : AUR_OK;
}

static int aur_vfs_compare_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* ---- volumes and files ------------------------------------------------------------------ */

typedef struct aur_vfs_file aur_vfs_file;

struct aur_vfs_volume {
    aur_sqlite3_vfs vfs;          /* registered with SQLite; pAppData points back here */
    aur_sqlite3_vfs *base;        /* the default VFS: every file that is not ours */
    aur_vfs_volume_ops ops;
    void *ctx;
    uint32_t page_size;
    char vfs_name[AUR_VFS_NAME_MAX + 1];
    char db_name[AUR_VFS_NAME_MAX + 1];
    size_t db_name_length;

    pthread_mutex_t mutex;        /* guards everything below; never held across a callback */
    pthread_cond_t changed;       /* broadcast whenever a lock is released */
    uint32_t shared;              /* files counted as SHARED readers */
    aur_vfs_file *reserved_owner;
    aur_vfs_file *pending_owner;
    aur_vfs_file *exclusive_owner;
    uint32_t open_files;
    int registered;
    int released;
    int poisoned;
    int64_t file_bytes;           /* committed database size; -1 until known */
    uint64_t commits;
};

struct aur_vfs_file {
    aur_sqlite3_file base;
    aur_vfs_volume *volume;
    int lock;                     /* the level SQLite believes it holds */
    int counted;                  /* counted in volume->shared */
    int64_t pending_bytes;        /* size seen by this file's open write transaction; -1: none */
    aur_vfs_staging staged;
    uint8_t *scratch;             /* one page */
};

static aur_vfs_volume *aur_vfs_of(aur_sqlite3_vfs *vfs)
{
    return (aur_vfs_volume *)vfs->pAppData;
}

static int aur_vfs_poisoned(aur_vfs_volume *v)
{
    int poisoned;
    pthread_mutex_lock(&v->mutex);
    poisoned = v->poisoned;
    pthread_mutex_unlock(&v->mutex);
    return poisoned;
}

static void aur_vfs_volume_free_if_done(aur_vfs_volume *v)
{
    int done;
    pthread_mutex_lock(&v->mutex);
    done = v->released && v->open_files == 0;
    pthread_mutex_unlock(&v->mutex);
    if (!done) {
        return;
    }
    if (v->ops.destroy != NULL) {
        v->ops.destroy(v->ctx);
    }
    pthread_cond_destroy(&v->changed);
    pthread_mutex_destroy(&v->mutex);
    free(v);
}

/* Release whatever this file holds in the lock table; the mutex is held. */
static void aur_vfs_release_write_locked(aur_vfs_volume *v, aur_vfs_file *f)
{
    if (v->exclusive_owner == f) {
        v->exclusive_owner = NULL;
    }
    if (v->pending_owner == f) {
        v->pending_owner = NULL;
    }
    if (v->reserved_owner == f) {
        v->reserved_owner = NULL;
    }
}

static void aur_vfs_release_all_locked(aur_vfs_volume *v, aur_vfs_file *f)
{
    aur_vfs_release_write_locked(v, f);
    if (f->counted) {
        v->shared--;
        f->counted = 0;
    }
}

static int64_t aur_vfs_size(aur_vfs_file *f)
{
    int64_t bytes;
    if (f->pending_bytes >= 0) {
        return f->pending_bytes;
    }
    pthread_mutex_lock(&f->volume->mutex);
    bytes = f->volume->file_bytes;
    pthread_mutex_unlock(&f->volume->mutex);
    return bytes < 0 ? 0 : bytes;
}

static int aur_vfs_file_close(aur_sqlite3_file *file)
{
    aur_vfs_file *f = (aur_vfs_file *)file;
    aur_vfs_volume *v = f->volume;
    /* Staged writes without a sync are abandoned: SQLite unlocks (and so commits, see
     * aur_vfs_file_unlock) before it closes, so this is only reached after an error. */
    aur_vfs_staging_clear(&f->staged);
    free(f->scratch);
    f->scratch = NULL;
    pthread_mutex_lock(&v->mutex);
    aur_vfs_release_all_locked(v, f);
    v->open_files--;
    pthread_cond_broadcast(&v->changed);
    pthread_mutex_unlock(&v->mutex);
    aur_vfs_volume_free_if_done(v);
    return SQLITE_OK;
}

static int aur_vfs_file_read(aur_sqlite3_file *file, void *buffer, int amount, aur_sqlite3_int64 offset)
{
    aur_vfs_file *f = (aur_vfs_file *)file;
    aur_vfs_volume *v = f->volume;
    uint8_t *out = buffer;
    uint64_t position, end, size;
    uint32_t page_size = v->page_size;
    int short_read = 0;

    if (amount < 0 || offset < 0) {
        return SQLITE_IOERR_READ;
    }
    size = (uint64_t)aur_vfs_size(f);
    position = (uint64_t)offset;
    end = position + (uint64_t)amount;
    if (end > size) {
        /* SQLite expects the missing tail zero-filled and SQLITE_IOERR_SHORT_READ. */
        uint64_t readable = position < size ? size - position : 0;
        memset(out + readable, 0, (size_t)(end - position - readable));
        end = position + readable;
        short_read = 1;
    }
    while (position < end) {
        uint64_t page_no = position / page_size;
        uint32_t in_page = (uint32_t)(position % page_size);
        uint32_t length = page_size - in_page;
        const uint8_t *source = aur_vfs_staging_get(&f->staged, page_no);
        if (length > end - position) {
            length = (uint32_t)(end - position);
        }
        if (source == NULL) {
            if (in_page == 0 && length == page_size) {
                if (v->ops.read_page(v->ctx, page_no, out, page_size) != AUR_OK) {
                    return SQLITE_IOERR_READ;
                }
                position += length;
                out += length;
                continue;
            }
            if (v->ops.read_page(v->ctx, page_no, f->scratch, page_size) != AUR_OK) {
                return SQLITE_IOERR_READ;
            }
            source = f->scratch;
        }
        memcpy(out, source + in_page, length);
        position += length;
        out += length;
    }
    return short_read ? SQLITE_IOERR_SHORT_READ : SQLITE_OK;
}

/* Make sure this file holds the write lock before it stages anything.  SQLite always takes
 * EXCLUSIVE before writing; this only re-takes it after a pipelined commit released it early
 * (a second write transaction SQLite believes still covered, e.g. after an error). */
static int aur_vfs_hold_write_lock(aur_vfs_file *f)
{
    aur_vfs_volume *v = f->volume;
    int rc = SQLITE_OK;
    pthread_mutex_lock(&v->mutex);
    if (v->exclusive_owner != f) {
        if (v->exclusive_owner == NULL && (v->pending_owner == NULL || v->pending_owner == f)
            && (v->reserved_owner == NULL || v->reserved_owner == f)
            && v->shared - (uint32_t)f->counted == 0) {
            v->exclusive_owner = v->pending_owner = v->reserved_owner = f;
            if (!f->counted) {
                v->shared++;
                f->counted = 1;
            }
        } else {
            rc = SQLITE_IOERR_LOCK;
        }
    }
    pthread_mutex_unlock(&v->mutex);
    return rc;
}

static int aur_vfs_file_write(aur_sqlite3_file *file, const void *buffer, int amount,
                              aur_sqlite3_int64 offset)
{
    aur_vfs_file *f = (aur_vfs_file *)file;
    aur_vfs_volume *v = f->volume;
    const uint8_t *in = buffer;
    uint64_t position, end, old_size;
    uint32_t page_size = v->page_size;
    int rc;

    if (amount < 0 || offset < 0) {
        return SQLITE_IOERR_WRITE;
    }
    if (aur_vfs_poisoned(v)) {
        return SQLITE_IOERR_WRITE;
    }
    rc = aur_vfs_hold_write_lock(f);
    if (rc != SQLITE_OK) {
        return rc;
    }
    if (f->pending_bytes < 0) {
        f->pending_bytes = aur_vfs_size(f);
    }
    old_size = (uint64_t)f->pending_bytes;
    position = (uint64_t)offset;
    end = position + (uint64_t)amount;
    while (position < end) {
        uint64_t page_no = position / page_size;
        uint32_t in_page = (uint32_t)(position % page_size);
        uint32_t length = page_size - in_page;
        uint8_t *page = aur_vfs_staging_get(&f->staged, page_no);
        if (length > end - position) {
            length = (uint32_t)(end - position);
        }
        if (page == NULL) {
            page = malloc(page_size);
            if (page == NULL) {
                return SQLITE_NOMEM;
            }
            if (length != page_size) {
                /* A partial write: start from the current image, or zeros past the end. */
                if ((uint64_t)page_no * page_size < old_size) {
                    if (v->ops.read_page(v->ctx, page_no, page, page_size) != AUR_OK) {
                        free(page);
                        return SQLITE_IOERR_WRITE;
                    }
                } else {
                    memset(page, 0, page_size);
                }
            }
            rc = aur_vfs_staging_put(&f->staged, page_no, page);
            if (rc != AUR_OK) {
                free(page);
                return rc == AUR_E_NOMEM ? SQLITE_NOMEM : SQLITE_FULL;
            }
        }
        memcpy(page + in_page, in, length);
        position += length;
        in += length;
    }
    if ((int64_t)end > f->pending_bytes) {
        f->pending_bytes = (int64_t)end;
    }
    return SQLITE_OK;
}

static int aur_vfs_file_truncate(aur_sqlite3_file *file, aur_sqlite3_int64 size)
{
    aur_vfs_file *f = (aur_vfs_file *)file;
    aur_vfs_volume *v = f->volume;
    uint64_t keep_pages;
    uint8_t *last;
    uint32_t tail;
    int rc;

    if (size < 0 || aur_vfs_poisoned(v)) {
        return SQLITE_IOERR_TRUNCATE;
    }
    rc = aur_vfs_hold_write_lock(f);
    if (rc != SQLITE_OK) {
        return rc;
    }
    /* The volume keeps the pages past the end: the size lives in SQLite's header, and a page
     * SQLite writes again later is staged whole.  Only this file's view shrinks here. */
    keep_pages = ((uint64_t)size + v->page_size - 1) / v->page_size;
    if (aur_vfs_staging_drop_from(&f->staged, keep_pages) != AUR_OK) {
        return SQLITE_NOMEM;
    }
    tail = (uint32_t)((uint64_t)size % v->page_size);
    last = tail ? aur_vfs_staging_get(&f->staged, keep_pages - 1) : NULL;
    if (last != NULL) {
        memset(last + tail, 0, v->page_size - tail);
    }
    f->pending_bytes = size;
    return SQLITE_OK;
}

/* Hand every page staged since the last sync to the volume as one MTR, release the write lock
 * and, if wait, block until the MTR is durable.  Returns an SQLite code. */
static int aur_vfs_commit(aur_vfs_file *f, int wait)
{
    aur_vfs_volume *v = f->volume;
    uint64_t *pages = NULL;
    uint64_t lsn = 0;
    uint32_t i, n = 0;
    int rc = SQLITE_OK;

    if (f->staged.count == 0 && f->pending_bytes < 0) {
        return SQLITE_OK;
    }
    if (aur_vfs_poisoned(v)) {
        rc = SQLITE_IOERR_FSYNC;
        goto drop;
    }
    if (f->staged.count > 0) {
        pages = malloc(sizeof(uint64_t) * f->staged.count);
        if (pages == NULL) {
            return SQLITE_NOMEM;
        }
        for (i = 0; i < f->staged.capacity; i++) {
            if (f->staged.slots[i].key != 0) {
                pages[n++] = f->staged.slots[i].key - 1;
            }
        }
        qsort(pages, n, sizeof(uint64_t), aur_vfs_compare_u64);
    }
    for (i = 0; i < n; i++) {
        if (v->ops.write_range(v->ctx, pages[i], 0, aur_vfs_staging_get(&f->staged, pages[i]),
                               v->page_size) != AUR_OK) {
            v->ops.rollback(v->ctx);
            rc = SQLITE_IOERR_FSYNC;
            goto drop;
        }
    }
    if (v->ops.commit_nowait(v->ctx, &lsn) != AUR_OK) {
        /* Nothing reached the log: the volume is unchanged and not in doubt. */
        v->ops.rollback(v->ctx);
        rc = SQLITE_IOERR_FSYNC;
        goto drop;
    }
    /* The MTR is in the log and visible to every connection: publish the new size and let
     * the next writer in before waiting for durability (pipelined commits). */
    pthread_mutex_lock(&v->mutex);
    if (f->pending_bytes >= 0) {
        v->file_bytes = f->pending_bytes;
    }
    v->commits++;
    aur_vfs_release_all_locked(v, f);
    pthread_cond_broadcast(&v->changed);
    pthread_mutex_unlock(&v->mutex);
    aur_vfs_staging_clear(&f->staged);
    f->pending_bytes = -1;
    free(pages);
    if (wait && v->ops.wait_durable(v->ctx, lsn) != AUR_OK) {
        /* In doubt: the MTR may still become durable.  SQLite will now "roll back" by
         * writing the old images, which would clobber whatever other connections committed
         * on top of this MTR since the lock was released; poisoning refuses that. */
        pthread_mutex_lock(&v->mutex);
        v->poisoned = 1;
        pthread_mutex_unlock(&v->mutex);
        return SQLITE_IOERR_FSYNC;
    }
    return SQLITE_OK;
drop:
    free(pages);
    aur_vfs_staging_clear(&f->staged);
    f->pending_bytes = -1;
    return rc;
}

static int aur_vfs_file_sync(aur_sqlite3_file *file, int flags)
{
    (void)flags;
    return aur_vfs_commit((aur_vfs_file *)file, 1);
}

static int aur_vfs_file_size(aur_sqlite3_file *file, aur_sqlite3_int64 *size)
{
    *size = aur_vfs_size((aur_vfs_file *)file);
    return SQLITE_OK;
}

static int aur_vfs_file_lock(aur_sqlite3_file *file, int level)
{
    aur_vfs_file *f = (aur_vfs_file *)file;
    aur_vfs_volume *v = f->volume;
    int rc = SQLITE_OK;

    if (f->lock >= level) {
        return SQLITE_OK;
    }
    pthread_mutex_lock(&v->mutex);
    if (level == SQLITE_LOCK_SHARED) {
        if ((v->pending_owner != NULL && v->pending_owner != f)
            || (v->exclusive_owner != NULL && v->exclusive_owner != f)) {
            rc = SQLITE_BUSY;
        } else {
            if (!f->counted) {
                v->shared++;
                f->counted = 1;
            }
            f->lock = SQLITE_LOCK_SHARED;
        }
    } else if (f->lock == SQLITE_LOCK_NONE) {
        rc = SQLITE_IOERR_LOCK;   /* SQLite never asks for more than SHARED from NONE */
    } else if (level == SQLITE_LOCK_RESERVED) {
        if (v->reserved_owner != NULL && v->reserved_owner != f) {
            rc = SQLITE_BUSY;
        } else {
            v->reserved_owner = f;
            f->lock = SQLITE_LOCK_RESERVED;
        }
    } else {
        /* PENDING (on the way to EXCLUSIVE) keeps new readers out while old ones finish. */
        if ((v->pending_owner != NULL && v->pending_owner != f)
            || (v->reserved_owner != NULL && v->reserved_owner != f)) {
            rc = SQLITE_BUSY;
        } else {
            v->reserved_owner = v->pending_owner = f;
            if (f->lock < SQLITE_LOCK_PENDING) {
                f->lock = SQLITE_LOCK_PENDING;
            }
            if (level == SQLITE_LOCK_EXCLUSIVE) {
                if (v->shared - (uint32_t)f->counted == 0) {
                    v->exclusive_owner = f;
                    f->lock = SQLITE_LOCK_EXCLUSIVE;
                } else {
                    rc = SQLITE_BUSY;
                }
            }
        }
    }
    pthread_mutex_unlock(&v->mutex);
    return rc;
}

static void aur_vfs_deadline(struct timespec *deadline, uint32_t ms)
{
    clock_gettime(CLOCK_REALTIME, deadline);
    deadline->tv_sec += (time_t)(ms / 1000);
    deadline->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (deadline->tv_nsec >= 1000000000L) {
        deadline->tv_sec += 1;
        deadline->tv_nsec -= 1000000000L;
    }
}

static int aur_vfs_file_unlock(aur_sqlite3_file *file, int level)
{
    aur_vfs_file *f = (aur_vfs_file *)file;
    aur_vfs_volume *v = f->volume;
    int rc = SQLITE_OK;

    /* Writes not yet synced when the write lock goes (PRAGMA synchronous=OFF skips xSync)
     * are committed here, without waiting for durability: that is what OFF asks for. */
    if (level < SQLITE_LOCK_RESERVED && (f->staged.count > 0 || f->pending_bytes >= 0)) {
        rc = aur_vfs_commit(f, 0);
        if (rc != SQLITE_OK) {
            rc = SQLITE_IOERR_UNLOCK;
        }
    }
    pthread_mutex_lock(&v->mutex);
    if (level <= SQLITE_LOCK_NONE) {
        aur_vfs_release_all_locked(v, f);
        f->lock = SQLITE_LOCK_NONE;
    } else if (level == SQLITE_LOCK_SHARED) {
        aur_vfs_release_write_locked(v, f);
        if (!f->counted && f->lock > SQLITE_LOCK_NONE) {
            /* A pipelined commit released this file's SHARED slot in xSync.  SQLite still
             * believes it reads under SHARED (an open cursor may read on), so rejoin the
             * readers once no other connection holds EXCLUSIVE or PENDING; the wait is bounded
             * by that writer's next sync, never by durability. */
            struct timespec deadline;
            aur_vfs_deadline(&deadline, AUR_VFS_REJOIN_WAIT_MS_MAX);
            while ((v->exclusive_owner != NULL || v->pending_owner != NULL)
                   && pthread_cond_timedwait(&v->changed, &v->mutex, &deadline) != ETIMEDOUT) {
            }
            if (v->exclusive_owner == NULL && v->pending_owner == NULL) {
                v->shared++;
                f->counted = 1;
            }
        }
        f->lock = SQLITE_LOCK_SHARED;
    }
    pthread_cond_broadcast(&v->changed);
    pthread_mutex_unlock(&v->mutex);
    return rc;
}

static int aur_vfs_file_check_reserved(aur_sqlite3_file *file, int *result)
{
    aur_vfs_volume *v = ((aur_vfs_file *)file)->volume;
    pthread_mutex_lock(&v->mutex);
    *result = v->reserved_owner != NULL || v->pending_owner != NULL || v->exclusive_owner != NULL;
    pthread_mutex_unlock(&v->mutex);
    return SQLITE_OK;
}

static int aur_vfs_equal_nocase(const char *a, const char *b)
{
    if (a == NULL || b == NULL) {
        return 0;
    }
    for (; *a && *b; a++, b++) {
        char x = *a, y = *b;
        if (x >= 'A' && x <= 'Z') {
            x = (char)(x - 'A' + 'a');
        }
        if (y >= 'A' && y <= 'Z') {
            y = (char)(y - 'A' + 'a');
        }
        if (x != y) {
            return 0;
        }
    }
    return *a == *b;
}

/* Answer a PRAGMA with an error: message was allocated by the library, which frees it. */
static int aur_vfs_pragma_error(char **arguments, char *message)
{
    arguments[0] = message;
    return SQLITE_ERROR;
}

static int aur_vfs_pragma(aur_vfs_file *f, char **arguments)
{
    const char *name = arguments[1], *value = arguments[2];
    if (value == NULL) {
        return SQLITE_NOTFOUND;   /* a query: SQLite answers it */
    }
    if (aur_vfs_equal_nocase(name, "journal_mode")) {
        if (aur_vfs_equal_nocase(value, "wal")) {
            return aur_vfs_pragma_error(arguments, aur_sqlite.mprintf(
                "aurora: WAL is not supported (journal_mode=%s refused); the journal stays in "
                "memory (journal_mode=MEMORY) and every commit is one atomic mini-transaction "
                "in the storage log", value));
        }
        if (aur_vfs_equal_nocase(value, "memory")) {
            return SQLITE_NOTFOUND;
        }
        /* DELETE, TRUNCATE, PERSIST, OFF would put a journal file on local disk (or none):
         * keep MEMORY and say so, as SQLite itself does for in-memory databases. */
        arguments[0] = aur_sqlite.mprintf("memory");
        return SQLITE_OK;
    }
    if (aur_vfs_equal_nocase(name, "page_size")) {
        char *end = NULL;
        unsigned long requested = strtoul(value, &end, 10);
        if (end != value && requested != f->volume->page_size) {
            return aur_vfs_pragma_error(arguments, aur_sqlite.mprintf(
                "aurora: page_size=%s refused: the volume's page size is %u bytes, and a "
                "database on it uses exactly that page size", value, f->volume->page_size));
        }
        return SQLITE_NOTFOUND;
    }
    if (aur_vfs_equal_nocase(name, "locking_mode") && aur_vfs_equal_nocase(value, "exclusive")) {
        return aur_vfs_pragma_error(arguments, aur_sqlite.mprintf(
            "aurora: locking_mode=%s refused: every connection of the process shares the "
            "volume's lock table, and a commit releases the write lock as soon as it reaches "
            "the log", value));
    }
    return SQLITE_NOTFOUND;
}

static int aur_vfs_file_control(aur_sqlite3_file *file, int op, void *argument)
{
    aur_vfs_file *f = (aur_vfs_file *)file;
    switch (op) {
    case SQLITE_FCNTL_PRAGMA:
        return aur_vfs_pragma(f, (char **)argument);
    case SQLITE_FCNTL_VFSNAME:
        *(char **)argument = aur_sqlite.mprintf("%s", f->volume->vfs_name);
        return SQLITE_OK;
    case SQLITE_FCNTL_HAS_MOVED:
        *(int *)argument = 0;
        return SQLITE_OK;
    case SQLITE_FCNTL_LOCKSTATE:
        *(int *)argument = f->lock;
        return SQLITE_OK;
    default:
        return SQLITE_NOTFOUND;
    }
}

static int aur_vfs_file_sector_size(aur_sqlite3_file *file)
{
    return (int)((aur_vfs_file *)file)->volume->page_size;
}

static int aur_vfs_file_device_characteristics(aur_sqlite3_file *file)
{
    (void)file;
    return SQLITE_IOCAP_POWERSAFE_OVERWRITE | SQLITE_IOCAP_UNDELETABLE_WHEN_OPEN;
}

/* Version 1: no shared memory (so no WAL) and no memory mapping. */
static const aur_sqlite3_io_methods aur_vfs_io_methods = {
    1,
    aur_vfs_file_close,
    aur_vfs_file_read,
    aur_vfs_file_write,
    aur_vfs_file_truncate,
    aur_vfs_file_sync,
    aur_vfs_file_size,
    aur_vfs_file_lock,
    aur_vfs_file_unlock,
    aur_vfs_file_check_reserved,
    aur_vfs_file_control,
    aur_vfs_file_sector_size,
    aur_vfs_file_device_characteristics,
    NULL, NULL, NULL, NULL, NULL, NULL,
};

/* ---- the VFS methods ------------------------------------------------------------------- */

static int aur_vfs_is_database(aur_vfs_volume *v, const char *name)
{
    return name != NULL && strcmp(name, v->db_name) == 0;
}

/* "<database>-journal", "<database>-wal", ...: files SQLite would keep next to ours. */
static int aur_vfs_is_companion(aur_vfs_volume *v, const char *name)
{
    return name != NULL && strncmp(name, v->db_name, v->db_name_length) == 0
           && name[v->db_name_length] == '-';
}

static int aur_vfs_open(aur_sqlite3_vfs *vfs, const char *name, aur_sqlite3_file *file, int flags,
                        int *out_flags)
{
    aur_vfs_volume *v = aur_vfs_of(vfs);
    aur_vfs_file *f = (aur_vfs_file *)file;
    int64_t known;

    if (!(flags & SQLITE_OPEN_MAIN_DB) || !aur_vfs_is_database(v, name)) {
        if ((flags & (SQLITE_OPEN_MAIN_JOURNAL | SQLITE_OPEN_WAL | SQLITE_OPEN_SUPER_JOURNAL))
            && aur_vfs_is_companion(v, name)) {
            /* The journal never leaves memory; a journal or WAL file of ours is refused. */
            file->pMethods = NULL;
            return SQLITE_CANTOPEN;
        }
        return v->base->xOpen(v->base, name, file, flags, out_flags);
    }
    memset(f, 0, sizeof(*f));
    f->volume = v;
    f->pending_bytes = -1;
    f->scratch = malloc(v->page_size);
    if (f->scratch == NULL) {
        return SQLITE_NOMEM;
    }
    pthread_mutex_lock(&v->mutex);
    if (v->released) {
        pthread_mutex_unlock(&v->mutex);
        free(f->scratch);
        return SQLITE_CANTOPEN;
    }
    v->open_files++;
    known = v->file_bytes;
    pthread_mutex_unlock(&v->mutex);
    file->pMethods = &aur_vfs_io_methods;
    if (known < 0) {
        /* First open: the size comes from page 1's header; later commits keep it current. */
        uint64_t bytes = 0;
        if (v->ops.read_page(v->ctx, 0, f->scratch, v->page_size) != AUR_OK
            || aur_vfs_header_database_bytes(f->scratch, v->page_size, &bytes) != AUR_OK) {
            /* A failed xOpen must leave pMethods NULL: SQLite will not call xClose. */
            file->pMethods = NULL;
            free(f->scratch);
            f->scratch = NULL;
            pthread_mutex_lock(&v->mutex);
            v->open_files--;
            pthread_mutex_unlock(&v->mutex);
            return SQLITE_CANTOPEN;
        }
        pthread_mutex_lock(&v->mutex);
        if (v->file_bytes < 0) {
            v->file_bytes = (int64_t)bytes;
        }
        pthread_mutex_unlock(&v->mutex);
    }
    if (out_flags != NULL) {
        *out_flags = flags;
    }
    return SQLITE_OK;
}

static int aur_vfs_delete(aur_sqlite3_vfs *vfs, const char *name, int sync_dir)
{
    aur_vfs_volume *v = aur_vfs_of(vfs);
    if (aur_vfs_is_database(v, name) || aur_vfs_is_companion(v, name)) {
        return SQLITE_OK;   /* nothing of ours is a local file */
    }
    return v->base->xDelete(v->base, name, sync_dir);
}

static int aur_vfs_access(aur_sqlite3_vfs *vfs, const char *name, int flags, int *result)
{
    aur_vfs_volume *v = aur_vfs_of(vfs);
    if (aur_vfs_is_companion(v, name)) {
        *result = 0;   /* never a hot journal or WAL: a stray local file must not be replayed */
        return SQLITE_OK;
    }
    if (aur_vfs_is_database(v, name)) {
        *result = 1;
        return SQLITE_OK;
    }
    return v->base->xAccess(v->base, name, flags, result);
}

static int aur_vfs_full_pathname(aur_sqlite3_vfs *vfs, const char *name, int size, char *out)
{
    aur_vfs_volume *v = aur_vfs_of(vfs);
    if (aur_vfs_is_database(v, name)) {
        if (size <= 0 || v->db_name_length >= (size_t)size) {
            return SQLITE_CANTOPEN;
        }
        memcpy(out, v->db_name, v->db_name_length + 1);
        return SQLITE_OK;
    }
    return v->base->xFullPathname(v->base, name, size, out);
}

static void *aur_vfs_dl_open(aur_sqlite3_vfs *vfs, const char *name)
{
    aur_sqlite3_vfs *base = aur_vfs_of(vfs)->base;
    return base->xDlOpen(base, name);
}

static void aur_vfs_dl_error(aur_sqlite3_vfs *vfs, int size, char *message)
{
    aur_sqlite3_vfs *base = aur_vfs_of(vfs)->base;
    base->xDlError(base, size, message);
}

static void (*aur_vfs_dl_sym(aur_sqlite3_vfs *vfs, void *handle, const char *symbol))(void)
{
    aur_sqlite3_vfs *base = aur_vfs_of(vfs)->base;
    return base->xDlSym(base, handle, symbol);
}

static void aur_vfs_dl_close(aur_sqlite3_vfs *vfs, void *handle)
{
    aur_sqlite3_vfs *base = aur_vfs_of(vfs)->base;
    base->xDlClose(base, handle);
}

static int aur_vfs_randomness(aur_sqlite3_vfs *vfs, int size, char *out)
{
    aur_sqlite3_vfs *base = aur_vfs_of(vfs)->base;
    return base->xRandomness(base, size, out);
}

static int aur_vfs_sleep(aur_sqlite3_vfs *vfs, int microseconds)
{
    aur_sqlite3_vfs *base = aur_vfs_of(vfs)->base;
    return base->xSleep(base, microseconds);
}

static int aur_vfs_current_time(aur_sqlite3_vfs *vfs, double *now)
{
    aur_sqlite3_vfs *base = aur_vfs_of(vfs)->base;
    return base->xCurrentTime(base, now);
}

static int aur_vfs_get_last_error(aur_sqlite3_vfs *vfs, int size, char *message)
{
    aur_sqlite3_vfs *base = aur_vfs_of(vfs)->base;
    return base->xGetLastError(base, size, message);
}

static int aur_vfs_current_time_int64(aur_sqlite3_vfs *vfs, aur_sqlite3_int64 *now)
{
    aur_sqlite3_vfs *base = aur_vfs_of(vfs)->base;
    return base->xCurrentTimeInt64(base, now);
}

/* ---- creation and release ------------------------------------------------------------- */

int aur_vfs_volume_create(const char *vfs_name, const char *db_name, uint32_t page_size,
                          const aur_vfs_volume_ops *ops, void *ctx, aur_vfs_volume **out)
{
    aur_vfs_volume *v;
    aur_sqlite3_vfs *base, *earlier;
    size_t vfs_name_length, db_name_length;

    *out = NULL;
    if (!aur_sqlite.loaded) {
        return AUR_E_ARGUMENT;
    }
    if (vfs_name == NULL || db_name == NULL || ops == NULL || ops->read_page == NULL
        || ops->write_range == NULL || ops->commit_nowait == NULL || ops->wait_durable == NULL
        || ops->rollback == NULL || page_size < 512 || page_size > 65536
        || (page_size & (page_size - 1)) != 0) {
        return AUR_E_ARGUMENT;
    }
    vfs_name_length = strlen(vfs_name);
    db_name_length = strlen(db_name);
    if (vfs_name_length == 0 || vfs_name_length > AUR_VFS_NAME_MAX || db_name_length == 0
        || db_name_length > AUR_VFS_NAME_MAX) {
        return AUR_E_LENGTH;
    }
    base = aur_sqlite.vfs_find(NULL);
    if (base == NULL) {
        return AUR_E_IO;
    }
    earlier = aur_sqlite.vfs_find(vfs_name);
    if (earlier != NULL && earlier->xOpen != aur_vfs_open) {
        return AUR_E_ARGUMENT;   /* the name belongs to someone else's VFS */
    }
    if (earlier == base) {
        return AUR_E_ARGUMENT;
    }
    v = calloc(1, sizeof(*v));
    if (v == NULL) {
        return AUR_E_NOMEM;
    }
    if (pthread_mutex_init(&v->mutex, NULL) != 0) {
        free(v);
        return AUR_E_NOMEM;
    }
    if (pthread_cond_init(&v->changed, NULL) != 0) {
        pthread_mutex_destroy(&v->mutex);
        free(v);
        return AUR_E_NOMEM;
    }
    memcpy(v->vfs_name, vfs_name, vfs_name_length + 1);
    memcpy(v->db_name, db_name, db_name_length + 1);
    v->db_name_length = db_name_length;
    v->base = base;
    v->ops = *ops;
    v->ctx = ctx;
    v->page_size = page_size;
    v->file_bytes = -1;

    v->vfs.iVersion = base->iVersion >= 2 ? 2 : 1;
    v->vfs.szOsFile = base->szOsFile > (int)sizeof(aur_vfs_file) ? base->szOsFile
                                                                 : (int)sizeof(aur_vfs_file);
    v->vfs.mxPathname = base->mxPathname;
    v->vfs.zName = v->vfs_name;
    v->vfs.pAppData = v;
    v->vfs.xOpen = aur_vfs_open;
    v->vfs.xDelete = aur_vfs_delete;
    v->vfs.xAccess = aur_vfs_access;
    v->vfs.xFullPathname = aur_vfs_full_pathname;
    v->vfs.xDlOpen = aur_vfs_dl_open;
    v->vfs.xDlError = aur_vfs_dl_error;
    v->vfs.xDlSym = aur_vfs_dl_sym;
    v->vfs.xDlClose = aur_vfs_dl_close;
    v->vfs.xRandomness = aur_vfs_randomness;
    v->vfs.xSleep = aur_vfs_sleep;
    v->vfs.xCurrentTime = aur_vfs_current_time;
    v->vfs.xGetLastError = aur_vfs_get_last_error;
    v->vfs.xCurrentTimeInt64 = v->vfs.iVersion >= 2 ? aur_vfs_current_time_int64 : NULL;

    if (earlier != NULL) {
        /* A volume opened again under the same name: the new one takes the name; files
         * still open on the earlier one keep working against it. */
        aur_vfs_volume *old = aur_vfs_of(earlier);
        aur_sqlite.vfs_unregister(earlier);
        pthread_mutex_lock(&old->mutex);
        old->registered = 0;
        pthread_mutex_unlock(&old->mutex);
    }
    if (aur_sqlite.vfs_register(&v->vfs, 0) != SQLITE_OK) {
        pthread_cond_destroy(&v->changed);
        pthread_mutex_destroy(&v->mutex);
        free(v);
        return AUR_E_IO;
    }
    v->registered = 1;
    *out = v;
    return AUR_OK;
}

void aur_vfs_volume_release(aur_vfs_volume *v)
{
    int registered;
    if (v == NULL) {
        return;
    }
    pthread_mutex_lock(&v->mutex);
    registered = v->registered;
    v->registered = 0;
    v->released = 1;
    pthread_mutex_unlock(&v->mutex);
    if (registered) {
        aur_sqlite.vfs_unregister(&v->vfs);
    }
    aur_vfs_volume_free_if_done(v);
}

void aur_vfs_volume_lock_state(aur_vfs_volume *v, aur_vfs_lock_state *state)
{
    pthread_mutex_lock(&v->mutex);
    state->shared = v->shared;
    state->reserved = v->reserved_owner != NULL;
    state->pending = v->pending_owner != NULL;
    state->exclusive = v->exclusive_owner != NULL;
    state->open_files = v->open_files;
    state->poisoned = (uint32_t)v->poisoned;
    state->file_bytes = v->file_bytes;
    state->commits = v->commits;
    pthread_mutex_unlock(&v->mutex);
}

void aur_vfs_volume_poison(aur_vfs_volume *v)
{
    pthread_mutex_lock(&v->mutex);
    v->poisoned = 1;
    pthread_mutex_unlock(&v->mutex);
}
