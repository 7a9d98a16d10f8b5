/* PORT_OPEN streams: a TCP connection from the agent to a port on the
 * guest's loopback, spliced onto the channel, so the host reaches a server
 * in a guest that has no network device. Flow control lives in fwd.c. */
#ifndef MITOS_FORWARD_H
#define MITOS_FORWARD_H

#include <stdint.h>

#include "frame.h"
#include "stream.h"

void forward_open(uint32_t id, const fields_t *f);                 /* PORT_OPEN */
void forward_data(stream_t *s, const uint8_t *p, size_t n);        /* PORT_DATA */
void forward_shutdown(stream_t *s);                                /* PORT_SHUTDOWN */
void forward_close(stream_t *s);                                   /* PORT_CLOSE */
int forward_credit(stream_t *s, int64_t bytes);                    /* CREDIT: 0 or EINVAL */

/* poll() events to wait for on s->fd (0: do not poll it), and their result. */
short forward_events(const stream_t *s);
void forward_ready(stream_t *s, short revents);
/* Connect timeout. Returns the next deadline or INT64_MAX. */
int64_t forward_tick(stream_t *s, int64_t now);
/* The host that opened it is gone (fork, new session, disconnect): close
 * the socket, so the guest program sees EOF, and send nothing. */
void forward_abort(stream_t *s);

#endif
