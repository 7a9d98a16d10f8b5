/* EXEC streams: spawning, PTY, stdin/stdout/stderr plumbing, credit,
 * timeouts and the final EXIT frame. */
#ifndef MITOS_EXEC_H
#define MITOS_EXEC_H

#include <stdint.h>
#include <sys/types.h>

#include "frame.h"
#include "stream.h"

void exec_use_cgroups(int on); /* VM mode with cgroup v2 mounted */

void exec_start(uint32_t id, const fields_t *f);
void exec_stdin(stream_t *s, const uint8_t *p, size_t n);
void exec_stdin_close(stream_t *s);
void exec_resize(stream_t *s, const fields_t *f);
void exec_signal(stream_t *s, int sig);

/* Readiness from poll(): which = 1 stdout/PTY, 2 stderr. */
void exec_readable(stream_t *s, int which);
void exec_writable(stream_t *s);

/* A child was reaped; returns 1 if it was one of ours. */
int exec_reaped(pid_t pid, int status);
/* Timeouts, drain deadline, EXIT. Returns the next deadline or INT64_MAX. */
int64_t exec_tick(stream_t *s, int64_t now);
/* Host went away (test mode): kill the group and free, no EXIT. */
/* A fork child's copy of an exec in flight: the process runs on, its output
 * is read and dropped, and it sends no frame (its caller is the parent's). */
void exec_detach(stream_t *s);
void exec_abort(stream_t *s);

#endif
