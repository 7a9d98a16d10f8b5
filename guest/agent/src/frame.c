/* Frame decoder, field parser and encoders (see frame.h). */
#define _DEFAULT_SOURCE
#include "frame.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

uint32_t get_u32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

void put_u32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

/* ---- frames ---- */

int frame_parse(const uint8_t *buf, size_t n, frame_t *f, size_t *used)
{
	/* Reject bad magic as early as possible so resync does not wait for
	 * a full header of garbage. */
	if (n >= 1 && buf[0] != FRAME_MAGIC0)
		return -1;
	if (n >= 2 && buf[1] != FRAME_MAGIC1)
		return -1;
	if (n >= 4 && buf[3] != 0)
		return -1;
	if (n < FRAME_HEADER)
		return DEC_NEED;
	uint32_t len = get_u32(buf + 8);
	if (len > MAX_PAYLOAD)
		return -1;
	if (n - FRAME_HEADER < len)
		return DEC_NEED;
	f->type = buf[2];
	f->stream = get_u32(buf + 4);
	f->len = len;
	f->payload = buf + FRAME_HEADER;
	*used = FRAME_HEADER + (size_t)len;
	return DEC_FRAME;
}

void frame_header(uint8_t out[FRAME_HEADER], uint8_t type, uint32_t stream, uint32_t len)
{
	out[0] = FRAME_MAGIC0;
	out[1] = FRAME_MAGIC1;
	out[2] = type;
	out[3] = 0;
	put_u32(out + 4, stream);
	put_u32(out + 8, len);
}

void dec_init(decoder_t *d, uint8_t *storage, size_t cap)
{
	memset(d, 0, sizeof *d);
	d->buf = storage;
	d->cap = cap;
}

void dec_reset(decoder_t *d)
{
	d->start = d->end = 0;
	d->skipping = 0;
}

uint8_t *dec_space(decoder_t *d, size_t *avail)
{
	if (d->start > 0) {
		memmove(d->buf, d->buf + d->start, d->end - d->start);
		d->end -= d->start;
		d->start = 0;
	}
	*avail = d->cap - d->end;
	return d->buf + d->end;
}

void dec_commit(decoder_t *d, size_t n)
{
	if (n > d->cap - d->end) /* never trust the caller past the buffer */
		n = d->cap - d->end;
	d->end += n;
}

int dec_next(decoder_t *d, frame_t *f)
{
	while (d->start < d->end) {
		size_t used = 0;
		int r = frame_parse(d->buf + d->start, d->end - d->start, f, &used);
		if (r == DEC_FRAME) {
			d->start += used;
			d->skipping = 0;
			return DEC_FRAME;
		}
		if (r == DEC_NEED) {
			/* A full buffer that still needs more can only be garbage
			 * (valid frames fit): drop a byte rather than stall. */
			if (d->start == 0 && d->end == d->cap) {
				d->start++;
				continue;
			}
			return DEC_NEED;
		}
		/* Invalid header: drop one byte and look for the magic again. */
		d->start++;
		if (!d->skipping) {
			d->skipping = 1;
			d->resyncs++;
			return DEC_RESYNC;
		}
	}
	return DEC_NEED;
}

/* ---- fields ---- */

void field_iter_init(field_iter_t *it, const uint8_t *p, size_t len)
{
	it->p = p;
	it->len = len;
	it->off = 0;
}

int field_next(field_iter_t *it, field_t *f)
{
	size_t left = it->len - it->off;
	if (left == 0)
		return 0;
	if (left < 5)
		return -1;
	const uint8_t *q = it->p + it->off;
	uint32_t len = get_u32(q + 1);
	if (len > left - 5)
		return -1;
	f->tag = q[0];
	f->len = len;
	f->val = q + 5;
	it->off += 5 + (size_t)len;
	return 1;
}

enum { K_UNKNOWN, K_INT, K_STR, K_LIST, K_BYTES, K_SESSION };

static int tag_kind(uint8_t tag)
{
	switch (tag) {
	case F_CMD: case F_CWD: case F_PATH: case F_TO: case F_NAME:
	case F_SANDBOX_ID: case F_HOSTNAME: case F_VERSION: case F_BOOT_ID:
	case F_MESSAGE: case F_COMMAND: case F_STATE: case F_ADDRESS:
	case F_TARGET:
		return K_STR;
	case F_ARG: case F_ENV:
		return K_LIST;
	case F_ENTROPY:
		return K_BYTES;
	case F_SESSION:
		return K_SESSION;
	case F_TIMEOUT_MS: case F_PTY_COLS: case F_PTY_ROWS: case F_STDIN_OPEN:
	case F_WINDOW: case F_UID: case F_GID: case F_PID: case F_EXIT_CODE:
	case F_SIGNAL: case F_TIMED_OUT: case F_DURATION_MS: case F_BYTES:
	case F_MODE: case F_OFFSET: case F_LENGTH: case F_RECURSIVE:
	case F_APPEND: case F_TYPE: case F_SIZE: case F_MTIME: case F_TIME_NS:
	case F_RESEEDED: case F_NOTIFIED: case F_CLOCK_STEP_NS: case F_UPTIME_MS:
	case F_MEM_TOTAL: case F_MEM_AVAILABLE: case F_ERRNO: case F_PPID:
	case F_RSS: case F_CPU_PERMILLE: case F_PORT: case F_MTIME_NSEC:
		return K_INT;
	default:
		return K_UNKNOWN;
	}
}

