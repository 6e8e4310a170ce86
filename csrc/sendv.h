/*
 * Sending one round of frames to many sockets with a single call, so that a Python caller
 * gives up the GIL once per round instead of once per socket (the writer sends each boxcar's
 * frames to six members; every GIL release in a process of many committing threads costs a
 * switch to another thread and a wait to get it back).
 */
#ifndef AURORA_SENDV_H
#define AURORA_SENDV_H

#include <stddef.h>
#include <stdint.h>

/* Sockets one aur_send_all call serves. */
#define AUR_SEND_SOCKETS_MAX 256u

/*
 * For i in [0, count): write lens[i] bytes of bufs[i] to the blocking stream socket fds[i],
 * all of them, in order, retrying after EINTR and short writes; errors[i] is 0 once every byte
 * was written, else the errno that stopped that socket (the others are still served).  Never
 * raises SIGPIPE where MSG_NOSIGNAL exists.  count <= AUR_SEND_SOCKETS_MAX.  Returns the
 * number of sockets that failed.
 */
uint32_t aur_send_all(uint32_t count, const int *fds, const uint8_t *const *bufs,
                      const size_t *lens, int *errors);

#endif /* AURORA_SENDV_H */
