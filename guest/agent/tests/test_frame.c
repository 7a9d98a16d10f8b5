/* Unit tests of the frame decoder, field parser and encoder (src/frame.c). */
#define _DEFAULT_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "frame.h"


static uint8_t *storage;
#define CAP (FRAME_HEADER + MAX_PAYLOAD)

static size_t mkframe(uint8_t *out, uint8_t type, uint32_t stream, const void *p, uint32_t n)
{
	frame_header(out, type, stream, n);
	if (n)
		memcpy(out + FRAME_HEADER, p, n);
	return FRAME_HEADER + n;
}

static void feed(decoder_t *d, const void *p, size_t n)
{
	size_t avail;
	uint8_t *sp = dec_space(d, &avail);
	if (n > avail)
		n = avail;
	memcpy(sp, p, n);
	dec_commit(d, n);
}

static void test_roundtrip(void)
{
	decoder_t d;
	dec_init(&d, storage, CAP);
	uint8_t buf[64];
	size_t n = mkframe(buf, T_EXEC, 0x01020304, "abc", 3);
	CHECK(n == 15 && buf[0] == 0x4D && buf[1] == 0x54 && buf[3] == 0);
	CHECK(buf[4] == 1 && buf[7] == 4 && buf[11] == 3);
	feed(&d, buf, n);
	frame_t f;
	CHECK(dec_next(&d, &f) == DEC_FRAME);
	CHECK(f.type == T_EXEC && f.stream == 0x01020304 && f.len == 3 && !memcmp(f.payload, "abc", 3));
	CHECK(dec_next(&d, &f) == DEC_NEED);
	CHECK(d.resyncs == 0);
}

static void test_truncated_header(void)
{
	uint8_t buf[64];
	size_t n = mkframe(buf, T_HELLO, 7, NULL, 0);
	for (size_t cut = 0; cut < FRAME_HEADER; cut++) {
		decoder_t d;
		frame_t f;
		dec_init(&d, storage, CAP);
		feed(&d, buf, cut);
		CHECK(dec_next(&d, &f) == DEC_NEED);
		feed(&d, buf + cut, n - cut);
		CHECK(dec_next(&d, &f) == DEC_FRAME && f.stream == 7 && f.len == 0);
		CHECK(d.resyncs == 0);
	}
}

static void test_byte_at_a_time(void)
{
	uint8_t buf[128];
	size_t n = mkframe(buf, T_STDIN, 1, "hello", 5);
	n += mkframe(buf + n, T_STDIN_CLOSE, 1, NULL, 0);
	decoder_t d;
	dec_init(&d, storage, CAP);
	int frames = 0;
	for (size_t i = 0; i < n; i++) {
		feed(&d, buf + i, 1);
		frame_t f;
		int r;
		while ((r = dec_next(&d, &f)) != DEC_NEED)
			if (r == DEC_FRAME)
				frames++;
	}
	CHECK(frames == 2);
	CHECK(d.resyncs == 0);
}

/* Count frames and resync events for one buffer fed whole. */
static void run(const uint8_t *p, size_t n, int *frames, int *resyncs, uint32_t *last_stream)
{
	decoder_t d;
	dec_init(&d, storage, CAP);
	feed(&d, p, n);
	frame_t f;
	int r;
	*frames = *resyncs = 0;
	while ((r = dec_next(&d, &f)) != DEC_NEED) {
		if (r == DEC_FRAME) {
			(*frames)++;
			*last_stream = f.stream;
		} else {
			(*resyncs)++;
		}
	}
	CHECK((uint64_t)*resyncs == d.resyncs);
}

static void test_bad_magic_resync(void)
{
	uint8_t buf[128];
	size_t n = 0;
	memcpy(buf, "xyzM", 4); /* includes a lone M that is not a magic */
	n = 4;
	n += mkframe(buf + n, T_HELLO, 9, NULL, 0);
	int frames, resyncs;
	uint32_t last = 0;
	run(buf, n, &frames, &resyncs, &last);
	CHECK(frames == 1 && resyncs == 1 && last == 9);

	/* garbage, frame, garbage, frame: two separate resync events */
	n = 0;
	buf[n++] = 0xFF;
	n += mkframe(buf + n, T_HELLO, 1, NULL, 0);
	buf[n++] = 'M';
	buf[n++] = 'X';
	n += mkframe(buf + n, T_HELLO, 2, NULL, 0);
	run(buf, n, &frames, &resyncs, &last);
	CHECK(frames == 2 && resyncs == 2 && last == 2);
}

