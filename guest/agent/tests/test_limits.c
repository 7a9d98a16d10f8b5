/* Unit tests of the commands' limits parsing (src/limits.c). */
#include <stdint.h>
#include <stdio.h>

#include "check.h"
#include "limits.h"

#define MIB (1024ull * 1024ull)
static const char *MEM512 = "MemTotal:         491520 kB\nMemFree:  400000 kB\n"; /* 480 MiB */

int main(void)
{
	cmd_limits_t l;
	/* Defaults: RAM less max(64 MiB, RAM/8); 1024 processes. */
	CHECK(limits_parse("console=ttyS0 quiet", MEM512, &l) == 0);
	CHECK(l.memory_bytes == (480 - 64) * MIB);
	CHECK(l.pids == LIMITS_DEFAULT_PIDS);
	CHECK(limits_parse("", "MemTotal: 4194304 kB\n", &l) == 0); /* 4 GiB: an eighth is reserved */
	CHECK(l.memory_bytes == (4096 - 512) * MIB);

	/* Asked for. */
	CHECK(limits_parse("quiet mitos.cmd_mem=300 mitos.cmd_pids=256 panic=-1", MEM512, &l) == 0);
	CHECK(l.memory_bytes == 300 * MIB);
	CHECK(l.pids == 256);
	CHECK(limits_parse("mitos.cmd_pids=64\n", MEM512, &l) == 0); /* /proc/cmdline ends in a newline */
	CHECK(l.pids == 64);

	/* Malformed, out of range, or only a suffix of another word: the default. */
	const char *bad[] = {
		"mitos.cmd_mem=", "mitos.cmd_mem=abc", "mitos.cmd_mem=12x", "mitos.cmd_mem=-5",
		"mitos.cmd_mem=99999999999999999999999", "mitos.cmd_mem=481", "mitos.cmd_mem=8",
		"xmitos.cmd_mem=100", "mitos.cmd_mem=1 00",
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		CHECK(limits_parse(bad[i], MEM512, &l) == 0);
		CHECK(l.memory_bytes == (480 - 64) * MIB);
	}
	CHECK(limits_parse("mitos.cmd_pids=3 mitos.cmd_pids=100", MEM512, &l) == 0); /* the first word decides */
	CHECK(l.pids == LIMITS_DEFAULT_PIDS);

	/* A tiny VM still leaves commands something. */
	CHECK(limits_parse("", "MemTotal: 65536 kB\n", &l) == 0);
	CHECK(l.memory_bytes == LIMITS_MIN_MEMORY_MIB * MIB);

	/* No MemTotal: an error. */
	CHECK(limits_parse("", "MemFree: 1 kB\n", &l) == -1);
	CHECK(limits_parse("", "MemTotal: kB\n", &l) == -1);

	printf("test_limits: %d passed, %d failed\n", passed, failed);
	return failed ? 1 : 0;
}
