/* SPDX-License-Identifier: GPL-2.0 OR MIT */
/*
 * IA32 (32-bit compat) syscalls on x86_64: translating an i386 syscall into its x86_64 equivalent.
 * Shared by the kernel module and both BPF probes (written so the BPF verifier accepts it: only
 * constant-offset array reads, bounded table indexes, no loops it cannot unroll).
 *
 * On x86_64 a 32-bit task enters with the i386 number and its arguments in ebx, ecx, edx, esi,
 * edi, ebp; the sys_enter tracepoint reports that number. The drivers translate it with the
 * generated tables of kmx_ia32_map.h (drivers/common/gen_ia32_map.py, from the kernel's own
 * unistd_32.h and unistd_64.h) and write the event as if the x86_64 syscall had been made, with
 * KMX_EVT_F_IA32 set in the event type and the i386 number as an extra fixed param (see
 * kmx_events.h). A number with no x86_64 equivalent gives an event with nr KMX_NR_IA32_UNMAPPED and
 * the raw (32-bit) registers as its arguments: never dropped, never reported as another syscall.
 *
 * Before including, define:
 *   KMX_IA32_READ_USER(dst, size, uaddr)  copy size bytes of user memory (uaddr a __u64) to dst,
 *                                        never faulting pages in: 0 on success
 *   KMX_IA32_RODATA                       attributes for the tables (a BPF section), may be empty
 */
#ifndef KMX_IA32_H
#define KMX_IA32_H

#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif

/* Entry kinds. */
#define KMX_IA32_UNMAPPED 0    /* no x86_64 equivalent */
#define KMX_IA32_ARGS 1        /* args[i] = arg code i applied to the six i386 registers */
#define KMX_IA32_USER_ARRAY 2  /* `count` u32 words read from the user array at register 0; codes apply to the words */
#define KMX_IA32_SOCKETCALL 3  /* socketcall: kmx_ia32_socketcall[register 0] with its `count` words read from register 1 */
#define KMX_IA32_IPC 4         /* ipc: kmx_ia32_ipc[register 0 & 0xffff] (msgrcv with version != 0: KMX_IA32_IPC_MSGRCV_V1), codes over the registers */
#define KMX_IA32_LLSEEK 5      /* as ARGS; at exit a 0 return becomes the loff_t the kernel stored at register 3 */

/*
 * Argument codes (one byte each; N, LO, HI are register or word indexes 0..5):
 *   0x00 | N          the 32-bit value, zero-extended
 *   0x20 | N          the value << 12 (mmap2's offset in 4096-byte pages)
 *   0x40 | LO | HI<<3 a 64-bit value split in two: LO | HI << 32
 *   0x80 | N          the u32 at the user address in N (0x88 | N: at that address + 4)
 *   0xff              0 (an argument the x86_64 call has and the i386 one does not)
 */
#define KMX_IA32_ARG_PAGES 0x20
#define KMX_IA32_ARG_PAIR 0x40
#define KMX_IA32_ARG_USER32 0x80
#define KMX_IA32_ARG_USER32_PLUS4 0x88
#define KMX_IA32_ARG_ZERO 0xff

struct kmx_ia32_entry {
	__u16 nr;      /* the x86_64 syscall number */
	__u8 kind;     /* KMX_IA32_* */
	__u8 count;    /* USER_ARRAY and socketcall entries: u32 words to read from the user array */
	__u8 arg[6];   /* argument codes */
	__u16 pad;
};

#define KMX_IA32_TABLE 512         /* i386 numbers are below this (the generator checks) */
#define KMX_IA32_SUB_TABLE 32      /* socketcall and ipc call numbers */
#define KMX_IA32_IPC_MSGRCV 12
#define KMX_IA32_IPC_MSGRCV_V1 25

#define KMX_NR_IA32_UNMAPPED ((__u64)-1)

#include "kmx_ia32_map.h"

/* The result of translating one i386 syscall. */
struct kmx_ia32_call {
	__u64 args[6];  /* the x86_64 call's arguments (the raw registers when unmapped) */
	__u64 nr;       /* the x86_64 number, or KMX_NR_IA32_UNMAPPED */
	__u32 kind;     /* the i386 number's table kind (KMX_IA32_LLSEEK matters at exit) */
};

/* BPF has to see loops unrolled (clang); gcc (the module) does not know the pragma. */
#ifdef __clang__
#define KMX_IA32_UNROLL _Pragma("unroll")
#else
#define KMX_IA32_UNROLL
#endif

/* Hide a value from the optimizer, so a bound tested on it is the bound the verifier sees. */
#define KMX_IA32_OPAQUE(var) asm volatile("" : "+r"(var))