static void test_flags_nonzero(void)
{
	uint8_t buf[64];
	size_t n = mkframe(buf, T_HELLO, 1, NULL, 0);
	buf[3] = 1;
	n += mkframe(buf + n, T_HELLO, 2, NULL, 0);
	int frames, resyncs;
	uint32_t last = 0;
	run(buf, n, &frames, &resyncs, &last);
	CHECK(frames == 1 && resyncs == 1 && last == 2);
}

static void test_length_past_buffer(void)
{
	/* Header promises 100 bytes, only 10 arrived: wait, never read past. */
	uint8_t buf[64];
	frame_header(buf, T_WRITE_DATA, 3, 100);
	memset(buf + FRAME_HEADER, 'a', 10);
	frame_t f;
	size_t used = 0;
	CHECK(frame_parse(buf, FRAME_HEADER + 10, &f, &used) == DEC_NEED);
	decoder_t d;
	dec_init(&d, storage, CAP);
	feed(&d, buf, FRAME_HEADER + 10);
	CHECK(dec_next(&d, &f) == DEC_NEED);
	/* A tiny decoder whose buffer can never hold the frame drops bytes
	 * instead of waiting forever. */
	uint8_t small[20];
	dec_init(&d, small, sizeof small);
	feed(&d, buf, sizeof small);
	int r, resync = 0;
	while ((r = dec_next(&d, &f)) != DEC_NEED)
		resync += r == DEC_RESYNC;
	CHECK(resync == 1);
}

static void test_oversize_length(void)
{
	uint8_t buf[64];
	size_t n = 0;
	frame_header(buf, T_WRITE_DATA, 1, MAX_PAYLOAD + 1);
	n = FRAME_HEADER;
	n += mkframe(buf + n, T_HELLO, 5, NULL, 0);
	int frames, resyncs;
	uint32_t last = 0;
	run(buf, n, &frames, &resyncs, &last);
	CHECK(frames == 1 && resyncs == 1 && last == 5);

	frame_header(buf, T_WRITE_DATA, 1, 0xFFFFFFFFu);
	frame_t f;
	size_t used;
	CHECK(frame_parse(buf, FRAME_HEADER, &f, &used) == -1);

	/* exactly MAX_PAYLOAD is fine */
	uint8_t *big = calloc(1, FRAME_HEADER + MAX_PAYLOAD);
	frame_header(big, T_WRITE_DATA, 4, MAX_PAYLOAD);
	decoder_t d;
	dec_init(&d, storage, CAP);
	feed(&d, big, FRAME_HEADER + MAX_PAYLOAD);
	CHECK(dec_next(&d, &f) == DEC_FRAME && f.len == MAX_PAYLOAD && f.stream == 4);
	free(big);
}

/* ---- fields ---- */

static size_t fld(uint8_t *out, uint8_t tag, const void *v, uint32_t n)
{
	out[0] = tag;
	put_u32(out + 1, n);
	memcpy(out + 5, v, n);
	return 5 + n;
}

static void test_fields_basic(void)
{
	fbuf_t b;
	fb_init(&b);
	fb_str(&b, F_CMD, "echo hi");
	fb_str(&b, F_ARG, "a");
	fb_str(&b, F_ARG, "b");
	fb_str(&b, F_ENV, "X=1");
	fb_int(&b, F_TIMEOUT_MS, 500);
	fb_int(&b, F_OFFSET, -2);
	fb_bytes(&b, 200, "zz", 2); /* unknown tag: skipped */
	fb_bytes(&b, F_ENTROPY, "\0\1\2", 3);
	CHECK(!b.oom);
	fields_t f;
	char err[128];
	CHECK(fields_parse(b.p, b.len, &f, err, sizeof err) == 0);
	CHECK(f.have[F_CMD] && !strcmp(f.sval[F_CMD], "echo hi"));
	CHECK(f.nargs == 2 && !strcmp(f.args[0], "a") && !strcmp(f.args[1], "b") && f.args[2] == NULL);
	CHECK(f.nenvs == 1 && !strcmp(f.envs[0], "X=1") && f.envs[1] == NULL);
	CHECK(f.ival[F_TIMEOUT_MS] == 500 && f.ival[F_OFFSET] == -2);
	CHECK(!f.have[200]);
	CHECK(f.have[F_ENTROPY] && f.blen == 3 && f.bval[2] == 2);
	fields_free(&f);
	fb_free(&b);

	/* encoder bytes exactly */
	fb_init(&b);
	fb_int(&b, F_PID, -1);
	uint8_t want[13] = { F_PID, 0, 0, 0, 8, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF };
	CHECK(b.len == 13 && !memcmp(b.p, want, 13));
	fb_free(&b);

	CHECK(fields_parse(NULL, 0, &f, err, sizeof err) == 0);
	fields_free(&f);
}

