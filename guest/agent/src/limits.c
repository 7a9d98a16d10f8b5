#define _GNU_SOURCE
#include "limits.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "sysio.h"

#define CMD_CGROUP "/sys/fs/cgroup/mitos"

/* Whether the agent took itself off the OOM killer's list, so each command must go back on it. */
static int child_oom_reset;

/* A decimal after `key` as a whole word of `s` (space-separated), in [lo, hi];
 * 0 when absent, malformed or out of range. */
static uint64_t word_value(const char *s, const char *key, uint64_t lo, uint64_t hi)
{
	size_t klen = strlen(key);
	for (const char *p = s; (p = strstr(p, key)) != NULL; p += klen) {
		if (p != s && p[-1] != ' ' && p[-1] != '\n')
			continue;
		const char *q = p + klen;
		uint64_t v = 0;
		int digits = 0;
		while (*q >= '0' && *q <= '9') {
			if (v > (UINT64_MAX - 9) / 10 || ++digits > 19)
				return 0;
			v = v * 10 + (uint64_t)(*q - '0');
			q++;
		}
		if (digits == 0 || (*q != '\0' && *q != ' ' && *q != '\n'))
			return 0;
		return v >= lo && v <= hi ? v : 0;
	}
	return 0;
}

int limits_parse(const char *cmdline, const char *meminfo, cmd_limits_t *out)
{
	const char *m = strstr(meminfo, "MemTotal:");
	if (!m)
		return -1;
	m += strlen("MemTotal:");
	while (*m == ' ')
		m++;
	uint64_t kib = 0;
	int digits = 0;
	while (*m >= '0' && *m <= '9' && digits < 15) {
		kib = kib * 10 + (uint64_t)(*m - '0');
		m++;
		digits++;
	}
	if (digits == 0 || kib == 0)
		return -1;
	uint64_t total_mib = kib / 1024;
	uint64_t reserve = total_mib / 8 > LIMITS_MIN_RESERVE_MIB ? total_mib / 8 : LIMITS_MIN_RESERVE_MIB;
	uint64_t fallback = total_mib > reserve + LIMITS_MIN_MEMORY_MIB ? total_mib - reserve : LIMITS_MIN_MEMORY_MIB;
	/* Asked for more than the VM has: the default, which still leaves the agent its reserve. */
	uint64_t mem = word_value(cmdline, "mitos.cmd_mem=", LIMITS_MIN_MEMORY_MIB, total_mib);
	out->memory_bytes = (mem ? mem : fallback) * 1024 * 1024;
	uint64_t pids = word_value(cmdline, "mitos.cmd_pids=", 16, 4194304);
	out->pids = pids ? pids : LIMITS_DEFAULT_PIDS;
	return 0;
}

/* The per-exec pids limit once applied (0: none). */
static uint64_t exec_pids;

static void write_str(const char *path, const char *value)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0 || write_all(fd, value, strlen(value)) < 0)
		logmsg("write %s to %s: %s", value, path, strerror(errno));
	if (fd >= 0)
		close(fd);
}

void limits_apply(void)
{
	/* The agent answers whatever the guest does: never an OOM victim, never
	 * paged out. As PID 1 (a VM) the OOM killer never picks it, so its
	 * commands inherit a plain 0 and need no reset; elsewhere it opts out. */
	if (getpid() != 1) {
		write_str("/proc/self/oom_score_adj", "-1000");
		child_oom_reset = 1;
	}
	if (mlockall(MCL_CURRENT | MCL_FUTURE) < 0)
		logmsg("mlockall: %s", strerror(errno));

	static char cmdline[4096], meminfo[8192];
	if (read_small("/proc/cmdline", cmdline, sizeof cmdline) < 0)
		cmdline[0] = '\0';
	cmd_limits_t l;
	if (read_small("/proc/meminfo", meminfo, sizeof meminfo) < 0 || limits_parse(cmdline, meminfo, &l) < 0) {
		logmsg("no MemTotal in /proc/meminfo: commands run without a memory limit");
		return;
	}
	/* Memory is limited for all commands together (their cgroup); pids and CPU also per exec. */
	write_str("/sys/fs/cgroup/cgroup.subtree_control", "+memory +pids +cpu");
	write_str(CMD_CGROUP "/cgroup.subtree_control", "+pids +cpu");
	char v[32];
	snprintf(v, sizeof v, "%" PRIu64, l.memory_bytes);
	write_str(CMD_CGROUP "/memory.max", v);
	snprintf(v, sizeof v, "%" PRIu64, 2 * l.pids);
	write_str(CMD_CGROUP "/pids.max", v);
	exec_pids = l.pids;
	logmsg("commands: memory.max %" PRIu64 " MiB, pids.max %" PRIu64, l.memory_bytes >> 20, l.pids);
}

void limits_exec(const char *cgroup_dir)
{
	if (exec_pids == 0)
		return;
	char p[160], v[32];
	snprintf(p, sizeof p, "%s/pids.max", cgroup_dir);
	snprintf(v, sizeof v, "%" PRIu64, exec_pids);
	write_str(p, v);
}

void limits_child(void)
{
	if (!child_oom_reset)
		return;
	int fd = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return;
	if (write(fd, "0", 1) < 0) { /* raising it needs no privilege; nothing better to do */ }
	close(fd);
}
