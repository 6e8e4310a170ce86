/* aurora's SQLite VFS: the main database file of a volume lives in the volume's pages.
 *
 * One aur_vfs_volume is one registered SQLite VFS (named by the caller, e.g. "aurora-7") for
 * one open volume.  The main database file opened through it is routed to the callbacks of
 * aur_vfs_volume_ops (filled by aurora/_vfs.pxi with functions that call the Python Volume);
 * every other file (temp databases, statement journals) goes to the default VFS it wraps.
 * SQLite page N (1-based) is volume page N - 1.  docs/sqlite.md explains the design; the
 * contracts are here.
 *
 *  - Writes are staged per connection (per open file), in C, and handed to the volume only at
 *    xSync: every page written since the last sync becomes one mini-transaction (MTR), so an
 *    MTR never depends on which thread SQLite happened to run on, and other connections never
 *    see a half-written transaction.
 *  - One lock table per volume (SHARED count, RESERVED/PENDING/EXCLUSIVE owners) is shared by
 *    every connection of the process.
 *  - Pipelined commits: xSync hands the MTR to the log (commit_nowait), releases the write
 *    lock, then waits for durability (wait_durable).  If that wait fails the volume is
 *    *poisoned*: the commit is in doubt, and a rollback written over it could clobber newer
 *    commits of other connections, so every later write or sync of the volume fails.
 *
 * Thread safety: any thread may call into any file; the lock table and the per-volume size
 * are guarded by a mutex that is never held across a callback.  Callbacks run with no aurora
 * lock held and may block (the Cython layer takes the GIL inside them).
 */
#ifndef AUR_VFS_H
#define AUR_VFS_H

#include <stddef.h>
#include <stdint.h>

/* Size of the SQLite database header at the start of page 1. */
#define AUR_VFS_SQLITE_HEADER_SIZE 100u
/* Upper bound on pages one connection may stage in one transaction (64 GiB of 4 KiB pages). */
#define AUR_VFS_STAGED_PAGES_MAX (1u << 24)
/* Longest VFS or database name accepted. */
#define AUR_VFS_NAME_MAX 255u
/* Longest wait, in milliseconds, of a committed connection to rejoin the readers
 * (see aur_vfs_file_unlock in vfs.c). */
#define AUR_VFS_REJOIN_WAIT_MS_MAX 60000u

/* Callbacks into the volume.  Each returns AUR_OK or an AUR_E_* status; the callee keeps any
 * richer error (the Python exception) for itself.  ctx is the pointer given at creation. */
typedef struct aur_vfs_volume_ops {
    /* Copy the latest image of volume page page_no (page_size bytes) into out. */
    int (*read_page)(void *ctx, uint64_t page_no, uint8_t *out, uint32_t page_size);
    /* Stage length bytes at offset of page page_no in the calling thread's MTR. */
    int (*write_range)(void *ctx, uint64_t page_no, uint32_t offset, const uint8_t *data,
                       uint32_t length);
    /* End the calling thread's MTR and hand it to the log; *lsn gets its CPL. */
    int (*commit_nowait)(void *ctx, uint64_t *lsn);
    /* Block until VDL >= lsn. */
    int (*wait_durable)(void *ctx, uint64_t lsn);
    /* Drop the calling thread's staged changes. */
    void (*rollback)(void *ctx);
    /* Called once, when the volume is released and its last file closed: drop ctx. */
    void (*destroy)(void *ctx);
} aur_vfs_volume_ops;

typedef struct aur_vfs_volume aur_vfs_volume;

/* Snapshot of a volume's lock table and counters (for tests and status). */
typedef struct aur_vfs_lock_state {
    uint32_t shared;          /* connections holding SHARED (committing ones excluded) */
    uint32_t reserved;        /* 1 if some connection holds RESERVED or more */
    uint32_t pending;         /* 1 if some connection holds PENDING or more */
    uint32_t exclusive;       /* 1 if some connection holds EXCLUSIVE */
    uint32_t open_files;      /* main-database files open */
    uint32_t poisoned;        /* 1 once a durability wait failed */
    int64_t file_bytes;       /* committed database size, -1 until first known */
    uint64_t commits;         /* MTRs handed to the log */
} aur_vfs_lock_state;

/* Resolve the SQLite functions aurora needs from the shared object at path (already loaded
 * by the process; it is never loaded here: RTLD_NOLOAD), or from the whole process if path is
 * NULL.  On failure returns AUR_E_IO with a message in error (cap bytes, NUL-terminated).
 * Idempotent once it succeeded. */
int aur_vfs_library_load(const char *path, char *error, size_t error_cap);
/* Whether the functions can be resolved from path, without binding to them (tests). */
int aur_vfs_library_probe(const char *path, char *error, size_t error_cap);
/* sqlite3_libversion() of the library found, or NULL before aur_vfs_library_load. */
const char *aur_vfs_library_version(void);

/* Create and register (not as default) a VFS named vfs_name whose main database file
 * db_name lives in a volume of page_size bytes per page.  A VFS of the same name registered
 * earlier by aurora is unregistered first (its open files keep working).  ops and ctx must
 * stay valid until ops->destroy(ctx) is called. */
int aur_vfs_volume_create(const char *vfs_name, const char *db_name, uint32_t page_size,
                          const aur_vfs_volume_ops *ops, void *ctx, aur_vfs_volume **out);
/* Unregister the VFS; the volume is freed (and ops->destroy called) when its last file
 * closes.  No new database can be opened through it afterwards. */
void aur_vfs_volume_release(aur_vfs_volume *volume);
/* Fill *state; safe from any thread. */
void aur_vfs_volume_lock_state(aur_vfs_volume *volume, aur_vfs_lock_state *state);
/* Poison the volume by hand (tests; a caller that learns of an in-doubt commit). */
void aur_vfs_volume_poison(aur_vfs_volume *volume);

/* Database size in bytes according to SQLite's header in page1 (length bytes, at least
 * AUR_VFS_SQLITE_HEADER_SIZE): 0 when the page is all zeros; page count (bytes 28-31) times
 * page size (bytes 16-17) when the count is valid (bytes 92-95 equal the change counter at
 * 24-27); one page when the header is not SQLite's or its count is not valid (SQLite then
 * reads the header itself and reports what it finds).  Returns AUR_E_LENGTH if length is too
 * short. */
int aur_vfs_header_database_bytes(const uint8_t *page1, size_t length, uint64_t *bytes);

#endif
