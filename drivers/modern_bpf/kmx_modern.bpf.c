// SPDX-License-Identifier: GPL-2.0
/*
 * kmx modern probe: CO-RE BPF on the raw syscall tracepoints (tp_btf/sys_enter, tp_btf/sys_exit),
 * one event per enter and exit into a BPF ring buffer, byte for byte the kernel module's events
 * (drivers/common/kmx_events.h: header, u16 length array, typed params, 8-byte padding).
 *
 * An event is built in a per-CPU scratch map value (the BPF stack is 512 bytes, an event up to
 * ~8.4 KiB at the largest snapshot length), then copied into the ring with bpf_ringbuf_output;
 * a full ring drops the event and counts it in the per-CPU `counters` map. Every write into the
 * scratch area is at an offset masked with KMX_SCRATCH_MASK and of a length masked with
 * KMX_LEN_MASK, so the verifier (5.10 and later) can prove it in bounds whatever it knows of the
 * position: the area is KMX_SCRATCH_MASK + 1 + KMX_LEN_MASK + 1 bytes. Multi-byte fields after the
 * header are written with byte-wise copies (no alignment assumptions: riscv64 verifies with
 * strict alignment).
 *
 * Configuration is `const volatile` in .rodata, set by the loader before load (the verifier then
 * knows it as constants): snapshot length, sampling 1 in N syscalls (enter and exit kept as a
 * pair). The target tgid (its threads and its direct children, the module's SET_FILTER_TGID rule)
 * is the `filter` map's value, changed at any time.
 * Capturing on/off is attaching/detaching the programs.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

#include "kmx_events.h"
#include "kmx_modern.h"
#include "arch.h"

#ifdef KMX_IA32
#include "kmx_ia32.h"
#endif

char LICENSE[] SEC("license") = "GPL";

/* The loader's configuration: alone in .rodata (the decode tables live in .rodata.kmx_decode). */
const volatile struct kmx_modern_config kmx_config = {
	.snaplen = KMX_SNAPLEN_DEFAULT,
	.sample_every = 1,
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} filter SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, KMX_MODERN_RING_DEFAULT);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct kmx_modern_counters);
} counters SEC(".maps");

struct kmx_scratch {
	__u64 data[KMX_SCRATCH_SIZE / 8];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct kmx_redact_state);
} redact_state SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct kmx_scratch);
} scratch SEC(".maps");

#ifdef KMX_IA32
/* The IA32 translation's work area: map memory, indexed at variable offsets (see kmx_ia32.h). */
struct kmx_ia32_work {
	__u64 v[KMX_IA32_WORK];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct kmx_ia32_work);
} ia32_work SEC(".maps");
#endif

/* Threads whose current syscall's enter event was sampled (so its exit is kept too). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u8);
} sampled SEC(".maps");

/* An event being built at the start of the scratch area. */
struct kmx_writer {
	__u8 *buf;
	__u32 pos;      /* next param byte */
	__u32 index;    /* next param */
	__u32 snaplen;
	bool ptr32;     /* user pointer arrays (argv) hold 4-byte pointers: an IA32 task */
	__u32 redact_at;   /* a written buffer's payload (kmx_put_written_bytes), redacted before output */
	__u32 redact_len;
};

#define KMX_U64_PARAM (2 + 8)

/*
 * Offsets into the scratch area and lengths copied into it, masked so the verifier sees them
 * bounded. barrier_var() first: otherwise the compiler drops a mask it can prove useless (a
 * length already clamped to the snapshot length) or applies it to a copy of the register the
 * helper then gets, and older verifiers (5.10, 6.1) cannot bound the one passed.
 */
static __always_inline __u32 kmx_pos(__u32 x)
{
	barrier_var(x);
	return x & KMX_SCRATCH_MASK;
}

static __always_inline __u32 kmx_len(__u32 x)
{
	barrier_var(x);
	return x & KMX_LEN_MASK;
}

#define KMX_POS(x) kmx_pos(x)
#define KMX_LEN(x) kmx_len(x)

static __always_inline void kmx_param_open(struct kmx_writer *w, __u8 type, __u8 flags)
{
	w->buf[KMX_POS(w->pos)] = type;
	w->buf[KMX_POS(w->pos + 1)] = flags;
}

static __always_inline void kmx_set_flags(struct kmx_writer *w, __u8 flags)
{
	w->buf[KMX_POS(w->pos + 1)] = flags;
}

