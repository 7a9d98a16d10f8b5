/* Flow-control state of one port forward (PORT_OPEN stream), without I/O:
 * the host's bytes waiting for the socket (bounded by PORT_WINDOW), the
 * output credit, and the two half-closes. forward.c does the syscalls; this
 * part is pure so the fuzzer can drive it with any sequence of frames. */
#ifndef MITOS_FWD_H
#define MITOS_FWD_H

#include <stddef.h>
#include <stdint.h>

#include "frame.h"

typedef struct {
	uint8_t *buf;     /* host bytes not yet written to the socket */
	size_t len, cap;  /* len <= PORT_WINDOW, always */
	int64_t credit;   /* DATA bytes the agent may still send the host */
	int host_shut;    /* PORT_SHUTDOWN seen: no more host bytes */
	int wr_done;      /* socket write side shut (host_shut and buf empty) */
	int rd_eof;       /* the guest program closed its side: PORT_EOF sent */
} fwd_t;

/* PORT_OPEN's fields, checked. */
typedef struct {
	int port;           /* 1..65535 */
	int64_t window;     /* initial credit */
	int64_t timeout_ms; /* connect timeout, 0 = none */
} fwd_open_t;

/* Returns 0, or EINVAL with a message in err. */
int fwd_parse_open(const fields_t *f, fwd_open_t *o, char *err, size_t errlen);

void fwd_init(fwd_t *w, int64_t window);
void fwd_free(fwd_t *w);

/* PORT_DATA: queues host bytes. 0, or EPROTO (past the window, or after
 * PORT_SHUTDOWN; nothing queued) or ENOMEM. */
int fwd_take(fwd_t *w, const uint8_t *p, size_t n);
/* n bytes (n <= len) went into the socket: drop them from the queue. */
void fwd_written(fwd_t *w, size_t n);
/* CREDIT: 0, or EINVAL for a negative grant. Saturates instead of overflowing. */
int fwd_credit(fwd_t *w, int64_t bytes);
/* How much may be read from the socket and sent as DATA now (<= MAX_CHUNK). */
size_t fwd_read_max(const fwd_t *w);
/* n bytes (n <= fwd_read_max) were sent as DATA. */
void fwd_sent(fwd_t *w, size_t n);

/* poll() events wanted on the connected socket: POLLIN while there is
 * credit and no EOF yet, POLLOUT while host bytes wait. 0 = leave it alone
 * (polling for nothing would spin on POLLHUP). */
short fwd_events(const fwd_t *w);
/* The host shut its side and everything it sent is written: shut ours. */
int fwd_shut_due(const fwd_t *w);
/* Both directions ended: the stream's final OK is due. */
int fwd_done(const fwd_t *w);

#endif
