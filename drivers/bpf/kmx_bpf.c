// SPDX-License-Identifier: GPL-2.0
/*
 * kmx legacy BPF probe: raw_syscalls sys_enter / sys_exit -> one event each, byte for byte the
 * events the kernel module (drivers/kmod) writes (../common/kmx_events.h), delivered through a
 * BPF_MAP_TYPE_PERF_EVENT_ARRAY (one perf ring per CPU).
 *
 * Built per kernel against that kernel's headers (harness/build/bpf_legacy.py): no CO-RE, no
 * BTF needed in the kernel. An event is assembled in a per-CPU scratch map value (too big for
 * the 512-byte BPF stack), then copied out with bpf_perf_event_output; when that fails (the CPU's
 * perf ring is full) the drop is counted in kmx_stats. User memory is read with the
 * bpf_probe_read_user helpers, which never fault pages in: a failed copy gives an empty param
 * flagged KMX_PF_FAULT, as in the module.
 *
 * Verifier notes (kernels >= 5.10): every offset into the event is masked with KMX_EV_MASK and
 * every copy length with KMX_LEN_MASK, so each access is provably inside the scratch value
 * whatever the verifier knows; the masks never change a value (events are smaller than both).
 * Loops are bounded (at most KMX_STRV_MAX_ARGS + 1 argv entries, KMX_MAX_*_DECODED params).
 * The writer's position and the syscall id are read back from the scratch map (KMX_RELOAD) so
 * that paths which computed different values merge (see bpf_defs.h).
 */
#include <linux/types.h>
#include <linux/version.h>
#include <linux/sched.h>
#include <linux/ptrace.h>
#include <uapi/linux/bpf.h>

#include "../common/kmx_events.h"
#include "kmx_bpf.h"
#include "bpf_defs.h"
#include "compat.h"
#include "kmx_decode.h"

#ifdef KMX_IA32
#include "../common/kmx_ia32.h"
#endif

char kmx_license[] KMX_SEC("license") = "GPL";

#define KMX_EV_MASK 16383   /* any offset inside an event */
#define KMX_LEN_MASK 8191   /* any copy length */
/* Room for a masked offset followed by a masked length, plus a few bytes of slack. */
#define KMX_EV_SPACE (KMX_EV_MASK + 1 + KMX_LEN_MASK + 1 + 16)
#define KMX_U64_PARAM (2 + 8)
#define KMX_STR_SLACK 1

/* The biggest event: header, lengths, the fixed params, two decoded params of snaplen bytes. */
#define KMX_MAX_PARAMS (KMX_ENTER_FIXED + KMX_IA32_EXTRA_FIXED + KMX_MAX_ENTER_DECODED)
#define KMX_MAX_EVENT \
	(KMX_HDR_SIZE + 2 * KMX_MAX_PARAMS + KMX_U64_PARAM * (KMX_ENTER_FIXED + KMX_IA32_EXTRA_FIXED) + \
	 KMX_MAX_ENTER_DECODED * (2 + KMX_SNAPLEN_MAX + KMX_STR_SLACK) + KMX_ALIGN)
_Static_assert(KMX_MAX_EVENT + KMX_U64_PARAM < KMX_EV_MASK, "an event must fit under KMX_EV_MASK");
_Static_assert(KMX_SNAPLEN_MAX + 2 <= KMX_LEN_MASK, "a copy must fit under KMX_LEN_MASK");
_Static_assert(KMX_MAX_EXIT_DECODED <= KMX_MAX_ENTER_DECODED, "exit params are counted in KMX_MAX_PARAMS");

/* The event being built on this CPU. */
struct kmx_state {
	__u64 args[6];
	__s64 ret;
	__s64 nr;
	__u32 id;       /* KMX_SC_* id, 0: not decoded */
	__u32 pos;      /* next param byte */
	__u32 index;    /* next param */
	__u32 ia32;     /* an IA32 task's syscall, translated: nr, args and ret are the x86_64 call's */
	__s64 ia32_nr;  /* the i386 number */
	/* Redaction (kmx_events.h): the written buffer to scan and the scan's state, in map memory. */
	__u32 redact_on;
	__u32 redact_at;
	__u32 redact_len;
	__u32 redact_progress[KMX_REDACT_KEYS_MAX];
	__u32 redact_in_value;
	__u32 redact_redacted;
#ifdef KMX_IA32
	__u64 ia32_work[KMX_IA32_WORK]; /* the translation's work area: map memory (see kmx_ia32.h) */
#endif
};