/*
 * The translation's work area: 16 __u64, the caller's. [0..7] the registers (6, 7: zero), [8..15]
 * the words of a user array. BPF callers pass map memory: an index into it may be variable (5.10's
 * verifier refuses variable-offset stack reads), which keeps the code free of per-index branches
 * whose paths older verifiers would explore one by one.
 */
#define KMX_IA32_WORK 16

/* One argument: `code` applied to the eight values at v. */
static __always_inline __u64 kmx_ia32_arg(__u32 code, const __u64 *v)
{
	__u64 lo = v[code & 7], hi = v[(code >> 3) & 7];
	__u32 word = 0;

	if (code & KMX_IA32_ARG_USER32) {
		if (code == KMX_IA32_ARG_ZERO)
			return 0;
		if (KMX_IA32_READ_USER(&word, sizeof(word), lo + ((code & 8) >> 1)))
			return 0;
		return word;
	}
	if (code & KMX_IA32_ARG_PAIR)
		return lo | (hi << 32);
	return lo << (((code >> 5) & 1) * 12); /* KMX_IA32_ARG_PAGES: mmap2's pages */
}

/* Read `count` (at most 6) u32 words at user address base into words[]: 0, or -1 on a fault. */
static __always_inline int kmx_ia32_words(__u64 base, __u32 count, __u64 *words)
{
	__u32 word, i;

KMX_IA32_UNROLL
	for (i = 0; i < 6; i++) {
		if (i >= count)
			break;
		word = 0;
		if (KMX_IA32_READ_USER(&word, sizeof(word), base + 4 * i))
			return -1;
		words[i] = word;
	}
	return 0;
}

/* Translate i386 syscall nr32 with raw registers regs_in[6] into *out, using work[KMX_IA32_WORK]. */
static __always_inline void kmx_ia32_translate(long nr32, const __u64 *regs_in, __u64 *work,
					       struct kmx_ia32_call *out)
{
	const struct kmx_ia32_entry *entry;
	const __u64 *src = work;
	__u32 index, kind, i;

KMX_IA32_UNROLL
	for (i = 0; i < 6; i++) {
		work[i] = regs_in[i] & 0xffffffffULL;
		out->args[i] = work[i];
	}
KMX_IA32_UNROLL
	for (i = 6; i < KMX_IA32_WORK; i++)
		work[i] = 0;
	out->nr = KMX_NR_IA32_UNMAPPED;
	out->kind = KMX_IA32_UNMAPPED;
	if (nr32 < 0 || nr32 >= KMX_IA32_TABLE)
		return;
	index = (__u32)nr32;
	KMX_IA32_OPAQUE(index);
	entry = &kmx_ia32_map[index & (KMX_IA32_TABLE - 1)];
	kind = entry->kind;
	if (kind == KMX_IA32_UNMAPPED)
		return;
	if (kind == KMX_IA32_SOCKETCALL) {
		index = (__u32)work[0];
		if (index >= KMX_IA32_SUB_TABLE)
			return;
		KMX_IA32_OPAQUE(index);
		entry = &kmx_ia32_socketcall[index & (KMX_IA32_SUB_TABLE - 1)];
		if (entry->kind == KMX_IA32_UNMAPPED || kmx_ia32_words(work[1], entry->count, work + 8))
			return;
		src = work + 8;
	} else if (kind == KMX_IA32_IPC) {
		index = (__u32)work[0] & 0xffff;
		if (index == KMX_IA32_IPC_MSGRCV && (work[0] >> 16))
			index = KMX_IA32_IPC_MSGRCV_V1;
		if (index >= KMX_IA32_SUB_TABLE)
			return;
		KMX_IA32_OPAQUE(index);
		entry = &kmx_ia32_ipc[index & (KMX_IA32_SUB_TABLE - 1)];
		if (entry->kind == KMX_IA32_UNMAPPED)
			return;
	} else if (kind == KMX_IA32_USER_ARRAY) {
		if (kmx_ia32_words(work[0], entry->count, work + 8))
			return;
		src = work + 8;
	}
KMX_IA32_UNROLL
	for (i = 0; i < 6; i++)
		out->args[i] = kmx_ia32_arg(entry->arg[i], src);
	out->nr = entry->nr;
	out->kind = kind;
}

/* The return value to report at exit: _llseek returns 0 and stores the new offset at register 3. */
static __always_inline __s64 kmx_ia32_exit_ret(const struct kmx_ia32_call *call, const __u64 *regs_in, __s64 ret)
{
	__u64 offset = 0;

	if (call->kind != KMX_IA32_LLSEEK || ret != 0)
		return ret;
	if (KMX_IA32_READ_USER(&offset, sizeof(offset), regs_in[3] & 0xffffffffULL))
		return ret;
	return (__s64)offset;
}

#endif /* KMX_IA32_H */
