/* mitos-agent: the guest agent. One thread, one poll() loop that serves
 * the host's frames, the children's pipes and SIGCHLD. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "exec.h"
#include "files.h"
#include "forward.h"
#include "frame.h"
#include "info.h"
#include "init.h"
#include "limits.h"
#include "notify.h"
#include "port.h"
#include "stream.h"
#include "sysio.h"

#define PORT_RETRY_MS 10

static int vm_mode = 1;
static int fd_mode;          /* --fd: exit when the host goes away */
static int listen_fd = -1;
static int sig_fd = -1;
static void reap(void);
static int64_t port_retry_at; /* VM mode: no host connected until then */
static int host_up;           /* VM mode: for logging transitions only */
static uint8_t inbuf[FRAME_HEADER + MAX_PAYLOAD];
static decoder_t dec;

static const char *type_name(uint8_t t)
{
	switch (t) {
	case T_STDIN: return "STDIN";
	case T_STDIN_CLOSE: return "STDIN_CLOSE";
	case T_RESIZE: return "RESIZE";
	case T_SIGNAL: return "SIGNAL";
	case T_CREDIT: return "CREDIT";
	case T_WRITE_DATA: return "WRITE_DATA";
	case T_WRITE_CLOSE: return "WRITE_CLOSE";
	case T_PORT_DATA: return "PORT_DATA";
	case T_PORT_SHUTDOWN: return "PORT_SHUTDOWN";
	case T_PORT_CLOSE: return "PORT_CLOSE";
	default: return "frame";
	}
}

static int is_request(uint8_t t)
{
	switch (t) {
	case T_HELLO: case T_EXEC: case T_READ: case T_WRITE_OPEN: case T_LIST:
	case T_STAT: case T_MKDIR: case T_REMOVE: case T_RENAME:
	case T_FORK_NOTIFY: case T_PROCESSES: case T_KILL: case T_SET_CLOCK:
	case T_PORT_OPEN:
		return 1;
	}
	return 0;
}

/* Detaches every open stream: their commands run on with their output read
 * and dropped (no frame is sent for them, their ids are free); file transfers
 * end; port forwards close their socket (nobody is left to read or feed it).
 * Returns how many streams were detached or ended. For streams whose
 * caller is not on the other end any more: after FORK_NOTIFY, and after a
 * HELLO with a new SESSION. */
static int detach_streams(void)
{
	int n = 0;
	for (int i = 0; i < stream_count(); i++) {
		stream_t *s = stream_at(i);
		if (s->dead || s->detached)
			continue;
		if (s->kind == S_EXEC)
			exec_detach(s);
		else if (s->kind == S_PORT)
			forward_abort(s);
		else
			file_abort(s);
		n++;
	}
	return n;
}

/* The host session (HELLO's SESSION): a host process that re-opens the
 * channel names itself with a fresh random one. */
static uint8_t session[SESSION_LEN];
static int have_session;

/* HELLO with a SESSION other than the stored one: a new host process took
 * over the channel (the previous one died mid-conversation), so the open
 * streams belong to nobody. The same SESSION again (a retry) detaches
 * nothing. HELLO without SESSION is a plain liveness check. */
static void hello(uint32_t id, const fields_t *f)
{
	if (!f->have[F_SESSION]) {
		info_hello(id, NULL);
		return;
	}
	if (!have_session || memcmp(session, f->session, SESSION_LEN) != 0) {
		int n = detach_streams();
		memcpy(session, f->session, SESSION_LEN);
		have_session = 1;
		logmsg("new host session; %d stream%s of the previous one detached", n, n == 1 ? "" : "s");
	}
	info_hello(id, session);
}