struct kmx_scratch {
	struct kmx_state st;
	__u8 ev[KMX_EV_SPACE] __attribute__((aligned(8)));
};

/* Per-CPU values are limited to 32 KiB (PCPU_MIN_UNIT_SIZE). */
_Static_assert(sizeof(struct kmx_scratch) <= 32768, "scratch too big for a per-CPU map value");

struct {
	__kmx_uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__kmx_uint(max_entries, 1);
	__kmx_type(key, __u32);
	__kmx_type(value, struct kmx_scratch);
} kmx_scratch KMX_SEC(".maps");

struct {
	__kmx_uint(type, BPF_MAP_TYPE_ARRAY);
	__kmx_uint(max_entries, 1);
	__kmx_type(key, __u32);
	__kmx_type(value, struct kmx_bpf_config);
} kmx_config KMX_SEC(".maps");

struct {
	__kmx_uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__kmx_uint(max_entries, 1);
	__kmx_type(key, __u32);
	__kmx_type(value, struct kmx_bpf_stats);
} kmx_stats KMX_SEC(".maps");

/* max_entries 0: libbpf sizes it to the number of possible CPUs. */
struct {
	__kmx_uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY);
	__kmx_uint(key_size, sizeof(__u32));
	__kmx_uint(value_size, sizeof(__u32));
} kmx_events KMX_SEC(".maps");

/* Sampling: threads whose current syscall's enter event was kept (so its exit is kept too). */
struct {
	__kmx_uint(type, BPF_MAP_TYPE_HASH);
	__kmx_uint(max_entries, 16384);
	__kmx_type(key, __u32);
	__kmx_type(value, __u8);
} kmx_sampled KMX_SEC(".maps");

static long (*bpf_map_update_elem)(void *map, const void *key, const void *value, __u64 flags) =
	(void *)BPF_FUNC_map_update_elem;
static long (*bpf_map_delete_elem)(void *map, const void *key) = (void *)BPF_FUNC_map_delete_elem;

#ifdef KMX_TRACEPOINT
/* Tracepoint attachment: sys_exit does not carry the arguments; sys_enter leaves them here. */
struct kmx_stashed_args {
	__u64 args[6];
};

struct {
	__kmx_uint(type, BPF_MAP_TYPE_LRU_HASH);
	__kmx_uint(max_entries, 16384);
	__kmx_type(key, __u32);
	__kmx_type(value, struct kmx_stashed_args);
} kmx_stash KMX_SEC(".maps");
#endif

/* -- the event writer (the module's kmx_writer, on the scratch value) ---------------------------- */

static __always_inline void kmx_param_close(struct kmx_scratch *s, __u32 pos, __u32 payload)
{
	__u32 index = KMX_RELOAD(s->st.index);
	__u16 len = (__u16)(payload + 2);

	__builtin_memcpy(s->ev + KMX_HDR_SIZE + 2 * (index & 15), &len, sizeof(len));
	s->st.pos = pos + payload + 2;
	s->st.index = index + 1;
}

static __always_inline void kmx_put_u64(struct kmx_scratch *s, __u8 type, __u64 value)
{
	__u32 pos = KMX_RELOAD(s->st.pos);
	__u8 *p = s->ev + (pos & KMX_EV_MASK);

	p[0] = type;
	p[1] = 0;
	__builtin_memcpy(p + 2, &value, sizeof(value));
	kmx_param_close(s, pos, 8);
}

static __always_inline void kmx_put_empty(struct kmx_scratch *s, __u8 type, __u8 flags)
{
	__u32 pos = KMX_RELOAD(s->st.pos);

	s->ev[pos & KMX_EV_MASK] = type;
	s->ev[(pos + 1) & KMX_EV_MASK] = flags;
	kmx_param_close(s, pos, 0);
}

