/* File operations: chunked READ with credit, WRITE_OPEN/DATA/CLOSE,
 * LIST, STAT, MKDIR, REMOVE, RENAME. */
#ifndef MITOS_FILES_H
#define MITOS_FILES_H

#include <stdint.h>

#include "frame.h"
#include "stream.h"

void file_read_start(uint32_t id, const fields_t *f);
/* Send at most one chunk; returns 1 if the stream can send more now. */
int file_read_pump(stream_t *s);

void file_write_open(uint32_t id, const fields_t *f);
void file_write_data(stream_t *s, const uint8_t *p, size_t n);
void file_write_close(stream_t *s);

void file_list(uint32_t id, const fields_t *f);
void file_stat(uint32_t id, const fields_t *f);
void file_mkdir(uint32_t id, const fields_t *f);
void file_remove(uint32_t id, const fields_t *f);
void file_rename(uint32_t id, const fields_t *f);

void file_abort(stream_t *s); /* host went away: close, no reply */

#endif