static void handle_request(const frame_t *fr)
{
	uint32_t id = fr->stream;
	if (id == 0) {
		send_error(0, EPROTO, "protocol: request 0x%02x on stream 0", fr->type);
		return;
	}
	if (stream_find(id)) {
		/* Not on the stream itself: that would end the running request. */
		send_error(0, EBUSY, "protocol: request 0x%02x on stream %u, which is still open", fr->type, id);
		return;
	}
	fields_t f;
	char err[256];
	int rc = fields_parse(fr->payload, fr->len, &f, err, sizeof err);
	if (rc) {
		send_error(id, rc, "%s", err);
		fields_free(&f);
		return;
	}
	switch (fr->type) {
	case T_HELLO: hello(id, &f); break;
	case T_EXEC: exec_start(id, &f); break;
	case T_READ: file_read_start(id, &f); break;
	case T_WRITE_OPEN: file_write_open(id, &f); break;
	case T_LIST: file_list(id, &f); break;
	case T_STAT: file_stat(id, &f); break;
	case T_MKDIR: file_mkdir(id, &f); break;
	case T_REMOVE: file_remove(id, &f); break;
	case T_RENAME: file_rename(id, &f); break;
	case T_FORK_NOTIFY:
		/* A restored copy (a fork child or a claimed VM) talking to a new
		 * host connection, which numbers its streams from 1 again: the
		 * streams still open belong to the original's caller. */
		if (fork_notify(id, &f, vm_mode) == 0) {
			detach_streams();
			have_session = 0;
		}
		break;
	case T_PROCESSES:
		reap(); /* dead orphans are ours to reap, not processes left */
		info_processes(id);
		break;
	case T_KILL: info_kill(id, &f); break;
	case T_SET_CLOCK: set_clock(id, &f, vm_mode); break;
	case T_PORT_OPEN: forward_open(id, &f); break;
	}
	fields_free(&f);
}

/* The kinds of stream a frame type may be sent to, and their name. */
static int kind_ok(uint8_t type, int kind, const char **name)
{
	switch (type) {
	case T_WRITE_DATA: case T_WRITE_CLOSE:
		*name = "write";
		return kind == S_WRITE;
	case T_PORT_DATA: case T_PORT_SHUTDOWN: case T_PORT_CLOSE:
		*name = "port";
		return kind == S_PORT;
	case T_CREDIT:
		*name = "exec, read or port";
		return kind == S_EXEC || kind == S_READ || kind == S_PORT;
	default:
		*name = "exec";
		return kind == S_EXEC;
	}
}

/* Frames for a stream that is already open. Errors about them go to
 * stream 0, because an ERROR on the stream would be its final frame. */
static void handle_stream_frame(const frame_t *fr)
{
	stream_t *s = stream_find(fr->stream);
	if (!s || fr->stream == 0)
		return; /* late frame for a finished stream: harmless */
	const char *want;
	if (!kind_ok(fr->type, s->kind, &want)) {
		send_error(0, EPROTO, "protocol: %s on stream %u, which is not a %s stream",
			   type_name(fr->type), fr->stream, want);
		return;
	}
	fields_t f;
	char err[256];
	int rc = 0;
	if (fr->type == T_RESIZE || fr->type == T_SIGNAL || fr->type == T_CREDIT)
		rc = fields_parse(fr->payload, fr->len, &f, err, sizeof err);
	else
		memset(&f, 0, sizeof f);
	if (rc) {
		send_error(0, rc, "%s on stream %u: %s", type_name(fr->type), fr->stream, err);
		fields_free(&f);
		return;
	}
	switch (fr->type) {
	case T_STDIN: exec_stdin(s, fr->payload, fr->len); break;
	case T_STDIN_CLOSE: exec_stdin_close(s); break;
	case T_RESIZE: exec_resize(s, &f); break;
	case T_SIGNAL:
		if (!f.have[F_SIGNAL] || f.ival[F_SIGNAL] < 1 || f.ival[F_SIGNAL] > 64)
			send_error(0, EINVAL, "SIGNAL on stream %u: need SIGNAL in 1..64", s->id);
		else
			exec_signal(s, (int)f.ival[F_SIGNAL]);
		break;
	case T_CREDIT:
		if (!f.have[F_BYTES] || f.ival[F_BYTES] < 0)
			send_error(0, EINVAL, "CREDIT on stream %u: need BYTES >= 0", s->id);
		else if (s->kind == S_PORT)
			forward_credit(s, f.ival[F_BYTES]);
		else if (s->credit < ((int64_t)1 << 62) - f.ival[F_BYTES])
			s->credit += f.ival[F_BYTES];
		break;
	case T_WRITE_DATA: file_write_data(s, fr->payload, fr->len); break;
	case T_WRITE_CLOSE: file_write_close(s); break;
	case T_PORT_DATA: forward_data(s, fr->payload, fr->len); break;
	case T_PORT_SHUTDOWN: forward_shutdown(s); break;
	case T_PORT_CLOSE: forward_close(s); break;
	}
	fields_free(&f);
}