/* `len` bytes of user memory at ptr, cut at snaplen. */
static __always_inline void kmx_put_user_bytes(struct kmx_scratch *s, __u8 type, __u64 ptr, __u64 len,
					       __u32 snaplen)
{
	__u32 pos = KMX_RELOAD(s->st.pos);
	__u32 n;
	__u8 flags = 0;

	if (snaplen > KMX_SNAPLEN_MAX) /* a known bound, whatever path the caller took */
		snaplen = KMX_SNAPLEN_MAX;
	n = len > snaplen ? snaplen : (__u32)len;

	KMX_BOUND(n, KMX_LEN_MASK);
	if (n && bpf_probe_read_user(s->ev + ((pos + 2) & KMX_EV_MASK), n, (const void *)ptr)) {
		flags = KMX_PF_FAULT;
		n = 0;
	} else if (len > snaplen) {
		flags = KMX_PF_TRUNC;
	}
	s->ev[pos & KMX_EV_MASK] = type;
	s->ev[(pos + 1) & KMX_EV_MASK] = flags;
	kmx_param_close(s, pos, n);
}

/*
 * A buffer the syscall writes out (write, pwrite64, sendto data): with redaction on, cut at
 * KMX_REDACT_SCAN too and remembered, so kmx_redact() scans it once the event is complete.
 */
static __always_inline void kmx_put_written_bytes(struct kmx_scratch *s, __u8 type, __u64 ptr, __u64 len,
						  __u32 snaplen)
{
	__u32 at = KMX_RELOAD(s->st.pos);

	if (KMX_RELOAD(s->st.redact_on) && snaplen > KMX_REDACT_SCAN)
		snaplen = KMX_REDACT_SCAN;
	kmx_put_user_bytes(s, type, ptr, len, snaplen);
	if (KMX_RELOAD(s->st.redact_on)) {
		s->st.redact_at = at;
		s->st.redact_len = KMX_RELOAD(s->st.pos) - at - 2;
	}
}

static __always_inline int kmx_redact_delimiter(__u8 b)
{
	return b == ' ' || b == '\t' || b == '\r' || b == '\n' || b == 0 || b == '&' || b == ';' || b == ',' ||
	       b == '"' || b == '\'';
}

/*
 * The value after every key in the remembered buffer becomes '*' (kmx_events.h, "Redaction";
 * harness/guest/redaction.py is the reference) and the param is flagged KMX_PF_REDACTED. The
 * scan's state is in the scratch map (KMX_RELOAD): every step starts from the same verifier
 * state whatever path led there. Bounded by KMX_REDACT_SCAN.
 */
static __always_inline void kmx_redact(struct kmx_scratch *s)
{
	__u32 zero = 0, i, k, n, at;
	struct kmx_bpf_config *cfg = bpf_map_lookup_elem(&kmx_config, &zero);

	n = KMX_RELOAD(s->st.redact_len);
	if (!cfg || !n)
		return;
	at = KMX_RELOAD(s->st.redact_at);
	for (k = 0; k < KMX_REDACT_KEYS_MAX; k++)
		s->st.redact_progress[k] = 0;
	s->st.redact_in_value = 0;
	s->st.redact_redacted = 0;
	for (i = 0; i < KMX_REDACT_SCAN; i++) {
		__u32 pos;
		__u8 b;

		if (i >= n)
			break;
		pos = (at + 2 + i) & KMX_EV_MASK;
		b = s->ev[pos];
		if (KMX_RELOAD(s->st.redact_in_value)) {
			if (kmx_redact_delimiter(b)) {
				s->st.redact_in_value = 0;
			} else {
				s->ev[pos] = '*';
				s->st.redact_redacted = 1;
			}
			continue;
		}
#pragma unroll
		for (k = 0; k < KMX_REDACT_KEYS_MAX; k++) {
			__u32 p;

			if (k >= cfg->redact_n)
				break;
			p = KMX_RELOAD(s->st.redact_progress[k]) & (KMX_REDACT_KEY_MAX - 1);
			if (b == cfg->redact_key[k][p]) {
				p++;
				if (p == cfg->redact_len[k]) {
					s->st.redact_progress[0] = 0;
					s->st.redact_progress[1] = 0;
					s->st.redact_progress[2] = 0;
					s->st.redact_progress[3] = 0;
					s->st.redact_in_value = 1;
					break;
				}
				s->st.redact_progress[k] = p;
			} else {
				s->st.redact_progress[k] = b == cfg->redact_key[k][0];
			}
		}
	}
	if (KMX_RELOAD(s->st.redact_redacted))
		s->ev[(at + 1) & KMX_EV_MASK] |= KMX_PF_REDACTED;
}

