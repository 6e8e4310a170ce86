/* Sending a round of frames to many sockets (csrc/sendv.h). */
#define _POSIX_C_SOURCE 200809L

#include "sendv.h"

#include <errno.h>
#include <sys/socket.h>
#include <sys/types.h>

#ifdef MSG_NOSIGNAL
#define AUR_SEND_FLAGS MSG_NOSIGNAL
#else
#define AUR_SEND_FLAGS 0
#endif

uint32_t aur_send_all(uint32_t count, const int *fds, const uint8_t *const *bufs,
                      const size_t *lens, int *errors) {
    uint32_t failed = 0;
    if (count > AUR_SEND_SOCKETS_MAX) count = AUR_SEND_SOCKETS_MAX;
    for (uint32_t i = 0; i < count; i++) {
        size_t sent = 0;
        errors[i] = 0;
        /* Each pass writes at least one byte or ends this socket: bounded by lens[i]. */
        while (sent < lens[i]) {
            ssize_t n = send(fds[i], bufs[i] + sent, lens[i] - sent, AUR_SEND_FLAGS);
            if (n < 0) {
                if (errno == EINTR) continue;
                errors[i] = errno;
                failed++;
                break;
            }
            if (n == 0) {
                errors[i] = EPIPE;
                failed++;
                break;
            }
            sent += (size_t)n;
        }
    }
    return failed;
}
