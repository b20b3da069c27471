// SPDX-License-Identifier: GPL-2.0
/*
 * kmx probes: raw_syscalls sys_enter / sys_exit -> one event each in the current CPU's ring.
 *
 * An event is written in place: the producer reserves the most the event can take (fixed
 * params, plus snaplen per user buffer or string), fills it, then publishes the real length by
 * moving head with a release store. Events never wrap: when the reservation does not fit before
 * the end, a KMX_EVT_PAD header (if KMX_HDR_SIZE bytes remain) sends the consumer back to 0.
 * Head never catches up with tail: a full ring drops the event and counts it.
 * Probes never sleep and never fault pages in: user memory is read with the _nofault copies,
 * and a failed copy yields an empty param flagged KMX_PF_FAULT.
 * IA32 syscalls on x86_64 are written as the x86_64 syscall they translate to (kmx_ia32.h),
 * flagged KMX_EVT_F_IA32 and followed by the i386 number.
 */
#include <linux/kernel.h>
#include <linux/ktime.h>
#include <linux/rcupdate.h>
#include <linux/sched.h>
#include <linux/string.h>
#include <linux/tracepoint.h>

#include "compat.h"
#include "kmx.h"
#include "kmx_decode.h"
#ifdef KMX_IA32
#include "../common/kmx_ia32.h"
#endif

#define KMX_U64_PARAM (2 + 8)
#define KMX_MAX_PARAMS (KMX_ENTER_FIXED + KMX_IA32_EXTRA_FIXED + KMX_MAX_ENTER_DECODED)

static struct tracepoint *kmx_tp_enter;
static struct tracepoint *kmx_tp_exit;

/* An event being written at base (inside the ring), with room for `room` bytes. */
struct kmx_writer {
	u8 *base;
	u32 room;
	u32 pos;        /* next param byte */
	u16 nparams;
	u16 index;      /* next param */
};

static __always_inline void kmx_begin(struct kmx_writer *w, u8 *base, u32 room, u16 nparams)
{
	w->base = base;
	w->room = room;
	w->nparams = nparams;
	w->index = 0;
	w->pos = KMX_HDR_SIZE + 2 * nparams;
}

/* Start a param: returns where its payload goes. */
static __always_inline u8 *kmx_param_open(struct kmx_writer *w, u8 type, u8 flags)
{
	w->base[w->pos] = type;
	w->base[w->pos + 1] = flags;
	return w->base + w->pos + 2;
}

static __always_inline void kmx_param_close(struct kmx_writer *w, u32 payload)
{
	u16 len = (u16)(payload + 2);

	memcpy(w->base + KMX_HDR_SIZE + 2 * w->index, &len, sizeof(len));
	w->pos += payload + 2;
	w->index++;
}

static __always_inline void kmx_set_flags(struct kmx_writer *w, u8 flags)
{
	w->base[w->pos + 1] = flags;
}

static void kmx_put_u64(struct kmx_writer *w, u8 type, u64 value)
{
	memcpy(kmx_param_open(w, type, 0), &value, sizeof(value));
	kmx_param_close(w, 8);
}

static void kmx_put_empty(struct kmx_writer *w, u8 type, u8 flags)
{
	kmx_param_open(w, type, flags);
	kmx_param_close(w, 0);
}

static bool kmx_redact_delimiter(u8 b)
{
	return b == ' ' || b == '\t' || b == '\r' || b == '\n' || b == 0 || b == '&' || b == ';' || b == ',' ||
	       b == '"' || b == '\'';
}

/*
 * Replace the value after every key in buf[0..n) by '*' (kmx_events.h, "Redaction"; the
 * reference is harness/guest/redaction.py): one pass, a running match count per key.
 */
static bool kmx_redact_buffer(u8 *buf, u32 n)
{
	u32 progress[KMX_REDACT_KEYS_MAX] = { 0 };
	bool in_value = false, redacted = false;
	u32 i, k;

	for (i = 0; i < n; i++) {
		u8 b = buf[i];

		if (in_value) {
			if (kmx_redact_delimiter(b)) {
				in_value = false;
			} else {
				buf[i] = '*';
				redacted = true;
			}
			continue;
		}
		for (k = 0; k < kmx_redact.n; k++) {
			if (b == kmx_redact.key[k][progress[k]]) {
				if (++progress[k] == kmx_redact.len[k]) {
					in_value = true;
					memset(progress, 0, sizeof(progress));
					break;
				}
			} else {
				progress[k] = b == kmx_redact.key[k][0] ? 1 : 0;
			}
		}
	}
	return redacted;
}