/*
 * A NUL-terminated user string at event offset `at`: its length without the NUL, at most max
 * (*trunc set when it was longer), or -1 when the copy faulted. As in the module, max + 1 bytes
 * are read to tell "exactly max bytes" from "longer": bpf_probe_read_user_str(size) reads at most
 * size - 1 bytes and NUL-terminates, so size is max + 2 (the NUL lands in slack the next param
 * or the padding overwrites).
 */
static __always_inline long kmx_user_string(struct kmx_scratch *s, __u32 at, __u64 ptr, __u32 max, int *trunc)
{
	__u32 size = max + 2;
	long got;

	KMX_BOUND(at, KMX_EV_MASK);
	KMX_BOUND(size, KMX_LEN_MASK);
	got = bpf_probe_read_user_str(s->ev + at, size, (const void *)ptr);
	if (got <= 0)
		return -1;
	got -= 1; /* the NUL */
	if (got > max) {
		*trunc = 1;
		return max;
	}
	return got;
}

static __always_inline void kmx_put_str(struct kmx_scratch *s, __u64 ptr, __u32 snaplen)
{
	__u32 pos = KMX_RELOAD(s->st.pos);
	int trunc = 0;
	long n = kmx_user_string(s, pos + 2, ptr, snaplen, &trunc);
	__u8 flags = 0;

	if (n < 0) {
		flags = KMX_PF_FAULT;
		n = 0;
	} else if (trunc) {
		flags = KMX_PF_TRUNC;
	}
	s->ev[pos & KMX_EV_MASK] = KMX_PT_STR;
	s->ev[(pos + 1) & KMX_EV_MASK] = flags;
	kmx_param_close(s, pos, (__u32)n & KMX_LEN_MASK);
}

/* argv: up to KMX_STRV_MAX_ARGS strings joined by NUL (no trailing NUL), cut at snaplen. */
static __always_inline void kmx_put_strv(struct kmx_scratch *s, __u64 ptr, __u32 snaplen)
{
	__u32 pos = KMX_RELOAD(s->st.pos);
	__u32 step = 8 - 4 * (KMX_RELOAD(s->st.ia32) & 1); /* bytes per pointer: 4 or 8 */
	__u32 used = 0;
	__u8 flags = 0;
	int i;

	for (i = 0; i <= KMX_STRV_MAX_ARGS; i++) {
		__u64 str = 0;
		int trunc = 0;
		long n;

		/*
		 * A 32-bit task's argv holds 4-byte pointers (only on x86, little-endian: they land in
		 * str's low half). One read of either size: a branch here gives 5.10's loop check a
		 * fall-through back-edge it refuses.
		 */
		if (bpf_probe_read_user(&str, step, (const void *)(ptr + i * step))) {
			flags = KMX_PF_FAULT;
			break;
		}
		if (!str)
			break;
		if (i == KMX_STRV_MAX_ARGS || (i > 0 && used >= snaplen)) {
			flags = KMX_PF_TRUNC;
			break;
		}
		if (i > 0) {
			s->ev[(pos + 2 + used) & KMX_EV_MASK] = '\0';
			used++;
		}
		KMX_BOUND(used, KMX_LEN_MASK);
		n = kmx_user_string(s, pos + 2 + used, str, snaplen - used, &trunc);
		if (n < 0) {
			flags = KMX_PF_FAULT;
			break;
		}
		used += n;
		if (trunc) {
			flags = KMX_PF_TRUNC;
			break;
		}
	}
	if (flags == KMX_PF_FAULT)
		used = 0;
	s->ev[pos & KMX_EV_MASK] = KMX_PT_STRV;
	s->ev[(pos + 1) & KMX_EV_MASK] = flags;
	kmx_param_close(s, pos, used & KMX_LEN_MASK);
}

