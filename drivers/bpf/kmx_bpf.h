/* SPDX-License-Identifier: GPL-2.0 OR MIT */
/*
 * The legacy BPF probe's interface with user space (harness/guest/perfdev.py): its maps and the
 * layout of their values, in the target's native byte order. The events themselves are
 * ../common/kmx_events.h's, byte for byte as the kernel module writes them.
 *
 * harness/guest/perfdev.py mirrors the names and formats below (a unit test compares them);
 * keep each define on one line.
 */
#ifndef KMX_BPF_H
#define KMX_BPF_H

#include <linux/types.h>

/* Maps (BTF-defined, in the object's .maps section) */
#define KMX_BPF_MAP_CONFIG "kmx_config"     /* ARRAY, 1 entry: struct kmx_bpf_config */
#define KMX_BPF_MAP_STATS "kmx_stats"       /* PERCPU_ARRAY, 1 entry: struct kmx_bpf_stats */
#define KMX_BPF_MAP_EVENTS "kmx_events"     /* PERF_EVENT_ARRAY, one perf ring per CPU */
#define KMX_BPF_MAP_SAMPLED "kmx_sampled"   /* HASH tid -> 1: threads whose current syscall's enter was kept */

/* Written by user space at any time; the probes read it on every syscall. */
struct kmx_bpf_config {
	__u64 filter_tgid;     /* 0: every process; else that process's threads and its direct children */
	__u32 snaplen;         /* bytes copied per buffer or string, 1..KMX_SNAPLEN_MAX */
	__u32 capturing;       /* 0: the probes return at once */
	__u32 sample_every;    /* keep 1 in N syscalls, enter and exit together; 0, 1: all */
	__u32 pad;
	__u32 redact_n;        /* redaction keys in use (kmx_events.h, "Redaction"); 0: off */
	__u32 redact_len[KMX_REDACT_KEYS_MAX];
	__u8 redact_key[KMX_REDACT_KEYS_MAX][KMX_REDACT_KEY_MAX];
	__u32 pad2;
};

#define KMX_BPF_CONFIG_FORMAT "QIIIII4I64sI"

/* Per CPU, counted by the probes: events sent, events lost (perf ring full), bytes sent. */
struct kmx_bpf_stats {
	__u64 events;
	__u64 drops;
	__u64 bytes;
	__u64 seen;            /* syscalls seen while sampling */
};

#define KMX_BPF_STATS_FORMAT "QQQQ"

#endif /* KMX_BPF_H */
