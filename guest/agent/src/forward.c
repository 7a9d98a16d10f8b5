/* PORT_OPEN streams (see forward.h and docs/agent-protocol.md). */
#define _GNU_SOURCE
#include "forward.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "port.h"
#include "sysio.h"

static const char *addr_name(int family)
{
	return family == AF_INET6 ? "[::1]" : "127.0.0.1";
}

static void close_sock(stream_t *s)
{
	if (s->fd >= 0)
		close(s->fd);
	s->fd = -1;
}

/* Ends the stream: the socket closes, the host gets the final frame. */
static void finish(stream_t *s)
{
	close_sock(s);
	s->dead = 1;
	send_ok(s->id, NULL);
}

static void fail(stream_t *s, int err, const char *what)
{
	close_sock(s);
	s->dead = 1;
	send_error(s->id, err, "port %d: %s %s:%d: %s", s->port, what, addr_name(s->family), s->port, strerror(err));
}

/* Starts a non-blocking connect to the loopback address of `family`.
 * Returns 0 (s->connecting says whether it is still in progress) or an errno. */
static int start_connect(stream_t *s, int family)
{
	close_sock(s);
	s->family = family;
	s->fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (s->fd < 0)
		return errno;
	int r;
	if (family == AF_INET6) {
		struct sockaddr_in6 a = { .sin6_family = AF_INET6, .sin6_port = htons((uint16_t)s->port),
					  .sin6_addr = IN6ADDR_LOOPBACK_INIT };
		r = connect(s->fd, (struct sockaddr *)&a, sizeof a);
	} else {
		struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)s->port),
					 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
		r = connect(s->fd, (struct sockaddr *)&a, sizeof a);
	}
	s->connecting = r < 0 && errno == EINPROGRESS;
	return r == 0 || s->connecting ? 0 : errno;
}

/* Both directions done, or the host's shutdown due: act on it. */
static void progress(stream_t *s)
{
	if (fwd_shut_due(&s->fwd)) {
		/* The program reads EOF. ENOTCONN (peer already reset) changes nothing. */
		shutdown(s->fd, SHUT_WR);
		s->fwd.wr_done = 1;
	}
	if (fwd_done(&s->fwd))
		finish(s);
}

static void connected(stream_t *s)
{
	uint8_t buf[32];
	fbuf_t b = { .p = buf, .cap = sizeof buf };
	fb_str(&b, F_ADDRESS, s->family == AF_INET6 ? "::1" : "127.0.0.1");
	send_fields(T_STARTED, s->id, &b);
	progress(s); /* PORT_SHUTDOWN may have come while connecting */
}

/* Refused on 127.0.0.1: try ::1 (a server bound to it alone). ::1 is only
 * tried after that refusal, so whatever it answers (refused too, or no IPv6
 * loopback in this guest) means nothing listens. */
static void connect_failed(stream_t *s, int err)
{
	if (s->family == AF_INET && err == ECONNREFUSED) {
		int e6 = start_connect(s, AF_INET6);
		if (e6 == 0) {
			if (!s->connecting)
				connected(s);
			return;
		}
	}
	if (s->family == AF_INET6 || err == ECONNREFUSED) {
		close_sock(s);
		s->dead = 1;
		send_error(s->id, ECONNREFUSED,
			   "port %d: connection refused: nothing listens on 127.0.0.1:%d or [::1]:%d in the guest",
			   s->port, s->port, s->port);
		return;
	}
	fail(s, err, "connect to");
}

void forward_open(uint32_t id, const fields_t *f)
{
	fwd_open_t o;
	char err[128];
	int rc = fwd_parse_open(f, &o, err, sizeof err);
	if (rc) {
		send_error(id, rc, "%s", err);
		return;
	}
	stream_t *s = stream_new(id, S_PORT);
	if (!s) {
		send_error(id, EMFILE, "port %d: too many open streams (%d)", o.port, MAX_STREAMS);
		return;
	}
	s->port = o.port;
	fwd_init(&s->fwd, o.window);
	int64_t now = now_ms();
	s->deadline_ms = o.timeout_ms > 0 && o.timeout_ms < INT64_MAX - now ? now + o.timeout_ms : 0;
	int e = start_connect(s, AF_INET);
	if (e)
		connect_failed(s, e);
	else if (!s->connecting)
		connected(s);
}