static __always_inline void kmx_put_fd2(struct kmx_scratch *s, __u64 ptr)
{
	__u32 pos = KMX_RELOAD(s->st.pos);
	__u32 n = 8;
	__u8 flags = 0;

	if (bpf_probe_read_user(s->ev + ((pos + 2) & KMX_EV_MASK), 8, (const void *)ptr)) {
		flags = KMX_PF_FAULT;
		n = 0;
	}
	s->ev[pos & KMX_EV_MASK] = KMX_PT_FD2;
	s->ev[(pos + 1) & KMX_EV_MASK] = flags;
	kmx_param_close(s, pos, n);
}

static __always_inline void kmx_put_decoded(struct kmx_scratch *s, const struct kmx_param_spec *p, __u32 snaplen)
{
	__u8 type = p->type, src = p->src, arg = p->arg;
	__u16 len = p->len;
	__u64 ptr;

	if (arg > 5) {
		kmx_put_empty(s, type, KMX_PF_FAULT);
		return;
	}
	ptr = s->st.args[arg & 7];
	switch (type) {
	case KMX_PT_U64:
	case KMX_PT_S64:
		kmx_put_u64(s, type, ptr);
		return;
	case KMX_PT_STR:
		kmx_put_str(s, ptr, snaplen);
		return;
	case KMX_PT_STRV:
		kmx_put_strv(s, ptr, snaplen);
		return;
	case KMX_PT_FD2:
		kmx_put_fd2(s, ptr);
		return;
	}
	/* BYTES and SOCKADDR: a user buffer whose length comes from the source kind. */
	switch (src) {
	case KMX_SRC_LEN:
		if (len > 5)
			break;
		if (type == KMX_PT_BYTES) /* write, pwrite64, sendto data: what the syscall writes out */
			kmx_put_written_bytes(s, type, ptr, s->st.args[len & 7], snaplen);
		else
			kmx_put_user_bytes(s, type, ptr, s->st.args[len & 7], snaplen);
		return;
	case KMX_SRC_RET: {
		__s64 ret = s->st.ret;

		kmx_put_user_bytes(s, type, ptr, ret > 0 ? (__u64)ret : 0, snaplen);
		return;
	}
	case KMX_SRC_FIXED:
		kmx_put_user_bytes(s, type, ptr, len, snaplen);
		return;
	case KMX_SRC_PLEN: {
		__u32 plen = 0;

		if (len > 5 || bpf_probe_read_user(&plen, sizeof(plen), (const void *)s->st.args[len & 7]))
			break;
		kmx_put_user_bytes(s, type, ptr, plen, snaplen);
		return;
	}
	}
	kmx_put_empty(s, type, KMX_PF_FAULT);
}

/* -- events ---------------------------------------------------------------------------------------- */

/* The module's kmx_wanted(): no filter, the filtered process's threads, or its direct children. */
static __always_inline int kmx_wanted(__u64 filter, const struct task_struct *task)
{
	const struct task_struct *parent = NULL;
	KMX_FIELD(struct task_struct, tgid) ptgid = 0;

	if (!filter || bpf_get_current_pid_tgid() >> 32 == filter)
		return 1;
	if (kmx_kread(&parent, task, struct task_struct, real_parent) || !parent)
		return 0;
	if (kmx_kread(&ptgid, parent, struct task_struct, tgid))
		return 0;
	return (__u64)ptgid == filter;
}

