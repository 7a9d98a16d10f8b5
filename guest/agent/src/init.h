/* What the agent does as PID 1 in a VM before serving: filesystems it
 * needs, a sane stdio, the cgroup for execs. */
#ifndef MITOS_INIT_H
#define MITOS_INIT_H

/* Returns 1 if cgroup v2 is usable for per-exec cgroups. */
int vm_init(void);

/* Make sure fds 0, 1, 2 are open so no later open() lands on them. */
void std_fds(void);

#endif