/*
 * `len` bytes of user memory at ptr, cut at snaplen; `redact`: a buffer the syscall writes out,
 * cut at KMX_REDACT_SCAN too and redacted when redaction is on.
 */
static void kmx_put_user_bytes(struct kmx_writer *w, u8 type, unsigned long ptr, u64 len, u32 snaplen, bool redact)
{
	u8 *dst = kmx_param_open(w, type, 0);
	u32 n;
	u8 flags = 0;

	redact = redact && kmx_redact.n;
	if (redact && snaplen > KMX_REDACT_SCAN)
		snaplen = KMX_REDACT_SCAN;
	n = len > snaplen ? snaplen : (u32)len;
	if (n && kmx_copy_nofault(dst, (const void __user *)ptr, n)) {
		flags = KMX_PF_FAULT;
		n = 0;
	} else if (len > snaplen) {
		flags = KMX_PF_TRUNC;
	}
	if (redact && n && kmx_redact_buffer(dst, n))
		flags |= KMX_PF_REDACTED;
	if (flags)
		kmx_set_flags(w, flags);
	kmx_param_close(w, n);
}

/*
 * A NUL-terminated user string into dst (room for max + KMX_STR_SLACK bytes): its length without
 * the NUL, at most max (*trunc set when it was longer), or -1 when the copy faulted.
 * Reading max + 1 bytes tells "exactly max bytes" (max) from "longer" (max + 1).
 */
#define KMX_STR_SLACK 1
static long kmx_user_string(u8 *dst, unsigned long ptr, u32 max, bool *trunc)
{
	long got = kmx_strncpy_nofault((char *)dst, (const char __user *)ptr, (long)max + KMX_STR_SLACK);

	if (got < 0)
		return -1;
	if (got > max) {
		*trunc = true;
		return max;
	}
	return got;
}

static void kmx_put_str(struct kmx_writer *w, unsigned long ptr, u32 snaplen)
{
	u8 *dst = kmx_param_open(w, KMX_PT_STR, 0);
	bool trunc = false;
	long n = kmx_user_string(dst, ptr, snaplen, &trunc);

	if (n < 0) {
		kmx_set_flags(w, KMX_PF_FAULT);
		n = 0;
	} else if (trunc) {
		kmx_set_flags(w, KMX_PF_TRUNC);
	}
	kmx_param_close(w, (u32)n);
}

/*
 * argv: up to KMX_STRV_MAX_ARGS strings joined by NUL (no trailing NUL), cut at snaplen. A 32-bit
 * task's array holds 4-byte pointers.
 */
