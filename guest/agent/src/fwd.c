/* Flow-control state of a port forward (see fwd.h). */
#define _DEFAULT_SOURCE
#include "fwd.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int fwd_parse_open(const fields_t *f, fwd_open_t *o, char *err, size_t errlen)
{
	if (!f->have[F_PORT] || f->ival[F_PORT] < 1 || f->ival[F_PORT] > 65535) {
		snprintf(err, errlen, "port: need PORT in 1..65535");
		return EINVAL;
	}
	if ((f->have[F_WINDOW] && f->ival[F_WINDOW] < 0) || (f->have[F_TIMEOUT_MS] && f->ival[F_TIMEOUT_MS] < 0)) {
		snprintf(err, errlen, "port %d: negative WINDOW or TIMEOUT_MS", (int)f->ival[F_PORT]);
		return EINVAL;
	}
	o->port = (int)f->ival[F_PORT];
	o->window = f->have[F_WINDOW] ? f->ival[F_WINDOW] : DEFAULT_WINDOW;
	o->timeout_ms = f->have[F_TIMEOUT_MS] ? f->ival[F_TIMEOUT_MS] : PORT_CONNECT_MS;
	return 0;
}

void fwd_init(fwd_t *w, int64_t window)
{
	memset(w, 0, sizeof *w);
	w->credit = window < 0 ? 0 : window;
}

void fwd_free(fwd_t *w)
{
	free(w->buf);
	w->buf = NULL;
	w->len = w->cap = 0;
}

int fwd_take(fwd_t *w, const uint8_t *p, size_t n)
{
	/* The host may have at most PORT_WINDOW unacknowledged: more is a
	 * broken or hostile host, and buffering it would be unbounded. */
	if (w->host_shut || n > PORT_WINDOW - w->len)
		return EPROTO;
	if (n == 0)
		return 0;
	if (w->len + n > w->cap) {
		size_t cap = w->cap ? w->cap : 65536;
		while (cap < w->len + n)
			cap *= 2;
		if (cap > PORT_WINDOW)
			cap = PORT_WINDOW;
		uint8_t *q = realloc(w->buf, cap);
		if (!q)
			return ENOMEM;
		w->buf = q;
		w->cap = cap;
	}
	memcpy(w->buf + w->len, p, n);
	w->len += n;
	return 0;
}

void fwd_written(fwd_t *w, size_t n)
{
	if (n == 0)
		return;
	if (n > w->len)
		n = w->len;
	memmove(w->buf, w->buf + n, w->len - n);
	w->len -= n;
}

int fwd_credit(fwd_t *w, int64_t bytes)
{
	if (bytes < 0)
		return EINVAL;
	if (w->credit < ((int64_t)1 << 62) - bytes)
		w->credit += bytes;
	return 0;
}

size_t fwd_read_max(const fwd_t *w)
{
	if (w->rd_eof || w->credit <= 0)
		return 0;
	return w->credit < MAX_CHUNK ? (size_t)w->credit : MAX_CHUNK;
}

void fwd_sent(fwd_t *w, size_t n)
{
	w->credit -= (int64_t)n;
}

short fwd_events(const fwd_t *w)
{
	short ev = 0;
	if (fwd_read_max(w) > 0)
		ev |= POLLIN;
	if (w->len > 0 && !w->wr_done)
		ev |= POLLOUT;
	return ev;
}

int fwd_shut_due(const fwd_t *w)
{
	return w->host_shut && w->len == 0 && !w->wr_done;
}

int fwd_done(const fwd_t *w)
{
	return w->rd_eof && w->wr_done;
}
