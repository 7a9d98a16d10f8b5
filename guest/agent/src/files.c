#define _GNU_SOURCE
#include "files.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "port.h"
#include "sysio.h"

/* Every file request names a PATH; answer EINVAL when it is missing. */
static const char *need_path(uint32_t id, const fields_t *f, int tag, const char *op)
{
	const char *p = f->sval[tag];
	if (!p || !*p) {
		send_error(id, EINVAL, "%s: %s missing", op, tag == F_TO ? "TO" : "PATH");
		return NULL;
	}
	return p;
}

static int64_t mode_or(const fields_t *f, int64_t def)
{
	if (!f->have[F_MODE])
		return def;
	return (f->ival[F_MODE] >= 0 && f->ival[F_MODE] <= 07777) ? f->ival[F_MODE] : -1;
}

/* The optional owner (UID, GID) of what WRITE_OPEN and MKDIR create; an
 * absent id is -1 (left as it is). Returns -1 for an id out of range. */
static int owner_of(const fields_t *f, int64_t *uid, int64_t *gid)
{
	*uid = f->have[F_UID] ? f->ival[F_UID] : -1;
	*gid = f->have[F_GID] ? f->ival[F_GID] : -1;
	if ((f->have[F_UID] && (*uid < 0 || *uid >= 0xFFFFFFFFLL)) ||
	    (f->have[F_GID] && (*gid < 0 || *gid >= 0xFFFFFFFFLL)))
		return -1;
	return 0;
}

static void copy_path(stream_t *s, const char *p)
{
	snprintf(s->path, sizeof s->path, "%s", p);
}

/* ---- READ ---- */

void file_read_start(uint32_t id, const fields_t *f)
{
	const char *path = need_path(id, f, F_PATH, "read");
	if (!path)
		return;
	int64_t off = f->ival[F_OFFSET], len = f->ival[F_LENGTH];
	int64_t win = f->have[F_WINDOW] ? f->ival[F_WINDOW] : DEFAULT_WINDOW;
	if (off < 0 || len < 0 || win < 0) {
		send_error(id, EINVAL, "read %s: negative OFFSET, LENGTH or WINDOW", path);
		return;
	}
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		send_error(id, errno, "read %s: %s", path, strerror(errno));
		return;
	}
	struct stat st;
	if (fstat(fd, &st) == 0 && S_ISDIR(st.st_mode)) {
		close(fd);
		send_error(id, EISDIR, "read %s: %s", path, strerror(EISDIR));
		return;
	}
	stream_t *s = stream_new(id, S_READ);
	if (!s) {
		close(fd);
		send_error(id, EMFILE, "read %s: too many open streams", path);
		return;
	}
	s->fd = fd;
	s->offset = off;
	s->remaining = len > 0 ? len : -1;
	s->credit = win;
	copy_path(s, path);
}

static void read_finish(stream_t *s)
{
	uint8_t buf[16];
	fbuf_t b = { .p = buf, .cap = sizeof buf };
	fb_int(&b, F_SIZE, s->done);
	send_ok(s->id, &b);
	close(s->fd);
	s->fd = -1;
	s->dead = 1;
}

int file_read_pump(stream_t *s)
{
	static uint8_t buf[MAX_CHUNK];
	if (s->dead)
		return 0;
	if (s->remaining == 0) {
		read_finish(s);
		return 0;
	}
	if (s->credit <= 0)
		return 0;
	size_t want = MAX_CHUNK;
	if ((int64_t)want > s->credit)
		want = (size_t)s->credit;
	if (s->remaining > 0 && (int64_t)want > s->remaining)
		want = (size_t)s->remaining;
	ssize_t n = pread(s->fd, buf, want, s->offset);
	if (n < 0 && errno == EINTR)
		return 1;
	if (n < 0) {
		send_error(s->id, errno, "read %s: %s", s->path, strerror(errno));
		close(s->fd);
		s->fd = -1;
		s->dead = 1;
		return 0;
	}
	if (n == 0) {
		read_finish(s);
		return 0;
	}
	port_send(T_DATA, s->id, buf, (size_t)n);
	s->offset += n;
	s->done += n;
	s->credit -= n;
	if (s->remaining > 0)
		s->remaining -= n;
	return s->credit > 0 || s->remaining == 0;
}

/* ---- WRITE ---- */

