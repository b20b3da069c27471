/* SPDX-License-Identifier: GPL-2.0 */
/* kmx: what the module's two halves (kmx_main.c: device and buffers; kmx_probe.c: probes) share. */
#ifndef KMX_H
#define KMX_H

#include <linux/types.h>
#include <linux/percpu.h>

#include "../common/kmx_events.h"

/*
 * One CPU's ring. The mapping (mem) is the control page then the data area; user space may
 * write anything into it, so the producer keeps its own head and counters here and only
 * publishes them to ctrl. ctrl->tail is the one value read back, and it is checked.
 */
struct kmx_cpu_buf {
	void *mem;                      /* vmalloc_user(map_stride) */
	struct kmx_ring_ctrl *ctrl;     /* = mem */
	u8 *data;                       /* = mem + KMX_CTRL_SIZE, buffer_bytes long */
	u64 head;
	u64 events;
	u64 drops;
	u64 bytes;
	u64 seen;                       /* syscalls seen while sampling (1 in kmx_sample_every kept) */
};

extern struct kmx_cpu_buf __percpu *kmx_bufs;
extern u64 kmx_size;                    /* data area bytes per CPU */
extern u32 kmx_snaplen_now;             /* bytes copied per buffer or string */
extern u64 kmx_filter_tgid;             /* 0: every process */
extern u32 kmx_sample_every;            /* keep 1 in N syscalls; 0, 1: all */
extern bool kmx_capturing;

/* Redaction (kmx_events.h): the keys, parsed from the redact_keys parameter at load. */
struct kmx_redact_keys {
	u32 n;                          /* 0: redaction off */
	u32 len[KMX_REDACT_KEYS_MAX];
	u8 key[KMX_REDACT_KEYS_MAX][KMX_REDACT_KEY_MAX];
};
extern struct kmx_redact_keys kmx_redact;

int kmx_probes_find(void);
int kmx_probes_register(void);
void kmx_probes_unregister(void);

#endif /* KMX_H */
