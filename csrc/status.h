/*
 * Status codes returned by every csrc/ function.  0 is success; every failure is negative.
 * aurora/_native.pyx maps each code to one exception class of aurora/errors.py through a
 * single table, so a new code needs a line there and a test that raises it.
 */
#ifndef AURORA_STATUS_H
#define AURORA_STATUS_H

enum aur_status {
    AUR_OK = 0,
    AUR_E_TRUNCATED = -1,   /* input ends before a length says it should */
    AUR_E_CRC = -2,         /* a CRC does not match */
    AUR_E_LENGTH = -3,      /* a length or count field is out of its bounds */
    AUR_E_TYPE = -4,        /* unknown record type */
    AUR_E_VERSION = -5,     /* unsupported format version */
    AUR_E_MAGIC = -6,       /* bad magic number */
    AUR_E_FLAGS = -7,       /* unknown flag bits or non-zero reserved field */
    AUR_E_RANGE = -8,       /* an offset or page number points outside its object */
    AUR_E_CHAIN_GAP = -9,   /* a record's page backlink does not match the page's LSN */
    AUR_E_ORDER = -10,      /* LSNs not strictly increasing where they must be */
    AUR_E_NOMEM = -11,      /* allocation failed */
    AUR_E_BUFFER = -12,     /* the caller's output buffer is too small */
    AUR_E_IO = -13,         /* a system call failed; errno holds the reason */
    AUR_E_CORRUPT = -14,    /* stored data failed validation in the middle of a file */
    AUR_E_ARGUMENT = -15,   /* a caller passed an impossible argument */
    AUR_E_TIMEOUT = -16,    /* a wait ended at its deadline before its condition held */
};

#endif /* AURORA_STATUS_H */
