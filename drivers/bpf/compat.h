/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Every architecture and kernel difference the legacy probe cares about, in one place (as the
 * kernel module's compat.h). Nothing outside this file tests an architecture macro.
 *
 * The probe is compiled for one kernel, with that kernel's headers, by a compiler front end for
 * the kernel's own architecture (so struct layouts and the __NR_* numbers are the kernel's), and
 * a BPF back end. Kernel memory is never dereferenced: fields are read with bpf_probe_read_kernel
 * at offsetof() offsets the front end computed.
 *
 * What the kernel module gets from the kernel's helpers, read here from struct pt_regs:
 *   syscall_get_arguments()  x86_64: di, si, dx, r10, r8, r9 (ia32 tasks: bx, cx, dx, si, di, bp);
 *                            arm64: orig_x0, regs[1..5]; s390: orig_gpr2, gprs[3..7];
 *                            powerpc: orig_gpr3, gpr[4..8] (compat tasks: each cut to 32 bits)
 *   syscall_get_nr() at exit x86_64: orig_ax; arm64: syscallno; s390: int_code & 0xffff when
 *                            PIF_SYSCALL is set; powerpc: gpr[0] when the trap is a syscall
 *   in_compat_syscall()      x86_64: TS_COMPAT in thread_info.status (x32 calls are not decoded
 *                            either way: their numbers carry __X32_SYSCALL_BIT and match no
 *                            __NR_*, and their arguments are the 64-bit registers); arm64:
 *                            TIF_32BIT; s390: TIF_31BIT; powerpc: TIF_32BIT (none without
 *                            CONFIG_COMPAT).
 */
#ifndef KMX_BPF_COMPAT_H
#define KMX_BPF_COMPAT_H

#include <linux/version.h>
#include <linux/sched.h>
#include <linux/ptrace.h>
#include <linux/pid.h>
#include <linux/pid_namespace.h>
#include <asm/ptrace.h>

#include "bpf_defs.h"

#ifndef CONFIG_THREAD_INFO_IN_TASK
#error "kmx legacy BPF: thread_info outside task_struct is not supported"
#endif

/* *dst = base->member for a kernel pointer base of type `type`: 0, or non-zero on a fault. */
#define kmx_kread(dst, base, type, member) \
	bpf_probe_read_kernel((dst), sizeof(*(dst)), (const char *)(base) + __builtin_offsetof(type, member))

#define KMX_FIELD(type, member) typeof(((type *)0)->member)

/*
 * Container attribution (kmx_events.h), as the module's kmx_cgroup_id() / kmx_pidns_inum():
 * bpf_get_current_cgroup_id() gives the cgroup v2 id; the active pid namespace is the one of the
 * task's pid at that pid's own level, task->thread_pid->numbers[level].ns (thread_pid since 4.19,
 * pids[PIDTYPE_PID].pid before).
 */
static __always_inline __u32 kmx_pidns_inum(const struct task_struct *task)
{
	struct pid *pid = NULL;
	struct pid_namespace *ns = NULL;
	unsigned int level = 0, inum = 0;

#if LINUX_VERSION_CODE >= KERNEL_VERSION(4, 19, 0)
	if (kmx_kread(&pid, task, struct task_struct, thread_pid) || !pid)
		return 0;
#else
	if (kmx_kread(&pid, task, struct task_struct, pids[PIDTYPE_PID].pid) || !pid)
		return 0;
#endif
	if (kmx_kread(&level, pid, struct pid, level))
		return 0;
	if (bpf_probe_read_kernel(&ns, sizeof(ns), (const char *)pid + __builtin_offsetof(struct pid, numbers) +
				  (level & 31) * sizeof(struct upid) + __builtin_offsetof(struct upid, ns)) || !ns)
		return 0;
	if (kmx_kread(&inum, ns, struct pid_namespace, ns.inum))
		return 0;
	return inum;
}

/* thread_info.flags of a task, 0 when it cannot be read. */
static __always_inline unsigned long kmx_ti_flags(const struct task_struct *task)
{
	KMX_FIELD(struct task_struct, thread_info.flags) flags = 0;

	kmx_kread(&flags, task, struct task_struct, thread_info.flags);
	return (unsigned long)flags;
}

/* in_compat_syscall() of the current task. */
static __always_inline int kmx_compat_syscall(const struct task_struct *task)
{
#if !defined(CONFIG_COMPAT)
	return 0;
#elif defined(__TARGET_ARCH_x86)
	KMX_FIELD(struct task_struct, thread_info.status) status = 0;

	kmx_kread(&status, task, struct task_struct, thread_info.status);
	return (status & TS_COMPAT) != 0;
#elif defined(__TARGET_ARCH_arm64) || defined(__TARGET_ARCH_powerpc)
	return (kmx_ti_flags(task) >> TIF_32BIT) & 1;
#elif defined(__TARGET_ARCH_s390)
	return (kmx_ti_flags(task) >> TIF_31BIT) & 1;
#else
#error "kmx legacy BPF: unsupported architecture"
#endif
}

