/* The channel to the host: finding the virtio port, and sending frames. */
#ifndef MITOS_PORT_H
#define MITOS_PORT_H

#include <stddef.h>
#include <stdint.h>

#include "frame.h"

/* VM mode: find /dev/vportNpM named "mitos.agent" and open it O_RDWR.
 * Retries for ~10 s, then keeps retrying slowly; never gives up. */
int port_open_vm(void);

void port_set_fd(int fd); /* the live connection, -1 for none */
int port_fd(void);
int port_broken(void);    /* a write failed for good (peer went away) */

/* Frames are written whole, blocking if need be, so they never interleave. */
void port_send(uint8_t type, uint32_t stream, const void *p, size_t n);
void send_fields(uint8_t type, uint32_t stream, const fbuf_t *b);
void send_ok(uint32_t stream, const fbuf_t *b); /* b may be NULL */
void send_error(uint32_t stream, int err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

#endif