static void dispatch(const frame_t *fr)
{
	switch (fr->type) {
	case T_STDIN: case T_STDIN_CLOSE: case T_RESIZE: case T_SIGNAL:
	case T_CREDIT: case T_WRITE_DATA: case T_WRITE_CLOSE:
	case T_PORT_DATA: case T_PORT_SHUTDOWN: case T_PORT_CLOSE:
		handle_stream_frame(fr);
		return;
	}
	if (is_request(fr->type)) {
		handle_request(fr);
		return;
	}
	/* Unknown type: end its stream if that is free, else report on 0. */
	uint32_t to = (fr->stream && !stream_find(fr->stream)) ? fr->stream : 0;
	send_error(to, ENOSYS, "protocol: unknown message type 0x%02x on stream %u", fr->type, fr->stream);
}

/* The host went away (test mode): nothing can be answered any more. */
static void drop_connection(void)
{
	close(port_fd());
	port_set_fd(-1);
	dec_reset(&dec);
	for (int i = 0; i < stream_count(); i++) {
		stream_t *s = stream_at(i);
		if (s->dead)
			continue;
		if (s->kind == S_EXEC)
			exec_abort(s);
		else if (s->kind == S_PORT)
			forward_abort(s);
		else
			file_abort(s);
	}
	stream_sweep();
	if (fd_mode)
		exit(0);
}

static void host_gone(void)
{
	if (vm_mode) {
		/* No host on the port: read() returns 0 at once, so back off
		 * instead of spinning. The fd stays open (closing loses data). */
		port_retry_at = now_ms() + PORT_RETRY_MS;
		dec_reset(&dec);
		if (host_up)
			logmsg("host disconnected");
		host_up = 0;
	} else {
		drop_connection();
	}
}

static void read_port(void)
{
	size_t avail;
	uint8_t *space = dec_space(&dec, &avail);
	ssize_t n = read(port_fd(), space, avail);
	if (n < 0 && (errno == EINTR || errno == EAGAIN))
		return;
	if (n <= 0) {
		if (n < 0)
			logmsg("read from host: %s", strerror(errno));
		host_gone();
		return;
	}
	if (vm_mode && !host_up) {
		logmsg("host connected");
		host_up = 1;
	}
	dec_commit(&dec, (size_t)n);
	frame_t fr;
	int r;
	while ((r = dec_next(&dec, &fr)) != DEC_NEED) {
		if (r == DEC_RESYNC)
			send_error(0, EPROTO, "protocol: bad frame header (magic, flags or length); resynchronising");
		else
			dispatch(&fr);
	}
}

static void reap(void)
{
	struct signalfd_siginfo si;
	while (read(sig_fd, &si, sizeof si) > 0)
		;
	/* As PID 1 every orphan ends up here: reap them all, report ours. */
	int status;
	pid_t pid;
	while ((pid = waitpid(-1, &status, WNOHANG)) > 0)
		exec_reaped(pid, status);
}

static int listen_on(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	if (strlen(path) >= sizeof sa.sun_path) {
		fprintf(stderr, "mitos-agent: socket path too long\n");
		exit(2);
	}
	strcpy(sa.sun_path, path);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	unlink(path);
	if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(fd, 4) < 0) {
		fprintf(stderr, "mitos-agent: listen %s: %s\n", path, strerror(errno));
		exit(2);
	}
	return fd;
}

static void usage(void)
{
	fprintf(stderr, "usage: mitos-agent [--listen SOCKET | --fd N | --version]\n"
			"  no arguments: VM mode (PID 1, virtio port \"mitos.agent\")\n");
	exit(2);
}

static void setup(int argc, char **argv)
{
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--version")) {
			printf("mitos-agent %s\n", MITOS_AGENT_VERSION);
			exit(0);
		} else if (!strcmp(argv[i], "--listen") && i + 1 < argc) {
			vm_mode = 0;
			listen_fd = listen_on(argv[++i]);
		} else if (!strcmp(argv[i], "--fd") && i + 1 < argc) {
			vm_mode = 0;
			fd_mode = 1;
			port_set_fd(atoi(argv[++i]));
		} else {
			usage();
		}
	}
	signal(SIGPIPE, SIG_IGN); /* a closed pipe or socket is an errno, not death */
	umask(0);                 /* MODE fields are exact; children get 022 */
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0) { /* ~4 fds per exec */
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGCHLD);
	sigprocmask(SIG_BLOCK, &set, NULL);
	sig_fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
	if (sig_fd < 0)
		logmsg("signalfd: %s", strerror(errno));
	dec_init(&dec, inbuf, sizeof inbuf);
	if (vm_mode) {
		std_fds();
		if (getpid() != 1)
			logmsg("VM mode but not PID 1 (pid %d)", (int)getpid());
		int cgroups = vm_init();
		exec_use_cgroups(cgroups);
		if (cgroups)
			limits_apply();
		if (chdir("/") < 0) { /* nothing better to do */ }
		port_set_fd(port_open_vm());
		logmsg("version %s ready", MITOS_AGENT_VERSION);
	}
}