static char *dup_str(const field_t *f, char *err, size_t errlen, int *rc)
{
	if (memchr(f->val, 0, f->len)) {
		snprintf(err, errlen, "field %u: NUL byte inside a string", f->tag);
		*rc = EINVAL;
		return NULL;
	}
	char *s = malloc((size_t)f->len + 1);
	if (!s) {
		snprintf(err, errlen, "out of memory");
		*rc = ENOMEM;
		return NULL;
	}
	memcpy(s, f->val, f->len);
	s[f->len] = 0;
	return s;
}

static int list_push(char ***list, size_t *n, char *s)
{
	/* Always keep a NULL terminator so the list is a ready argv/envp. */
	char **nl = realloc(*list, (*n + 2) * sizeof **list);
	if (!nl)
		return -1;
	nl[(*n)++] = s;
	nl[*n] = NULL;
	*list = nl;
	return 0;
}

int fields_parse(const uint8_t *p, size_t len, fields_t *r, char *err, size_t errlen)
{
	memset(r, 0, sizeof *r);
	field_iter_t it;
	field_t f;
	int got, rc = 0;
	field_iter_init(&it, p, len);
	while ((got = field_next(&it, &f)) == 1) {
		int kind = tag_kind(f.tag);
		if (kind == K_UNKNOWN)
			continue; /* forward compatibility */
		if (kind != K_LIST && r->have[f.tag]) {
			snprintf(err, errlen, "field %u repeated", f.tag);
			return EINVAL;
		}
		if (kind == K_INT) {
			if (f.len != 8) {
				snprintf(err, errlen, "field %u: integer of %u bytes, want 8", f.tag, f.len);
				return EINVAL;
			}
			uint64_t v = 0;
			for (int i = 0; i < 8; i++)
				v = v << 8 | f.val[i];
			r->ival[f.tag] = (int64_t)v; /* two's complement on Linux */
		} else if (kind == K_STR) {
			if (!(r->sval[f.tag] = dup_str(&f, err, errlen, &rc)))
				return rc;
		} else if (kind == K_BYTES) {
			r->bval = f.val;
			r->blen = f.len;
		} else if (kind == K_SESSION) {
			if (f.len != SESSION_LEN) {
				snprintf(err, errlen, "field %u: session of %u bytes, want %d", f.tag, f.len, SESSION_LEN);
				return EINVAL;
			}
			memcpy(r->session, f.val, SESSION_LEN);
		} else {
			char *s = dup_str(&f, err, errlen, &rc);
			if (!s)
				return rc;
			int bad = f.tag == F_ARG ? list_push(&r->args, &r->nargs, s)
						 : list_push(&r->envs, &r->nenvs, s);
			if (bad) {
				free(s);
				snprintf(err, errlen, "out of memory");
				return ENOMEM;
			}
		}
		r->have[f.tag] = 1;
	}
	if (got < 0) {
		snprintf(err, errlen, "protocol: field runs past the payload (offset %zu of %zu)", it.off, len);
		return EPROTO;
	}
	return 0;
}

void fields_free(fields_t *r)
{
	for (int i = 0; i < 256; i++)
		free(r->sval[i]);
	for (size_t i = 0; i < r->nargs; i++)
		free(r->args[i]);
	for (size_t i = 0; i < r->nenvs; i++)
		free(r->envs[i]);
	free(r->args);
	free(r->envs);
	memset(r, 0, sizeof *r);
}

/* ---- encoder ---- */

void fb_init(fbuf_t *b)
{
	memset(b, 0, sizeof *b);
}

void fb_free(fbuf_t *b)
{
	free(b->p);
	memset(b, 0, sizeof *b);
}

void fb_reset(fbuf_t *b)
{
	b->len = 0;
	b->oom = 0;
}

static uint8_t *fb_grow(fbuf_t *b, size_t n)
{
	if (b->oom)
		return NULL;
	/* Never let a record exceed what a frame may carry. */
	if (n > MAX_PAYLOAD || b->len > MAX_PAYLOAD - n) {
		b->oom = 1;
		return NULL;
	}
	if (b->len + n > b->cap) {
		size_t cap = b->cap ? b->cap : 256;
		while (cap < b->len + n)
			cap *= 2;
		uint8_t *p = realloc(b->p, cap);
		if (!p) {
			b->oom = 1;
			return NULL;
		}
		b->p = p;
		b->cap = cap;
	}
	uint8_t *at = b->p + b->len;
	b->len += n;
	return at;
}

void fb_bytes(fbuf_t *b, uint8_t tag, const void *v, size_t n)
{
	if (n > MAX_PAYLOAD)
		n = MAX_PAYLOAD; /* fb_grow then fails cleanly */
	uint8_t *q = fb_grow(b, 5 + n);
	if (!q)
		return;
	q[0] = tag;
	put_u32(q + 1, (uint32_t)n);
	if (n)
		memcpy(q + 5, v, n);
}

void fb_int(fbuf_t *b, uint8_t tag, int64_t v)
{
	uint8_t be[8];
	uint64_t u = (uint64_t)v;
	for (int i = 7; i >= 0; i--, u >>= 8)
		be[i] = (uint8_t)u;
	fb_bytes(b, tag, be, 8);
}

void fb_str(fbuf_t *b, uint8_t tag, const char *s)
{
	fb_bytes(b, tag, s ? s : "", s ? strlen(s) : 0);
}
