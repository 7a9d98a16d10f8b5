/* libFuzzer target: a port forward's conversation. The input is decoded as
 * host frames (same corpus format as fuzz_frame: byte 0 is a mode byte);
 * PORT_OPEN, PORT_DATA, CREDIT, PORT_SHUTDOWN and PORT_CLOSE are applied to
 * the forward's flow-control state (src/fwd.c) as the agent does, and after
 * every frame a simulated socket, steered by the frame's stream id, takes
 * and gives some bytes. Checks what the host relies on: the agent never
 * holds more than PORT_WINDOW of host bytes, never sends past its credit,
 * acknowledges exactly what it wrote, and ends a stream at most once. */
#define _DEFAULT_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "frame.h"
#include "fwd.h"

#define BIG (FRAME_HEADER + MAX_PAYLOAD)

typedef struct {
	int open, ended;
	fwd_t w;
	uint64_t taken, written; /* host bytes queued / written to the "socket" */
	int64_t granted, sent;   /* credit given (window + CREDIT) / DATA sent */
} sim_t;

static void end(sim_t *s)
{
	if (s->ended)
		abort(); /* a second final frame */
	s->ended = 1;
	fwd_free(&s->w);
}

static void check(const sim_t *s)
{
	const fwd_t *w = &s->w;
	if (w->len > PORT_WINDOW || w->len > w->cap || (w->len && !w->buf))
		abort();
	if (s->taken != s->written + w->len)
		abort();
	if (w->credit < 0 || s->sent > s->granted)
		abort();
	size_t max = fwd_read_max(w);
	if (max > MAX_CHUNK || (int64_t)max > w->credit || (w->rd_eof && max))
		abort();
	short ev = fwd_events(w);
	if (((ev & POLLOUT) != 0) != (w->len > 0 && !w->wr_done))
		abort();
	if (((ev & POLLIN) != 0) != (max > 0))
		abort();
	if (w->wr_done && (!w->host_shut || w->len))
		abort();
}

/* The socket takes some of the queued bytes, gives some, or reports EOF. */
static void socket_step(sim_t *s, uint32_t how)
{
	fwd_t *w = &s->w;
	short ev = fwd_events(w);
	if (ev & POLLOUT) {
		size_t k = (how & 0xFFFF) % (w->len + 1);
		fwd_written(w, k);
		s->written += k;
	}
	if (ev & POLLIN) {
		if (how & 0x80000000u) {
			w->rd_eof = 1;
		} else {
			size_t k = ((how >> 16) & 0x7FFF) * 3 % (fwd_read_max(w) + 1);
			fwd_sent(w, k);
			s->sent += (int64_t)k;
		}
	}
	if (fwd_shut_due(w))
		w->wr_done = 1;
	check(s);
	if (fwd_done(w))
		end(s);
}

static void on_frame(sim_t *s, const frame_t *f)
{
	fields_t fs;
	char err[256];
	if (!s->open) {
		if (f->type != T_PORT_OPEN)
			return;
		fwd_open_t o;
		int rc = fields_parse(f->payload, f->len, &fs, err, sizeof err);
		if (rc == 0)
			rc = fwd_parse_open(&fs, &o, err, sizeof err);
		fields_free(&fs);
		if (rc)
			return; /* answered with ERROR: no stream */
		if (o.port < 1 || o.port > 65535 || o.window < 0 || o.timeout_ms < 0)
			abort();
		s->open = 1;
		fwd_init(&s->w, o.window);
		s->granted = o.window;
		return;
	}
	if (s->ended)
		return; /* late frames for a finished stream are dropped */
	switch (f->type) {
	case T_PORT_DATA: {
		size_t before = s->w.len;
		int rc = fwd_take(&s->w, f->payload, f->len);
		if (rc) {
			if (rc != EPROTO && rc != ENOMEM)
				abort();
			if (s->w.len != before)
				abort(); /* a refused frame queues nothing */
			end(s);
			return;
		}
		if (f->len && memcmp(s->w.buf + before, f->payload, f->len) != 0)
			abort();
		s->taken += f->len;
		break;
	}
	case T_CREDIT:
		if (fields_parse(f->payload, f->len, &fs, err, sizeof err) == 0 && fs.have[F_BYTES]) {
			int64_t before = s->w.credit;
			int rc = fwd_credit(&s->w, fs.ival[F_BYTES]);
			if ((rc != 0) != (fs.ival[F_BYTES] < 0) || s->w.credit < before)
				abort();
			if (rc == 0 && s->granted < ((int64_t)1 << 62) - fs.ival[F_BYTES])
				s->granted += fs.ival[F_BYTES];
			else if (rc == 0)
				s->granted = INT64_MAX; /* saturated: the bound no longer says much */
		}
		fields_free(&fs);
		break;
	case T_PORT_SHUTDOWN:
		s->w.host_shut = 1;
		break;
	case T_PORT_CLOSE:
		end(s);
		return;
	default:
		return;
	}
	check(s);
	socket_step(s, f->stream);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static uint8_t *buf;
	if (!buf)
		buf = malloc(BIG);
	if (size < 1)
		return 0;
	size_t chunk = 1 + (size_t)(data[0] >> 3) * 37;
	data++;
	size--;
	decoder_t d;
	dec_init(&d, buf, BIG);
	sim_t s;
	memset(&s, 0, sizeof s);
	size_t off = 0;
	while (off < size) {
		size_t avail;
		uint8_t *sp = dec_space(&d, &avail);
		size_t n = size - off < chunk ? size - off : chunk;
		if (n > avail)
			n = avail;
		memcpy(sp, data + off, n);
		dec_commit(&d, n);
		off += n;
		frame_t f;
		int r;
		while ((r = dec_next(&d, &f)) != DEC_NEED)
			if (r == DEC_FRAME)
				on_frame(&s, &f);
	}
	if (s.open && !s.ended)
		fwd_free(&s.w);
	return 0;
}