static void kmx_put_strv(struct kmx_writer *w, unsigned long ptr, u32 snaplen, bool ptr32)
{
	u8 *dst = kmx_param_open(w, KMX_PT_STRV, 0);
	u32 used = 0;
	u8 flags = 0;
	int i;

	for (i = 0;; i++) {
		unsigned long str = 0;
		u32 str32 = 0;
		bool trunc = false;
		long n;

		if (ptr32) {
			if (kmx_copy_nofault(&str32, (const void __user *)(ptr + i * sizeof(str32)), sizeof(str32))) {
				flags = KMX_PF_FAULT;
				break;
			}
			str = str32;
		} else if (kmx_copy_nofault(&str, (const void __user *)(ptr + i * sizeof(str)), sizeof(str))) {
			flags = KMX_PF_FAULT;
			break;
		}
		if (!str)
			break;
		if (i == KMX_STRV_MAX_ARGS || (i > 0 && used >= snaplen)) {
			flags = KMX_PF_TRUNC;
			break;
		}
		if (i > 0)
			dst[used++] = '\0';
		n = kmx_user_string(dst + used, str, snaplen - used, &trunc);
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
	kmx_set_flags(w, flags);
	kmx_param_close(w, used);
}

/* Upper bound of one decoded param's bytes (type, flags, payload, and a string copy's slack). */
static u32 kmx_param_bound(const struct kmx_param_spec *p, u32 snaplen)
{
	switch (p->type) {
	case KMX_PT_U64:
	case KMX_PT_S64:
		return KMX_U64_PARAM;
	case KMX_PT_FD2:
		return 2 + 8;
	default:
		if (p->src == KMX_SRC_FIXED)
			return 2 + min_t(u32, p->len, snaplen);
		return 2 + snaplen + KMX_STR_SLACK;
	}
}

static void kmx_put_decoded(struct kmx_writer *w, const struct kmx_param_spec *p, const unsigned long *args,
			    long ret, u32 snaplen, bool ptr32)
{
	unsigned long ptr = args[p->arg];

	switch (p->type) {
	case KMX_PT_U64:
	case KMX_PT_S64:
		kmx_put_u64(w, p->type, args[p->arg]);
		return;
	case KMX_PT_STR:
		kmx_put_str(w, ptr, snaplen);
		return;
	case KMX_PT_STRV:
		kmx_put_strv(w, ptr, snaplen, ptr32);
		return;
	case KMX_PT_FD2: {
		u8 *dst = kmx_param_open(w, KMX_PT_FD2, 0);

		if (kmx_copy_nofault(dst, (const void __user *)ptr, 8)) {
			kmx_set_flags(w, KMX_PF_FAULT);
			kmx_param_close(w, 0);
		} else {
			kmx_param_close(w, 8);
		}
		return;
	}
	}
	/* BYTES and SOCKADDR: a user buffer whose length comes from the source kind. */
	switch (p->src) {
	case KMX_SRC_LEN: /* write, pwrite64, sendto data: what the syscall writes out */
		kmx_put_user_bytes(w, p->type, ptr, args[p->len], snaplen, p->type == KMX_PT_BYTES);
		return;
	case KMX_SRC_RET:
		kmx_put_user_bytes(w, p->type, ptr, ret > 0 ? (u64)ret : 0, snaplen, false);
		return;
	case KMX_SRC_FIXED:
		kmx_put_user_bytes(w, p->type, ptr, p->len, snaplen, false);
		return;
	case KMX_SRC_PLEN: {
		u32 len;

		if (kmx_copy_nofault(&len, (const void __user *)args[p->len], sizeof(len))) {
			kmx_put_empty(w, p->type, KMX_PF_FAULT);
			return;
		}
		kmx_put_user_bytes(w, p->type, ptr, len, snaplen, false);
		return;
	}
	}
	kmx_put_empty(w, p->type, KMX_PF_FAULT);
}

static bool kmx_wanted(void)
{
	u64 filter = READ_ONCE(kmx_filter_tgid);
	bool ok;

	if (!filter || (u64)current->tgid == filter)
		return true;
	rcu_read_lock();
	ok = (u64)rcu_dereference(current->real_parent)->tgid == filter;
	rcu_read_unlock();
	return ok;
}

/*
 * Reserve `need` contiguous bytes in the ring (writing a PAD when wrapping): the offset, or -1
 * when the ring is full (the drop is counted by the caller).
 */
static s64 kmx_reserve(struct kmx_cpu_buf *buf, u32 need)
{
	u64 size = kmx_size;
	u64 head = buf->head;
	u64 tail = smp_load_acquire(&buf->ctrl->tail);

	if (tail >= size || (tail & (KMX_ALIGN - 1)))
		return -1; /* the consumer wrote nonsense: write nothing until it is sane */
	if (head >= tail) {
		/* Free: [head, size) and [0, tail). The new head may reach size only if tail > 0. */
		if (head + need < size || (head + need == size && tail > 0))
			return head;
		if (need >= tail)
			return -1;
		if (size - head >= KMX_HDR_SIZE) {
			struct kmx_event_hdr pad = { .type = KMX_EVT_PAD, .len = (u32)(size - head) };

			memcpy(buf->data + head, &pad, sizeof(pad));
		}
		return 0;
	}
	return head + need < tail ? (s64)head : -1;
}

static void kmx_emit(struct pt_regs *regs, u16 type, long nr, long ret)
{
	unsigned long args[6];
	struct kmx_cpu_buf *buf;
	const struct kmx_sc_spec *spec = NULL;
	const struct kmx_param_spec *decoded = NULL;
	struct kmx_event_hdr hdr;
	struct kmx_writer w;
	unsigned int id = 0, ndecoded = 0, i;
	u32 snaplen, need;
	u16 nparams;
	s64 at;
	bool ia32 = false;
	long ia32_nr = 0;

	kmx_get_args(regs, args);
	if (!kmx_compat_syscall() || kmx_compat_ignored()) {
		id = kmx_sc_id(nr);
	} else {
#ifdef KMX_IA32
		if (kmx_ia32_syscall()) {
			struct kmx_ia32_call call;
			u64 raw[6], work[KMX_IA32_WORK];

			for (i = 0; i < 6; i++)
				raw[i] = args[i];
			kmx_ia32_translate(nr, raw, work, &call);
			if (type == KMX_EVT_SYS_EXIT)
				ret = kmx_ia32_exit_ret(&call, raw, ret);
			for (i = 0; i < 6; i++)
				args[i] = call.args[i];
			ia32 = true;
			ia32_nr = nr;
			nr = (long)call.nr;
			if (call.nr != KMX_NR_IA32_UNMAPPED)
				id = kmx_sc_id(nr);
		}
#endif
	}
	if (id) {
		spec = &kmx_sc_specs[id];
		ndecoded = type == KMX_EVT_SYS_ENTER ? spec->n_enter : spec->n_exit;
		decoded = type == KMX_EVT_SYS_ENTER ? spec->enter : spec->exit;
	}
	nparams = (type == KMX_EVT_SYS_ENTER ? KMX_ENTER_FIXED : KMX_EXIT_FIXED) + ndecoded;
	if (ia32)
		nparams += KMX_IA32_EXTRA_FIXED;
	snaplen = READ_ONCE(kmx_snaplen_now);
	need = KMX_HDR_SIZE + 2 * nparams + KMX_U64_PARAM * (nparams - ndecoded);
	for (i = 0; i < ndecoded; i++)
		need += kmx_param_bound(&decoded[i], snaplen);
	need = ALIGN(need, KMX_ALIGN);

	buf = this_cpu_ptr(kmx_bufs);
	at = kmx_reserve(buf, need);
	if (at < 0) {
		buf->drops++;
		WRITE_ONCE(buf->ctrl->drops, buf->drops);
		return;
	}

	kmx_begin(&w, buf->data + at, need, nparams);
	kmx_put_u64(&w, KMX_PT_U64, (u64)nr);
	kmx_put_u64(&w, KMX_PT_U64, id);
	if (type == KMX_EVT_SYS_ENTER) {
		unsigned long raw[6];

		memcpy(raw, args, sizeof(raw));
#ifdef KMX_FAULT_SWAP_ARGS
		/* Test-only fault (harness/build/kmod.py fault="swap_args"): a capture suite must fail. */
		if (id == 3)
			swap(raw[0], raw[2]);
#endif
		for (i = 0; i < 6; i++)
			kmx_put_u64(&w, KMX_PT_U64, raw[i]);
	} else {
		kmx_put_u64(&w, KMX_PT_S64, (u64)ret);
	}
	if (ia32)
		kmx_put_u64(&w, KMX_PT_U64, (u64)ia32_nr);
	for (i = 0; i < ndecoded; i++)
		kmx_put_decoded(&w, &decoded[i], args, ret, snaplen, ia32);

	hdr.ts_ns = ktime_get_ns();
	hdr.tid = current->pid;
	hdr.pid = current->tgid;
	hdr.len = ALIGN(w.pos, KMX_ALIGN);
	hdr.type = type | (ia32 ? KMX_EVT_F_IA32 : 0);
	hdr.nparams = nparams;
	hdr.cgroup_id = kmx_cgroup_id();
	hdr.pidns = kmx_pidns_inum();
	hdr.reserved = 0;
#ifdef KMX_FAULT_NO_CONTAINER
	/* Test-only fault (fault="no_container"): the container suite must fail. */
	hdr.cgroup_id = 0;
	hdr.pidns = 0;
#endif
	memcpy(w.base, &hdr, sizeof(hdr));
	if (hdr.len > w.pos)
		memset(w.base + w.pos, 0, hdr.len - w.pos);

	buf->head = (u64)at + hdr.len;
	if (buf->head == kmx_size)
		buf->head = 0;
	buf->events++;
	buf->bytes += hdr.len;
	WRITE_ONCE(buf->ctrl->events, buf->events);
	WRITE_ONCE(buf->ctrl->bytes, buf->bytes);
	smp_store_release(&buf->ctrl->head, buf->head); /* publishes the event's bytes */
}

/*
 * Sampling 1 in N syscalls: decided at enter on a per-CPU count, remembered per thread in a
 * tid-tagged slot so the exit follows its enter (two threads sharing a slot can only lose an
 * exit, never keep a wrong one).
 */
#define KMX_SAMPLED_SLOTS 4096
static u32 kmx_sampled[KMX_SAMPLED_SLOTS];

static bool kmx_sample_enter(void)
{
	u32 every = READ_ONCE(kmx_sample_every);
	u32 tid = (u32)current->pid;
	bool keep;

	if (every <= 1)
		return true;
	keep = this_cpu_ptr(kmx_bufs)->seen++ % every == 0;
	WRITE_ONCE(kmx_sampled[tid % KMX_SAMPLED_SLOTS], keep ? tid : 0);
	return keep;
}

static bool kmx_sample_exit(void)
{
	u32 tid = (u32)current->pid;

	if (READ_ONCE(kmx_sample_every) <= 1)
		return true;
	if (READ_ONCE(kmx_sampled[tid % KMX_SAMPLED_SLOTS]) != tid)
		return false;
	WRITE_ONCE(kmx_sampled[tid % KMX_SAMPLED_SLOTS], 0);
	return true;
}

static void kmx_sys_enter(void *data, struct pt_regs *regs, long nr)
{
	if (!smp_load_acquire(&kmx_capturing) || nr < 0)
		return;
	kmx_probe_begin();
	if (kmx_wanted() && kmx_sample_enter())
		kmx_emit(regs, KMX_EVT_SYS_ENTER, nr, 0);
	kmx_probe_end();
}

static void kmx_sys_exit(void *data, struct pt_regs *regs, long ret)
{
	long nr;

	if (!smp_load_acquire(&kmx_capturing))
		return;
	nr = kmx_exit_nr(regs);
	if (nr < 0)
		return;
	kmx_probe_begin();
	if (kmx_wanted() && kmx_sample_exit())
		kmx_emit(regs, KMX_EVT_SYS_EXIT, nr, ret);
	kmx_probe_end();
}

static void kmx_find_tracepoint(struct tracepoint *tp, void *priv)
{
	if (!strcmp(tp->name, "sys_enter"))
		kmx_tp_enter = tp;
	else if (!strcmp(tp->name, "sys_exit"))
		kmx_tp_exit = tp;
}

/* At load: the tracepoints must exist (probes are attached only while capturing). */
int kmx_probes_find(void)
{
	for_each_kernel_tracepoint(kmx_find_tracepoint, NULL);
	if (!kmx_tp_enter || !kmx_tp_exit) {
		pr_err("kmx: raw_syscalls tracepoints not found (CONFIG_HAVE_SYSCALL_TRACEPOINTS?)\n");
		return -ENOENT;
	}
	return 0;
}

/*
 * Attached at START and detached at STOP (callers serialize): a loaded module that is not
 * capturing costs the system nothing, as a detached BPF probe does (an attached raw_syscalls
 * tracepoint sends every task's syscalls through the slow path).
 */
static bool kmx_attached;

int kmx_probes_register(void)
{
	int ret;

	if (kmx_attached)
		return 0;
	ret = tracepoint_probe_register(kmx_tp_enter, (void *)kmx_sys_enter, NULL);
	if (ret)
		return ret;
	ret = tracepoint_probe_register(kmx_tp_exit, (void *)kmx_sys_exit, NULL);
	if (ret) {
		tracepoint_probe_unregister(kmx_tp_enter, (void *)kmx_sys_enter, NULL);
		kmx_tracepoint_sync();
		return ret;
	}
	kmx_attached = true;
	return 0;
}

void kmx_probes_unregister(void)
{
	if (!kmx_attached)
		return;
	tracepoint_probe_unregister(kmx_tp_exit, (void *)kmx_sys_exit, NULL);
	tracepoint_probe_unregister(kmx_tp_enter, (void *)kmx_sys_enter, NULL);
	kmx_tracepoint_sync();
	kmx_attached = false;
}