/* Creates the missing directories above path (0755, owned by uid:gid), as a write expects. */
static int make_parents(const char *path, int64_t uid, int64_t gid)
{
	char dir[4096];
	size_t n = strlen(path);
	if (n >= sizeof dir)
		return -1;
	memcpy(dir, path, n + 1);
	char *slash = strrchr(dir, '/');
	if (!slash || slash == dir)
		return -1; /* a file directly under / : nothing to create */
	*slash = 0;
	int saved = errno;
	int r = mkdir_p_owned(dir, 0755, uid, gid);
	errno = r < 0 ? errno : saved;
	return r;
}

void file_write_open(uint32_t id, const fields_t *f)
{
	const char *path = need_path(id, f, F_PATH, "write");
	if (!path)
		return;
	int64_t mode = mode_or(f, 0644), uid, gid;
	if (mode < 0 || owner_of(f, &uid, &gid) < 0) {
		send_error(id, EINVAL, "write %s: MODE, UID or GID out of range", path);
		return;
	}
	int flags = O_WRONLY | O_CREAT | O_CLOEXEC;
	flags |= f->ival[F_APPEND] == 1 ? O_APPEND : O_TRUNC;
	int fd = open(path, flags, (mode_t)mode);
	if (fd < 0 && errno == ENOENT && make_parents(path, uid, gid) == 0)
		fd = open(path, flags, (mode_t)mode);
	/* The file becomes the owner's, new or not (as envd's upload does). */
	if (fd >= 0 && (uid >= 0 || gid >= 0) && fchown(fd, (uid_t)uid, (gid_t)gid) < 0) {
		int e = errno;
		close(fd);
		fd = -1;
		errno = e;
	}
	if (fd < 0) {
		/* Final now: the host stops sending; later frames are ignored. */
		send_error(id, errno, "write %s: %s", path, strerror(errno));
		return;
	}
	stream_t *s = stream_new(id, S_WRITE);
	if (!s) {
		close(fd);
		send_error(id, EMFILE, "write %s: too many open streams", path);
		return;
	}
	s->fd = fd;
	copy_path(s, path);
}

void file_write_data(stream_t *s, const uint8_t *p, size_t n)
{
	if (s->write_errno)
		return; /* already failed: reported at WRITE_CLOSE */
	if (write_all(s->fd, p, n) < 0)
		s->write_errno = errno;
	else
		s->done += (int64_t)n;
}

void file_write_close(stream_t *s)
{
	if (close(s->fd) < 0 && !s->write_errno)
		s->write_errno = errno;
	s->fd = -1;
	s->dead = 1;
	if (s->write_errno) {
		send_error(s->id, s->write_errno, "write %s: %s", s->path, strerror(s->write_errno));
		return;
	}
	uint8_t buf[16];
	fbuf_t b = { .p = buf, .cap = sizeof buf };
	fb_int(&b, F_BYTES, s->done);
	send_ok(s->id, &b);
}

void file_abort(stream_t *s)
{
	if (s->fd >= 0)
		close(s->fd);
	s->fd = -1;
	s->dead = 1;
}

/* ---- metadata ---- */

/* One entry's fields; a symlink's TARGET is read at (dfd, at). */
static void put_entry(fbuf_t *b, const char *name, const char *path, const struct stat *st, int dfd, const char *at)
{
	int type = S_ISREG(st->st_mode) ? 1 : S_ISDIR(st->st_mode) ? 2 : S_ISLNK(st->st_mode) ? 3 : 4;
	fb_str(b, F_NAME, name);
	fb_str(b, F_PATH, path);
	fb_int(b, F_TYPE, type);
	fb_int(b, F_SIZE, st->st_size);
	fb_int(b, F_MODE, st->st_mode & 07777);
	fb_int(b, F_MTIME, st->st_mtim.tv_sec);
	fb_int(b, F_MTIME_NSEC, st->st_mtim.tv_nsec);
	fb_int(b, F_UID, st->st_uid);
	fb_int(b, F_GID, st->st_gid);
	if (type == 3) {
		char target[4096];
		ssize_t n = readlinkat(dfd, at, target, sizeof target);
		/* n == sizeof target may be cut short: then send no TARGET. */
		if (n >= 0 && (size_t)n < sizeof target) {
			target[n] = 0;
			fb_str(b, F_TARGET, target);
		}
	}
}