static __always_inline void kmx_param_close(struct kmx_writer *w, __u32 payload)
{
	__u16 len = (__u16)(payload + 2);

	__builtin_memcpy(&w->buf[KMX_POS(KMX_HDR_SIZE + 2 * (w->index & 15))], &len, sizeof(len));
	w->pos += payload + 2;
	w->index++;
}

static __always_inline void kmx_put_u64(struct kmx_writer *w, __u8 type, __u64 value)
{
	kmx_param_open(w, type, 0);
	__builtin_memcpy(&w->buf[KMX_POS(w->pos + 2)], &value, sizeof(value));
	kmx_param_close(w, 8);
}

static __always_inline void kmx_put_empty(struct kmx_writer *w, __u8 type, __u8 flags)
{
	kmx_param_open(w, type, flags);
	kmx_param_close(w, 0);
}

/* `len` bytes of user memory at ptr, cut at the snapshot length. */
static __always_inline void kmx_put_user_bytes(struct kmx_writer *w, __u8 type, __u64 ptr, __u64 len)
{
	__u32 n = len > w->snaplen ? w->snaplen : (__u32)len;
	__u8 flags = 0;

	if (n && bpf_probe_read_user(&w->buf[KMX_POS(w->pos + 2)], KMX_LEN(n), (const void *)ptr)) {
		flags = KMX_PF_FAULT;
		n = 0;
	} else if (len > w->snaplen) {
		flags = KMX_PF_TRUNC;
	}
	kmx_param_open(w, type, flags);
	kmx_param_close(w, n);
}

/*
 * A buffer the syscall writes out (write, pwrite64, sendto data): with redaction on, cut at
 * KMX_REDACT_SCAN too and remembered, so kmx_redact() scans it once the event is complete.
 */
static __always_inline void kmx_put_written_bytes(struct kmx_writer *w, __u8 type, __u64 ptr, __u64 len)
{
	__u32 snaplen = w->snaplen;

	if (kmx_config.redact_n && w->snaplen > KMX_REDACT_SCAN)
		w->snaplen = KMX_REDACT_SCAN;
	w->redact_at = w->pos;
	kmx_put_user_bytes(w, type, ptr, len);
	w->redact_len = kmx_config.redact_n ? w->pos - w->redact_at - 2 : 0;
	w->snaplen = snaplen;
}

/* A load the compiler must repeat: the scan's state is re-read from map memory at every step. */
#define KMX_READ(x) (*(volatile typeof(x) *)&(x))

static __always_inline bool kmx_redact_delimiter(__u8 b)
{
	return b == ' ' || b == '\t' || b == '\r' || b == '\n' || b == 0 || b == '&' || b == ';' || b == ',' ||
	       b == '"' || b == '\'';
}

/*
 * The value after every key in the remembered buffer becomes '*' (kmx_events.h, "Redaction";
 * harness/guest/redaction.py is the reference), and the param is flagged KMX_PF_REDACTED. The
 * scan's state lives in redact_state (see there); the loop is bounded by KMX_REDACT_SCAN.
 */
static __always_inline void kmx_redact(struct kmx_writer *w)
{
	struct kmx_redact_state *st;
	__u32 zero = 0, i, k, n = w->redact_len, at = w->redact_at;

	st = bpf_map_lookup_elem(&redact_state, &zero);
	if (!st || !n)
		return;
	__builtin_memset(st, 0, sizeof(*st));
	for (i = 0; i < KMX_REDACT_SCAN; i++) {
		__u32 pos;
		__u8 b;

		if (i >= n)
			break;
		pos = KMX_POS(at + 2 + i);
		b = w->buf[pos];
		if (KMX_READ(st->in_value)) {
			if (kmx_redact_delimiter(b)) {
				st->in_value = 0;
			} else {
				w->buf[pos] = '*';
				st->redacted = 1;
			}
			continue;
		}
#pragma unroll
		for (k = 0; k < KMX_REDACT_KEYS_MAX; k++) {
			__u32 p;

			if (k >= kmx_config.redact_n)
				break;
			p = KMX_READ(st->progress[k]) & (KMX_REDACT_KEY_MAX - 1);
			if (b == kmx_config.redact_key[k][p]) {
				p++;
				if (p == kmx_config.redact_len[k]) {
					__builtin_memset(st->progress, 0, sizeof(st->progress));
					st->in_value = 1;
					break;
				}
				st->progress[k] = p;
			} else {
				st->progress[k] = b == kmx_config.redact_key[k][0];
			}
		}
	}
	if (KMX_READ(st->redacted))
		w->buf[KMX_POS(at + 1)] |= KMX_PF_REDACTED;
}

