/* What commands may take of their guest (docs/security.md "Hostile guests"):
 * every exec's cgroup lives under /sys/fs/cgroup/mitos, which gets a memory
 * and a pids limit below the VM's total, so a memory bomb or a fork bomb
 * fails its command and not the VM; the agent itself is kept off the OOM
 * killer's list (as PID 1 it is never on it) and its pages locked in RAM,
 * so it always answers. */
#ifndef MITOS_LIMITS_H
#define MITOS_LIMITS_H

#include <stdint.h>

typedef struct {
	uint64_t memory_bytes; /* memory.max of the commands' cgroup */
	uint64_t pids;         /* pids.max of the commands' cgroup */
} cmd_limits_t;

/* Defaults when the kernel command line names none. */
#define LIMITS_DEFAULT_PIDS 1024
#define LIMITS_MIN_RESERVE_MIB 64 /* kept for the kernel and the agent: this, or an eighth of RAM if more */
#define LIMITS_MIN_MEMORY_MIB 32  /* the least commands are left, whatever was asked */

/* The limits from a kernel command line (mitos.cmd_mem=MiB, mitos.cmd_pids=N)
 * and /proc/meminfo's text (MemTotal). Bounds-checked: a malformed or
 * out-of-range value is ignored (the default applies). Returns 0, or -1
 * when meminfo has no MemTotal. */
int limits_parse(const char *cmdline, const char *meminfo, cmd_limits_t *out);

/* Reads both, parses and writes the cgroup files; protects the agent. The
 * commands' cgroup holds at most twice the pids limit; each exec's own
 * cgroup (limits_exec) at most the limit, and gets an equal share of CPU
 * whatever its number of processes: one runaway command leaves the rest room. */
void limits_apply(void);

/* Gives a new exec's cgroup directory its own pids limit (after limits_apply). */
void limits_exec(const char *cgroup_dir);

/* In a command's child before exec: back on the OOM killer's list where the
 * agent took itself off (not PID 1: its -1000 is inherited, and a memcg whose
 * every task is exempt can never be relieved: its commands would hang at the
 * limit forever). As PID 1 the agent stays at 0 (the kernel never OOM-kills
 * init), and this costs its commands nothing: under TCG the open and write
 * through /proc/self were ~0.2 ms of every exec and ~500 translated blocks
 * of a fork child's first. */
void limits_child(void);

#endif