void file_list(uint32_t id, const fields_t *f)
{
	const char *path = need_path(id, f, F_PATH, "list");
	if (!path)
		return;
	DIR *d = opendir(path);
	if (!d) {
		send_error(id, errno, "list %s: %s", path, strerror(errno));
		return;
	}
	size_t plen = strlen(path);
	const char *sep = (plen && path[plen - 1] == '/') ? "" : "/";
	fbuf_t b;
	fb_init(&b);
	struct dirent *e;
	char *full = NULL;
	errno = 0;
	while ((e = readdir(d))) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		struct stat st;
		if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
			continue; /* vanished meanwhile */
		free(full);
		if (asprintf(&full, "%s%s%s", path, sep, e->d_name) < 0) {
			full = NULL;
			break;
		}
		fb_reset(&b);
		put_entry(&b, e->d_name, full, &st, dirfd(d), e->d_name);
		send_fields(T_ENTRY, id, &b);
	}
	int e2 = errno;
	free(full);
	fb_free(&b);
	closedir(d);
	if (e2)
		send_error(id, e2, "list %s: %s", path, strerror(e2));
	else
		send_ok(id, NULL);
}

void file_stat(uint32_t id, const fields_t *f)
{
	const char *path = need_path(id, f, F_PATH, "stat");
	if (!path)
		return;
	struct stat st;
	if (lstat(path, &st) < 0) {
		send_error(id, errno, "stat %s: %s", path, strerror(errno));
		return;
	}
	/* NAME is the last component, ignoring trailing slashes. */
	char name[256];
	size_t end = strlen(path);
	while (end > 1 && path[end - 1] == '/')
		end--;
	size_t start = end;
	while (start > 0 && path[start - 1] != '/')
		start--;
	if (end - start == 0 || end - start >= sizeof name)
		snprintf(name, sizeof name, "%s", end - start ? path + start : "/");
	else
		snprintf(name, sizeof name, "%.*s", (int)(end - start), path + start);
	fbuf_t b;
	fb_init(&b);
	put_entry(&b, name, path, &st, AT_FDCWD, path);
	send_ok(id, &b);
	fb_free(&b);
}

void file_mkdir(uint32_t id, const fields_t *f)
{
	const char *path = need_path(id, f, F_PATH, "mkdir");
	if (!path)
		return;
	int64_t mode = mode_or(f, 0755), uid, gid;
	if (mode < 0 || owner_of(f, &uid, &gid) < 0) {
		send_error(id, EINVAL, "mkdir %s: MODE, UID or GID out of range", path);
		return;
	}
	if (mkdir_p_owned(path, (mode_t)mode, uid, gid) < 0)
		send_error(id, errno, "mkdir %s: %s", path, strerror(errno));
	else
		send_ok(id, NULL);
}

/* nftw has no user pointer: the failing path goes through a static. */
static char rm_failed[512];
static int rm_errno;

static int rm_one(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)ftw;
	int r = (flag == FTW_DP || flag == FTW_D) ? rmdir(p) : unlink(p);
	if (r < 0 && errno != ENOENT) {
		rm_errno = errno;
		snprintf(rm_failed, sizeof rm_failed, "%s", p);
		return 1; /* stop the walk */
	}
	return 0;
}

void file_remove(uint32_t id, const fields_t *f)
{
	const char *path = need_path(id, f, F_PATH, "remove");
	if (!path)
		return;
	struct stat st;
	if (lstat(path, &st) < 0) {
		send_error(id, errno, "remove %s: %s", path, strerror(errno));
		return;
	}
	int r;
	if (!S_ISDIR(st.st_mode)) {
		r = unlink(path);
	} else if (f->ival[F_RECURSIVE] == 1) {
		rm_errno = 0;
		/* FTW_PHYS: never follow symlinks; FTW_DEPTH: children first. */
		r = nftw(path, rm_one, 32, FTW_DEPTH | FTW_PHYS);
		if (r != 0 && rm_errno) {
			send_error(id, rm_errno, "remove %s: %s: %s", path, rm_failed, strerror(rm_errno));
			return;
		}
		if (r != 0) {
			send_error(id, errno, "remove %s: %s", path, strerror(errno));
			return;
		}
	} else {
		r = rmdir(path);
	}
	if (r < 0)
		send_error(id, errno, "remove %s: %s", path, strerror(errno));
	else
		send_ok(id, NULL);
}

void file_rename(uint32_t id, const fields_t *f)
{
	const char *from = need_path(id, f, F_PATH, "rename");
	const char *to = from ? need_path(id, f, F_TO, "rename") : NULL;
	if (!to)
		return;
	if (rename(from, to) < 0)
		send_error(id, errno, "rename %s to %s: %s", from, to, strerror(errno));
	else
		send_ok(id, NULL);
}