/*
 * IA32 tasks on x86_64 (CONFIG_IA32_EMULATION): their i386 syscalls are translated to the x86_64
 * ones (../common/kmx_ia32.h, included by the probe when KMX_IA32 is defined).
 */
#if defined(__TARGET_ARCH_x86) && defined(CONFIG_IA32_EMULATION)
#define KMX_IA32 1
#define KMX_IA32_READ_USER(dst, size, uaddr) bpf_probe_read_user((dst), (size), (const void *)(uaddr))
#define KMX_IA32_RODATA __attribute__((section(".rodata.kmx_ia32")))
#endif

/* Read one unsigned long register of *regs into *dst (left 0 on a fault). */
#define kmx_reg(dst, regs, member) kmx_kread((dst), (regs), struct pt_regs, member)

/* The syscall's six arguments, from the registers saved at entry (also valid at exit). */
static __always_inline void kmx_regs_args(const struct pt_regs *regs, int compat, __u64 *args)
{
	unsigned long v[6] = {};
	int i;

#if defined(__TARGET_ARCH_x86)
	if (compat) {
		kmx_reg(&v[0], regs, bx);
		kmx_reg(&v[1], regs, cx);
		kmx_reg(&v[2], regs, dx);
		kmx_reg(&v[3], regs, si);
		kmx_reg(&v[4], regs, di);
		kmx_reg(&v[5], regs, bp);
	} else {
		kmx_reg(&v[0], regs, di);
		kmx_reg(&v[1], regs, si);
		kmx_reg(&v[2], regs, dx);
		kmx_reg(&v[3], regs, r10);
		kmx_reg(&v[4], regs, r8);
		kmx_reg(&v[5], regs, r9);
	}
#elif defined(__TARGET_ARCH_arm64)
	kmx_reg(&v[0], regs, orig_x0);
	bpf_probe_read_kernel(&v[1], 5 * sizeof(v[0]), (const char *)regs + __builtin_offsetof(struct pt_regs, regs[1]));
#elif defined(__TARGET_ARCH_s390)
	kmx_reg(&v[0], regs, orig_gpr2);
	bpf_probe_read_kernel(&v[1], 5 * sizeof(v[0]), (const char *)regs + __builtin_offsetof(struct pt_regs, gprs[3]));
#elif defined(__TARGET_ARCH_powerpc)
	kmx_reg(&v[0], regs, orig_gpr3);
	bpf_probe_read_kernel(&v[1], 5 * sizeof(v[0]), (const char *)regs + __builtin_offsetof(struct pt_regs, gpr[4]));
#else
#error "kmx legacy BPF: unsupported architecture"
#endif
#if defined(__TARGET_ARCH_s390) || defined(__TARGET_ARCH_powerpc)
	if (compat) {
		for (i = 0; i < 6; i++)
			v[i] &= 0xffffffffUL;
	}
#endif
	for (i = 0; i < 6; i++)
		args[i] = v[i];
}

/* syscall_get_nr() at sys_exit: the syscall number, or -1 when the registers are not a syscall's. */
static __always_inline long kmx_regs_exit_nr(const struct pt_regs *regs)
{
#if defined(__TARGET_ARCH_x86)
	unsigned long orig_ax = -1UL;

	kmx_reg(&orig_ax, regs, orig_ax);
	return (int)orig_ax;
#elif defined(__TARGET_ARCH_arm64)
	KMX_FIELD(struct pt_regs, syscallno) nr = -1;

	kmx_reg(&nr, regs, syscallno);
	return (int)nr;
#elif defined(__TARGET_ARCH_s390)
	KMX_FIELD(struct pt_regs, flags) flags = 0;
	KMX_FIELD(struct pt_regs, int_code) code = 0;

	kmx_reg(&flags, regs, flags);
	if (!(flags & _PIF_SYSCALL))
		return -1;
	kmx_reg(&code, regs, int_code);
	return code & 0xffff;
#elif defined(__TARGET_ARCH_powerpc)
	unsigned long trap = 0, gpr0 = 0;

	kmx_reg(&trap, regs, trap);
#ifdef TRAP_FLAGS_MASK
	trap &= ~(unsigned long)TRAP_FLAGS_MASK;
#else
	trap &= ~0xfUL;
#endif
	if (trap != 0xc00 && !(IS_ENABLED(CONFIG_PPC_BOOK3S_64) && trap == 0x3000))
		return -1;
	kmx_reg(&gpr0, regs, gpr[0]);
	return (int)gpr0;
#else
#error "kmx legacy BPF: unsupported architecture"
#endif
}

/*
 * Attachment: raw tracepoints (kernel >= 4.17) give the probes struct pt_regs; before that, or
 * when the build asks for it (KMX_TRACEPOINT), the raw_syscalls tracepoints give the number and
 * the arguments as the tracepoint recorded them, and sys_exit gets the arguments stashed at entry.
 */
#if LINUX_VERSION_CODE < KERNEL_VERSION(4, 17, 0) && !defined(KMX_TRACEPOINT)
#define KMX_TRACEPOINT 1
#endif

#endif /* KMX_BPF_COMPAT_H */
