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
#include <sys/mount.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/uio.h>
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

/* Sends sig to every registered pid (0: only checks it is alive); forgets
 * the dead ones. Returns how many it reached. */
static int signal_registered(int sig)
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
		if (kill((pid_t)pid, sig) == 0)
			count++;
		else if (errno == ESRCH)
			unlinkat(dirfd(d), e->d_name, 0);
	}
	closedir(d);
	return count;
}

/* Writes text + end to path through a temp file and rename, so readers
 * never see half of it. 0 or -1 with errno. */
static int write_file_atomic(const char *path, const char *text, const char *end)
{
	char tmp[256];
	if (snprintf(tmp, sizeof tmp, "%s.mitos-tmp", path) >= (int)sizeof tmp) {
		errno = ENAMETOOLONG;
		return -1;
	}
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return -1;
	int rc = write_all(fd, text, strlen(text));
	if (rc == 0)
		rc = write_all(fd, end, strlen(end));
	int e = errno;
	close(fd);
	if (rc < 0) {
		unlink(tmp);
		errno = e;
		return -1;
	}
	return rename(tmp, path);
}

/* Replaces path's content with text + end in place, creating it with mode
 * when create is set: written over the old bytes, then cut to length. In
 * place, not through a temp file and a rename: a bind mount pins the inode
 * (the boot id, /etc/hostname), and under TCG every fork child's QEMU
 * translates the kernel code a notice runs, where the rename path cost
 * ~1,000 blocks and the overlay's create ~1,200 more; overwriting rather
 * than truncating first keeps the page (no free and new allocation, ~1,000
 * more) and a reader never sees the file empty (docs/decisions/0033); it is
 * cut only when the length changes (names and ids of one length replace each
 * other byte for byte). 0; 1 when the file was empty before (new: perhaps
 * not the inode a bind mount shows); or -1 with errno. */
static int write_file_in_place(const char *path, const char *text, const char *end, int create, mode_t mode)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC | (create ? O_CREAT : 0), mode);
	if (fd < 0)
		return -1;
	struct iovec iov[2] = { { (void *)text, strlen(text) }, { (void *)end, strlen(end) } };
	size_t want = iov[0].iov_len + iov[1].iov_len;
	off_t had = lseek(fd, 0, SEEK_END);
	ssize_t w = pwritev(fd, iov, 2, 0);
	int rc = 0;
	if (w < 0 || had < 0)
		rc = -1;
	else if ((size_t)w != want) {
		errno = EIO; /* a short write to tmpfs: out of space */
		rc = -1;
	} else if ((size_t)had != want && ftruncate(fd, (off_t)want) < 0)
		rc = -1;
	int e = errno;
	close(fd);
	if (rc < 0)
		errno = e;
	return rc < 0 ? -1 : had == 0;
}

/* A file in /run/mitos (init makes the directory), made again if a command
 * removed it or the directory: the notice must not fail for it. As
 * write_file_in_place: 0, 1 for a new file, or -1 with errno. */
static int write_run_file(const char *path, const char *text, mode_t mode)
{
	int w = write_file_in_place(path, text, "", 1, mode);
	if (w >= 0 || errno != ENOENT || mkdir_p("/run/mitos", 0755) < 0)
		return w;
	return write_file_in_place(path, text, "", 1, mode);
}

static int write_id(const char *id)
{
	return write_run_file("/run/mitos/sandbox-id", id, 0644) < 0 ? -1 : 0;
}

#define HOSTNAME_FILE "/run/mitos/hostname"

/* /etc/hostname is a bind mount of /run/mitos/hostname (guest/image/init);
 * where init could not bind it, the file itself, through a rename. */
static int write_hostname(const char *host)
{
	if (write_file_in_place(HOSTNAME_FILE, host, "\n", 0, 0) >= 0)
		return 0;
	if (errno != ENOENT)
		return -1;
	return write_file_atomic("/etc/hostname", host, "\n");
}