int main(int argc, char **argv)
{
	static struct pollfd pfd[3 * MAX_STREAMS + 4];
	static stream_t *who[3 * MAX_STREAMS + 4];
	static int which[3 * MAX_STREAMS + 4];
	setup(argc, argv);
	for (;;) {
		int64_t now = now_ms(), next = INT64_MAX;
		int busy = 0;
		for (int i = 0; i < stream_count(); i++) {
			stream_t *s = stream_at(i);
			if (s->dead)
				continue;
			if (s->kind == S_EXEC || s->kind == S_PORT) {
				int64_t d = s->kind == S_EXEC ? exec_tick(s, now) : forward_tick(s, now);
				if (d < next)
					next = d;
			} else if (s->kind == S_READ && file_read_pump(s)) {
				busy = 1; /* more to send: poll without sleeping */
			}
		}
		stream_sweep();
		if (port_broken()) {
			if (vm_mode)
				port_set_fd(port_fd()); /* keep the port; try again */
			else
				drop_connection();
		}

		int n = 0, port_i = -1, listen_i = -1;
		pfd[n++] = (struct pollfd){ .fd = sig_fd, .events = POLLIN };
		if (port_fd() >= 0) {
			if (!vm_mode || now >= port_retry_at) {
				port_i = n;
				pfd[n++] = (struct pollfd){ .fd = port_fd(), .events = POLLIN };
			} else if (port_retry_at < next) {
				next = port_retry_at;
			}
		} else if (listen_fd >= 0) {
			listen_i = n;
			pfd[n++] = (struct pollfd){ .fd = listen_fd, .events = POLLIN };
		}
		int first_exec = n;
		for (int i = 0; i < stream_count(); i++) {
			stream_t *s = stream_at(i);
			if (s->kind == S_PORT) {
				short ev = forward_events(s);
				if (ev) {
					who[n] = s, which[n] = 4;
					pfd[n++] = (struct pollfd){ .fd = s->fd, .events = ev };
				}
				continue;
			}
			if (s->kind != S_EXEC)
				continue;
			/* Out of credit: leave the pipes alone so the child blocks. */
			if (s->credit > 0 && s->out_fd >= 0) {
				who[n] = s, which[n] = 1;
				pfd[n++] = (struct pollfd){ .fd = s->out_fd, .events = POLLIN };
			}
			if (s->credit > 0 && s->err_fd >= 0) {
				who[n] = s, which[n] = 2;
				pfd[n++] = (struct pollfd){ .fd = s->err_fd, .events = POLLIN };
			}
			if (s->in_fd >= 0 && s->in_len > 0) {
				who[n] = s, which[n] = 3;
				pfd[n++] = (struct pollfd){ .fd = s->in_fd, .events = POLLOUT };
			}
		}
		int timeout = -1;
		if (busy)
			timeout = 0;
		else if (next != INT64_MAX)
			timeout = next <= now ? 0 : (int)(next - now > 60000 ? 60000 : next - now);
		if (poll(pfd, (nfds_t)n, timeout) < 0) {
			if (errno != EINTR) {
				logmsg("poll: %s", strerror(errno));
				usleep(10000);
			}
			continue;
		}
		/* Child fds first: dispatching host frames may change the table. */
		for (int i = first_exec; i < n; i++) {
			if (!pfd[i].revents)
				continue;
			if (which[i] == 4)
				forward_ready(who[i], pfd[i].revents);
			else if (which[i] == 3)
				exec_writable(who[i]);
			else
				exec_readable(who[i], which[i]);
		}
		if (pfd[0].revents)
			reap();
		if (listen_i >= 0 && (pfd[listen_i].revents & POLLIN)) {
			int c = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
			if (c >= 0) {
				port_set_fd(c);
				dec_reset(&dec);
			}
		}
		if (port_i >= 0 && pfd[port_i].revents) {
			if (pfd[port_i].revents & POLLIN)
				read_port();
			else /* POLLHUP / POLLERR without data */
				host_gone();
		}
	}
}
