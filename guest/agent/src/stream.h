/* Table of open streams (one per in-flight request that outlives its
 * first frame: EXEC, READ, WRITE, PORT_OPEN). Other requests answer at once. */
#ifndef MITOS_STREAM_H
#define MITOS_STREAM_H

#include <stdint.h>
#include <sys/types.h>

#include "fwd.h"

#define MAX_STREAMS 1024

enum stream_kind { S_EXEC = 1, S_READ, S_WRITE, S_PORT };

typedef struct stream {
	uint32_t id;
	int kind;
	int dead;        /* freed at the end of the loop iteration */
	int detached;    /* inherited across a fork: runs on, output dropped, no frames, id free */
	int64_t credit;  /* output bytes we may still send (EXEC, READ) */

	/* EXEC */
	pid_t pid;
	int out_fd, err_fd;   /* pipes or PTY master (out only); -1 at EOF */
	int in_fd;            /* stdin pipe or dup of PTY master; -1 none */
	int pty_fd;           /* PTY master for RESIZE, -1 without PTY */
	uint8_t *in_buf;      /* stdin waiting for the pipe */
	size_t in_len, in_cap;
	int in_close;         /* STDIN_CLOSE seen: close once drained */
	int64_t start_ms, deadline_ms, exit_ms, drain_ms;
	int exited, status, timed_out, cgroup;
	uint64_t cgroup_n;    /* its cgroup: CGROUP_ROOT/exec-<cgroup_n> */
	int cgroup_fd;        /* that directory, open (-1: none) */

	/* READ / WRITE */
	int fd;
	int64_t offset, remaining; /* READ: remaining < 0 = to end of file */
	int64_t done;              /* bytes sent (READ) or written (WRITE) */
	int write_errno;           /* first failed write, reported at close */
	char path[256];            /* for messages */

	/* PORT_OPEN: fd is the socket, deadline_ms the connect timeout */
	fwd_t fwd;
	int port;
	int family;                /* AF_INET, then AF_INET6 if refused there */
	int connecting;
} stream_t;

stream_t *stream_find(uint32_t id);
stream_t *stream_new(uint32_t id, int kind); /* NULL if table full */
int stream_count(void);
stream_t *stream_at(int i);                  /* 0 <= i < stream_count() */
void stream_sweep(void);                     /* free the dead ones */

#endif
