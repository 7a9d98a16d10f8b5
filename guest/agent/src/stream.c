#define _DEFAULT_SOURCE
#include "stream.h"

#include <stdlib.h>
#include <string.h>

static stream_t *table[MAX_STREAMS];
static int count;

stream_t *stream_find(uint32_t id)
{
	for (int i = 0; i < count; i++)
		if (table[i]->id == id && !table[i]->dead && !table[i]->detached)
			return table[i];
	return NULL;
}

stream_t *stream_new(uint32_t id, int kind)
{
	if (count >= MAX_STREAMS)
		return NULL;
	stream_t *s = calloc(1, sizeof *s);
	if (!s)
		return NULL;
	s->id = id;
	s->kind = kind;
	s->pid = -1;
	s->out_fd = s->err_fd = s->in_fd = s->pty_fd = s->fd = s->cgroup_fd = -1;
	table[count++] = s;
	return s;
}

int stream_count(void)
{
	return count;
}

stream_t *stream_at(int i)
{
	return table[i];
}

void stream_sweep(void)
{
	int j = 0;
	for (int i = 0; i < count; i++) {
		if (table[i]->dead) {
			free(table[i]->in_buf);
			fwd_free(&table[i]->fwd);
			free(table[i]);
		} else {
			table[j++] = table[i];
		}
	}
	count = j;
}