/* A buffer whose length is the int at user address plen (accept's addrlen, read at exit). */
static __always_inline void kmx_put_user_bytes_plen(struct kmx_writer *w, __u8 type, __u64 ptr, __u64 plen)
{
	__u32 len = 0;

	if (bpf_probe_read_user(&len, sizeof(len), (const void *)plen)) {
		kmx_put_empty(w, type, KMX_PF_FAULT);
		return;
	}
	kmx_put_user_bytes(w, type, ptr, len);
}

/*
 * A NUL-terminated user string at offset `at` of the scratch area: its length without the NUL,
 * at most max (*trunc set when it was longer), or -1 when the copy faulted. Reading max + 2 bytes
 * (max + 1 characters and the NUL bpf_probe_read_user_str always writes) tells "exactly max"
 * from "longer", like the module's strncpy of max + 1.
 */
static __always_inline long kmx_user_string(struct kmx_writer *w, __u32 at, __u64 ptr, __u32 max, bool *trunc)
{
	long got = bpf_probe_read_user_str(&w->buf[KMX_POS(at)], KMX_LEN(max + 2), (const void *)ptr);

	if (got < 0)
		return -1;
	got = got > 0 ? got - 1 : 0;
	if (got > max) {
		*trunc = true;
		return max;
	}
	return got;
}

static __always_inline void kmx_put_str(struct kmx_writer *w, __u64 ptr)
{
	bool trunc = false;
	long n = kmx_user_string(w, w->pos + 2, ptr, w->snaplen, &trunc);
	__u8 flags = 0;

	if (n < 0) {
		flags = KMX_PF_FAULT;
		n = 0;
	} else if (trunc) {
		flags = KMX_PF_TRUNC;
	}
	kmx_param_open(w, KMX_PT_STR, flags);
	kmx_param_close(w, (__u32)n & KMX_LEN_MASK);
}

/* argv: up to KMX_STRV_MAX_ARGS strings joined by NUL (no trailing NUL), cut at snaplen. */
static __always_inline void kmx_put_strv(struct kmx_writer *w, __u64 ptr)
{
	__u32 start = w->pos + 2;
	__u32 snaplen = w->snaplen;
	__u32 used = 0;
	__u8 flags = 0;
	int i;

#pragma unroll
	for (i = 0; i <= KMX_STRV_MAX_ARGS; i++) {
		__u64 str = 0;
		bool trunc = false;
		long n;

		if (w->ptr32) {
			__u32 str32 = 0;

			if (bpf_probe_read_user(&str32, sizeof(str32), (const void *)(ptr + i * sizeof(str32)))) {
				flags = KMX_PF_FAULT;
				break;
			}
			str = str32;
		} else if (bpf_probe_read_user(&str, sizeof(str), (const void *)(ptr + i * sizeof(str)))) {
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
			w->buf[KMX_POS(start + used)] = '\0';
			used++;
		}
		n = kmx_user_string(w, start + used, str, (snaplen - used) & KMX_LEN_MASK, &trunc);
		if (n < 0) {
			flags = KMX_PF_FAULT;
			break;
		}
		used = (used + (__u32)n) & KMX_LEN_MASK;
		if (trunc) {
			flags = KMX_PF_TRUNC;
			break;
		}
	}
	if (flags == KMX_PF_FAULT)
		used = 0;
	kmx_param_open(w, KMX_PT_STRV, flags);
	kmx_param_close(w, used);
}

/* pipe/pipe2: the two __s32 descriptors the kernel wrote (read at exit). */
static __always_inline void kmx_put_fd2(struct kmx_writer *w, __u64 ptr)
{
	if (bpf_probe_read_user(&w->buf[KMX_POS(w->pos + 2)], 8, (const void *)ptr)) {
		kmx_put_empty(w, KMX_PT_FD2, KMX_PF_FAULT);
		return;
	}
	kmx_param_open(w, KMX_PT_FD2, 0);
	kmx_param_close(w, 8);
}

#include "kmx_modern_decode.h"

static __always_inline bool kmx_wanted(__u64 pid_tgid)
{
	__u32 zero = 0;
	__u64 *wanted = bpf_map_lookup_elem(&filter, &zero);
	__u64 filter = wanted ? *wanted : 0;
	struct task_struct *task;

	if (!filter || (pid_tgid >> 32) == filter)
		return true;
	task = (struct task_struct *)bpf_get_current_task();
	return (__u64)BPF_CORE_READ(task, real_parent, tgid) == filter;
}