/* Write the event described by s->st (type KMX_EVT_SYS_ENTER or _EXIT) and send it. */
static __always_inline void kmx_emit(void *ctx, struct kmx_scratch *s, const __u16 type, __u32 snaplen)
{
	struct kmx_event_hdr hdr;
	struct kmx_bpf_stats *stats;
	__u32 zero = 0, id, ndecoded = 0, nparams, pos, len, i;
	__u64 pid_tgid;
	long ret;

	id = KMX_RELOAD(s->st.id);
	/*
	 * Two separate tests on the register that indexes the table: merged into one range check
	 * ("id - 1 < 45") on a copy, they would leave the verifier without a bound on id itself.
	 */
	if (id >= KMX_SC_MAX)
		id = 0;
	KMX_OPAQUE(id);
	if (id) {
		ndecoded = type == KMX_EVT_SYS_ENTER ? kmx_sc_specs[id].n_enter : kmx_sc_specs[id].n_exit;
		if (ndecoded > (type == KMX_EVT_SYS_ENTER ? KMX_MAX_ENTER_DECODED : KMX_MAX_EXIT_DECODED))
			ndecoded = 0;
	}
	nparams = (type == KMX_EVT_SYS_ENTER ? KMX_ENTER_FIXED : KMX_EXIT_FIXED) + ndecoded;
	if (s->st.ia32)
		nparams += KMX_IA32_EXTRA_FIXED;
	s->st.pos = KMX_HDR_SIZE + 2 * nparams;
	s->st.index = 0;

	kmx_put_u64(s, KMX_PT_U64, (__u64)s->st.nr);
	kmx_put_u64(s, KMX_PT_U64, id);
	if (type == KMX_EVT_SYS_ENTER) {
		__u64 a0 = s->st.args[0], a2 = s->st.args[2];

#ifdef KMX_FAULT_SWAP_ARGS
		/* Test-only fault (harness/build/bpf_legacy.py fault="swap_args"): a capture suite must fail. */
		if (id == 3) {
			a0 = s->st.args[2];
			a2 = s->st.args[0];
		}
#endif
		kmx_put_u64(s, KMX_PT_U64, a0);
		kmx_put_u64(s, KMX_PT_U64, s->st.args[1]);
		kmx_put_u64(s, KMX_PT_U64, a2);
		kmx_put_u64(s, KMX_PT_U64, s->st.args[3]);
		kmx_put_u64(s, KMX_PT_U64, s->st.args[4]);
		kmx_put_u64(s, KMX_PT_U64, s->st.args[5]);
		if (s->st.ia32)
			kmx_put_u64(s, KMX_PT_U64, (__u64)s->st.ia32_nr);
		for (i = 0; i < KMX_MAX_ENTER_DECODED; i++) {
			if (i >= ndecoded)
				break;
			kmx_put_decoded(s, &kmx_sc_specs[id].enter[i], snaplen);
		}
		if (KMX_RELOAD(s->st.redact_len))
			kmx_redact(s);
	} else {
		kmx_put_u64(s, KMX_PT_S64, (__u64)s->st.ret);
		if (s->st.ia32)
			kmx_put_u64(s, KMX_PT_U64, (__u64)s->st.ia32_nr);
		for (i = 0; i < KMX_MAX_EXIT_DECODED; i++) {
			if (i >= ndecoded)
				break;
			kmx_put_decoded(s, &kmx_sc_specs[id].exit[i], snaplen);
		}
	}

	pos = KMX_RELOAD(s->st.pos) & KMX_EV_MASK;
	len = (pos + KMX_ALIGN - 1) & ~(__u32)(KMX_ALIGN - 1);
	for (i = 0; i < KMX_ALIGN - 1; i++) /* padding: zeros, as the module writes */
		s->ev[(pos + i) & KMX_EV_MASK] = 0;
	pid_tgid = bpf_get_current_pid_tgid();
	hdr.ts_ns = bpf_ktime_get_ns();
	hdr.tid = (__u32)pid_tgid;
	hdr.pid = pid_tgid >> 32;
	hdr.len = len;
	hdr.type = type | (s->st.ia32 ? KMX_EVT_F_IA32 : 0);
	hdr.nparams = (__u16)nparams;
#ifdef KMX_FAULT_NO_CONTAINER
	/* Test-only fault (fault="no_container"): the container suite must fail. */
	hdr.cgroup_id = 0;
	hdr.pidns = 0;
#else
	hdr.cgroup_id = bpf_get_current_cgroup_id();
	hdr.pidns = kmx_pidns_inum((const struct task_struct *)bpf_get_current_task());
#endif
	hdr.reserved = 0;
	__builtin_memcpy(s->ev, &hdr, sizeof(hdr));

	KMX_BOUND(len, KMX_EV_MASK);
	ret = bpf_perf_event_output(ctx, &kmx_events, BPF_F_CURRENT_CPU, s->ev, len);
	stats = bpf_map_lookup_elem(&kmx_stats, &zero);
	if (!stats)
		return;
	if (ret) {
		stats->drops++;
	} else {
		stats->events++;
		stats->bytes += len;
	}
}

