/* Frame decoder, field parser and encoders. Pure: no I/O, no globals,
 * every read bounds-checked against the buffer it was given. */
#ifndef MITOS_FRAME_H
#define MITOS_FRAME_H

#include <stddef.h>
#include <stdint.h>

#include "proto.h"

typedef struct {
	uint8_t type;
	uint32_t stream;
	uint32_t len;
	const uint8_t *payload; /* points into the decoder's buffer */
} frame_t;

/* Incremental decoder over a caller-owned buffer of at least
 * FRAME_HEADER + MAX_PAYLOAD bytes, so every valid frame fits. */
typedef struct {
	uint8_t *buf;
	size_t cap;
	size_t start;    /* first unconsumed byte */
	size_t end;      /* one past the last received byte */
	int skipping;    /* inside a resync run */
	uint64_t resyncs;
} decoder_t;

enum { DEC_NEED = 0, DEC_FRAME = 1, DEC_RESYNC = 2 };

void dec_init(decoder_t *d, uint8_t *storage, size_t cap);
void dec_reset(decoder_t *d);
/* Space to read into (compacts first; invalidates earlier frame payloads). */
uint8_t *dec_space(decoder_t *d, size_t *avail);
void dec_commit(decoder_t *d, size_t n);
/* DEC_FRAME: *f is valid until the next dec_space(). DEC_RESYNC: a new run
 * of garbage began (report it once); keep calling. DEC_NEED: read more. */
int dec_next(decoder_t *d, frame_t *f);

/* Header check of a complete frame held in buf[0..n). Returns DEC_FRAME
 * (with *used = whole frame size), DEC_NEED or -1 for an invalid header. */
int frame_parse(const uint8_t *buf, size_t n, frame_t *f, size_t *used);
void frame_header(uint8_t out[FRAME_HEADER], uint8_t type, uint32_t stream, uint32_t len);

/* ---- fields ---- */
typedef struct {
	uint8_t tag;
	uint32_t len;
	const uint8_t *val;
} field_t;

typedef struct {
	const uint8_t *p;
	size_t len, off;
} field_iter_t;

void field_iter_init(field_iter_t *it, const uint8_t *p, size_t len);
/* 1 = *f filled, 0 = end of payload, -1 = truncated field header/value. */
int field_next(field_iter_t *it, field_t *f);

/* Parsed request: every known tag, typed. Unknown tags are skipped. */
typedef struct {
	uint8_t have[256];
	int64_t ival[256];
	char *sval[256];           /* NUL-terminated copies */
	const uint8_t *bval;       /* ENTROPY, points into the payload */
	uint32_t blen;
	uint8_t session[SESSION_LEN]; /* SESSION, when have[F_SESSION] */
	char **args; size_t nargs; /* ARG..., NULL-terminated */
	char **envs; size_t nenvs; /* ENV..., NULL-terminated */
} fields_t;

/* Returns 0, or an errno (EPROTO: field runs past payload; EINVAL: bad
 * integer size, SESSION not SESSION_LEN bytes, NUL in a string, repeated
 * single tag; ENOMEM) with a
 * message in err. Always call fields_free(), even after an error. */
int fields_parse(const uint8_t *p, size_t len, fields_t *r, char *err, size_t errlen);
void fields_free(fields_t *r);

/* ---- encoder: a growable buffer of fields ---- */
typedef struct {
	uint8_t *p;
	size_t len, cap;
	int oom;
} fbuf_t;

void fb_init(fbuf_t *b);
void fb_free(fbuf_t *b);
void fb_reset(fbuf_t *b);
void fb_int(fbuf_t *b, uint8_t tag, int64_t v);
void fb_bytes(fbuf_t *b, uint8_t tag, const void *v, size_t n);
void fb_str(fbuf_t *b, uint8_t tag, const char *s);

uint32_t get_u32(const uint8_t *p);
void put_u32(uint8_t *p, uint32_t v);

#endif
