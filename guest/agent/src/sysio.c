#define _GNU_SOURCE
#include "sysio.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

void logmsg(const char *fmt, ...)
{
	char line[512];
	va_list ap;
	int n = snprintf(line, sizeof line, "mitos-agent: ");
	va_start(ap, fmt);
	vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
	va_end(ap);
	size_t len = strlen(line);
	line[len++] = '\n';
	/* One write per line so messages from PID 1 do not interleave. */
	ssize_t w = write(2, line, len);
	(void)w;
}

int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

ssize_t read_small(const char *path, char *buf, size_t cap)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	size_t len = 0;
	while (len + 1 < cap) {
		ssize_t r = read(fd, buf + len, cap - 1 - len);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			int e = errno;
			close(fd);
			errno = e;
			return -1;
		}
		if (r == 0)
			break;
		len += (size_t)r;
	}
	close(fd);
	buf[len] = 0;
	return (ssize_t)len;
}

int mkdir_p(const char *path, mode_t mode)
{
	return mkdir_p_owned(path, mode, -1, -1);
}

int mkdir_p_owned(const char *path, mode_t mode, int64_t uid, int64_t gid)
{
	char tmp[4096];
	size_t n = strlen(path);
	if (n == 0 || n >= sizeof tmp) {
		errno = n ? ENAMETOOLONG : ENOENT;
		return -1;
	}
	memcpy(tmp, path, n + 1);
	/* Create each prefix in turn; the last one with the asked mode. */
	for (size_t i = 1; i <= n; i++) {
		if (tmp[i] != '/' && tmp[i] != 0)
			continue;
		if (tmp[i - 1] == '/')
			continue; /* repeated slashes */
		char c = tmp[i];
		tmp[i] = 0;
		if (mkdir(tmp, mode) == 0) {
			if ((uid >= 0 || gid >= 0) && lchown(tmp, (uid_t)uid, (gid_t)gid) < 0)
				return -1;
		} else {
			int e = errno;
			struct stat st;
			if (stat(tmp, &st) < 0 || !S_ISDIR(st.st_mode)) {
				errno = (e == EEXIST) ? ENOTDIR : e;
				return -1;
			}
		}
		tmp[i] = c;
	}
	return 0;
}

int write_all(int fd, const void *buf, size_t n)
{
	const char *p = buf;
	while (n > 0) {
		ssize_t w = write(fd, p, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0 && errno == EAGAIN) {
			struct pollfd pfd = { .fd = fd, .events = POLLOUT };
			poll(&pfd, 1, 1000);
			continue;
		}
		if (w < 0)
			return -1;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}
