#define _GNU_SOURCE
#include "init.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sysio.h"

void std_fds(void)
{
	for (int fd = 0; fd < 3; fd++) {
		if (fcntl(fd, F_GETFD) >= 0)
			continue;
		int n = open(fd == 0 ? "/dev/null" : "/dev/console", fd == 0 ? O_RDONLY : O_WRONLY);
		if (n < 0)
			n = open("/dev/null", O_RDWR);
		if (n >= 0 && n != fd) {
			dup2(n, fd);
			close(n);
		}
	}
}

static int mounted(const char *dir)
{
	char buf[16384];
	if (read_small("/proc/self/mounts", buf, sizeof buf) < 0)
		return 0;
	char pat[128];
	snprintf(pat, sizeof pat, " %s ", dir);
	return strstr(buf, pat) != NULL;
}

/* Mount only what is missing: the image's init may have done it already. */
static void ensure_mount(const char *src, const char *dir, const char *type, unsigned long fl, const char *opt)
{
	if (mounted(dir))
		return;
	mkdir(dir, 0755);
	if (mount(src, dir, type, fl, opt) < 0 && errno != EBUSY)
		logmsg("mount %s on %s: %s", type, dir, strerror(errno));
}

int vm_init(void)
{
	/* /proc first: mounted() reads it. */
	if (access("/proc/self", F_OK) < 0) {
		mkdir("/proc", 0555);
		if (mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0)
			logmsg("mount proc: %s", strerror(errno));
	}
	ensure_mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
	ensure_mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
	std_fds();
	ensure_mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "gid=5,mode=0620,ptmxmode=0666");
	if (access("/dev/ptmx", F_OK) < 0)
		symlink("pts/ptmx", "/dev/ptmx");
	ensure_mount("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755");
	ensure_mount("cgroup2", "/sys/fs/cgroup", "cgroup2", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
	mkdir_p("/run/mitos/notify", 0755);
	chmod("/run/mitos/notify", 01777); /* any process may register itself */

	if (access("/sys/fs/cgroup/cgroup.controllers", F_OK) < 0)
		return 0;
	if (mkdir("/sys/fs/cgroup/mitos", 0755) < 0 && errno != EEXIST) {
		logmsg("mkdir /sys/fs/cgroup/mitos: %s", strerror(errno));
		return 0;
	}
	return 1;
}
