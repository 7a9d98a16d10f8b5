#define _GNU_SOURCE
#include "port.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>
#include <unistd.h>

#include "sysio.h"

static int conn_fd = -1;
static int broken;

static int find_port(char *dev, size_t cap)
{
	DIR *d = opendir("/sys/class/virtio-ports");
	if (!d)
		return -1;
	struct dirent *e;
	int found = -1;
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		char path[512], name[128];
		snprintf(path, sizeof path, "/sys/class/virtio-ports/%s/name", e->d_name);
		if (read_small(path, name, sizeof name) < 0)
			continue;
		name[strcspn(name, "\n")] = 0;
		if (strcmp(name, "mitos.agent") != 0)
			continue;
		snprintf(dev, cap, "/dev/%s", e->d_name);
		/* Without devtmpfs the node may be missing: make it from sysfs. */
		struct stat st;
		if (stat(dev, &st) < 0) {
			unsigned maj, min;
			char devno[64];
			snprintf(path, sizeof path, "/sys/class/virtio-ports/%s/dev", e->d_name);
			if (read_small(path, devno, sizeof devno) > 0 &&
			    sscanf(devno, "%u:%u", &maj, &min) == 2)
				mknod(dev, S_IFCHR | 0600, makedev(maj, min));
		}
		found = 0;
		break;
	}
	closedir(d);
	return found;
}

int port_open_vm(void)
{
	int64_t start = now_ms();
	int warned = 0;
	for (;;) {
		char dev[300];
		if (find_port(dev, sizeof dev) == 0) {
			int fd = open(dev, O_RDWR | O_CLOEXEC | O_NOCTTY);
			if (fd >= 0) {
				logmsg("using port %s", dev);
				return fd;
			}
			if (!warned)
				logmsg("open %s: %s", dev, strerror(errno));
		}
		if (!warned && now_ms() - start > 10000) {
			logmsg("virtio port \"mitos.agent\" not found after 10 s; still looking");
			warned = 1;
		}
		usleep(warned ? 1000000 : 50000);
	}
}

void port_set_fd(int fd)
{
	conn_fd = fd;
	broken = 0;
}

int port_fd(void)
{
	return conn_fd;
}

int port_broken(void)
{
	return broken;
}

void port_send(uint8_t type, uint32_t stream, const void *p, size_t n)
{
	if (conn_fd < 0 || broken || n > MAX_PAYLOAD)
		return;
	uint8_t hdr[FRAME_HEADER];
	frame_header(hdr, type, stream, (uint32_t)n);
	struct iovec iov[2] = {
		{ .iov_base = hdr, .iov_len = sizeof hdr },
		{ .iov_base = (void *)p, .iov_len = n },
	};
	int idx = 0;
	/* Finish the whole frame even across partial writes: a half frame
	 * would desynchronise the host. */
	while (idx < 2) {
		if (iov[idx].iov_len == 0) {
			idx++;
			continue;
		}
		ssize_t w = writev(conn_fd, iov + idx, 2 - idx);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN) {
				struct pollfd pfd = { .fd = conn_fd, .events = POLLOUT };
				poll(&pfd, 1, 1000);
				continue;
			}
			logmsg("write to host: %s", strerror(errno));
			broken = 1;
			return;
		}
		size_t left = (size_t)w;
		while (idx < 2 && left >= iov[idx].iov_len) {
			left -= iov[idx].iov_len;
			idx++;
		}
		if (idx < 2) {
			iov[idx].iov_base = (char *)iov[idx].iov_base + left;
			iov[idx].iov_len -= left;
		}
	}
}

void send_fields(uint8_t type, uint32_t stream, const fbuf_t *b)
{
	if (b && b->oom) {
		send_error(stream, ENOMEM, "reply too large or out of memory");
		return;
	}
	port_send(type, stream, b ? b->p : NULL, b ? b->len : 0);
}

void send_ok(uint32_t stream, const fbuf_t *b)
{
	send_fields(T_OK, stream, b);
}

void send_error(uint32_t stream, int err, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	uint8_t buf[sizeof msg + 32];
	fbuf_t b = { .p = buf, .cap = sizeof buf }; /* fixed buffer, no malloc */
	fb_int(&b, F_ERRNO, err);
	fb_str(&b, F_MESSAGE, msg);
	port_send(T_ERROR, stream, b.p, b.len);
}
