/* HELLO, PROCESSES and KILL: requests answered at once. */
#ifndef MITOS_INFO_H
#define MITOS_INFO_H

#include <stdint.h>

#include "frame.h"

/* session: SESSION_LEN bytes echoed as SESSION, or NULL (HELLO without one). */
void info_hello(uint32_t id, const uint8_t *session);
void info_processes(uint32_t id);
void info_kill(uint32_t id, const fields_t *f);

#endif