static void test_fields_errors(void)
{
	uint8_t buf[64];
	fields_t f;
	char err[128];
	size_t n;

	/* repeated single-valued tag */
	n = fld(buf, F_PATH, "/a", 2);
	n += fld(buf + n, F_PATH, "/b", 2);
	CHECK(fields_parse(buf, n, &f, err, sizeof err) == EINVAL);
	fields_free(&f);

	/* NUL inside a string */
	n = fld(buf, F_PATH, "/a\0b", 4);
	CHECK(fields_parse(buf, n, &f, err, sizeof err) == EINVAL);
	fields_free(&f);
	n = fld(buf, F_ARG, "\0", 1);
	CHECK(fields_parse(buf, n, &f, err, sizeof err) == EINVAL);
	fields_free(&f);

	/* integers not 8 bytes */
	n = fld(buf, F_TIMEOUT_MS, "1234567", 7);
	CHECK(fields_parse(buf, n, &f, err, sizeof err) == EINVAL);
	fields_free(&f);
	n = fld(buf, F_TIMEOUT_MS, "123456789", 9);
	CHECK(fields_parse(buf, n, &f, err, sizeof err) == EINVAL);
	fields_free(&f);
	n = fld(buf, F_TIMEOUT_MS, "", 0);
	CHECK(fields_parse(buf, n, &f, err, sizeof err) == EINVAL);
	fields_free(&f);

	/* field length past the payload */
	n = fld(buf, F_PATH, "/abc", 4);
	put_u32(buf + 1, 5);
	CHECK(fields_parse(buf, n, &f, err, sizeof err) == EPROTO);
	fields_free(&f);
	put_u32(buf + 1, 0xFFFFFFFFu);
	CHECK(fields_parse(buf, n, &f, err, sizeof err) == EPROTO);
	fields_free(&f);

	/* truncated field header (fewer than 5 bytes left) */
	for (size_t cut = 1; cut < 5; cut++) {
		n = fld(buf, F_PATH, "/a", 2);
		memset(buf + n, F_PATH, cut); /* 1..4 stray bytes after a good field */
		CHECK(fields_parse(buf, n + cut, &f, err, sizeof err) == EPROTO);
		fields_free(&f);
	}

	/* unknown tag with a length past the payload is still an error */
	n = fld(buf, 222, "xx", 2);
	put_u32(buf + 1, 3);
	CHECK(fields_parse(buf, n, &f, err, sizeof err) == EPROTO);
	fields_free(&f);

	/* unknown tags with odd sizes are skipped */
	n = fld(buf, 222, "xyz", 3);
	n += fld(buf + n, F_PATH, "/ok", 3);
	CHECK(fields_parse(buf, n, &f, err, sizeof err) == 0 && !strcmp(f.sval[F_PATH], "/ok"));
	fields_free(&f);
}

static void test_session_field(void)
{
	uint8_t buf[64], sess[SESSION_LEN];
	fields_t f;
	char err[128];
	for (int i = 0; i < SESSION_LEN; i++)
		sess[i] = (uint8_t)(0xA0 + i);
	size_t n = fld(buf, F_SESSION, sess, SESSION_LEN);
	CHECK(fields_parse(buf, n, &f, err, sizeof err) == 0);
	CHECK(f.have[F_SESSION] && !memcmp(f.session, sess, SESSION_LEN));
	CHECK(!f.have[F_ENTROPY] && f.bval == NULL); /* its own slot, not ENTROPY's */
	fields_free(&f);

	/* with ENTROPY in the same payload both keep their values */
	n = fld(buf, F_ENTROPY, "\1\2\3", 3);
	n += fld(buf + n, F_SESSION, sess, SESSION_LEN);
	CHECK(fields_parse(buf, n, &f, err, sizeof err) == 0);
	CHECK(f.blen == 3 && f.bval[0] == 1 && !memcmp(f.session, sess, SESSION_LEN));
	fields_free(&f);

	/* exactly 16 bytes: 15, 17 and 0 are refused */
	size_t bad[] = { SESSION_LEN - 1, SESSION_LEN + 1, 0 };
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		uint8_t v[SESSION_LEN + 1] = { 0 };
		n = fld(buf, F_SESSION, v, (uint32_t)bad[i]);
		CHECK(fields_parse(buf, n, &f, err, sizeof err) == EINVAL);
		CHECK(!f.have[F_SESSION]);
		fields_free(&f);
	}

	/* given twice */
	n = fld(buf, F_SESSION, sess, SESSION_LEN);
	n += fld(buf + n, F_SESSION, sess, SESSION_LEN);
	CHECK(fields_parse(buf, n, &f, err, sizeof err) == EINVAL);
	fields_free(&f);

	/* value cut short by the payload end: a protocol error, no read past it */
	n = fld(buf, F_SESSION, sess, SESSION_LEN);
	CHECK(fields_parse(buf, n - 1, &f, err, sizeof err) == EPROTO);
	fields_free(&f);
}

