/* The few declarations of SQLite's public C API that the aurora VFS needs, copied from the
 * public definitions in sqlite3.h (https://sqlite.org/c3ref/intro.html).  They are stable
 * ABI: SQLite only ever appends methods to these structs and bumps iVersion.
 *
 * aurora never links SQLite.  It registers its VFS in the library that Python's sqlite3 module
 * already loaded, reaching its functions by dlsym at run time (csrc/vfs.c), so wheels build
 * without sqlite3.h and there is never a second SQLite in the process.  Names keep SQLite's
 * spelling so a reader can look them up; the types are prefixed so that a translation unit
 * that also includes the real sqlite3.h does not clash. */
#ifndef AUR_SQLITE3_API_H
#define AUR_SQLITE3_API_H

typedef long long int aur_sqlite3_int64;

typedef struct aur_sqlite3_file aur_sqlite3_file;
typedef struct aur_sqlite3_io_methods aur_sqlite3_io_methods;
typedef struct aur_sqlite3_vfs aur_sqlite3_vfs;
typedef int (*aur_sqlite3_syscall_ptr)(void);

struct aur_sqlite3_file {
    const aur_sqlite3_io_methods *pMethods;
};

struct aur_sqlite3_io_methods {
    int iVersion;
    int (*xClose)(aur_sqlite3_file *);
    int (*xRead)(aur_sqlite3_file *, void *, int iAmt, aur_sqlite3_int64 iOfst);
    int (*xWrite)(aur_sqlite3_file *, const void *, int iAmt, aur_sqlite3_int64 iOfst);
    int (*xTruncate)(aur_sqlite3_file *, aur_sqlite3_int64 size);
    int (*xSync)(aur_sqlite3_file *, int flags);
    int (*xFileSize)(aur_sqlite3_file *, aur_sqlite3_int64 *pSize);
    int (*xLock)(aur_sqlite3_file *, int);
    int (*xUnlock)(aur_sqlite3_file *, int);
    int (*xCheckReservedLock)(aur_sqlite3_file *, int *pResOut);
    int (*xFileControl)(aur_sqlite3_file *, int op, void *pArg);
    int (*xSectorSize)(aur_sqlite3_file *);
    int (*xDeviceCharacteristics)(aur_sqlite3_file *);
    /* version 2 */
    int (*xShmMap)(aur_sqlite3_file *, int iPg, int pgsz, int, void volatile **);
    int (*xShmLock)(aur_sqlite3_file *, int offset, int n, int flags);
    void (*xShmBarrier)(aur_sqlite3_file *);
    int (*xShmUnmap)(aur_sqlite3_file *, int deleteFlag);
    /* version 3 */
    int (*xFetch)(aur_sqlite3_file *, aur_sqlite3_int64 iOfst, int iAmt, void **pp);
    int (*xUnfetch)(aur_sqlite3_file *, aur_sqlite3_int64 iOfst, void *p);
};

struct aur_sqlite3_vfs {
    int iVersion;
    int szOsFile;
    int mxPathname;
    aur_sqlite3_vfs *pNext;
    const char *zName;
    void *pAppData;
    int (*xOpen)(aur_sqlite3_vfs *, const char *zName, aur_sqlite3_file *, int flags,
                 int *pOutFlags);
    int (*xDelete)(aur_sqlite3_vfs *, const char *zName, int syncDir);
    int (*xAccess)(aur_sqlite3_vfs *, const char *zName, int flags, int *pResOut);
    int (*xFullPathname)(aur_sqlite3_vfs *, const char *zName, int nOut, char *zOut);
    void *(*xDlOpen)(aur_sqlite3_vfs *, const char *zFilename);
    void (*xDlError)(aur_sqlite3_vfs *, int nByte, char *zErrMsg);
    void (*(*xDlSym)(aur_sqlite3_vfs *, void *, const char *zSymbol))(void);
    void (*xDlClose)(aur_sqlite3_vfs *, void *);
    int (*xRandomness)(aur_sqlite3_vfs *, int nByte, char *zOut);
    int (*xSleep)(aur_sqlite3_vfs *, int microseconds);
    int (*xCurrentTime)(aur_sqlite3_vfs *, double *);
    int (*xGetLastError)(aur_sqlite3_vfs *, int, char *);
    /* version 2 */
    int (*xCurrentTimeInt64)(aur_sqlite3_vfs *, aur_sqlite3_int64 *);
    /* version 3 */
    int (*xSetSystemCall)(aur_sqlite3_vfs *, const char *zName, aur_sqlite3_syscall_ptr);
    aur_sqlite3_syscall_ptr (*xGetSystemCall)(aur_sqlite3_vfs *, const char *zName);
    const char *(*xNextSystemCall)(aur_sqlite3_vfs *, const char *zName);
};