/*
 * Sampling 1 in `every` syscalls: decided at enter on a per-CPU count, remembered per thread in
 * kmx_sampled so the exit follows its enter (the modern probe's rule).
 */
static __always_inline int kmx_sample(__u32 every, int at_exit)
{
	__u32 zero = 0, tid = (__u32)bpf_get_current_pid_tgid();
	struct kmx_bpf_stats *stats;
	__u8 one = 1;

	if (every <= 1)
		return 1;
	if (at_exit)
		return bpf_map_delete_elem(&kmx_sampled, &tid) == 0;
	stats = bpf_map_lookup_elem(&kmx_stats, &zero);
	if (!stats)
		return 0;
	if (stats->seen++ % every) {
		bpf_map_delete_elem(&kmx_sampled, &tid);
		return 0;
	}
	bpf_map_update_elem(&kmx_sampled, &tid, &one, BPF_ANY);
	return 1;
}

/* The configuration when capturing and the current task is wanted (and sampled); NULL otherwise. */
static __always_inline struct kmx_scratch *kmx_begin(__u32 *snaplen, struct task_struct **task, int at_exit)
{
	__u32 zero = 0;
	struct kmx_bpf_config *cfg = bpf_map_lookup_elem(&kmx_config, &zero);
	struct kmx_scratch *s;
	__u32 len;

	if (!cfg || !cfg->capturing)
		return NULL;
	len = cfg->snaplen;
	if (len < 1)
		len = 1;
	if (len > KMX_SNAPLEN_MAX)
		len = KMX_SNAPLEN_MAX;
	*snaplen = len;
	*task = (struct task_struct *)bpf_get_current_task();
	if (!kmx_wanted(cfg->filter_tgid, *task) || !kmx_sample(cfg->sample_every, at_exit))
		return NULL;
	s = bpf_map_lookup_elem(&kmx_scratch, &zero);
	if (s) {
		s->st.redact_on = cfg->redact_n;
		s->st.redact_len = 0;
	}
	return s;
}

/*
 * Number, id, and for an IA32 task the translation, once s->st.args (raw registers) and s->st.ret
 * are set. Other compat ABIs keep their number and get id 0 (not decoded).
 */
static __always_inline void kmx_set_call(struct kmx_scratch *s, long nr, int compat, int at_exit)
{
#ifdef KMX_FAULT_NO_IA32
	compat = 0; /* Test-only (fault="no_ia32"): a probe that does not notice 32-bit tasks. */
#endif
	s->st.nr = nr;
	s->st.ia32 = 0;
	s->st.ia32_nr = 0;
#ifdef KMX_IA32
	if (compat) {
		struct kmx_ia32_call call;
		__u64 raw[6];
		int i;

		for (i = 0; i < 6; i++)
			raw[i] = s->st.args[i];
		kmx_ia32_translate(nr, raw, s->st.ia32_work, &call);
		if (at_exit)
			s->st.ret = kmx_ia32_exit_ret(&call, raw, s->st.ret);
		for (i = 0; i < 6; i++)
			s->st.args[i] = call.args[i];
		s->st.ia32 = 1;
		s->st.ia32_nr = nr;
		s->st.nr = (__s64)call.nr;
		s->st.id = call.nr == KMX_NR_IA32_UNMAPPED ? 0 : kmx_sc_id((long)call.nr);
		return;
	}
#endif
	s->st.id = compat ? 0 : kmx_sc_id(nr);
}

