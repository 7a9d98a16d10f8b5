/* libFuzzer target: the frame decoder (with resync), field iteration and
 * the typed field parser (SESSION included), plus an encode/parse round
 * trip. Input byte 0 picks the decoder buffer size and how the stream is
 * chunked. */
#define _DEFAULT_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "frame.h"

#define BIG (FRAME_HEADER + MAX_PAYLOAD)

static void check_fields(const uint8_t *p, size_t n)
{
	field_iter_t it;
	field_t f;
	int r;
	size_t total = 0;
	field_iter_init(&it, p, n);
	while ((r = field_next(&it, &f)) == 1) {
		if (f.val < p || f.val + f.len > p + n)
			abort();
		total += 5 + f.len;
	}
	if (r == 0 && total != n)
		abort();

	fields_t fs;
	char err[256];
	int rc = fields_parse(p, n, &fs, err, sizeof err);
	if (rc == 0) {
		/* Re-encode what was understood and parse it again: same values. */
		fbuf_t b;
		fb_init(&b);
		for (int t = 0; t < 256; t++) {
			if (fs.sval[t])
				fb_str(&b, (uint8_t)t, fs.sval[t]);
			else if (fs.have[t] && t == F_ENTROPY)
				fb_bytes(&b, (uint8_t)t, fs.bval, fs.blen);
			else if (fs.have[t] && t == F_SESSION)
				fb_bytes(&b, (uint8_t)t, fs.session, SESSION_LEN);
			else if (fs.have[t] && t != F_ARG && t != F_ENV)
				fb_int(&b, (uint8_t)t, fs.ival[t]);
		}
		for (size_t i = 0; i < fs.nargs; i++)
			fb_str(&b, F_ARG, fs.args[i]);
		if (!b.oom) {
			fields_t again;
			if (fields_parse(b.p, b.len, &again, err, sizeof err) != 0)
				abort();
			for (int t = 0; t < 256; t++)
				if (fs.have[t] != again.have[t] && t != F_ENV)
					abort();
			if (fs.have[F_SESSION] && memcmp(fs.session, again.session, SESSION_LEN) != 0)
				abort();
			if (again.nargs != fs.nargs)
				abort();
			fields_free(&again);
		}
		fb_free(&b);
	} else if (rc != EINVAL && rc != EPROTO && rc != ENOMEM) {
		abort();
	}
	fields_free(&fs);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static uint8_t *big;
	if (!big)
		big = malloc(BIG);
	if (size < 1)
		return 0;
	uint8_t mode = data[0];
	data++;
	size--;

	/* Small buffers exercise the "buffer full of garbage" path. */
	size_t cap = (mode & 1) ? BIG : 13 + (mode >> 1);
	uint8_t *buf = (mode & 1) ? big : malloc(cap);
	size_t chunk = 1 + (size_t)(mode >> 3) * 37;
	decoder_t d;
	dec_init(&d, buf, cap);
	size_t off = 0;
	while (off < size) {
		size_t avail;
		uint8_t *sp = dec_space(&d, &avail);
		size_t n = size - off;
		if (n > chunk)
			n = chunk;
		if (n > avail)
			n = avail;
		memcpy(sp, data + off, n);
		dec_commit(&d, n);
		off += n;
		frame_t f;
		int r;
		while ((r = dec_next(&d, &f)) != DEC_NEED) {
			if (r != DEC_FRAME)
				continue;
			if (f.payload < buf || f.payload + f.len > buf + cap || f.len > MAX_PAYLOAD)
				abort();
			check_fields(f.payload, f.len);
		}
		if (avail == 0 && n == 0)
			abort(); /* decoder stalled with a full buffer */
	}
	if (!(mode & 1))
		free(buf);

	/* The raw input as one fields payload too. */
	check_fields(data, size);
	return 0;
}