/* What a reconnecting host sends: whatever partial frame a dead host left,
 * then FRAME_HEADER + MAX_PAYLOAD zero bytes, then HELLO. The partial frame is
 * completed (or abandoned), the zeros are one resync run (one ERROR), and
 * HELLO comes out whole; in any chunking. */
static void test_reconnect_flush(void)
{
	size_t flush = FRAME_HEADER + MAX_PAYLOAD;
	uint8_t hello[64];
	uint8_t sess[SESSION_LEN] = { 1, 2, 3 };
	uint8_t payload[32];
	uint32_t plen = (uint32_t)fld(payload, F_SESSION, sess, SESSION_LEN);
	size_t hlen = mkframe(hello, T_HELLO, 0x80000001u, payload, plen);
	uint8_t big[FRAME_HEADER + 64];
	/* leftovers: nothing, part of a header, a header and part of a 1 MiB payload */
	size_t left_len[4] = { 0, 2, 7, FRAME_HEADER + 40 };
	mkframe(big, T_WRITE_DATA, 3, NULL, 0);
	put_u32(big + 8, MAX_PAYLOAD);
	memset(big + FRAME_HEADER, 'w', 64);
	size_t chunks[3] = { 1 << 20, 4096, 333 };
	for (int l = 0; l < 4; l++) {
		for (int c = 0; c < 3; c++) {
			size_t total = left_len[l] + flush + hlen;
			uint8_t *wire = calloc(1, total);
			memcpy(wire, big, left_len[l]);
			memcpy(wire + left_len[l] + flush, hello, hlen);
			decoder_t d;
			dec_init(&d, storage, CAP);
			int resyncs = 0, hellos = 0, others = 0;
			size_t off = 0;
			while (off < total) {
				size_t avail;
				uint8_t *sp = dec_space(&d, &avail);
				size_t n = total - off < chunks[c] ? total - off : chunks[c];
				if (n > avail)
					n = avail;
				memcpy(sp, wire + off, n);
				dec_commit(&d, n);
				off += n;
				frame_t f;
				int r;
				while ((r = dec_next(&d, &f)) != DEC_NEED) {
					if (r == DEC_RESYNC)
						resyncs++;
					else if (f.type == T_HELLO && f.stream == 0x80000001u && f.len == plen &&
						 !memcmp(f.payload, payload, plen))
						hellos++;
					else
						others++;
				}
			}
			CHECK(hellos == 1);
			CHECK(resyncs == 1);
			CHECK(others == (l == 0 ? 0 : 1)); /* the completed leftover, once */
			free(wire);
		}
	}
}

static void test_iter(void)
{
	uint8_t buf[32];
	size_t n = fld(buf, 1, "a", 1);
	n += fld(buf + n, 2, "", 0);
	field_iter_t it;
	field_t f;
	field_iter_init(&it, buf, n);
	CHECK(field_next(&it, &f) == 1 && f.tag == 1 && f.len == 1);
	CHECK(field_next(&it, &f) == 1 && f.tag == 2 && f.len == 0);
	CHECK(field_next(&it, &f) == 0);
	field_iter_init(&it, buf, n - 1); /* cut into the second header */
	CHECK(field_next(&it, &f) == 1);
	CHECK(field_next(&it, &f) == -1);
}

static void test_encoder_limits(void)
{
	fbuf_t b;
	fb_init(&b);
	char *big = malloc(MAX_PAYLOAD + 1);
	memset(big, 'a', MAX_PAYLOAD);
	big[MAX_PAYLOAD] = 0;
	fb_str(&b, F_MESSAGE, big); /* would exceed a frame: flagged, not sent */
	CHECK(b.oom && b.len == 0);
	free(big);
	fb_free(&b);
}

int main(void)
{
	storage = malloc(CAP);
	test_roundtrip();
	test_truncated_header();
	test_byte_at_a_time();
	test_bad_magic_resync();
	test_flags_nonzero();
	test_length_past_buffer();
	test_oversize_length();
	test_fields_basic();
	test_fields_errors();
	test_iter();
	test_session_field();
	test_reconnect_flush();
	test_encoder_limits();
	free(storage);
	printf("frame tests: %d passed, %d failed\n", passed, failed);
	if (failed) {
		printf("FAIL\n");
		return 1;
	}
	printf("PASS\n");
	return 0;
}
