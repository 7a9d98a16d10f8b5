/* Unit tests of a port forward's flow-control state (src/fwd.c). */
#define _DEFAULT_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "frame.h"
#include "fwd.h"


static int parse_open(fwd_open_t *o, int64_t port, int64_t window, int64_t timeout)
{
	fbuf_t b;
	fb_init(&b);
	if (port >= 0)
		fb_int(&b, F_PORT, port);
	if (window >= -1)
		fb_int(&b, F_WINDOW, window);
	if (timeout >= -1)
		fb_int(&b, F_TIMEOUT_MS, timeout);
	fields_t f;
	char err[128];
	int rc = fields_parse(b.p, b.len, &f, err, sizeof err);
	if (rc == 0)
		rc = fwd_parse_open(&f, o, err, sizeof err);
	fields_free(&f);
	fb_free(&b);
	return rc;
}

static void test_open_fields(void)
{
	fwd_open_t o;
	CHECK(parse_open(&o, 8000, -2, -2) == 0);
	CHECK(o.port == 8000 && o.window == DEFAULT_WINDOW && o.timeout_ms == PORT_CONNECT_MS);
	CHECK(parse_open(&o, 1, 0, 0) == 0 && o.port == 1 && o.window == 0 && o.timeout_ms == 0);
	CHECK(parse_open(&o, 65535, 5, 7) == 0 && o.port == 65535 && o.window == 5 && o.timeout_ms == 7);
	CHECK(parse_open(&o, -1, -2, -2) == EINVAL); /* no PORT */
	CHECK(parse_open(&o, 0, -2, -2) == EINVAL);
	CHECK(parse_open(&o, 65536, -2, -2) == EINVAL);
	CHECK(parse_open(&o, 80, -1, -2) == EINVAL);
	CHECK(parse_open(&o, 80, -2, -1) == EINVAL);
}

static void test_window(void)
{
	static uint8_t data[PORT_WINDOW + 1];
	for (size_t i = 0; i < sizeof data; i++)
		data[i] = (uint8_t)(i * 7);
	fwd_t w;
	fwd_init(&w, 100);
	CHECK(fwd_events(&w) == POLLIN);
	CHECK(fwd_take(&w, data, 1000) == 0 && w.len == 1000);
	CHECK(fwd_events(&w) == (POLLIN | POLLOUT));
	/* exactly the window fits, one byte more is refused and queues nothing */
	CHECK(fwd_take(&w, data + 1000, PORT_WINDOW - 1000) == 0 && w.len == PORT_WINDOW);
	CHECK(fwd_take(&w, data, 1) == EPROTO && w.len == PORT_WINDOW);
	CHECK(w.cap == PORT_WINDOW && !memcmp(w.buf, data, PORT_WINDOW));
	fwd_written(&w, 300);
	CHECK(w.len == PORT_WINDOW - 300 && !memcmp(w.buf, data + 300, w.len));
	fwd_written(&w, 0);
	fwd_written(&w, PORT_WINDOW); /* more than queued: clamped */
	CHECK(w.len == 0 && fwd_events(&w) == POLLIN);
	CHECK(fwd_take(&w, data, 0) == 0 && w.len == 0);
	fwd_free(&w);

	fwd_init(&w, 0);
	CHECK(fwd_take(&w, data, PORT_WINDOW + 1) == EPROTO && w.len == 0 && w.buf == NULL);
	fwd_free(&w);
}

static void test_credit(void)
{
	fwd_t w;
	fwd_init(&w, 10);
	CHECK(fwd_read_max(&w) == 10);
	fwd_sent(&w, 10);
	CHECK(fwd_read_max(&w) == 0 && fwd_events(&w) == 0); /* out of credit: do not poll */
	CHECK(fwd_credit(&w, -1) == EINVAL && w.credit == 0);
	CHECK(fwd_credit(&w, 1 << 20) == 0 && fwd_read_max(&w) == MAX_CHUNK);
	CHECK(fwd_credit(&w, INT64_MAX) == 0 && w.credit == 1 << 20); /* would overflow: ignored */
	w.rd_eof = 1;
	CHECK(fwd_read_max(&w) == 0 && fwd_events(&w) == 0);
	fwd_free(&w);
	fwd_init(&w, -5);
	CHECK(w.credit == 0);
	fwd_free(&w);
}

static void test_half_close(void)
{
	uint8_t data[10] = { 0 };
	fwd_t w;
	fwd_init(&w, 100);
	CHECK(fwd_take(&w, data, 10) == 0);
	w.host_shut = 1;
	CHECK(!fwd_shut_due(&w)); /* still bytes to write */
	CHECK(fwd_take(&w, data, 1) == EPROTO); /* data after PORT_SHUTDOWN */
	CHECK(fwd_take(&w, data, 0) == EPROTO);
	fwd_written(&w, 10);
	CHECK(fwd_shut_due(&w) && !fwd_done(&w));
	w.wr_done = 1;
	CHECK(!fwd_shut_due(&w) && !fwd_done(&w) && fwd_events(&w) == POLLIN);
	w.rd_eof = 1;
	CHECK(fwd_done(&w) && fwd_events(&w) == 0);
	fwd_free(&w);
}

int main(void)
{
	test_open_fields();
	test_window();
	test_credit();
	test_half_close();
	printf("test_fwd: %d passed, %d failed\n", passed, failed);
	return failed ? 1 : 0;
}
