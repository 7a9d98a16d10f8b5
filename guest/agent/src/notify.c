#define _GNU_SOURCE
#include "notify.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/random.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "port.h"
#include "sysio.h"

#ifndef RNDRESEEDCRNG
#define RNDRESEEDCRNG _IO('R', 0x07)
#endif

#define NOTIFY_DIR "/run/mitos/notify"

/* Mix host entropy into the pool (credited) and force a CRNG reseed so
 * clones stop sharing the snapshot's random state. 0 or errno. */
static int reseed(const uint8_t *p, uint32_t n, const char **what)
{
	/* struct rand_pool_info ends in a flexible array: back it with words. */
	uint32_t req[2 + 512 / 4];
	struct rand_pool_info *info = (struct rand_pool_info *)req;
	memset(req, 0, sizeof req);
	info->entropy_count = (int)(n * 8);
	info->buf_size = (int)n;
	memcpy(req + 2, p, n);
	*what = "open /dev/urandom";
	int fd = open("/dev/urandom", O_RDWR | O_CLOEXEC);
	if (fd < 0)
		return errno;
	int rc = 0;
	*what = "RNDADDENTROPY";
	if (ioctl(fd, RNDADDENTROPY, info) < 0) {
		rc = errno;
	} else {
		*what = "RNDRESEEDCRNG";
		if (ioctl(fd, RNDRESEEDCRNG) < 0)
			rc = errno;
	}
	close(fd);
	explicit_bzero(&req, sizeof req);
	return rc;
}

/* SIGUSR2 every registered pid; forget the dead ones. */
static int notify_registered(void)
{
	DIR *d = opendir(NOTIFY_DIR);
	if (!d)
		return 0;
	int count = 0;
	struct dirent *e;
	while ((e = readdir(d))) {
		char *end;
		if (!isdigit((unsigned char)e->d_name[0]))
			continue;
		long pid = strtol(e->d_name, &end, 10);
		if (*end || pid <= 1)
			continue;
		if (kill((pid_t)pid, SIGUSR2) == 0)
			count++;
		else if (errno == ESRCH)
			unlinkat(dirfd(d), e->d_name, 0);
	}
	closedir(d);
	return count;
}

static int write_id(const char *id)
{
	if (mkdir_p("/run/mitos", 0755) < 0)
		return -1;
	/* Write then rename so readers never see a half-written id. */
	int fd = open("/run/mitos/.sandbox-id.tmp", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return -1;
	int rc = write_all(fd, id, strlen(id));
	int e = errno;
	close(fd);
	if (rc < 0) {
		errno = e;
		return -1;
	}
	return rename("/run/mitos/.sandbox-id.tmp", "/run/mitos/sandbox-id");
}

/* Steps CLOCK_REALTIME to t (ns since the epoch); *step gets new - old.
 * Returns 0 or an errno. */
static int step_clock(int64_t t, int64_t *step)
{
	struct timespec old, now;
	if (t < 0)
		return EINVAL;
	clock_gettime(CLOCK_REALTIME, &old);
	now.tv_sec = t / 1000000000;
	now.tv_nsec = t % 1000000000;
	if (clock_settime(CLOCK_REALTIME, &now) < 0)
		return errno;
	*step = t - ((int64_t)old.tv_sec * 1000000000 + old.tv_nsec);
	return 0;
}

void set_clock(uint32_t id, const fields_t *f, int vm_mode)
{
	if (!vm_mode) {
		send_error(id, EPERM, "set-clock only runs inside a VM");
		return;
	}
	if (!f->have[F_TIME_NS]) {
		send_error(id, EINVAL, "set-clock: TIME_NS is required");
		return;
	}
	int64_t step = 0;
	int rc = step_clock(f->ival[F_TIME_NS], &step);
	if (rc) {
		send_error(id, rc, "set-clock: clock_settime: %s", strerror(rc));
		return;
	}
	uint8_t buf[32];
	fbuf_t b = { .p = buf, .cap = sizeof buf };
	fb_int(&b, F_CLOCK_STEP_NS, step);
	send_ok(id, &b);
}

int fork_notify(uint32_t id, const fields_t *f, int vm_mode)
{
	if (!vm_mode) {
		/* Test mode runs on a developer's host: never touch its clock,
		 * hostname or entropy pool. */
		send_error(id, EPERM, "fork-notify only runs inside a VM");
		return -1;
	}
	if (!f->have[F_ENTROPY] || f->blen < 16 || f->blen > 512) {
		send_error(id, EINVAL, "fork-notify: ENTROPY must be 16..512 bytes");
		return -1;
	}
	const char *what;
	int rc = reseed(f->bval, f->blen, &what);
	if (rc) {
		send_error(id, rc, "fork-notify: %s: %s", what, strerror(rc));
		return -1;
	}
	int64_t step = 0;
	if (f->have[F_TIME_NS] && (rc = step_clock(f->ival[F_TIME_NS], &step)) != 0) {
		send_error(id, rc, "fork-notify: clock_settime: %s", strerror(rc));
		return -1;
	}
	const char *host = f->sval[F_HOSTNAME];
	if (host && sethostname(host, strlen(host)) < 0) {
		send_error(id, errno, "fork-notify: sethostname %s: %s", host, strerror(errno));
		return -1;
	}
	const char *sid = f->sval[F_SANDBOX_ID];
	if (sid && write_id(sid) < 0) {
		send_error(id, errno, "fork-notify: write /run/mitos/sandbox-id: %s", strerror(errno));
		return -1;
	}
	uint8_t buf[64];
	fbuf_t b = { .p = buf, .cap = sizeof buf };
	fb_int(&b, F_RESEEDED, 1);
	fb_int(&b, F_NOTIFIED, notify_registered());
	fb_int(&b, F_CLOCK_STEP_NS, step);
	send_ok(id, &b);
	return 0;
}
