#define _GNU_SOURCE
#include "info.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "port.h"
#include "sysio.h"

/* "MemTotal:  123 kB" → bytes, or -1. */
static int64_t meminfo(const char *text, const char *key)
{
	const char *p = strstr(text, key);
	if (!p)
		return -1;
	return strtoll(p + strlen(key), NULL, 10) * 1024;
}

void info_hello(uint32_t id, const uint8_t *session)
{
	fbuf_t b;
	fb_init(&b);
	fb_str(&b, F_VERSION, MITOS_AGENT_VERSION);
	if (session)
		fb_bytes(&b, F_SESSION, session, SESSION_LEN);

	struct timespec ts;
	clock_gettime(CLOCK_BOOTTIME, &ts);
	fb_int(&b, F_UPTIME_MS, (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000);

	char buf[4096];
	if (read_small("/proc/meminfo", buf, sizeof buf) > 0) {
		fb_int(&b, F_MEM_TOTAL, meminfo(buf, "MemTotal:"));
		fb_int(&b, F_MEM_AVAILABLE, meminfo(buf, "MemAvailable:"));
	}
	if (read_small("/proc/sys/kernel/random/boot_id", buf, sizeof buf) < 0)
		buf[0] = 0;
	buf[strcspn(buf, "\n")] = 0;
	fb_str(&b, F_BOOT_ID, buf);
	if (read_small("/run/mitos/sandbox-id", buf, 256) < 0)
		buf[0] = 0;
	buf[strcspn(buf, "\n")] = 0;
	fb_str(&b, F_SANDBOX_ID, buf);
	if (gethostname(buf, 256) < 0)
		buf[0] = 0;
	buf[255] = 0;
	fb_str(&b, F_HOSTNAME, buf);
	send_ok(id, &b);
	fb_free(&b);
}

/* One PROC record from /proc/PID/stat and cmdline; 0 if it vanished. */
static int proc_record(fbuf_t *b, const char *pid, double uptime_s, long hz)
{
	char path[64], stat[1024], cmd[4096];
	snprintf(path, sizeof path, "/proc/%s/stat", pid);
	if (read_small(path, stat, sizeof stat) <= 0)
		return 0;
	/* comm may hold spaces and ')': the fields follow the last ')'. */
	char *open = strchr(stat, '('), *close = strrchr(stat, ')');
	if (!open || !close || close < open)
		return 0;
	char state = 0;
	long long ppid = 0, rss = 0, cpu_ticks = 0, start_ticks = 0;
	/* After comm: state(3) ppid(4) utime(14) stime(15) starttime(22) rss(24). */
	char *p = close + 1;
	int field = 2;
	for (char *tok = strtok(p, " "); tok; tok = strtok(NULL, " ")) {
		field++;
		if (field == 3)
			state = tok[0];
		else if (field == 4)
			ppid = atoll(tok);
		else if (field == 14 || field == 15)
			cpu_ticks += atoll(tok);
		else if (field == 22)
			start_ticks = atoll(tok);
		else if (field == 24) {
			rss = atoll(tok);
			break;
		}
	}
	snprintf(path, sizeof path, "/proc/%s/cmdline", pid);
	ssize_t n = read_small(path, cmd, sizeof cmd);
	if (n > 0) {
		for (ssize_t i = 0; i < n; i++) /* argv is NUL separated */
			if (cmd[i] == 0)
				cmd[i] = ' ';
		while (n > 0 && cmd[n - 1] == ' ')
			cmd[--n] = 0;
	} else { /* kernel thread: use [comm] like ps */
		snprintf(cmd, sizeof cmd, "[%.*s]", (int)(close - open - 1), open + 1);
	}
	char st[2] = { state ? state : '?', 0 };
	fb_int(b, F_PID, atoll(pid));
	fb_int(b, F_PPID, ppid);
	fb_str(b, F_COMMAND, cmd);
	fb_str(b, F_STATE, st);
	fb_int(b, F_RSS, rss * sysconf(_SC_PAGESIZE));
	/* CPU use over the process's lifetime, as ps's %CPU: cpu time / elapsed. */
	double elapsed = uptime_s - (double)start_ticks / (double)hz;
	long long permille = 0;
	if (elapsed > 0 && cpu_ticks > 0) {
		double v = 1000.0 * ((double)cpu_ticks / (double)hz) / elapsed;
		permille = v > 1e9 ? 1000000000LL : (long long)(v + 0.5);
	}
	fb_int(b, F_CPU_PERMILLE, permille);
	return 1;
}

void info_processes(uint32_t id)
{
	DIR *d = opendir("/proc");
	if (!d) {
		send_error(id, errno, "processes: open /proc: %s", strerror(errno));
		return;
	}
	char up[64];
	double uptime_s = 0;
	if (read_small("/proc/uptime", up, sizeof up) > 0)
		uptime_s = strtod(up, NULL);
	long hz = sysconf(_SC_CLK_TCK);
	if (hz <= 0)
		hz = 100;
	fbuf_t b;
	fb_init(&b);
	struct dirent *e;
	while ((e = readdir(d))) {
		if (!isdigit((unsigned char)e->d_name[0]))
			continue;
		fb_reset(&b);
		if (proc_record(&b, e->d_name, uptime_s, hz))
			send_fields(T_PROC, id, &b);
	}
	closedir(d);
	fb_free(&b);
	send_ok(id, NULL);
}

void info_kill(uint32_t id, const fields_t *f)
{
	int64_t pid = f->ival[F_PID];
	int64_t sig = f->have[F_SIGNAL] ? f->ival[F_SIGNAL] : SIGTERM;
	/* pid <= 0 would mean a group or every process: never from here. */
	if (!f->have[F_PID] || pid <= 0 || pid > 0x7fffffff) {
		send_error(id, EINVAL, "kill: PID must be a positive process id");
		return;
	}
	if (sig < 0 || sig > 64) {
		send_error(id, EINVAL, "kill %lld: bad SIGNAL %lld", (long long)pid, (long long)sig);
		return;
	}
	if (kill((pid_t)pid, (int)sig) < 0)
		send_error(id, errno, "kill %lld: %s", (long long)pid, strerror(errno));
	else
		send_ok(id, NULL);
}