/*
 * Container attribution (kmx_events.h): the inode number of the task's active pid namespace,
 * task->thread_pid->numbers[level].ns (CO-RE: the kernels here all have thread_pid, 4.19+).
 */
static __always_inline __u32 kmx_pidns_inum(void)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct pid *pid = BPF_CORE_READ(task, thread_pid);
	unsigned int level;

	if (!pid)
		return 0;
	level = BPF_CORE_READ(pid, level) & 31;
	return BPF_CORE_READ(pid, numbers[level].ns, ns.inum);
}

static __always_inline void kmx_emit(struct pt_regs *regs, __u16 type, long nr, long ret, __u64 pid_tgid)
{
	struct kmx_modern_counters *count;
	struct kmx_scratch *area;
	struct kmx_writer w;
	struct kmx_hdr_words *hdr;
	__u64 args[6];
	__u32 zero = 0, id = 0, ndecoded = 0, nparams, snaplen, len;
	bool compat, ia32 = false;
	long ia32_nr = 0;

	area = bpf_map_lookup_elem(&scratch, &zero);
	count = bpf_map_lookup_elem(&counters, &zero);
	if (!area || !count)
		return;

	/*
	 * Table indexes are masked after barrier_var(): the compiler may test one copy of a value and
	 * index with another, which the verifier then sees unbounded.
	 */
	compat = kmx_compat_syscall();
#ifdef KMX_FAULT_NO_IA32
	compat = false; /* Test-only (fault="no_ia32"): a probe that does not notice 32-bit tasks. */
#endif
	kmx_get_args(regs, args, compat);
#ifdef KMX_IA32
	if (compat) {
		struct kmx_ia32_work *work = bpf_map_lookup_elem(&ia32_work, &zero);
		struct kmx_ia32_call call;

		if (!work)
			return;
		kmx_ia32_translate(nr, args, work->v, &call);
		if (type == KMX_EVT_SYS_EXIT)
			ret = kmx_ia32_exit_ret(&call, args, ret);
		args[0] = call.args[0];
		args[1] = call.args[1];
		args[2] = call.args[2];
		args[3] = call.args[3];
		args[4] = call.args[4];
		args[5] = call.args[5];
		ia32 = true;
		ia32_nr = nr;
		nr = (long)call.nr;
		compat = false; /* translated: decoded as the x86_64 syscall */
	}
#endif
	if (!compat && nr >= 0 && nr < KMX_NR_TABLE) {
		__u64 at = nr;

		barrier_var(at);
		id = kmx_nr_to_id[at & (KMX_NR_TABLE - 1)];
	}
	if (id && id < KMX_SC_MAX) {
		__u32 at = id;
		__u8 both;

		barrier_var(at); /* the compiler forgets what it knows of `at`: the mask stays */
		both = kmx_n_decoded[at & (KMX_ID_TABLE - 1)];

		ndecoded = type == KMX_EVT_SYS_ENTER ? (both & 15) : (both >> 4);
	} else {
		id = 0;
	}
	nparams = (type == KMX_EVT_SYS_ENTER ? KMX_ENTER_FIXED : KMX_EXIT_FIXED) + (ndecoded & 3) + (ia32 ? 1 : 0);
	snaplen = kmx_config.snaplen;
	if (snaplen < 1)
		snaplen = 1;
	if (snaplen > KMX_SNAPLEN_MAX)
		snaplen = KMX_SNAPLEN_MAX;

	w.buf = (__u8 *)area->data;
	w.ptr32 = ia32;
	w.index = 0;
	w.pos = KMX_HDR_SIZE + 2 * nparams;
	w.snaplen = snaplen;
	w.redact_at = 0;
	w.redact_len = 0;

	kmx_put_u64(&w, KMX_PT_U64, (__u64)nr);
	kmx_put_u64(&w, KMX_PT_U64, id);
	if (type == KMX_EVT_SYS_ENTER) {
		__u64 a0 = args[0], a2 = args[2];

#ifdef KMX_FAULT_SWAP_ARGS
		/* Test-only fault (harness/build/bpf_modern.py fault="swap_args"): a capture suite must fail. */
		if (id == 3) {
			a0 = args[2];
			a2 = args[0];
		}
#endif
		kmx_put_u64(&w, KMX_PT_U64, a0);
		kmx_put_u64(&w, KMX_PT_U64, args[1]);
		kmx_put_u64(&w, KMX_PT_U64, a2);
		kmx_put_u64(&w, KMX_PT_U64, args[3]);
		kmx_put_u64(&w, KMX_PT_U64, args[4]);
		kmx_put_u64(&w, KMX_PT_U64, args[5]);
		if (ia32)
			kmx_put_u64(&w, KMX_PT_U64, (__u64)ia32_nr);
		if (ndecoded)
			kmx_decode_enter(&w, id, args);
		if (kmx_config.redact_n && w.redact_len)
			kmx_redact(&w);
	} else {
		kmx_put_u64(&w, KMX_PT_S64, (__u64)ret);
		if (ia32)
			kmx_put_u64(&w, KMX_PT_U64, (__u64)ia32_nr);
		if (ndecoded)
			kmx_decode_exit(&w, id, args, ret);
	}

	/* Zero the padding up to the next multiple of KMX_ALIGN, then the header. */
	__builtin_memset(&w.buf[KMX_POS(w.pos)], 0, KMX_ALIGN);
	len = (w.pos + KMX_ALIGN - 1) & ~(__u32)(KMX_ALIGN - 1);
	hdr = (struct kmx_hdr_words *)area->data;
	hdr->ts_ns = bpf_ktime_get_ns();
	hdr->tid = (__u32)pid_tgid;
	hdr->pid = pid_tgid >> 32;
	hdr->len = len;
	hdr->type = type | (ia32 ? KMX_EVT_F_IA32 : 0);
	hdr->nparams = nparams;
#ifdef KMX_FAULT_NO_CONTAINER
	/* Test-only fault (fault="no_container"): the container suite must fail. */
	hdr->cgroup_id = 0;
	hdr->pidns = 0;
#else
	hdr->cgroup_id = bpf_get_current_cgroup_id();
	hdr->pidns = kmx_pidns_inum();
#endif
	hdr->reserved = 0;

	len = kmx_pos(len);
	if (bpf_ringbuf_output(&events, area->data, len, 0)) {
		count->drops++;
		return;
	}
	count->events++;
	count->bytes += len;
}

