#define _GNU_SOURCE
#include "exec.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>
#include <linux/sched.h> /* struct clone_args, CLONE_INTO_CGROUP */
#include <sys/syscall.h>

#include "limits.h"
#include "port.h"
#include "sysio.h"

#define CGROUP_ROOT "/sys/fs/cgroup/mitos"
#define DRAIN_MS 100
#define KILL_WAIT_MS 2000 /* how long a killed command may take to empty its cgroup */

static int use_cgroups;

void exec_use_cgroups(int on)
{
	use_cgroups = on;
}

static const char *base_env[] = {
	"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
	"HOME=/root",
	"LANG=C.UTF-8",
};

/* Base environment, then ENV entries add or override by key. */
static char **build_env(const fields_t *f, int pty, char *err, size_t errlen)
{
	size_t n = 0, cap = 4 + f->nenvs + 1;
	char **env = calloc(cap, sizeof *env);
	if (!env) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	for (size_t i = 0; i < 3; i++)
		env[n++] = (char *)base_env[i];
	if (pty)
		env[n++] = "TERM=xterm-256color";
	for (size_t i = 0; i < f->nenvs; i++) {
		char *kv = f->envs[i];
		char *eq = strchr(kv, '=');
		if (!eq || eq == kv) {
			snprintf(err, errlen, "exec: ENV \"%.100s\" is not KEY=VALUE", kv);
			free(env);
			return NULL;
		}
		size_t klen = (size_t)(eq - kv) + 1;
		size_t j;
		for (j = 0; j < n; j++)
			if (strncmp(env[j], kv, klen) == 0)
				break;
		env[j] = kv;
		if (j == n)
			n++;
	}
	env[n] = NULL;
	return env;
}

/* Each exec's cgroup is numbered by the agent, not by the host's stream id:
 * a new host connection (every fork child, every claim) numbers its streams
 * from 1 again, and must not land in the cgroup of a process an earlier
 * connection left running (then killing one would kill the other). The
 * counter is in guest memory, so a fork child continues past its parent's. */
static uint64_t cgroup_seq;

static void cgroup_path(uint64_t n, const char *file, char *out, size_t cap)
{
	if (file)
		snprintf(out, cap, CGROUP_ROOT "/exec-%llu/%s", (unsigned long long)n, file);
	else
		snprintf(out, cap, CGROUP_ROOT "/exec-%llu", (unsigned long long)n);
}

/* A cgroup's file: relative to its open directory when there is one (one
 * path component to walk instead of five). */
static int cgroup_open(uint64_t cg, int dirfd, const char *file, int flags)
{
	if (dirfd >= 0)
		return openat(dirfd, file, flags | O_CLOEXEC);
	char p[128];
	cgroup_path(cg, file, p, sizeof p);
	return open(p, flags | O_CLOEXEC);
}

static void kill_group(stream_t *s)
{
	if (s->cgroup) {
		int fd = cgroup_open(s->cgroup_n, s->cgroup_fd, "cgroup.kill", O_WRONLY);
		if (fd >= 0) {
			if (write(fd, "1", 1) < 0)
				logmsg("exec-%llu/cgroup.kill: %s", (unsigned long long)s->cgroup_n, strerror(errno));
			close(fd);
		}
	}
	/* Also the process group: covers kernels without cgroup.kill. */
	if (s->pid > 0)
		kill(-s->pid, SIGKILL);
}

/* cgroup exec-<cg>: 1 while it holds a live task, 0 when empty, -1 when it
 * cannot be read (gone). */
static int cgroup_n_state(uint64_t cg, int dirfd)
{
	char buf[256];
	int fd = cgroup_open(cg, dirfd, "cgroup.events", O_RDONLY);
	if (fd < 0)
		return -1;
	ssize_t n = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (n <= 0)
		return -1;
	buf[n] = 0;
	return strstr(buf, "populated 1") != NULL;
}

/* 1 while the command's cgroup still holds a live task. */
static int cgroup_populated(stream_t *s)
{
	return s->cgroup && cgroup_n_state(s->cgroup_n, s->cgroup_fd) == 1;
}

