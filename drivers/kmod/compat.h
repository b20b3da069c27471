/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Every kernel-version and architecture difference the module cares about, in one place.
 * Nothing outside this file tests LINUX_VERSION_CODE or an architecture macro.
 *
 * Tested against Debian's 5.10, 6.1, 6.12 and 7.2 kernels on x86_64, arm64, s390x, ppc64le,
 * riscv64 and loongarch64.
 */
#ifndef KMX_COMPAT_H
#define KMX_COMPAT_H

#include <linux/version.h>
#include <linux/compat.h>
#include <linux/preempt.h>
#include <linux/ptrace.h>
#include <linux/sched.h>
#include <linux/tracepoint.h>
#include <linux/uaccess.h>
#include <linux/cgroup.h>
#include <linux/pid_namespace.h>
#include <asm/syscall.h>

/*
 * Copies from user memory that never fault pages in and never sleep (a failed copy is an error).
 *
 * kmx_copy_nofault(dst, src, n): 0, or non-zero when the copy failed. copy_from_user_nofault()
 * (probe_user_read() before 5.8) is exported to modules.
 *
 * kmx_strncpy_nofault(dst, src, count): strncpy_from_user() semantics (the string's length when
 * shorter than count, count when it is not, -EFAULT on a fault) with page faults disabled.
 * strncpy_from_user_nofault() is not exported to modules on any of these kernels, so this is
 * what it does inside: strncpy_from_user() between pagefault_disable() and pagefault_enable().
 */
#if LINUX_VERSION_CODE < KERNEL_VERSION(5, 8, 0)
#define kmx_copy_nofault(dst, src, n) probe_user_read((dst), (src), (n))
#else
#define kmx_copy_nofault(dst, src, n) copy_from_user_nofault((dst), (src), (n))
#endif

static inline long kmx_strncpy_nofault(char *dst, const char __user *src, long count)
{
	long ret;

	pagefault_disable();
	ret = strncpy_from_user(dst, src, count);
	pagefault_enable();
	return ret;
}

/*
 * Container attribution (kmx_events.h): the current task's cgroup v2 id, which is its kernfs node
 * id (cgroup_id() since 5.5; 0 before, or without CONFIG_CGROUPS), and the inode number of its
 * active pid namespace (task_active_pid_ns() is exported; NULL for a task past exit_notify()).
 */
static inline u64 kmx_cgroup_id(void)
{
#if defined(CONFIG_CGROUPS) && LINUX_VERSION_CODE >= KERNEL_VERSION(5, 5, 0)
	u64 id;

	rcu_read_lock();
	id = cgroup_id(task_dfl_cgroup(current));
	rcu_read_unlock();
	return id;
#else
	return 0;
#endif
}

static inline u32 kmx_pidns_inum(void)
{
	struct pid_namespace *ns = task_active_pid_ns(current);

	return ns ? ns->ns.inum : 0;
}

/*
 * The device: class_create() lost its owner argument in 6.4, device_type.devnode() took a const
 * device in 6.2.
 */
#if LINUX_VERSION_CODE < KERNEL_VERSION(6, 4, 0)
#define kmx_class_create(name) class_create(THIS_MODULE, (name))
#else
#define kmx_class_create(name) class_create(name)
#endif
#if LINUX_VERSION_CODE < KERNEL_VERSION(6, 2, 0)
#define KMX_DEVNODE_CONST
#else
#define KMX_DEVNODE_CONST const
#endif

/*
 * Probe context. Older kernels (6.12 and before here) call raw_syscalls probes with preemption
 * disabled; newer ones declare them TRACE_EVENT_SYSCALL, "faultable" (Debian's 7.2 here), and
 * call probes preemptible under RCU tasks trace. Disabling preemption ourselves works on both
 * and keeps "the current CPU's buffer" true for the whole event.
 */
#define kmx_probe_begin() preempt_disable_notrace()
#define kmx_probe_end() preempt_enable_notrace()

/* Wait until no probe runs any more (after unregistering, or after STOP). */
#if LINUX_VERSION_CODE < KERNEL_VERSION(4, 16, 0)
#define kmx_tracepoint_sync() synchronize_sched()
#else
#define kmx_tracepoint_sync() tracepoint_synchronize_unregister()
#endif

/* 32-bit ioctl callers: our structs have the same layout in both ABIs. */
#if LINUX_VERSION_CODE < KERNEL_VERSION(5, 5, 0)
#define KMX_COMPAT_IOCTL NULL
#else
#define KMX_COMPAT_IOCTL compat_ptr_ioctl
#endif

/*
 * A compat (32-bit ABI) syscall of a 64-bit kernel: its numbers are not the native table's. IA32
 * ones are translated (below); others (arm64's aarch32, ...) carry id 0 and no decoded params.
 */
static inline bool kmx_compat_syscall(void)
{
#ifdef CONFIG_COMPAT
	return in_compat_syscall();
#else
	return false;
#endif
}

/*
 * IA32 tasks on x86_64 (32-bit programs under CONFIG_IA32_EMULATION): their syscalls are
 * translated to x86_64 ones (../common/kmx_ia32.h). in_ia32_syscall() is TS_COMPAT in
 * thread_info.status (since 4.6; before that the same test, open-coded). syscall_get_arguments()
 * already reads bx, cx, dx, si, di, bp for such a task.
 * KMX_FAULT_NO_IA32 (test only) builds a module that does not notice them at all: the i386
 * number is taken for an x86_64 one, as a naive driver would.
 */
#if defined(CONFIG_X86_64) && defined(CONFIG_IA32_EMULATION)
#define KMX_IA32 1
#include <asm/compat.h>
static inline bool kmx_ia32_syscall(void)
{
#if LINUX_VERSION_CODE < KERNEL_VERSION(4, 6, 0)
	return current_thread_info()->status & TS_COMPAT;
#else
	return in_ia32_syscall();
#endif
}
#define KMX_IA32_READ_USER(dst, size, uaddr) \
	kmx_copy_nofault((dst), (const void __user *)(unsigned long)(uaddr), (size))
#define KMX_IA32_RODATA
#endif

/* A compat syscall the module treats as native (see KMX_FAULT_NO_IA32 above). */
static inline bool kmx_compat_ignored(void)
{
#ifdef KMX_FAULT_NO_IA32
	return true;
#else
	return false;
#endif
}

/*
 * The syscall's six arguments, at entry and at exit. At exit the first argument register holds
 * the return value on most architectures; syscall_get_arguments() reads the saved original
 * (orig_ax is the nr on x86 whose arguments are not clobbered; orig_x0 on arm64, orig_a0 on
 * riscv and loongarch). s390 keeps it in orig_gpr2 and powerpc in orig_gpr3: their
 * syscall_get_arguments() read those too in 5.10+, and we read them explicitly so that stays
 * true whatever the helper does.
 */
static inline void kmx_get_args(struct pt_regs *regs, unsigned long args[6])
{
	syscall_get_arguments(current, regs, args);
#if defined(CONFIG_S390)
	args[0] = regs->orig_gpr2;
	if (kmx_compat_syscall())
		args[0] &= 0xffffffffUL;
#elif defined(CONFIG_PPC64)
	args[0] = regs->orig_gpr3;
	if (kmx_compat_syscall())
		args[0] &= 0xffffffffUL;
#endif
}

/* The syscall number at sys_exit (sys_enter gets it as the tracepoint's argument). */
static inline long kmx_exit_nr(struct pt_regs *regs)
{
	return syscall_get_nr(current, regs);
}

#endif /* KMX_COMPAT_H */
