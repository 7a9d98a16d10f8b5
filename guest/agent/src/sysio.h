/* Thin wrappers over system calls used across the agent: logging, clocks, small files, whole writes. */
#ifndef MITOS_SYSIO_H
#define MITOS_SYSIO_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Log to stderr (the console in a VM) with the "mitos-agent:" prefix. */
void logmsg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

int64_t now_ms(void); /* CLOCK_MONOTONIC */

/* Read up to cap-1 bytes of a small file (e.g. in /proc) NUL-terminated.
 * Returns the length, or -1 with errno set. */
ssize_t read_small(const char *path, char *buf, size_t cap);

/* mkdir -p; existing directories are fine. Returns 0 or -1 with errno. */
int mkdir_p(const char *path, mode_t mode);
/* mkdir -p that gives each directory it creates the owner uid:gid (-1
 * leaves that id as it is), so a user's new parents are theirs. */
int mkdir_p_owned(const char *path, mode_t mode, int64_t uid, int64_t gid);

/* Write all of buf to a blocking-or-not fd; retries EINTR, waits out EAGAIN. */
int write_all(int fd, const void *buf, size_t n);

#endif