/* Result codes. */
#define SQLITE_OK 0
#define SQLITE_ERROR 1
#define SQLITE_BUSY 5
#define SQLITE_NOMEM 7
#define SQLITE_FULL 13
#define SQLITE_IOERR 10
#define SQLITE_NOTFOUND 12
#define SQLITE_CANTOPEN 14
#define SQLITE_IOERR_READ (SQLITE_IOERR | (1 << 8))
#define SQLITE_IOERR_SHORT_READ (SQLITE_IOERR | (2 << 8))
#define SQLITE_IOERR_WRITE (SQLITE_IOERR | (3 << 8))
#define SQLITE_IOERR_FSYNC (SQLITE_IOERR | (4 << 8))
#define SQLITE_IOERR_TRUNCATE (SQLITE_IOERR | (6 << 8))
#define SQLITE_IOERR_FSTAT (SQLITE_IOERR | (7 << 8))
#define SQLITE_IOERR_UNLOCK (SQLITE_IOERR | (8 << 8))
#define SQLITE_IOERR_LOCK (SQLITE_IOERR | (15 << 8))

/* Flags of xOpen. */
#define SQLITE_OPEN_READONLY 0x00000001
#define SQLITE_OPEN_READWRITE 0x00000002
#define SQLITE_OPEN_CREATE 0x00000004
#define SQLITE_OPEN_MAIN_DB 0x00000100
#define SQLITE_OPEN_MAIN_JOURNAL 0x00000800
#define SQLITE_OPEN_SUPER_JOURNAL 0x00004000
#define SQLITE_OPEN_WAL 0x00080000

/* Lock levels of xLock/xUnlock. */
#define SQLITE_LOCK_NONE 0
#define SQLITE_LOCK_SHARED 1
#define SQLITE_LOCK_RESERVED 2
#define SQLITE_LOCK_PENDING 3
#define SQLITE_LOCK_EXCLUSIVE 4

/* xDeviceCharacteristics bits. */
#define SQLITE_IOCAP_UNDELETABLE_WHEN_OPEN 0x00000800
#define SQLITE_IOCAP_POWERSAFE_OVERWRITE 0x00001000

/* xFileControl opcodes. */
#define SQLITE_FCNTL_LOCKSTATE 1
#define SQLITE_FCNTL_VFSNAME 12
#define SQLITE_FCNTL_PRAGMA 14
#define SQLITE_FCNTL_HAS_MOVED 20

/* xAccess flags. */
#define SQLITE_ACCESS_EXISTS 0

/* The library functions aurora calls, as pointer types for dlsym. */
typedef int (*aur_sqlite3_vfs_register_fn)(aur_sqlite3_vfs *, int makeDflt);
typedef int (*aur_sqlite3_vfs_unregister_fn)(aur_sqlite3_vfs *);
typedef aur_sqlite3_vfs *(*aur_sqlite3_vfs_find_fn)(const char *zVfsName);
typedef char *(*aur_sqlite3_mprintf_fn)(const char *, ...);
typedef void (*aur_sqlite3_free_fn)(void *);
typedef const char *(*aur_sqlite3_libversion_fn)(void);

#endif
