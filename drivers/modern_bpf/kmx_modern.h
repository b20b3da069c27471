/* SPDX-License-Identifier: GPL-2.0 OR MIT */
/*
 * What the modern probe shares with its loader (harness/guest/bpfdev.py packs and reads these
 * structs in native byte order: keep the two in step, and each define on one line).
 */
#ifndef KMX_MODERN_H
#define KMX_MODERN_H

/* .rodata, set before load (bpfdev packs it as "III4I64s"). */
struct kmx_modern_config {
	__u32 snaplen;          /* bytes copied per buffer or string: 1..KMX_SNAPLEN_MAX */
	__u32 sample_every;     /* keep 1 syscall in N (enter and exit together); 0 or 1: all */
	__u32 redact_n;         /* redaction keys in use (kmx_events.h, "Redaction"); 0: off */
	__u32 redact_len[KMX_REDACT_KEYS_MAX];
	__u8 redact_key[KMX_REDACT_KEYS_MAX][KMX_REDACT_KEY_MAX];
};

/* The `redact_state` per-CPU array's value: the redaction scan's state, kept in map memory so
 * that the verifier sees the same state at every step whatever path led there (it prunes). */
struct kmx_redact_state {
	__u32 progress[KMX_REDACT_KEYS_MAX];
	__u32 in_value;
	__u32 redacted;
};

/*
 * The `filter` array's one __u64 value, written by the loader at any time (no reload, like the
 * module's SET_FILTER_TGID): 0 captures every process; else that process's threads and its
 * direct children.
 */

/* The `counters` per-CPU array's one value (bpfdev reads it as "QQQQQ" per CPU). */
struct kmx_modern_counters {
	__u64 events;           /* events written into the ring */
	__u64 drops;            /* events dropped: the ring was full */
	__u64 bytes;            /* bytes written */
	__u64 seen;             /* syscalls considered by sampling (sample_every > 1 only) */
	__u64 sampled_out;      /* syscalls left out by sampling */
};

/* struct kmx_event_hdr with its natural alignment (same layout, no padding): aligned stores. */
struct kmx_hdr_words {
	__u64 ts_ns;
	__u64 tid;
	__u64 pid;
	__u32 len;
	__u16 type;
	__u16 nparams;
	__u64 cgroup_id;
	__u32 pidns;
	__u32 reserved;
};

/* Per-CPU scratch area: positions are masked to KMX_SCRATCH_MASK, lengths to KMX_LEN_MASK. */
#define KMX_SCRATCH_MASK 16383
#define KMX_LEN_MASK 8191
#define KMX_SCRATCH_SIZE 24576
#define KMX_MODERN_RING_DEFAULT 8388608

_Static_assert(sizeof(struct kmx_hdr_words) == KMX_HDR_SIZE, "header layout");
_Static_assert(KMX_SCRATCH_SIZE >= KMX_SCRATCH_MASK + 1 + KMX_LEN_MASK + 1, "scratch bounds");
_Static_assert(KMX_LEN_MASK >= KMX_SNAPLEN_MAX + 2, "length mask");

#endif /* KMX_MODERN_H */