#define BOOT_ID_PROC "/proc/sys/kernel/random/boot_id"
#define BOOT_ID_FILE "/run/mitos/boot_id"

/* Gives this copy of the kernel a boot id of its own: a fresh random UUID in
 * /run/mitos/boot_id, bind-mounted over the kernel's (which every restore of
 * one template shares). Written in place, so a later notice updates what the
 * existing mount shows. Needs the reseed done first. 0 or -1 with errno. */
static int new_boot_id(void)
{
	uint8_t r[16];
	if (getrandom(r, sizeof r, 0) != (ssize_t)sizeof r)
		return -1;
	r[6] = (uint8_t)((r[6] & 0x0f) | 0x40); /* version 4 */
	r[8] = (uint8_t)((r[8] & 0x3f) | 0x80); /* RFC 4122 variant */
	char id[40];
	snprintf(id, sizeof id,
			 "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x\n", r[0], r[1],
			 r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11], r[12], r[13], r[14], r[15]);
	/* Already bound (a second notice, or a fork of a fork: the flag is in
	 * guest memory, so children skip the two path lookups): the new content
	 * shows through; a file made anew (a command removed it) is bound again. */
	static int bound;
	int w = write_run_file(BOOT_ID_FILE, id, 0444);
	if (w < 0)
		return -1;
	if (w == 1)
		bound = 0;
	if (bound)
		return 0;
	struct stat a, b;
	if (stat(BOOT_ID_PROC, &a) == 0 && stat(BOOT_ID_FILE, &b) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino) {
		bound = 1;
		return 0;
	}
	if (mount(BOOT_ID_FILE, BOOT_ID_PROC, NULL, MS_BIND, NULL) < 0) {
		/* What is bound there is a file a command removed (the kernel will
		 * not mount on a deleted file): the new one takes its place. */
		if (errno != ENOENT || umount2(BOOT_ID_PROC, MNT_DETACH) < 0 ||
		    mount(BOOT_ID_FILE, BOOT_ID_PROC, NULL, MS_BIND, NULL) < 0)
			return -1;
	}
	bound = 1;
	return 0;
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
	/* SIGNAL 0: the host renames a VM whose registered processes were
	 * signalled since its memory was last copied (a warm VM's claim), and
	 * waking them again would only hold up the first command. */
	int sig = SIGUSR2;
	if (f->have[F_SIGNAL]) {
		if (f->ival[F_SIGNAL] != 0 && f->ival[F_SIGNAL] != SIGUSR2) {
			send_error(id, EINVAL, "fork-notify: SIGNAL must be 0 or %d", SIGUSR2);
			return -1;
		}
		sig = (int)f->ival[F_SIGNAL];
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
	/* Programs that read the file rather than uname(2) see the same name.
	 * Best effort: an image may keep /etc read-only. */
	if (host && write_hostname(host) < 0)
		logmsg("fork-notify: /etc/hostname: %s", strerror(errno));
	const char *sid = f->sval[F_SANDBOX_ID];
	if (sid && write_id(sid) < 0) {
		send_error(id, errno, "fork-notify: write /run/mitos/sandbox-id: %s", strerror(errno));
		return -1;
	}
	if (new_boot_id() < 0) {
		send_error(id, errno, "fork-notify: new boot id on %s: %s", BOOT_ID_PROC, strerror(errno));
		return -1;
	}
	uint8_t buf[64];
	fbuf_t b = { .p = buf, .cap = sizeof buf };
	fb_int(&b, F_RESEEDED, 1);
	fb_int(&b, F_NOTIFIED, sig ? signal_registered(0) : 0);
	fb_int(&b, F_CLOCK_STEP_NS, step);
	send_ok(id, &b);
	/* Signalled after the answer: a woken process (the python template's
	 * kernel) preempts the agent on a one-vCPU guest, and the answer would
	 * wait for its handler. Frames that follow are read only after this. */
	if (sig)
		signal_registered(sig);
	return 0;
}