/* Sampling 1 in N syscalls: decided at enter (per-CPU counter), remembered for the exit. */
static __always_inline bool kmx_sample_enter(__u64 pid_tgid)
{
	struct kmx_modern_counters *count;
	__u32 zero = 0, tid = (__u32)pid_tgid;
	__u8 one = 1;

	if (kmx_config.sample_every <= 1)
		return true;
	count = bpf_map_lookup_elem(&counters, &zero);
	if (!count)
		return false;
	if (count->seen++ % kmx_config.sample_every) {
		bpf_map_delete_elem(&sampled, &tid);
		count->sampled_out++;
		return false;
	}
	bpf_map_update_elem(&sampled, &tid, &one, BPF_ANY);
	return true;
}

static __always_inline bool kmx_sample_exit(__u64 pid_tgid)
{
	__u32 tid = (__u32)pid_tgid;

	if (kmx_config.sample_every <= 1)
		return true;
	return bpf_map_delete_elem(&sampled, &tid) == 0;
}

SEC("tp_btf/sys_enter")
int BPF_PROG(kmx_sys_enter, struct pt_regs *regs, long id)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();

	if (id < 0 || !kmx_wanted(pid_tgid) || !kmx_sample_enter(pid_tgid))
		return 0;
#ifdef KMX_FAULT_VERIFIER_REJECT
	{
		/* Test-only: reads 8 bytes past the filter map's one __u64, which the verifier refuses
		 * ("invalid access to map value"): a load failure the fault drills must report. */
		__u32 zero = 0;
		volatile __u64 *value = bpf_map_lookup_elem(&filter, &zero);

		if (value && value[1] == (__u64)id)
			return 1;
	}
#endif
	kmx_emit(regs, KMX_EVT_SYS_ENTER, id, 0, pid_tgid);
	return 0;
}

SEC("tp_btf/sys_exit")
int BPF_PROG(kmx_sys_exit, struct pt_regs *regs, long ret)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	long nr = kmx_exit_nr(regs);

	if (nr < 0 || !kmx_wanted(pid_tgid) || !kmx_sample_exit(pid_tgid))
		return 0;
	kmx_emit(regs, KMX_EVT_SYS_EXIT, nr, ret, pid_tgid);
	return 0;
}