/* Empty exec cgroups kept for the next commands: making one (its kernfs
 * files, pids and cpu state) and removing it again costs more under TCG than
 * checking that it is empty. Only empty ones are kept, so a command never
 * shares a cgroup with a process another left behind. Each keeps its
 * directory open: a command starts in it by that fd (clone3). */
#define CGROUP_SPARES 4
static struct {
	uint64_t n;
	int fd;
} cgroup_spare[CGROUP_SPARES];
static int cgroup_spares;

/* A cgroup for a new command: a spare (its limits were set when it was made:
 * they are fixed at boot), or a new exec-<next>. 1 with *n and *fd (-1 when
 * the directory could not be opened) set, or 0. */
static int cgroup_acquire(uint64_t *n, int *fd)
{
	if (cgroup_spares > 0) {
		cgroup_spares--;
		*n = cgroup_spare[cgroup_spares].n;
		*fd = cgroup_spare[cgroup_spares].fd;
		return 1;
	}
	char p[128];
	*n = ++cgroup_seq;
	cgroup_path(*n, NULL, p, sizeof p);
	if (mkdir(p, 0755) < 0)
		return 0;
	limits_exec(p);
	*fd = open(p, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	return 1;
}

static void cgroup_release(uint64_t n, int fd)
{
	if (cgroup_spares < CGROUP_SPARES && cgroup_n_state(n, fd) == 0) {
		cgroup_spare[cgroup_spares].n = n;
		cgroup_spare[cgroup_spares].fd = fd;
		cgroup_spares++;
		return;
	}
	if (fd >= 0)
		close(fd);
	char p[128];
	cgroup_path(n, NULL, p, sizeof p);
	rmdir(p); /* EBUSY while background processes live: fine */
}

static void close_fd(int *fd)
{
	if (*fd >= 0)
		close(*fd);
	*fd = -1;
}

static void release(stream_t *s)
{
	close_fd(&s->out_fd);
	close_fd(&s->err_fd);
	close_fd(&s->in_fd);
	close_fd(&s->pty_fd);
	if (s->cgroup)
		cgroup_release(s->cgroup_n, s->cgroup_fd);
	s->cgroup = 0;
	s->cgroup_fd = -1;
	s->dead = 1;
}

/* In the child: report why we could not exec, then die. */
static void __attribute__((noreturn)) child_fail(int fd, const char *what)
{
	char msg[400];
	int e = errno;
	int n = snprintf(msg, sizeof msg, "%d %s", e, what);
	if (write(fd, msg, (size_t)n) < 0)
		_exit(127);
	_exit(127);
}

struct spawn {
	char **argv, **envp;
	const char *cwd;
	const char *pty_slave;
	int in_r, out_w, err_w, report_w;
	int set_uid, set_gid;
	uid_t uid;
	gid_t gid;
	int cgroup;     /* move into exec-<cgroup_n> before exec (a vfork child) */
	uint64_t cgroup_n;
	int cgroup_fd;
};

static void __attribute__((noreturn)) child(const struct spawn *sp)
{
	char what[320];
	sigset_t all;
	sigemptyset(&all);
	sigprocmask(SIG_SETMASK, &all, NULL);
	signal(SIGPIPE, SIG_DFL); /* the agent ignores it; the command must not */
	limits_child();
	setsid();
	if (sp->cgroup) {
		int fd = cgroup_open(sp->cgroup_n, sp->cgroup_fd, "cgroup.procs", O_WRONLY);
		if (fd >= 0) {
			if (write(fd, "0", 1) < 0) { /* best effort: pgid kill still works */ }
			close(fd);
		}
	}
	if (sp->pty_slave) {
		int t = open(sp->pty_slave, O_RDWR);
		if (t < 0) {
			snprintf(what, sizeof what, "open pty %s", sp->pty_slave);
			child_fail(sp->report_w, what);
		}
		ioctl(t, TIOCSCTTY, 0);
		dup2(t, 0);
		dup2(t, 1);
		dup2(t, 2);
		if (t > 2)
			close(t);
	} else {
		if (dup2(sp->in_r, 0) < 0 || dup2(sp->out_w, 1) < 0 || dup2(sp->err_w, 2) < 0)
			child_fail(sp->report_w, "dup2");
	}
	umask(022);
	if (sp->set_gid) {
		if (setgroups(1, &sp->gid) < 0 || setgid(sp->gid) < 0) {
			snprintf(what, sizeof what, "setgid %u", (unsigned)sp->gid);
			child_fail(sp->report_w, what);
		}
	}
	if (sp->set_uid) {
		if (!sp->set_gid && setgroups(0, NULL) < 0 && errno != EPERM)
			child_fail(sp->report_w, "setgroups");
		if (setuid(sp->uid) < 0) {
			snprintf(what, sizeof what, "setuid %u", (unsigned)sp->uid);
			child_fail(sp->report_w, what);
		}
	}
	if (sp->cwd && chdir(sp->cwd) < 0) {
		snprintf(what, sizeof what, "chdir %.300s", sp->cwd);
		child_fail(sp->report_w, what);
	}
	/* execvp searches the PATH of the new environment. The vfork parent puts
	 * its own environ back once this child has exec'd or exited. */
	environ = sp->envp;
	execvp(sp->argv[0], sp->argv);
	snprintf(what, sizeof what, "exec %.300s", sp->argv[0]);
	child_fail(sp->report_w, what);
}

#if defined(__x86_64__) /* CLONE_INTO_CGROUP: linux/sched.h of Linux 5.7+ */
/* The child's stack while it shares the agent's memory: the agent waits
 * (CLONE_VFORK) until the child has exec'd or exited, so one serves all. */
static _Alignas(16) unsigned char child_stack[64 * 1024];
static int clone3_broken; /* the kernel refused clone3 into a cgroup once: vfork from now on */

/* clone3(CLONE_VM | CLONE_VFORK | CLONE_INTO_CGROUP): a vfork whose child
 * starts in its exec's cgroup, so it skips the migration a write to
 * cgroup.procs takes (~1,200 translated blocks of a fork child's first
 * command under TCG). The child runs child() on child_stack: returning
 * through a C function on the stack the agent resumes on would corrupt it.
 * The pid, or -errno. */
static long spawn_into_cgroup(const struct spawn *sp)
{
	struct clone_args a;
	memset(&a, 0, sizeof a);
	a.flags = CLONE_VM | CLONE_VFORK | CLONE_INTO_CGROUP;
	a.exit_signal = SIGCHLD;
	a.stack = (uint64_t)(uintptr_t)child_stack;
	a.stack_size = sizeof child_stack;
	a.cgroup = (uint64_t)sp->cgroup_fd;
	long ret = SYS_clone3;
	__asm__ volatile("syscall\n\t"
			 "test %%rax, %%rax\n\t"
			 "jnz 1f\n\t"
			 "xor %%ebp, %%ebp\n\t"
			 "mov %[arg], %%rdi\n\t"
			 "call *%[fn]\n\t"
			 "ud2\n"
			 "1:"
			 : "+a"(ret)
			 : "D"(&a), "S"(sizeof a), [fn] "r"(child), [arg] "r"(sp)
			 : "rcx", "r11", "memory");
	return ret;
}
#endif

/* Starts the command's child, in its cgroup when it has one; the pid, or -1 with errno. */
static pid_t spawn(struct spawn *sp)
{
	/* The child sets `environ` (execvp searches the new environment's PATH)
	 * in the memory it shares with the agent; it is put back here. */
	char **own_env = environ;
#if defined(__x86_64__) /* CLONE_INTO_CGROUP: linux/sched.h of Linux 5.7+ */
	if (sp->cgroup && sp->cgroup_fd >= 0 && !clone3_broken) {
		sp->cgroup = 0; /* it starts there: nothing to move */
		long pid = spawn_into_cgroup(sp);
		sp->cgroup = 1;
		environ = own_env;
		if (pid > 0)
			return (pid_t)pid;
		if (pid == -EAGAIN || pid == -ENOMEM) { /* pids.max or memory: the command's problem, not clone3's */
			errno = (int)-pid;
			return -1;
		}
		logmsg("clone3 into cgroup exec-%llu: %s; vfork from now on", (unsigned long long)sp->cgroup_n,
		       strerror((int)-pid));
		clone3_broken = 1;
	}
#endif
	/* vfork: the child borrows this address space until it execs, so nothing
	 * is copied or write-protected (fork of the mlocked agent cost a page
	 * table copy and a copy-on-write fault per page it touched afterwards,
	 * dear under TCG). The child only makes syscalls and writes its own stack
	 * frame and `environ` (put back below); the agent has no signal handlers
	 * (signalfd), so unblocking signals in the child runs none of ours. */
	pid_t pid = vfork();
	if (pid == 0)
		child(sp);
	environ = own_env;
	return pid;
}

/* The login shell of uid from /etc/passwd (field 7), if it is executable. */
static int passwd_shell(uid_t uid, char *out, size_t cap)
{
	FILE *fp = fopen("/etc/passwd", "re");
	if (!fp)
		return 0;
	char line[1024];
	int found = 0;
	while (!found && fgets(line, sizeof line, fp)) {
		line[strcspn(line, "\n")] = 0;
		char *fields[7];
		int n = 0;
		for (char *p = line; n < 7; n++) {
			fields[n] = p;
			char *c = strchr(p, ':');
			if (!c) {
				n++;
				break;
			}
			*c = 0;
			p = c + 1;
		}
		if (n < 7 || strtoul(fields[2], NULL, 10) != uid || fields[6][0] != '/')
			continue;
		if (strlen(fields[6]) < cap && access(fields[6], X_OK) == 0) {
			snprintf(out, cap, "%s", fields[6]);
			found = 1;
		}
	}
	fclose(fp);
	return found;
}

/* A PTY opened without a command gets a login shell: the user's, else bash, else sh. */
static void login_shell(uid_t uid, char *out, size_t cap)
{
	if (passwd_shell(uid, out, cap) && !strstr(out, "nologin") && strcmp(out, "/bin/false") != 0)
		return;
	snprintf(out, cap, "%s", access("/bin/bash", X_OK) == 0 ? "/bin/bash" : "/bin/sh");
}

/* Empty CWD: /workspace where the image has it (every template does), else /. */
static const char *default_cwd(const fields_t *f)
{
	if (f->sval[F_CWD] && *f->sval[F_CWD])
		return f->sval[F_CWD];
	struct stat st;
	return stat("/workspace", &st) == 0 && S_ISDIR(st.st_mode) ? "/workspace" : "/";
}

static int valid_id(const fields_t *f, int tag)
{
	return f->ival[tag] >= 0 && f->ival[tag] < 0xFFFFFFFFLL;
}

void exec_start(uint32_t id, const fields_t *f)
{
	char err[400] = "";
	int pty = f->have[F_PTY_COLS] || f->have[F_PTY_ROWS];
	int shell = pty && !f->have[F_CMD] && f->nargs == 0;
	if (!shell && f->have[F_CMD] == (f->nargs > 0)) {
		send_error(id, EINVAL, "exec: give exactly one of CMD or ARG (or neither, with a PTY: a login shell)");
		return;
	}
	if ((f->have[F_TIMEOUT_MS] && f->ival[F_TIMEOUT_MS] < 0) ||
	    (f->have[F_WINDOW] && f->ival[F_WINDOW] < 0) ||
	    (f->have[F_UID] && !valid_id(f, F_UID)) || (f->have[F_GID] && !valid_id(f, F_GID))) {
		send_error(id, EINVAL, "exec: negative or out-of-range TIMEOUT_MS, WINDOW, UID or GID");
		return;
	}
	struct winsize ws = { .ws_col = 80, .ws_row = 24 };
	if (pty) {
		int64_t c = f->have[F_PTY_COLS] ? f->ival[F_PTY_COLS] : 80;
		int64_t r = f->have[F_PTY_ROWS] ? f->ival[F_PTY_ROWS] : 24;
		if (c < 1 || c > 65535 || r < 1 || r > 65535) {
			send_error(id, EINVAL, "exec: PTY_COLS/PTY_ROWS out of range");
			return;
		}
		ws.ws_col = (unsigned short)c;
		ws.ws_row = (unsigned short)r;
	}
	stream_t *s = stream_new(id, S_EXEC);
	if (!s) {
		send_error(id, EMFILE, "exec: too many open streams (%d)", MAX_STREAMS);
		return;
	}
	char **envp = build_env(f, pty, err, sizeof err);
	if (!envp) {
		send_error(id, EINVAL, "%s", err);
		s->dead = 1;
		return;
	}
	char *sh_argv[] = { "/bin/sh", "-c", f->sval[F_CMD], NULL };
	char shell_path[256];
	char *login_argv[] = { shell_path, "-l", NULL };
	if (shell)
		login_shell(f->have[F_UID] ? (uid_t)f->ival[F_UID] : getuid(), shell_path, sizeof shell_path);
	struct spawn sp = {
		.argv = shell ? login_argv : f->have[F_CMD] ? sh_argv : f->args,
		.envp = envp,
		.cwd = default_cwd(f),
		.in_r = -1, .out_w = -1, .err_w = -1, .report_w = -1,
		.set_uid = f->have[F_UID], .uid = (uid_t)f->ival[F_UID],
		.set_gid = f->have[F_GID], .gid = (gid_t)f->ival[F_GID],
		.cgroup_fd = -1,
	};
	int out[2] = { -1, -1 }, errp[2] = { -1, -1 }, in[2] = { -1, -1 }, rep[2] = { -1, -1 };
	char slave[128];
	const char *stage = "pipe";
	if (pipe2(rep, O_CLOEXEC) < 0)
		goto fail;
	sp.report_w = rep[1];
	if (pty) {
		stage = "open /dev/ptmx";
		s->pty_fd = open("/dev/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC | O_NONBLOCK);
		if (s->pty_fd < 0 || grantpt(s->pty_fd) < 0 || unlockpt(s->pty_fd) < 0 ||
		    ptsname_r(s->pty_fd, slave, sizeof slave) != 0)
			goto fail;
		ioctl(s->pty_fd, TIOCSWINSZ, &ws);
		sp.pty_slave = slave;
	} else {
		if (pipe2(out, O_CLOEXEC) < 0 || pipe2(errp, O_CLOEXEC) < 0)
			goto fail;
		sp.out_w = out[1];
		sp.err_w = errp[1];
		if (f->have[F_STDIN_OPEN] && f->ival[F_STDIN_OPEN] == 1) {
			if (pipe2(in, O_CLOEXEC) < 0)
				goto fail;
			sp.in_r = in[0];
		} else {
			stage = "open /dev/null";
			sp.in_r = in[0] = open("/dev/null", O_RDONLY | O_CLOEXEC);
			if (sp.in_r < 0)
				goto fail;
		}
	}
	if (use_cgroups) {
		s->cgroup = cgroup_acquire(&s->cgroup_n, &s->cgroup_fd);
		sp.cgroup = s->cgroup;
		sp.cgroup_n = s->cgroup_n;
		sp.cgroup_fd = s->cgroup_fd;
	}
	stage = "fork";
	pid_t pid = spawn(&sp);
	if (pid < 0)
		goto fail;

	/* Parent: keep our ends, make them non-blocking for poll(). */
	close(rep[1]);
	rep[1] = -1;
	close_fd(&out[1]);
	close_fd(&errp[1]);
	close_fd(&in[0]);
	char msg[400];
	ssize_t n;
	do
		n = read(rep[0], msg, sizeof msg - 1);
	while (n < 0 && errno == EINTR);
	close_fd(&rep[0]);
	if (n > 0) {
		/* The child could not exec: it sent "errno what". */
		msg[n] = 0;
		int e = atoi(msg);
		char *what = strchr(msg, ' ');
		waitpid(pid, NULL, 0);
		send_error(id, e ? e : EIO, "exec: %s: %s", what ? what + 1 : "start", strerror(e));
		close_fd(&out[0]);
		close_fd(&errp[0]);
		close_fd(&in[1]);
		free(envp);
		release(s);
		return;
	}
	free(envp);
	s->pid = pid;
	s->start_ms = now_ms();
	s->deadline_ms = f->ival[F_TIMEOUT_MS] > 0 ? s->start_ms + f->ival[F_TIMEOUT_MS] : 0;
	s->credit = f->have[F_WINDOW] ? f->ival[F_WINDOW] : DEFAULT_WINDOW;
	if (pty) {
		s->out_fd = s->pty_fd;
		s->in_fd = fcntl(s->pty_fd, F_DUPFD_CLOEXEC, 3); /* closable stdin side */
		s->pty_fd = fcntl(s->pty_fd, F_DUPFD_CLOEXEC, 3);
	} else {
		s->out_fd = out[0];
		s->err_fd = errp[0];
		s->in_fd = in[1];
		fcntl(s->out_fd, F_SETFL, O_NONBLOCK);
		fcntl(s->err_fd, F_SETFL, O_NONBLOCK);
		if (s->in_fd >= 0)
			fcntl(s->in_fd, F_SETFL, O_NONBLOCK);
	}
	fbuf_t b;
	uint8_t buf[16];
	b = (fbuf_t){ .p = buf, .cap = sizeof buf };
	fb_int(&b, F_PID, pid);
	send_fields(T_STARTED, id, &b);
	return;

fail:;
	int e = errno;
	for (int i = 0; i < 2; i++) {
		close_fd(&out[i]);
		close_fd(&errp[i]);
		close_fd(&in[i]);
		close_fd(&rep[i]);
	}
	free(envp);
	send_error(id, e, "exec: %s: %s", stage, strerror(e));
	release(s);
}

void exec_stdin(stream_t *s, const uint8_t *p, size_t n)
{
	if (s->in_fd < 0 || s->in_close) {
		/* Nobody can take it: acknowledge so the host's window moves. */
		uint8_t buf[16];
		fbuf_t b = { .p = buf, .cap = sizeof buf };
		fb_int(&b, F_BYTES, (int64_t)n);
		send_fields(T_STDIN_ACK, s->id, &b);
		return;
	}
	if (s->in_len + n > s->in_cap) {
		size_t cap = s->in_cap ? s->in_cap : 65536;
		while (cap < s->in_len + n)
			cap *= 2;
		uint8_t *q = realloc(s->in_buf, cap);
		if (!q) {
			send_error(0, ENOMEM, "stdin for stream %u: out of memory, %zu bytes dropped", s->id, n);
			return;
		}
		s->in_buf = q;
		s->in_cap = cap;
	}
	memcpy(s->in_buf + s->in_len, p, n);
	s->in_len += n;
	if (s->in_len > STDIN_WINDOW)
		send_error(0, EPROTO, "protocol: stdin for stream %u exceeds the %d byte window", s->id, STDIN_WINDOW);
}

static void stdin_finish_close(stream_t *s)
{
	if (s->pty_fd >= 0 && s->in_fd >= 0) {
		/* PTY: the terminal has no separate stdin to close; send EOF (^D). */
		if (write(s->in_fd, "\x04", 1) < 0) { /* ignore */ }
	}
	close_fd(&s->in_fd);
}

void exec_stdin_close(stream_t *s)
{
	s->in_close = 1;
	if (s->in_len == 0)
		stdin_finish_close(s);
}

void exec_writable(stream_t *s)
{
	if (s->in_fd < 0 || s->in_len == 0)
		return;
	ssize_t w = write(s->in_fd, s->in_buf, s->in_len);
	if (w < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	size_t acked = w < 0 ? s->in_len : (size_t)w; /* EPIPE: drop it all */
	memmove(s->in_buf, s->in_buf + acked, s->in_len - acked);
	s->in_len -= acked;
	uint8_t buf[16];
	fbuf_t b = { .p = buf, .cap = sizeof buf };
	fb_int(&b, F_BYTES, (int64_t)acked);
	if (!s->detached)
		send_fields(T_STDIN_ACK, s->id, &b);
	if (w < 0) {
		close_fd(&s->in_fd); /* the process closed its stdin */
		s->in_close = 1;
	} else if (s->in_len == 0 && s->in_close) {
		stdin_finish_close(s);
	}
}

void exec_resize(stream_t *s, const fields_t *f)
{
	if (s->pty_fd < 0)
		return;
	int64_t c = f->ival[F_PTY_COLS], r = f->ival[F_PTY_ROWS];
	if (!f->have[F_PTY_COLS] || !f->have[F_PTY_ROWS] || c < 1 || c > 65535 || r < 1 || r > 65535) {
		send_error(0, EINVAL, "resize stream %u: need PTY_COLS and PTY_ROWS in 1..65535", s->id);
		return;
	}
	struct winsize ws = { .ws_col = (unsigned short)c, .ws_row = (unsigned short)r };
	ioctl(s->pty_fd, TIOCSWINSZ, &ws); /* the kernel sends SIGWINCH */
}

void exec_signal(stream_t *s, int sig)
{
	/* SIGKILL means "end this command": everything it started, including
	 * job-control jobs and setsid escapees in its cgroup. */
	if (sig == SIGKILL) {
		kill_group(s);
		return;
	}
	/* The whole group, even after the leader exited: background members
	 * may remain. */
	if (s->pid > 0)
		kill(-s->pid, sig);
}

void exec_readable(stream_t *s, int which)
{
	static uint8_t buf[MAX_CHUNK];
	int *fd = which == 1 ? &s->out_fd : &s->err_fd;
	if (*fd < 0 || s->credit <= 0)
		return;
	size_t want = s->credit < MAX_CHUNK ? (size_t)s->credit : MAX_CHUNK;
	if (s->detached)
		want = MAX_CHUNK;
	ssize_t n = read(*fd, buf, want);
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	if (n <= 0) { /* EOF; EIO on a PTY master means the slave side closed */
		close_fd(fd);
		return;
	}
	if (s->exited)
		s->drain_ms = now_ms() + DRAIN_MS;
	if (s->detached)
		return; /* its caller is the parent's: read on so the process never blocks */
	s->credit -= n;
	port_send(which == 1 ? T_STDOUT : T_STDERR, s->id, buf, (size_t)n);
}

int exec_reaped(pid_t pid, int status)
{
	for (int i = 0; i < stream_count(); i++) {
		stream_t *s = stream_at(i);
		if (s->kind == S_EXEC && !s->dead && s->pid == pid && !s->exited) {
			s->exited = 1;
			s->status = status;
			s->exit_ms = now_ms();
			s->drain_ms = s->exit_ms + DRAIN_MS;
			return 1;
		}
	}
	return 0;
}

static void send_exit(stream_t *s)
{
	if (s->detached)
		return;
	uint8_t buf[64];
	fbuf_t b = { .p = buf, .cap = sizeof buf };
	if (s->timed_out) {
		fb_int(&b, F_EXIT_CODE, 124);
		fb_int(&b, F_TIMED_OUT, 1);
	} else if (WIFSIGNALED(s->status)) {
		fb_int(&b, F_EXIT_CODE, 128 + WTERMSIG(s->status));
		fb_int(&b, F_SIGNAL, WTERMSIG(s->status));
	} else {
		fb_int(&b, F_EXIT_CODE, WEXITSTATUS(s->status));
	}
	fb_int(&b, F_DURATION_MS, s->exit_ms - s->start_ms);
	send_fields(T_EXIT, s->id, &b);
}

int64_t exec_tick(stream_t *s, int64_t now)
{
	if (!s->exited) {
		if (s->deadline_ms && !s->timed_out) {
			if (now >= s->deadline_ms) {
				kill_group(s);
				s->timed_out = 1;
			} else {
				return s->deadline_ms;
			}
		}
		return INT64_MAX;
	}
	/* A timed-out command is reported only once everything it started is
	 * gone (bounded): "killed at its timeout" must mean no process left. */
	if (s->timed_out && now < s->deadline_ms + KILL_WAIT_MS && cgroup_populated(s))
		return now + 10;
	int open_out = s->out_fd >= 0 || s->err_fd >= 0;
	if (open_out && s->credit <= 0)
		s->drain_ms = now + DRAIN_MS; /* waiting on the host, not on data */
	if (open_out && now < s->drain_ms)
		return s->drain_ms;
	send_exit(s);
	release(s);
	return INT64_MAX;
}

void exec_detach(stream_t *s)
{
	s->detached = 1;
	s->credit = 1; /* > 0 keeps its pipes polled; detached reads ignore credit */
}

void exec_abort(stream_t *s)
{
	kill_group(s);
	release(s);
}
