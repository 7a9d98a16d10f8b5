/* FORK_NOTIFY: make a restored clone unique (entropy, clock, identity)
 * and tell registered processes. */
#ifndef MITOS_NOTIFY_H
#define MITOS_NOTIFY_H

#include <stdint.h>

#include "frame.h"

/* 0 when the guest took the notice (it is then a restored copy: see main.c). */
int fork_notify(uint32_t id, const fields_t *f, int vm_mode);

/* SET_CLOCK: step the wall clock to the host's (after a pause). */
void set_clock(uint32_t id, const fields_t *f, int vm_mode);

#endif
