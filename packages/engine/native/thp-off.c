/* mitos-thp-off COMMAND [ARG...]: runs COMMAND with transparent huge pages
 * disabled for it and for everything it execs (PR_SET_THP_DISABLE survives
 * fork and execve). mitosd starts QEMU through it: QEMU asks for huge pages
 * on every RAM block and on TCG's code buffer (madvise), so a 2 MiB ACPI
 * table blob holding a few KiB costs each VM a whole 2 MiB page
 * (docs/decisions/0032-qemu-without-transparent-huge-pages.md). */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc < 2 || argv[1][0] == '-') {
		fprintf(stderr, "usage: mitos-thp-off COMMAND [ARG...]\n"
				"Runs COMMAND with transparent huge pages disabled (prctl PR_SET_THP_DISABLE).\n");
		return 2;
	}
	if (prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) != 0) {
		fprintf(stderr, "mitos-thp-off: prctl(PR_SET_THP_DISABLE): %s\n", strerror(errno));
		return 126;
	}
	execvp(argv[1], argv + 1);
	int e = errno;
	fprintf(stderr, "mitos-thp-off: %s: %s\n", argv[1], strerror(e));
	return e == ENOENT ? 127 : 126;
}