void forward_data(stream_t *s, const uint8_t *p, size_t n)
{
	int rc = fwd_take(&s->fwd, p, n);
	if (rc == 0)
		return;
	/* Ends the stream rather than buffer without bound or drop bytes silently. */
	close_sock(s);
	s->dead = 1;
	if (rc == EPROTO)
		send_error(s->id, EPROTO, "protocol: port %d: PORT_DATA past the %d byte window or after PORT_SHUTDOWN",
			   s->port, PORT_WINDOW);
	else
		send_error(s->id, rc, "port %d: %s", s->port, strerror(rc));
}

void forward_shutdown(stream_t *s)
{
	s->fwd.host_shut = 1;
	if (!s->connecting)
		progress(s);
}

void forward_close(stream_t *s)
{
	finish(s);
}

int forward_credit(stream_t *s, int64_t bytes)
{
	return fwd_credit(&s->fwd, bytes);
}

short forward_events(const stream_t *s)
{
	if (s->dead || s->fd < 0)
		return 0;
	return s->connecting ? POLLOUT : fwd_events(&s->fwd);
}

static void write_some(stream_t *s)
{
	ssize_t w = send(s->fd, s->fwd.buf, s->fwd.len, MSG_NOSIGNAL);
	if (w < 0) {
		if (errno != EAGAIN && errno != EINTR)
			fail(s, errno, "write to");
		return;
	}
	fwd_written(&s->fwd, (size_t)w);
	uint8_t buf[16];
	fbuf_t b = { .p = buf, .cap = sizeof buf };
	fb_int(&b, F_BYTES, (int64_t)w);
	send_fields(T_PORT_ACK, s->id, &b);
	progress(s);
}

static void read_some(stream_t *s)
{
	static uint8_t buf[MAX_CHUNK];
	size_t want = fwd_read_max(&s->fwd);
	if (want == 0)
		return;
	ssize_t n = read(s->fd, buf, want);
	if (n < 0) {
		if (errno != EAGAIN && errno != EINTR)
			fail(s, errno, "read from");
		return;
	}
	if (n == 0) {
		s->fwd.rd_eof = 1;
		port_send(T_PORT_EOF, s->id, NULL, 0);
		progress(s);
		return;
	}
	fwd_sent(&s->fwd, (size_t)n);
	port_send(T_DATA, s->id, buf, (size_t)n);
}

void forward_ready(stream_t *s, short revents)
{
	if (s->dead || s->fd < 0)
		return;
	if (s->connecting) {
		int err = 0;
		socklen_t len = sizeof err;
		if (getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
			err = errno;
		if (err == 0) {
			s->connecting = 0;
			connected(s);
		} else if (err != EINPROGRESS && err != EALREADY) {
			connect_failed(s, err);
		}
		return;
	}
	short want = fwd_events(&s->fwd);
	if ((want & POLLOUT) && (revents & (POLLOUT | POLLERR | POLLHUP)))
		write_some(s);
	if (!s->dead && (want & POLLIN) && (revents & (POLLIN | POLLERR | POLLHUP)))
		read_some(s);
}

int64_t forward_tick(stream_t *s, int64_t now)
{
	if (s->dead || !s->connecting || !s->deadline_ms)
		return INT64_MAX;
	if (now < s->deadline_ms)
		return s->deadline_ms;
	fail(s, ETIMEDOUT, "connect to");
	return INT64_MAX;
}

void forward_abort(stream_t *s)
{
	close_sock(s);
	s->dead = 1;
}