#ifndef KMX_TRACEPOINT

KMX_SEC("raw_tracepoint/sys_enter")
int kmx_sys_enter(struct bpf_raw_tracepoint_args *ctx)
{
	const struct pt_regs *regs = (const struct pt_regs *)ctx->args[0];
	long nr = (long)ctx->args[1];
	struct task_struct *task;
	int compat;
	struct kmx_scratch *s;
	__u32 snaplen;

	if (nr < 0)
		return 0;
	s = kmx_begin(&snaplen, &task, 0);
	if (!s)
		return 0;
	compat = kmx_compat_syscall(task);
	kmx_regs_args(regs, compat, s->st.args);
	s->st.ret = 0;
	kmx_set_call(s, nr, compat, 0);
	kmx_emit(ctx, s, KMX_EVT_SYS_ENTER, snaplen);
	return 0;
}

KMX_SEC("raw_tracepoint/sys_exit")
int kmx_sys_exit(struct bpf_raw_tracepoint_args *ctx)
{
	const struct pt_regs *regs = (const struct pt_regs *)ctx->args[0];
	struct task_struct *task;
	int compat;
	struct kmx_scratch *s;
	__u32 snaplen;
	long nr;

	s = kmx_begin(&snaplen, &task, 1);
	if (!s)
		return 0;
	nr = kmx_regs_exit_nr(regs);
	if (nr < 0)
		return 0;
	compat = kmx_compat_syscall(task);
	kmx_regs_args(regs, compat, s->st.args);
	s->st.ret = (long)ctx->args[1];
	kmx_set_call(s, nr, compat, 1);
	kmx_emit(ctx, s, KMX_EVT_SYS_EXIT, snaplen);
	return 0;
}

#else /* KMX_TRACEPOINT */

/* The raw_syscalls tracepoints' records (after the 8-byte struct trace_entry). */
struct kmx_tp_sys_enter {
	__u64 common;
	long id;
	unsigned long args[6];
};

struct kmx_tp_sys_exit {
	__u64 common;
	long id;
	long ret;
};

KMX_SEC("tracepoint/raw_syscalls/sys_enter")
int kmx_sys_enter(struct kmx_tp_sys_enter *ctx)
{
	struct kmx_stashed_args stash;
	struct task_struct *task;
	struct kmx_scratch *s;
	__u32 snaplen, tid;
	long nr = ctx->id;
	int i;

	if (nr < 0)
		return 0;
	s = kmx_begin(&snaplen, &task, 0);
	if (!s)
		return 0;
	for (i = 0; i < 6; i++) {
		s->st.args[i] = ctx->args[i];
		stash.args[i] = ctx->args[i];
	}
	tid = (__u32)bpf_get_current_pid_tgid();
	bpf_map_update_elem(&kmx_stash, &tid, &stash, BPF_ANY);
	s->st.ret = 0;
	kmx_set_call(s, nr, kmx_compat_syscall(task), 0);
	kmx_emit(ctx, s, KMX_EVT_SYS_ENTER, snaplen);
	return 0;
}

KMX_SEC("tracepoint/raw_syscalls/sys_exit")
int kmx_sys_exit(struct kmx_tp_sys_exit *ctx)
{
	struct kmx_stashed_args *stash;
	struct task_struct *task;
	struct kmx_scratch *s;
	__u32 snaplen, tid;
	long nr = ctx->id;
	int i;

	s = kmx_begin(&snaplen, &task, 1);
	if (!s || nr < 0)
		return 0;
	tid = (__u32)bpf_get_current_pid_tgid();
	stash = bpf_map_lookup_elem(&kmx_stash, &tid);
	for (i = 0; i < 6; i++)
		s->st.args[i] = stash ? stash->args[i] : 0;
	if (stash)
		bpf_map_delete_elem(&kmx_stash, &tid);
	s->st.ret = ctx->ret;
	kmx_set_call(s, nr, kmx_compat_syscall(task), 1);
	kmx_emit(ctx, s, KMX_EVT_SYS_EXIT, snaplen);
	return 0;
}

#endif /* KMX_TRACEPOINT */
